"""Bad input and faults: unknown datasets, SSL without unlabeled data, NaN losses, broken checkpoints."""
import os

import pytest
import torch
from detectron2.utils.events import get_event_storage
from helpers.engine_setup import engine_cfg, load_checkpoint, train

from dearli.engine.state import UnreadableCheckpointError
from dearli.engine.trainer import DEARLiTrainer


def test_unregistered_unlabeled_dataset_is_named(tmp_path):
    cfg = engine_cfg(tmp_path, **{"DATASETS.TRAIN_UNLABELED": ["dearli_shapes_train_unlabelled"]})
    with pytest.raises(KeyError, match=r"DATASETS.TRAIN_UNLABELED names 'dearli_shapes_train_unlabelled'.*dearli_shapes_train_unlabeled"):
        DEARLiTrainer(cfg)


def test_ssl_without_unlabeled_data_is_refused(tmp_path):
    cfg = engine_cfg(tmp_path, **{"DATASETS.TRAIN_UNLABELED": []})
    with pytest.raises(ValueError, match="SSL.ENABLED is True but DATASETS.TRAIN_UNLABELED is empty"):
        DEARLiTrainer(cfg)


def poison_loss_at(iteration, name):
    def install(trainer):
        forward = trainer.model.forward

        def forward_with_nan(inputs):
            losses = forward(inputs)
            if get_event_storage().iter == iteration:
                losses[name] = losses[name] * float("nan")
            return losses

        trainer.model.forward = forward_with_nan
    return install


def test_nan_loss_stops_with_iteration_and_names_keeping_last_good_checkpoint(tmp_path):
    cfg = engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 1})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 2 \(rank 0: pseudo_loss_dice\)"):
        train(cfg, before_train=poison_loss_at(2, "pseudo_loss_dice"))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000002.pth").exists()
    good = load_checkpoint(tmp_path / "model_0000001.pth")
    assert good["iteration"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values())
    resumed = DEARLiTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2


def test_truncated_last_checkpoint_names_file_and_previous_good_one(tmp_path):
    cfg = engine_cfg(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 1})
    train(cfg)  # writes model_0000000, model_0000001 and model_final (the last one)
    broken = tmp_path / (tmp_path / "last_checkpoint").read_text()
    assert broken.name == "model_final.pth"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    trainer = DEARLiTrainer(cfg)
    with pytest.raises(UnreadableCheckpointError) as error:
        trainer.resume_or_load(resume=True)
    message = str(error.value)
    assert str(broken) in message and "model_0000001.pth" in message and "last_checkpoint" in message


def test_interrupted_checkpoint_write_leaves_previous_state(tmp_path, monkeypatch):
    cfg = engine_cfg(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 1})
    trainer = train(cfg)
    before = sorted(os.listdir(tmp_path))
    last = (tmp_path / "last_checkpoint").read_text()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        trainer.checkpointer.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == before  # no partial file, no temp file
    assert (tmp_path / "last_checkpoint").read_text() == last


def test_test_time_augmentation_is_refused_not_ignored(tmp_path):
    from dearli.engine.trainer import build_evaluator

    cfg = engine_cfg(tmp_path, TEST__AUG__ENABLED=True)
    with pytest.raises(NotImplementedError, match="TEST.AUG.ENABLED"):
        build_evaluator(cfg, "dearli_shapes_val")
