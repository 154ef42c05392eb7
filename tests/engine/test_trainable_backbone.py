"""MODEL.OPEN_CLIP.FREEZE False (configs/camvid/tiny_capacity.yaml): one training step moves the
student's ConvNeXt trunk at BACKBONE_MULTIPLIER x the base LR, the EMA teacher follows it with its
own copy, and the text tower stays put; with FREEZE True the trunk never moves and is shared."""
import pytest
import torch
from helpers.engine_setup import engine_cfg, train

TRUNK = "clip_model.visual.trunk."
TEXT = "clip_model.transformer."  # the text tower, frozen in both settings
DECAY = 0.9


def backbone_state(model):
    return {name: tensor.detach().clone() for name, tensor in model.backbone.state_dict().items()}


def one_step(tmp_path, freeze):
    cfg = engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1, "MODEL.OPEN_CLIP.FREEZE": freeze,
                                  "SOLVER.BACKBONE_MULTIPLIER": 0.5,
                                  "MODEL.TEACHER.EMA_DECAY": DECAY, "MODEL.TEACHER.EMA_RAMP": "off"})
    before = {}
    trainer = train(cfg, before_train=lambda t: before.update(backbone_state(t.model)))
    return trainer, before


def test_unfrozen_trunk_trains_and_the_ema_teacher_follows_it(tmp_path):
    trainer, before = one_step(tmp_path, freeze=False)
    student, teacher = trainer.model, trainer.teacher.model
    after = backbone_state(student)
    trunk = [n for n in after if n.startswith(TRUNK + "stem.") or n.startswith(TRUNK + "stages.")]
    params = dict(student.backbone.named_parameters())
    assert all(params[n].grad is not None and params[n].grad.abs().max() > 0 for n in trunk)
    # Every trunk tensor moved, except the blocks' LayerNorm weights: ConvNeXt scales each residual
    # branch by a layer scale initialised at 1e-6, so their first gradients (~1e-12) give AdamW
    # steps below float32 resolution at 1.0.
    unmoved = [n for n in trunk if torch.equal(after[n], before[n])]
    assert all(".blocks." in n and n.endswith(".norm.weight") for n in unmoved)
    assert all(torch.equal(after[n], before[n]) for n in after if n.startswith(TEXT))
    # The teacher owns its trunk (not the student's tensors) and took one EMA step towards it.
    assert teacher.backbone is not student.backbone
    teacher_state = teacher.backbone.state_dict()
    for name in trunk:
        assert teacher_state[name].data_ptr() != after[name].data_ptr()
        torch.testing.assert_close(teacher_state[name], DECAY * before[name] + (1 - DECAY) * after[name])
    # Modes: the student's trunk trains, the teacher's does not; the trunk is optimised at 0.5 x LR.
    assert student.backbone.clip_model.visual.trunk.training and not teacher.backbone.training
    trunk_params = {id(p) for n, p in student.backbone.named_parameters() if n.startswith(TRUNK + "stem.")}
    groups = [g for g in trainer.optimizer.param_groups if trunk_params & {id(p) for p in g["params"]}]
    base_lr = trainer.cfg.SOLVER.BASE_LR
    assert groups and all(g["initial_lr"] == pytest.approx(0.5 * base_lr) for g in groups)


def test_frozen_trunk_does_not_move_and_is_shared_with_the_teacher(tmp_path):
    trainer, before = one_step(tmp_path, freeze=True)
    after = backbone_state(trainer.model)
    assert all(torch.equal(after[n], before[n]) for n in after)
    assert trainer.teacher.model.backbone is trainer.model.backbone
    assert not trainer.model.backbone.clip_model.training
