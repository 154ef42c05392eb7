"""Optimizer param groups, full-model gradient clipping, poly LR and precision settings."""
import copy

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from dearli.config import add_dearli_config
from dearli.engine.optim import (
    PolyParamScheduler,
    build_lr_scheduler,
    build_optimizer,
    optimizer_param_groups,
    with_full_model_clip,
)
from dearli.engine.precision import Precision, build_precision


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
        self.frozen = nn.Linear(3, 3).requires_grad_(False)
        self.head = nn.Linear(3, 2)
        self.norm = nn.GroupNorm(1, 2)
        self.queries = nn.Embedding(4, 3)
        self.tied = self.head  # the same parameters reachable twice

    def forward(self, x):
        return self.norm(self.head(self.backbone(x) + self.queries.weight[:1]))


def cfg_for(**solver):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.MAX_ITER = 10
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_param_groups_decay_lr_and_membership():
    model = Toy()
    groups = optimizer_param_groups(
        model, base_lr=1.0, weight_decay=0.05, weight_decay_norm=0.0, weight_decay_embed=0.01,
        backbone_multiplier=0.1,
    )
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 9  # frozen excluded, tied counted once
    assert (group_of(groups, model.head.weight)["weight_decay"], group_of(groups, model.head.weight)["lr"]) == (0.05, 1.0)
    assert group_of(groups, model.norm.weight)["weight_decay"] == 0.0
    assert group_of(groups, model.queries.weight)["weight_decay"] == 0.01
    backbone_norm = group_of(groups, model.backbone[1].weight)
    assert (backbone_norm["weight_decay"], backbone_norm["lr"]) == (0.0, pytest.approx(0.1))
    assert group_of(groups, model.backbone[0].weight)["lr"] == pytest.approx(0.1)


def set_grads(model, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            # uneven magnitudes: per-parameter clipping would give a different direction
            p.grad = torch.randn(p.shape, generator=generator) * (10.0 if p.dim() > 1 else 0.1)


@pytest.mark.parametrize("optimizer_type", [torch.optim.SGD, torch.optim.AdamW])
def test_full_model_clip_equals_clip_grad_norm(optimizer_type):
    model = Toy()
    reference = copy.deepcopy(model)
    set_grads(model, 0)
    set_grads(reference, 0)
    clipped = with_full_model_clip(optimizer_type, 0.01, 2.0)([p for p in model.parameters() if p.requires_grad], lr=0.1)
    plain = optimizer_type([p for p in reference.parameters() if p.requires_grad], lr=0.1)
    expected_norm = torch.nn.utils.clip_grad_norm_([p for p in reference.parameters() if p.requires_grad], 0.01)
    clipped.step()
    plain.step()
    assert float(clipped.last_grad_norm) == pytest.approx(float(expected_norm)) and expected_norm > 1.0
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_clip_sees_unscaled_gradients_with_grad_scaler():
    torch.manual_seed(0)
    model, reference = Toy(), None
    reference = copy.deepcopy(model)
    x = torch.randn(5, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    precision = Precision("cpu", None, scaler)
    optimizer = with_full_model_clip(torch.optim.SGD, 0.01, 2.0)([p for p in model.parameters() if p.requires_grad], lr=1.0)
    precision.backward(model(x).square().sum())
    precision.step(optimizer)
    reference(x).square().sum().backward()
    trainable = [p for p in reference.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(trainable, 0.01)
    torch.optim.SGD(trainable, lr=1.0).step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert precision.state_dict()["scale"] == 1024.0


def test_build_optimizer_from_config():
    optimizer = build_optimizer(cfg_for(), Toy())
    assert isinstance(optimizer, torch.optim.AdamW) and type(optimizer).__name__ == "AdamWWithFullModelClip"
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.05, 0.0}
    assert build_optimizer(cfg_for(**{"OPTIMIZER": "SGD"}), Toy()).defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='LAMB'"):
        build_optimizer(cfg_for(OPTIMIZER="LAMB"), Toy())


def lrs_over(cfg, steps):
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_poly_lr_follows_formula():
    values = lrs_over(cfg_for(BASE_LR=1e-4), 10)
    expected = [1e-4 * (1 - it / 10) ** 0.9 for it in range(10)]
    assert values == pytest.approx(expected, rel=1e-12)


def test_poly_lr_constant_ending_and_warmup():
    floor = lrs_over(cfg_for(BASE_LR=1.0, POLY_LR_CONSTANT_ENDING=0.5), 10)
    assert floor == pytest.approx([max((1 - it / 10) ** 0.9, 0.5) for it in range(10)])
    warm = lrs_over(cfg_for(BASE_LR=1.0, WARMUP_ITERS=2, WARMUP_FACTOR=0.1), 3)
    end_of_warmup = (1 - 0.2) ** 0.9
    assert warm == pytest.approx([0.1, 0.1 + 0.5 * (end_of_warmup - 0.1), end_of_warmup])
    assert PolyParamScheduler(1.0)(1.5) == 0.0
    with pytest.raises(ValueError, match="POLY_LR_POWER"):
        PolyParamScheduler(0.0)


def test_scheduler_state_is_plain_and_resumes():
    cfg = cfg_for(BASE_LR=1.0)
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state == {"base_lrs": [1.0], "last_epoch": 4}
    fresh_optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    fresh = build_lr_scheduler(cfg, fresh_optimizer)
    fresh.load_state_dict(state)
    fresh_optimizer.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_precision_cpu_is_fp32_and_bad_value_is_named():
    cfg = cfg_for()
    cfg.SOLVER.AMP.ENABLED = True
    precision = build_precision(cfg)
    assert precision.name == "fp32" and precision.scaler is None
    with precision.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    cfg.SOLVER.AMP.PRECISION = "fp8"
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION='fp8'"):
        build_precision(cfg)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_follows_the_config_on_cuda_only(tf32):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        _check_tf32(tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _check_tf32(tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    cfg = cfg_for()
    cfg.SOLVER.AMP.TF32 = tf32
    build_precision(cfg)  # a CPU run leaves the CUDA flags alone
    assert torch.backends.cuda.matmul.allow_tf32 is (not tf32) and torch.backends.cudnn.allow_tf32 is (not tf32)
    cfg.MODEL.DEVICE = "cuda"  # AMP off: no CUDA call is made, only the flags are set
    assert build_precision(cfg).name == "fp32"
    assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
