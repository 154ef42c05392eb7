"""Weight files trained by this project, with a JSON manifest that vouches for them.

A weight file ``<name>.safetensors`` (an OpenCLIP state dict, loadable by ``open_clip`` as any real
checkpoint) may have a manifest ``<name>.json`` next to it: the OpenCLIP model name it belongs to,
the file's sha256 and size, and the settings that produced it. When a manifest exists, loading checks
the model name and the sha256 before anything is read, so a truncated, corrupted or swapped file
fails with a message naming it instead of loading garbage. Files without a manifest (downloaded
OpenCLIP weights) load unchecked, as before.
"""
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from dearli.utils.atomic_io import atomic_write, atomic_write_json
from dearli.utils.hashing import file_sha256

MANIFEST_FORMAT = 1
# The weight files trained by this project (tools/pretrain_tiny_clip.py), shipped with the package.
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


def manifest_path(weights_file):
    return Path(weights_file).with_suffix(".json")


def save_weights_with_manifest(state_dict, weights_file, model_name, settings, dtype=torch.float16):
    """Write ``state_dict`` (floating tensors cast to ``dtype``; half precision keeps the tiny
    models' files small) as safetensors and its manifest, both atomically. Returns the sha256."""
    tensors = {name: (t.to(dtype) if t.is_floating_point() else t).detach().cpu().contiguous()
               for name, t in state_dict.items()}
    data = safetensors_bytes(tensors)
    with atomic_write(weights_file) as f:
        f.write(data)
    sha256 = hashlib.sha256(data).hexdigest()
    atomic_write_json(manifest_path(weights_file), {
        "format": MANIFEST_FORMAT, "model_name": model_name, "file": Path(weights_file).name,
        "sha256": sha256, "size_bytes": len(data), "dtype": str(dtype).replace("torch.", ""),
        "settings": settings,
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
        raise ValueError(f"weight manifest {str(path)!r} of {str(weights_file)!r} is unreadable: {e}") from e
    missing = [key for key in ("model_name", "sha256") if key not in manifest]
    if missing:
        raise ValueError(f"weight manifest {str(path)!r} lacks {missing}")
    return manifest


def check_against_manifest(weights_file, subject, kind, expected_name, expected_clause, error=ValueError):
    """Check ``weights_file`` against its manifest (when it has one): the model name recorded there
    (unless ``expected_name`` is None), then the sha256. ``subject`` names the file in messages,
    ``kind`` what the recorded name is, ``expected_clause`` what was asked for. Raises ``error``;
    returns the manifest or None. One check for every weight file the project trains (CLIP, SAM)."""
    manifest = read_manifest(weights_file)
    if manifest is None:
        return None
    says = manifest_path(weights_file).name
    if expected_name is not None and manifest["model_name"] != expected_name:
        raise error(f"{subject} holds weights of {kind} {manifest['model_name']!r} (says {says}), {expected_clause}")
    actual = file_sha256(weights_file)
    if actual != manifest["sha256"]:
        raise error(
            f"{subject} is corrupted or truncated: its sha256 is {actual}, its manifest {says} expects {manifest['sha256']}"
        )
    return manifest


def verify_weights_file(weights_file, model_name):
    """Check an OpenCLIP weight file against its manifest (model name, then sha256).
    Raises ValueError naming the file; returns the manifest or None."""
    return check_against_manifest(
        weights_file, f"MODEL.OPEN_CLIP.PRETRAINED={str(weights_file)!r}", "OpenCLIP model", model_name,
        f"but MODEL.OPEN_CLIP.MODEL_NAME is {model_name!r}",
    )
