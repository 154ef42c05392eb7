"""Shared set-up of the engine tests: the tiny config in a temporary output folder, and training."""
import torch
from helpers.tiny import tiny_cfg

from dearli.engine.trainer import DEARLiTrainer


def engine_cfg(output_dir, **overrides):
    """Tiny semi-supervised config: SSL on, no evaluation unless asked, one process."""
    base = {
        "SSL.ENABLED": True,
        "SOLVER.MAX_ITER": 2,
        "SOLVER.CHECKPOINT_PERIOD": 1000,
        "TEST.EVAL_PERIOD": 0,
        "DATASETS.TEST": [],
        "DATALOADER.NUM_WORKERS": 0,
        "OUTPUT_DIR": str(output_dir),
    }
    base.update(overrides)
    return tiny_cfg(**base)


def train(cfg, resume=False, *, before_train=None):
    """Build a trainer, load, optionally adjust it, train; return the trainer."""
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if before_train is not None:
        before_train(trainer)
    trainer.train()
    return trainer


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)
