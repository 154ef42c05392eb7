"""Checkpoints that know their backbone.

A frozen CLIP is left out of checkpoints (it never changes and is large), so a decoder is only
meaningful on the CLIP it was trained with. Every checkpoint dearli writes records that CLIP's
fingerprint (:meth:`OpenCLIPBackbone.frozen_fingerprint`: model name, weight-file sha256 or
random-init seed, digest of the tensors) under :data:`FINGERPRINT_KEY`. Loading it onto a model whose
frozen CLIP differs is an error naming both; a model built only to load a checkpoint takes the
checkpoint's seed (:func:`config_for_checkpoint`), so it rebuilds the same random CLIP.
"""
import logging
from typing import Dict, Optional

from torch import nn

from .weight_files import PICKLE_SUFFIX, CheckpointError, read_weight_file

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "backbone_fingerprint"
_CLIP_KEY_PREFIX = "backbone.clip_model."


class BackboneMismatchError(CheckpointError):
    """A checkpoint trained on another frozen CLIP than the model's."""


def backbone_fingerprint(model: nn.Module) -> Optional[Dict]:
    """The model's frozen-CLIP fingerprint, or None (no OpenCLIP backbone, or a trainable one)."""
    model = getattr(model, "module", model)  # DDP
    backbone = getattr(model, "backbone", None)
    return backbone.frozen_fingerprint() if hasattr(backbone, "frozen_fingerprint") else None


def describe(fingerprint: Dict) -> str:
    """``fingerprint`` in words, e.g. "convnext_base_w_320 from a weight file with sha256 ab12..."."""
    if fingerprint.get("pretrained_sha256"):
        source = f"from a weight file with sha256 {fingerprint['pretrained_sha256']}"
    elif fingerprint.get("random_init_seed") is not None:
        source = f"randomly initialised with SEED {fingerprint['random_init_seed']}"
    else:
        source = "randomly initialised with an unrecorded seed (SEED < 0)"
    return f"{fingerprint['model_name']} {source} (tensor digest {fingerprint['digest'][:12]})"


def _hint(stored: Dict) -> str:
    if stored.get("pretrained_sha256"):
        return "set MODEL.OPEN_CLIP.PRETRAINED to the weight file the checkpoint was trained with"
    if stored.get("random_init_seed") is not None:
        return f"build the model with SEED {stored['random_init_seed']} and MODEL.OPEN_CLIP.PRETRAINED \"\""
    return "rebuild the model exactly as in training"


def check_backbone_fingerprint(model: nn.Module, checkpoint: Dict, path: str) -> None:
    """Raise :class:`BackboneMismatchError` when ``checkpoint`` (read from ``path``) was trained on
    another frozen CLIP than ``model``'s. A checkpoint that carries the CLIP tensors itself, or a
    model with a trainable CLIP, has nothing to check; one without a fingerprint gets a warning."""
    current = backbone_fingerprint(model)
    model_state = checkpoint.get("model", {})
    if current is None or any(key.startswith(_CLIP_KEY_PREFIX) for key in model_state):
        return
    stored = checkpoint.get(FINGERPRINT_KEY)
    if stored is None:
        logger.warning("checkpoint %s records no backbone fingerprint (not written by this version of dearli): "
                       "cannot check that it was trained on this model's frozen CLIP, %s", path, describe(current))
        return
    if stored["model_name"] != current["model_name"] or stored["digest"] != current["digest"]:
        raise BackboneMismatchError(
            f"checkpoint {path} was trained on the frozen CLIP {describe(stored)}, but this model's frozen "
            f"CLIP is {describe(current)}; its decoder would read features it was not trained on. To use "
            f"it, {_hint(stored)}"
        )


def config_for_checkpoint(cfg, path: str, allow_unsafe_pickle: bool = False):
    """``cfg``, or a copy with the SEED that rebuilds the random CLIP ``path`` was trained on, for a
    model built only to load ``path`` (evaluation, demo). Training configs are not changed here."""
    if not path or cfg.MODEL.OPEN_CLIP.PRETRAINED or path.endswith(PICKLE_SUFFIX):
        return cfg  # model-zoo pickles carry no fingerprint (and are read only by the checkpointer)
    try:
        checkpoint = read_weight_file(path, allow_unsafe_pickle)
    except FileNotFoundError:
        return cfg  # the checkpointer reports it when it loads the file
    stored = checkpoint.get(FINGERPRINT_KEY) if isinstance(checkpoint, dict) else None
    seed = stored.get("random_init_seed") if stored else None
    if seed is None or seed == cfg.SEED or stored["model_name"] != cfg.MODEL.OPEN_CLIP.MODEL_NAME:
        return cfg
    logger.warning("checkpoint %s was trained on the random CLIP of SEED %d: building the model with that "
                   "seed (the config has SEED %d)", path, seed, cfg.SEED)
    was_frozen, cfg = cfg.is_frozen(), cfg.clone()
    cfg.defrost()
    cfg.SEED = seed
    if was_frozen:
        cfg.freeze()
    return cfg
