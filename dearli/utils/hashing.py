"""Content hashes of files (weight files recorded in checkpoints and SAM label metadata)."""
import hashlib


def file_sha256(path, chunk_bytes=1 << 24):
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
