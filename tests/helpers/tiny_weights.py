"""A saved checkpoint of the tiny model, for tests that load weights through MODEL.WEIGHTS."""
from pathlib import Path

import torch
from detectron2.modeling import build_model

from dearli.modeling.checkpoint import DEARLiCheckpointer

# Differs from the tiny configs' SEED, so loaded weights differ from freshly built ones.
CHECKPOINT_SEED = 1234


def save_tiny_checkpoint(cfg, directory) -> Path:
    """Build ``cfg``'s model with random weights (seeded) and save it as ``<directory>/model.pth``
    with the project's checkpointer; returns the path."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CHECKPOINT_SEED)
        model = build_model(cfg)
    DEARLiCheckpointer(model, save_dir=str(directory)).save("model")
    return Path(directory) / "model.pth"
