"""SAM weight files trained by this project, vouched for by a JSON manifest beside them.

``<name>.safetensors`` holds a SAM state dict (floating tensors in half precision, to keep the
committed file small); ``<name>.json`` records the model type, the file's sha256 and size and the
settings that produced it (the same manifest layout as the tiny CLIP's weights). ``build_sam``
reads any checkpoint through :func:`load_sam_state_dict`: when a manifest exists, the model type and
the sha256 are checked before a byte of the weights is used, so a truncated, corrupted or swapped
file fails with an error naming it instead of loading garbage. Files without a manifest (Meta's
released ``.pth`` files) load as before, through ``torch.load(weights_only=True)``.
"""
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save as safetensors_bytes

from dearli.utils.atomic_io import atomic_write, atomic_write_json

from .tiny import TINY_MODEL_TYPE

MANIFEST_FORMAT = 1
# The tiny SAM trained by tools/pretrain_tiny_sam.py (committed; regenerate with that tool).
TRAINED_TINY_SAM = Path(__file__).resolve().parents[1] / "weights" / f"{TINY_MODEL_TYPE}_sam_shapes.safetensors"


class SamCheckpointError(ValueError):
    """A SAM checkpoint cannot be read or does not fit the requested model type."""


def manifest_path(weights_file):
    return Path(weights_file).with_suffix(".json")


def file_sha256(path, chunk_bytes=1 << 24):
    """Hex sha256 of a file (also recorded in pseudo-label meta.json so labels of different
    checkpoints never mix)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_sam_weights(state_dict, weights_file, model_type, settings, dtype=torch.float16):
    """Write ``state_dict`` as safetensors (floating tensors cast to ``dtype``) and its manifest,
    both atomically; returns the sha256."""
    tensors = {name: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
               for name, t in state_dict.items()}
    data = safetensors_bytes(tensors)
    with atomic_write(weights_file) as f:
        f.write(data)
    sha256 = hashlib.sha256(data).hexdigest()
    atomic_write_json(manifest_path(weights_file), {
        "format": MANIFEST_FORMAT, "model_name": model_type, "file": Path(weights_file).name, "sha256": sha256,
        "size_bytes": len(data), "dtype": str(dtype).replace("torch.", ""), "settings": settings,
    }, indent=1, sort_keys=True)
    return sha256


def read_manifest(weights_file):
    """The manifest of ``weights_file`` as a dict, or None when it has none."""
    path = manifest_path(weights_file)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SamCheckpointError(f"weight manifest {path} of SAM checkpoint {weights_file} is unreadable: {e}") from e
    missing = [key for key in ("model_name", "sha256") if key not in manifest]
    if missing:
        raise SamCheckpointError(f"weight manifest {path} of SAM checkpoint {weights_file} lacks {missing}")
    return manifest


def verify_sam_weights(weights_file, model_type=None):
    """Check ``weights_file`` against its manifest, if any (model type unless None, then sha256);
    returns the manifest or None."""
    manifest = read_manifest(weights_file)
    if manifest is None:
        return None
    if model_type is not None and manifest["model_name"] != model_type:
        raise SamCheckpointError(
            f"SAM checkpoint {weights_file} holds weights of model type {manifest['model_name']!r} "
            f"(says {manifest_path(weights_file).name}), not {model_type!r}"
        )
    actual = file_sha256(weights_file)
    if actual != manifest["sha256"]:
        raise SamCheckpointError(
            f"SAM checkpoint {weights_file} is corrupted or truncated: its sha256 is {actual}, "
            f"its manifest {manifest_path(weights_file).name} expects {manifest['sha256']}"
        )
    return manifest


def load_sam_state_dict(checkpoint, model_type=None):
    """The tensors of a SAM checkpoint: safetensors or a ``torch.save``d plain state dict (as Meta
    releases them), checked against its manifest first when it has one."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint {path} does not exist")
    verify_sam_weights(path, model_type)
    try:
        if path.suffix == ".safetensors":
            state_dict = load_safetensors(str(path))
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors-header and safety errors: "not a readable checkpoint"
        raise SamCheckpointError(f"cannot read SAM checkpoint {path}: {e}") from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise SamCheckpointError(f"{path} is not a SAM state dict (expected a dict of tensors)")
    return state_dict
