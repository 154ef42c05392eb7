"""Dense CLIP guidance in a real training step of the tiny config: off computes nothing, on adds
``loss_dense_clip`` from the teacher's own forward, weighted by lambda(t), without gradient to the
teacher or the frozen backbone."""
import pytest
import torch
from helpers.engine_setup import engine_cfg, train

from dearli.modeling import dense_guidance as dg


def count_calls(monkeypatch):
    """Counters on the teacher half (dense logits) and the student half (semantic probabilities)."""
    calls = {"dense_clip_logits": 0, "semantic_probabilities": 0}
    for name in calls:
        real = getattr(dg, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(dg, name, counting)
    return calls


def record_backbone_passes(trainer):
    passes = []
    backbone = trainer.teacher.model.backbone  # shared with the student: one frozen CLIP
    backbone.register_forward_hook(lambda module, inputs, output: passes.append(inputs[0].shape[0]))
    return passes


@pytest.mark.parametrize("guided, semi_supervised", [(False, True), (True, False)])
def test_off_computes_nothing(tmp_path, monkeypatch, guided, semi_supervised):
    """Option off, or on in a supervised-only run (e.g. a protocol stage): nothing is computed."""
    calls = count_calls(monkeypatch)
    trainer = train(engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1, "SSL.ENABLED": semi_supervised,
                                            "SSL.DENSE_CLIP_GUIDANCE.ENABLED": guided}))
    assert trainer.teacher.dense_clip is None
    assert calls == {"dense_clip_logits": 0, "semantic_probabilities": 0}
    assert "loss_dense_clip" not in trainer.storage.latest() and "loss_ce" in trainer.storage.latest()
    if semi_supervised:
        assert all("dense_clip_label" not in s for s in trainer.teacher.last_pseudo_labels.samples)


def test_on_adds_the_weighted_loss_without_an_extra_backbone_pass_or_teacher_gradient(tmp_path, monkeypatch):
    calls = count_calls(monkeypatch)
    passes = {}
    cfg = engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 2, "INPUT.UNLABELED.CUTMIX_PROB": 1.0,
                                  "SSL.DENSE_CLIP_GUIDANCE.ENABLED": True, "SSL.DENSE_CLIP_GUIDANCE.WEIGHT": 0.2,
                                  "SSL.DENSE_CLIP_GUIDANCE.THRESHOLD": 0.0})
    trainer = train(cfg, before_train=lambda t: passes.update(backbone=record_backbone_passes(t)))
    assert calls == {"dense_clip_logits": 2, "semantic_probabilities": 2}  # one teacher, one student call per step
    # Per step: the teacher's forward on 2 weak views + 2 CutMix partners, the student's on 2 + 2 crops.
    assert passes["backbone"] == [4, 4, 4, 4]
    history = trainer.storage.history("loss_dense_clip").values()
    assert len(history) == 2 and all(value > 0 for value, _ in history)
    samples = trainer.teacher.last_pseudo_labels.samples
    assert [s["dense_clip_weight"] for s in samples] == [pytest.approx(0.2 * (1 - 1 / 2))] * 2  # iteration 1 of T = 2
    for sample in samples:
        label = sample["dense_clip_label"]
        assert label.dtype == torch.int64 and label.shape == (16, 16) and not label.requires_grad
        assert ((label < 9) | (label == 255)).all()
    teacher, backbone = trainer.teacher.model, trainer.model.backbone
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters())

    # Outside a training step (pictures, benchmarks) the labels come without a weight, and the loss refuses them.
    outside = trainer.teacher.pseudo_label(trainer._trainer._next_batch()["unlabeled"])
    assert [s["dense_clip_weight"] for s in outside] == [None, None]
    with pytest.raises(ValueError, match="outside a training step"):
        dg.dense_guidance_losses({"pred_logits": torch.zeros(2, 1, 10), "pred_masks": torch.zeros(2, 1, 16, 16)}, outside)
