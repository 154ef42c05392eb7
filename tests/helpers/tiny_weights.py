"""A saved checkpoint of the tiny model, for tests that load weights through MODEL.WEIGHTS."""
from pathlib import Path

import torch
from detectron2.modeling import build_model

from dearli.engine.predictor import build_seeded_model
from dearli.modeling.checkpoint import DEARLiCheckpointer

# Differs from the tiny configs' SEED, so loaded weights differ from freshly built ones.
CHECKPOINT_SEED = 1234


def build_model_seeded_as_trained(cfg):
    """``cfg``'s model built as the trainer and the predictor build it (generators seeded from
    SEED), so its random frozen CLIP is the one a checkpoint of ``cfg`` was trained on."""
    return build_seeded_model(cfg)


def save_tiny_checkpoint(cfg, directory) -> Path:
    """Build ``cfg``'s model with random trainable weights (seeded by CHECKPOINT_SEED) on the
    frozen CLIP of ``cfg``'s SEED, and save it as ``<directory>/model.pth`` with the project's
    checkpointer (which records that CLIP's fingerprint); returns the path."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CHECKPOINT_SEED)
        model = build_model(cfg)
    clip = build_model_seeded_as_trained(cfg).backbone.clip_model
    model.backbone.clip_model.load_state_dict(clip.state_dict())
    DEARLiCheckpointer(model, save_dir=str(directory)).save("model")
    return Path(directory) / "model.pth"
