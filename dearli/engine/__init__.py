"""Training and inference engine: the semi-supervised trainer, its mean teacher and hooks,
optimizer, precision, launcher and the inference predictor.

Not imported by ``import dearli`` (registration needs only data and modeling); tools import it.
"""
from .trainer import DEARLiTrainer, build_evaluator  # noqa: F401
from .teacher import MeanTeacher  # noqa: F401
from .hooks import PeakMemory, PseudoLabelTelemetry  # noqa: F401
from .launch import create_ddp_model, launch  # noqa: F401
from .optim import build_lr_scheduler, build_optimizer  # noqa: F401
from .precision import build_precision  # noqa: F401
from .predictor import DEARLiPredictor  # noqa: F401
