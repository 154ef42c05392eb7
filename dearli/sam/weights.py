"""SAM weight files trained by this project, vouched for by a JSON manifest beside them.

``<name>.safetensors`` holds a SAM state dict (floating tensors in half precision, to keep the
committed file small); ``<name>.json`` records the model type, the file's sha256 and size and the
settings that produced it (written by the tiny CLIP's ``weight_manifest`` module: both trained
models' files have one layout). ``build_sam``
reads any checkpoint through :func:`load_sam_state_dict`: when a manifest exists, the model type and
the sha256 are checked before a byte of the weights is used, so a truncated, corrupted or swapped
file fails with an error naming it instead of loading garbage. Files without a manifest (Meta's
released ``.pth`` files) load as before, through ``torch.load(weights_only=True)``.
"""
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors

from dearli.modeling.backbone.weight_manifest import (  # manifest_path: re-exported for callers
    check_against_manifest,
    manifest_path,  # noqa: F401
    save_weights_with_manifest,
)

from .tiny import TINY_MODEL_TYPE

# The tiny SAM trained by tools/pretrain_tiny_sam.py (committed; regenerate with that tool).
TRAINED_TINY_SAM = Path(__file__).resolve().parents[1] / "weights" / f"{TINY_MODEL_TYPE}_sam_shapes.safetensors"


class SamCheckpointError(ValueError):
    """A SAM checkpoint cannot be read or does not fit the requested model type."""


def save_sam_weights(state_dict, weights_file, model_type, settings):
    """Half-precision safetensors + manifest (the tiny CLIP's writer; the model name is the SAM type)."""
    return save_weights_with_manifest(state_dict, weights_file, model_type, settings)


def verify_sam_weights(weights_file, model_type=None):
    """Check ``weights_file`` against its manifest, if any (model type unless None, then sha256);
    returns the manifest or None."""
    return check_against_manifest(
        weights_file, f"SAM checkpoint {weights_file}", "model type", model_type, f"not {model_type!r}",
        error=SamCheckpointError,
    )


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
