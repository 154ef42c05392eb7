"""Training and inference engine: the semi-supervised trainer, its teacher hook, optimizer,
precision, launcher and the inference predictor.

Not imported by ``import dearli`` (registration needs only data and modeling); tools import it.
"""
from .trainer import DEARLiTrainer, build_evaluator  # noqa: F401
from .hooks import SemiSupervisedHook  # noqa: F401
from .launch import create_ddp_model, launch  # noqa: F401
from .optim import build_lr_scheduler, build_optimizer  # noqa: F401
from .precision import build_precision  # noqa: F401
from .predictor import DEARLiPredictor  # noqa: F401
