"""Exponential moving average of the student into the teacher, paired by tensor name.

The reference pairs tensors with ``zip(teacher.parameters(), student.parameters())``, which works
only while both models register their modules in the same order (dearli_method.md §6 B8). Here
tensors are matched by name (``module.`` prefixes of DDP / DataParallel stripped) and the pairing
is checked once, at construction:

* floating-point tensors the student trains (parameters with ``requires_grad``) and its floating
  buffers are averaged: ``teacher <- d * teacher + (1 - d) * student``;
* integer / bool buffers (counters, masks) are copied;
* tensors the teacher shares with the student (the one frozen CLIP) are skipped: averaging a
  tensor with itself is a no-op that would only cost time;
* frozen student parameters that are not shared stay the teacher's own (e.g. a separately loaded
  teacher backbone).
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

EMA_RAMP_MODES = ("auto", "on", "off")


def strip_wrapper_prefix(name: str) -> str:
    """``name`` without leading ``module.`` prefixes (DistributedDataParallel, DataParallel)."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers (the model itself otherwise)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def ema_decay(iteration: int, decay: float, ramp: bool) -> float:
    """Decay used after optimizer step ``iteration`` (0-based).

    With ``ramp`` the decay is ``min(1 - 1/(t+1), decay)``: a plain copy at t = 0, then a running
    mean of all student states so far, capped at ``decay`` (the reference rule when the teacher
    starts from scratch). Without it the decay is constant.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"MODEL.TEACHER.EMA_DECAY must lie in [0, 1], got {decay}")
    if iteration < 0:
        raise ValueError(f"EMA iteration must be >= 0, got {iteration}")
    if not ramp:
        return float(decay)
    return min(1.0 - 1.0 / (iteration + 1), float(decay))


def resolve_ema_ramp(mode: str, teacher_weights: str) -> bool:
    """Whether to ramp the decay: MODEL.TEACHER.EMA_RAMP "on"/"off", or "auto" = no teacher weights."""
    if mode not in EMA_RAMP_MODES:
        raise ValueError(f"MODEL.TEACHER.EMA_RAMP={mode!r}; expected one of {EMA_RAMP_MODES}")
    if mode == "auto":
        return not teacher_weights
    return mode == "on"


def _named_state(model: nn.Module) -> Dict[str, Tuple[torch.Tensor, bool]]:
    """name -> (tensor, whether the EMA follows it: trainable parameters and all buffers)."""
    state = {}
    for name, param in model.named_parameters():
        state[strip_wrapper_prefix(name)] = (param, param.requires_grad)
    for name, buf in model.named_buffers():
        state[strip_wrapper_prefix(name)] = (buf, True)
    return state


class ModelEMA:
    """Name-paired EMA from ``student`` into ``teacher``; the pairing is computed once.

    Args:
        teacher, student: modules with the same tensor names (wrappers allowed on either).

    Attributes:
        averaged_names, copied_names: followed tensors (floating / integer).
        shared_names: every tensor name the two models share storage for (never touched).

    Raises:
        KeyError: a tensor the EMA should follow exists in the student but not in the teacher.
        ValueError: paired tensors differ in shape or dtype.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module):
        teacher_state = _named_state(teacher)
        student_state = _named_state(student)
        self.shared_names: List[str] = [
            name for name, (tensor, _) in student_state.items()
            if name in teacher_state and _same_storage(teacher_state[name][0], tensor)
        ]
        shared = set(self.shared_names)
        self.averaged_names: List[str] = []
        self.copied_names: List[str] = []
        self._teacher_float, self._student_float = [], []
        self._teacher_other, self._student_other = [], []
        for name, (student_tensor, follow) in student_state.items():
            if not follow or name in shared:
                continue
            if name not in teacher_state:
                raise KeyError(
                    f"EMA: the student's tensor {name!r} has no counterpart in the teacher; "
                    "teacher and student must be built from the same architecture"
                )
            teacher_tensor = teacher_state[name][0]
            self._check_pair(name, teacher_tensor, student_tensor)
            if student_tensor.is_floating_point():
                self.averaged_names.append(name)
                self._teacher_float.append(teacher_tensor)
                self._student_float.append(student_tensor)
            else:
                self.copied_names.append(name)
                self._teacher_other.append(teacher_tensor)
                self._student_other.append(student_tensor)

    @staticmethod
    def _check_pair(name: str, teacher_tensor: torch.Tensor, student_tensor: torch.Tensor) -> None:
        if teacher_tensor.shape != student_tensor.shape or teacher_tensor.dtype != student_tensor.dtype:
            raise ValueError(
                f"EMA: tensor {name!r} is {tuple(teacher_tensor.shape)} {teacher_tensor.dtype} in the "
                f"teacher but {tuple(student_tensor.shape)} {student_tensor.dtype} in the student"
            )

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``teacher <- decay * teacher + (1 - decay) * student`` on the averaged tensors; copy the rest."""
        if self._teacher_float:
            # lerp(t, s, w) = t + w (s - t) = (1 - w) t + w s, one fused kernel per tensor group.
            torch._foreach_lerp_(self._teacher_float, self._student_float, 1.0 - decay)
        for teacher_tensor, student_tensor in zip(self._teacher_other, self._student_other):
            teacher_tensor.copy_(student_tensor)

    @torch.no_grad()
    def copy_student(self) -> None:
        """Make every followed teacher tensor equal to the student's (decay 0)."""
        for teacher_tensor, student_tensor in zip(
            self._teacher_float + self._teacher_other, self._student_float + self._student_other
        ):
            teacher_tensor.copy_(student_tensor)


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    return a.device == b.device and a.numel() > 0 and a.data_ptr() == b.data_ptr()
