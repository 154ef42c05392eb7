"""Exact resume: k iterations, stop, resume to 2k == an uninterrupted 2k run, bitwise on CPU.

The window holds everything that could break it: augmentation of labeled and unlabeled images,
CutMix (probability 1), a data worker process, per-sample point sampling, the teacher's
pseudo-labels and EMA, an evaluation (after iteration 3) and a poly LR that changes every step.
"""
import json

import pytest
import torch
from detectron2.engine import HookBase
from helpers.engine_setup import engine_cfg, load_checkpoint, train

K = 3


class Interrupted(Exception):
    pass


class StopAfter(HookBase):
    """Simulates a crash right after iteration ``iteration`` (its checkpoint already written)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Interrupted(f"stopped after iteration {self.iteration}")


def resume_cfg(output_dir):
    return engine_cfg(output_dir, **{
        "SOLVER.MAX_ITER": 2 * K,
        "SOLVER.CHECKPOINT_PERIOD": K,
        "TEST.EVAL_PERIOD": K + 1,
        "DATASETS.TEST": ["dearli_shapes_val"],
        "DATALOADER.NUM_WORKERS": 1,
        "INPUT.UNLABELED.CUTMIX_PROB": 1.0,
        "MODEL.TEACHER.EMA_DECAY": 0.9,
    })


def assert_bitwise_equal(a, b, path="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def eval_iterations(output_dir):
    lines = [json.loads(line) for line in open(output_dir / "metrics.json")]
    return sorted({line["iteration"] for line in lines if "teacher/panoptic_seg/PQ" in line})


@pytest.mark.slow
def test_resume_replays_the_uninterrupted_run_bitwise(tmp_path):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train(resume_cfg(straight_dir))

    with pytest.raises(Interrupted):
        train(resume_cfg(resumed_dir), before_train=lambda t: t.register_hooks([StopAfter(K - 1)]))
    assert (resumed_dir / "last_checkpoint").read_text() == f"model_{K - 1:07d}.pth"
    resumed = train(resume_cfg(resumed_dir), resume=True)
    assert resumed.start_iter == K

    straight = load_checkpoint(straight_dir / "model_final.pth")
    again = load_checkpoint(resumed_dir / "model_final.pth")
    assert straight["iteration"] == again["iteration"] == 2 * K - 1
    trainer_state = straight["trainer"]
    assert trainer_state["_trainer"]["optimizer"]["state"], "optimizer state must be compared, not empty"
    assert trainer_state["hooks"]["LRScheduler"]["last_epoch"] == 2 * K
    assert "grad_scaler" in trainer_state["_trainer"]
    for part in ("model", "teacher", "trainer", "rng", "iteration"):
        assert_bitwise_equal(straight[part], again[part], part)
    # cumulative telemetry is checkpointed too: the resumed run writes the uninterrupted run's counts
    counts = json.loads((straight_dir / "pseudo_label_class_counts.json").read_text())
    assert sum(counts.values()) > 0
    assert json.loads((resumed_dir / "pseudo_label_class_counts.json").read_text()) == counts
    # the window really held an evaluation and an LR change
    assert K in eval_iterations(straight_dir) and K in eval_iterations(resumed_dir)
    first_lr = load_checkpoint(resumed_dir / f"model_{K - 1:07d}.pth")["trainer"]["_trainer"]["optimizer"]
    assert first_lr["param_groups"][0]["lr"] != straight["trainer"]["_trainer"]["optimizer"]["param_groups"][0]["lr"]
