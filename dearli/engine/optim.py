"""Optimizer and LR schedule of dearli (the warm-up and the semi-supervised stage share them).

* AdamW (or SGD) over the trainable parameters only (the frozen CLIP has none), with weight decay
  ``SOLVER.WEIGHT_DECAY`` except on normalisation layers (``WEIGHT_DECAY_NORM``) and
  ``nn.Embedding`` weights (``WEIGHT_DECAY_EMBED``: queries, level embeddings, void embedding);
  backbone parameters get ``BACKBONE_MULTIPLIER`` x the base LR.
* Full-model gradient-norm clipping (``CLIP_TYPE: full_model``): Detectron2 0.6 only clips each
  parameter separately, so the optimizer class built here clips the global norm of all its
  gradients in ``step()``. A GradScaler unscales gradients before it calls ``step()``, so the clip
  always sees unscaled gradients.
* ``WarmupPolyLR``: ``lr = base * max((1 - it / MAX_ITER) ** POWER, CONSTANT_ENDING)`` (with an
  optional warm-up) as a Detectron2 ``LRMultiplier``, whose state is plain numbers.
"""
import logging
from typing import Dict, List, Type

import torch
from detectron2.solver import build_lr_scheduler as build_detectron2_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler
from torch import nn

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
OPTIMIZERS = ("ADAMW", "SGD")


def optimizer_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> List[Dict]:
    """One param group per (lr, weight decay) pair over the trainable parameters of ``model``.

    A parameter shared by several modules is counted once, with the first module that owns it.
    """
    seen = set()
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            lr = base_lr * backbone_multiplier if _is_backbone(full_name) else base_lr
            groups.setdefault((lr, decay), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters; nothing to optimise")
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def _is_backbone(name: str) -> bool:
    while name.startswith("module."):
        name = name[len("module."):]
    return name.startswith("backbone.")


def with_full_model_clip(optimizer_type: Type[torch.optim.Optimizer], clip_value: float, norm_type: float):
    """A subclass of ``optimizer_type`` whose ``step`` first clips the global gradient norm.

    The norm before clipping is kept in ``last_grad_norm`` (telemetry).
    """
    if clip_value <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {clip_value}")

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type, foreach=True)
        return optimizer_type.step(self, closure)

    return type(optimizer_type.__name__ + "WithFullModelClip", (optimizer_type,), {"step": step})


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``SOLVER.*`` for the trainable parameters of ``model``."""
    solver = cfg.SOLVER
    name = solver.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r}; expected one of {OPTIMIZERS}")
    groups = optimizer_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    # foreach: a few multi-tensor kernels per step instead of several per parameter (the CUDA
    # default, made explicit so CPU runs the same code); not fused, whose grad-scaler protocol
    # would hand the full-model clip scaled gradients.
    if name == "ADAMW":
        optimizer_type, kwargs = torch.optim.AdamW, {"lr": solver.BASE_LR, "foreach": True}
    else:
        optimizer_type, kwargs = torch.optim.SGD, {"lr": solver.BASE_LR, "momentum": solver.MOMENTUM, "foreach": True}
    return _with_clipping(cfg, optimizer_type)(groups, **kwargs)


def _with_clipping(cfg, optimizer_type):
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return optimizer_type
    if clip.CLIP_TYPE == "full_model":
        return with_full_model_clip(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    # "value" / "norm": Detectron2's per-parameter clipping.
    return maybe_add_gradient_clipping(cfg, optimizer_type)


class PolyParamScheduler(ParamScheduler):
    """Multiplier ``max((1 - where) ** power, constant_ending)`` for ``where`` in [0, 1]."""

    def __init__(self, power: float, constant_ending: float = 0.0):
        if power <= 0:
            raise ValueError(f"SOLVER.POLY_LR_POWER must be > 0, got {power}")
        if not 0.0 <= constant_ending <= 1.0:
            raise ValueError(f"SOLVER.POLY_LR_CONSTANT_ENDING must lie in [0, 1], got {constant_ending}")
        self.power = power
        self.constant_ending = constant_ending

    def __call__(self, where: float) -> float:
        return max((1.0 - min(where, 1.0)) ** self.power, self.constant_ending)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """``WarmupPolyLR`` (dearli) or any scheduler Detectron2 knows (``SOLVER.LR_SCHEDULER_NAME``)."""
    solver = cfg.SOLVER
    if solver.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_detectron2_lr_scheduler(cfg, optimizer)
    if solver.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be > 0 for WarmupPolyLR, got {solver.MAX_ITER}")
    multiplier = PolyParamScheduler(solver.POLY_LR_POWER, solver.POLY_LR_CONSTANT_ENDING)
    if solver.WARMUP_ITERS > 0:
        multiplier = WarmupParamScheduler(
            multiplier,
            solver.WARMUP_FACTOR,
            min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
            solver.WARMUP_METHOD,
        )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=solver.MAX_ITER)
