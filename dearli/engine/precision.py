"""Numeric precision of a training step: fp32, or bf16 / fp16 autocast on GPU.

Detectron2 0.6's ``AMPTrainer`` is CUDA-only fp16 with a grad scaler, and the reference's
semi-supervised runner silently trains in fp32 although its configs enable AMP (dearli_method.md
§6 B1). Here ``SOLVER.AMP.ENABLED`` + ``SOLVER.AMP.PRECISION`` choose explicitly:

* ``bf16``: autocast to bfloat16, no scaler (bf16 has fp32's exponent range);
* ``fp16``: autocast to float16 with a ``GradScaler`` (its state is checkpointed);
* CPU (or AMP disabled): plain fp32, always.

The same autocast wraps the teacher's pseudo-labelling and the student's forward. Numerically
sensitive parts (deformable sampling, mask pooling, matching, losses) switch autocast off inside
the model.
"""
import contextlib
import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast context, backward and optimizer step for one precision setting.

    Args:
        device_type: "cpu" or "cuda".
        dtype: autocast dtype, or None for fp32.
        scaler: a ``torch.amp.GradScaler`` (fp16 only) or None.
    """

    def __init__(self, device_type: str, dtype: Optional[torch.dtype] = None, scaler=None):
        self.device_type = device_type
        self.dtype = dtype
        self.scaler = scaler

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """The autocast context of this precision (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step; with a scaler, gradients are unscaled first and inf/NaN steps skipped."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA float32 matmuls and cuDNN convolutions (SOLVER.AMP.TF32); process-wide flags."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def build_precision(cfg) -> Precision:
    """The :class:`Precision` of ``SOLVER.AMP`` on ``MODEL.DEVICE``."""
    amp = cfg.SOLVER.AMP
    if amp.PRECISION not in PRECISION_DTYPES:
        raise ValueError(f"SOLVER.AMP.PRECISION={amp.PRECISION!r}; expected one of {sorted(PRECISION_DTYPES)}")
    device_type = torch.device(cfg.MODEL.DEVICE).type
    if device_type == "cuda":
        set_tf32(amp.TF32)
    if not amp.ENABLED:
        return Precision(device_type)
    if device_type == "cpu":
        logger.info("SOLVER.AMP.ENABLED is ignored on CPU: training runs in fp32")
        return Precision(device_type)
    if device_type != "cuda":
        raise ValueError(f"SOLVER.AMP is supported on CUDA only, MODEL.DEVICE={cfg.MODEL.DEVICE!r}")
    if amp.PRECISION == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("SOLVER.AMP.PRECISION='bf16' but this GPU has no bf16 support; use 'fp16'")
    scaler = torch.amp.GradScaler("cuda") if amp.PRECISION == "fp16" else None
    return Precision(device_type, PRECISION_DTYPES[amp.PRECISION], scaler)
