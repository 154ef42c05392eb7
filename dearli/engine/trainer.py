"""DEARLi's trainer: a thin Detectron2 ``DefaultTrainer`` with a semi-supervised step.

What differs from ``DefaultTrainer`` and why:

* the step (:class:`SemiSupervisedStep`) is the method on one screen: fetch, the
  :class:`~dearli.engine.teacher.MeanTeacher` pseudo-labels the unlabeled images (inside the same
  autocast, with its own timer, so teacher time is not logged as data time), student losses
  (checked on every rank before backward), backward, optimizer step, EMA update of the teacher;
* the train loader is built lazily at the first step, at the trainer's iteration: Detectron2 0.6's
  ``SimpleTrainer`` iterates its loader at construction, before ``resume_or_load`` knows where a
  resumed run starts;
* precision (fp32 / bf16 / fp16) comes from :mod:`dearli.engine.precision`, DDP from
  :mod:`dearli.engine.launch` (CPU processes work), optimizer and LR from :mod:`dearli.engine.optim`;
* the checkpointer writes atomically and also holds the teacher and the RNG state; periodic
  evaluation covers student and teacher.
"""
import functools
import logging
import time
import weakref
from collections import OrderedDict

import torch
import torch.distributed as dist
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import (
    DatasetEvaluator, DatasetEvaluators, SemSegEvaluator, inference_on_dataset, print_csv_format,
)
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..data.datasets.from_config import register_config_datasets
from ..data.mappers.test_time import TestImageMapper
from ..data.sampling import build_train_loader, check_registered, check_unlabeled_data, seed_of
from ..evaluation import CheckedSemSegEvaluator, build_panoptic_evaluator
from . import optim
from .hooks import PeakMemory, PseudoLabelTelemetry
from .launch import create_ddp_model
from .precision import build_precision
from .pseudo_label_quality import PseudoLabelQuality
from .state import GlobalRNGState, TrainingCheckpointer, reseed_global_rngs, seed_model_init
from .teacher import MeanTeacher

logger = logging.getLogger(__name__)


def check_training_data(cfg) -> None:
    """Fail early, naming the key, on no or unregistered datasets, or SSL without unlabeled data."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: training needs at least one labeled dataset name")
    check_registered("DATASETS.TRAIN", cfg.DATASETS.TRAIN)
    check_registered("DATASETS.TRAIN_UNLABELED", cfg.DATASETS.TRAIN_UNLABELED)
    check_unlabeled_data(cfg)


def stop_if_not_finite(loss_dict, iteration: int) -> None:
    """Raise FloatingPointError on *every* process when any process has a non-finite loss.

    The flag is all-reduced before backward, so no process is left waiting in DDP's gradient
    all-reduce (Detectron2 0.6 raises on the main process only, after backward).
    """
    values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
    local_bad = [name for name, finite in zip(loss_dict, torch.isfinite(values).tolist()) if not finite]
    if comm.get_world_size() == 1:
        reports = [local_bad]
    else:
        flag = torch.tensor([float(len(local_bad))], device=values.device)
        dist.all_reduce(flag)
        if flag.item() == 0:
            return
        reports = comm.all_gather(local_bad)
    if any(reports):
        where = "; ".join(f"rank {rank}: {', '.join(names)}" for rank, names in enumerate(reports) if names)
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration} ({where}); training stopped on every process "
            "before the optimizer step, so the last checkpoint is the last good state"
        )


def losses_on_host(loss_dict):
    """The losses as 0-dim CPU tensors, from one device-to-host copy: the finite check and the
    metrics read these instead of waiting for the device once per loss."""
    values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).cpu()
    return dict(zip(loss_dict, values.unbind()))


class SemiSupervisedStep(SimpleTrainer):
    """One optimizer step: batch -> teacher pseudo-labels -> student losses -> checks -> backward
    -> step -> teacher EMA update.

    Args:
        model: the student (possibly DDP-wrapped).
        loader_factory: ``loader_factory(start_iter=...)`` -> iterable of
            ``{"labeled": [...], "unlabeled": [...]}``; called at the first step.
        optimizer: its ``step`` clips gradients when configured (see :mod:`.optim`).
        teacher: the :class:`~dearli.engine.teacher.MeanTeacher` of ``model``.
        semi_supervised: SSL.ENABLED: the student also trains on the teacher's pseudo-labels.
        precision: :class:`~dearli.engine.precision.Precision`.
        seed: base seed of the per-step reseeding of the global generators.
        clock: time source of the logged ``*_time`` scalars (tests pass a fake one).
    """

    def __init__(self, model, loader_factory, optimizer, *, teacher, semi_supervised: bool, precision,
                 seed: int, clock=time.perf_counter):
        TrainerBase.__init__(self)  # not SimpleTrainer.__init__: it would iterate the loader now
        model.train()
        self.model = model
        self.optimizer = optimizer
        self.data_loader = None
        self._loader_factory = loader_factory
        self._loader_iter = None
        self.teacher = teacher
        self.semi_supervised = semi_supervised
        self.precision = precision
        self.seed = seed
        self.clock = clock

    def _next_batch(self):
        if self._loader_iter is None:
            self.data_loader = self._loader_factory(start_iter=self.iter)
            self._loader_iter = iter(self.data_loader)
        return next(self._loader_iter)

    def _now(self) -> float:
        if self.precision.device_type == "cuda":
            torch.cuda.synchronize()
        return self.clock()

    def run_step(self):
        assert self.model.training, "[SemiSupervisedStep] model was changed to eval mode!"
        reseed_global_rngs(self.seed, self.iter, comm.get_rank())
        start = self._now()
        batch = self._next_batch()
        data_time = self._now() - start
        with self.precision.autocast():
            teacher_start = self._now()
            inputs = batch["labeled"]
            if self.semi_supervised:
                inputs = {"labeled": inputs, "pseudo_labeled": self.teacher.pseudo_label(batch["unlabeled"])}
            student_start = self._now()
            loss_dict = self.model(inputs)
        host_losses = losses_on_host(loss_dict)
        stop_if_not_finite(host_losses, self.iter)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(losses)
        self._write_metrics(host_losses, data_time)
        self.precision.step(self.optimizer)
        self.teacher.update(self.iter)  # before the hooks: a checkpoint at k holds EMA update k
        storage = get_event_storage()
        storage.put_scalars(teacher_time=student_start - teacher_start, student_time=self._now() - student_start)
        grad_norm = getattr(self.optimizer, "last_grad_norm", None)
        if grad_norm is not None:
            storage.put_scalar("grad_norm", float(grad_norm))

    def state_dict(self):
        state = super().state_dict()
        state["grad_scaler"] = self.precision.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.precision.load_state_dict(state_dict.get("grad_scaler", {}))


class DEARLiTrainer(DefaultTrainer):
    """``DefaultTrainer`` for DEARLi (supervised-only, DEAR and DEARLi runs alike)."""

    def __init__(self, cfg, clock=time.perf_counter):
        TrainerBase.__init__(self)  # DefaultTrainer.__init__ builds an eager loader and a CUDA-only DDP
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        register_config_datasets(cfg)
        check_training_data(cfg)
        seed = seed_of(cfg)  # the data sampler's reading of SEED (SEED < 0 is a fixed seed too)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        model = create_ddp_model(model, broadcast_buffers=False)
        self.teacher = MeanTeacher(cfg, model)  # copied from the DDP-broadcast student
        self._trainer = SemiSupervisedStep(
            model, functools.partial(self.build_train_loader, cfg), optimizer, teacher=self.teacher,
            semi_supervised=cfg.SSL.ENABLED, precision=build_precision(cfg), seed=seed, clock=clock,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = TrainingCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self), allow_unsafe_pickle=cfg.MODEL.ALLOW_UNSAFE_PICKLE,
            teacher=self.teacher, rng=GlobalRNGState(),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Resume (student, teacher, optimizer, scheduler, scaler, RNG, iteration) from
        ``last_checkpoint``, or load MODEL.WEIGHTS into the student and initialise the teacher."""
        super().resume_or_load(resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            self.teacher.initialize()

    def state_dict(self):
        # Detectron2 0.6's DefaultTrainer saves only the iteration and hook states; the step
        # runner holds the optimizer and the grad scaler.
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        return state

    def train(self):
        """Train from ``start_iter`` to ``max_iter``; return the last evaluation's results (as
        :meth:`evaluate_student_and_teacher` gives them), or ``{}`` when no evaluation ran.

        Detectron2 0.6 returns them only when TEST.EXPECTED_RESULTS is set; callers (train_net,
        the comparison protocol) need them without reading a private attribute.
        """
        super().train()
        return getattr(self, "_last_eval_results", {})

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" not in state_dict:
            raise KeyError("the checkpoint's trainer state has no optimizer ('_trainer'); it was not written "
                           "by DEARLiTrainer, so it cannot be resumed (load it as MODEL.WEIGHTS instead)")
        self._trainer.load_state_dict(state_dict["_trainer"])

    def build_hooks(self):
        cfg = self.cfg
        device_type = torch.device(cfg.MODEL.DEVICE).type
        ret = [hooks.IterationTimer(), PseudoLabelTelemetry(cfg, self.teacher), PeakMemory(device_type), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self.evaluate_student_and_teacher))
        if cfg.SSL.PSEUDO_QUALITY_IMAGES > 0 and comm.is_main_process():  # after EvalHook, before the writer
            ret.append(PseudoLabelQuality(cfg, self.teacher))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def evaluate_student_and_teacher(self):
        """Student results at the top level (Detectron2 convention), the teacher's under "teacher"."""
        results = self.test(self.cfg, self.model, model_name="student")
        if self.cfg.MODEL.TEACHER.EVALUATE:
            results = OrderedDict(results)
            results["teacher"] = self.test(self.cfg, self.teacher.model, model_name="teacher")
        self._last_eval_results = results
        return results

    @classmethod
    def build_model(cls, cfg):
        """The model, built from seeded generators: a random CLIP (tiny test / demo configs) is
        not stored in checkpoints, so every process and every later evaluation must build the
        same one."""
        register_config_datasets(cfg)  # the model reads the classes of DATASETS.TRAIN[0]
        seed_model_init(seed_of(cfg))
        return super().build_model(cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None, model_name="student"):
        """``DefaultTrainer.test`` with each dataset's results logged under ``model_name`` (student
        and teacher results would otherwise carry identical headers). Returns the results of the one
        dataset of DATASETS.TEST, or {dataset: results} for several (Detectron2's convention)."""
        register_config_datasets(cfg)
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} DATASETS.TEST entries")
        results = OrderedDict()
        for index, dataset_name in enumerate(cfg.DATASETS.TEST):
            evaluator = evaluators[index] if evaluators is not None else cls.build_evaluator(cfg, dataset_name)
            logger.info("Evaluating the %s on %s", model_name, dataset_name)
            results[dataset_name] = inference_on_dataset(model, cls.build_test_loader(cfg, dataset_name), evaluator)
            if comm.is_main_process():
                logger.info("Evaluation results of the %s on %s in csv format:", model_name, dataset_name)
                print_csv_format(results[dataset_name])
        return list(results.values())[0] if len(results) == 1 else results

    @classmethod
    def build_optimizer(cls, cfg, model):
        return optim.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return optim.build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        return build_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with dearli's image reader (16-bit images scaled, not clipped)."""
        register_config_datasets(cfg)
        return build_detection_test_loader(cfg, dataset_name, mapper=TestImageMapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


def build_evaluator(cfg, dataset_name, output_folder=None):
    """PQ/SQ/RQ (per class too) and mIoU evaluators for ``dataset_name``.

    Semantic-only datasets are registered with all-stuff panoptic ground truth, so they get PQ
    with every class as stuff next to mIoU.
    """
    if cfg.TEST.AUG.ENABLED:
        raise NotImplementedError("TEST.AUG.ENABLED: test-time augmentation is not implemented (nor in the reference)")
    register_config_datasets(cfg)
    records = DatasetCatalog.get(dataset_name)  # some registrations fill their metadata on load
    metadata = MetadataCatalog.get(dataset_name)
    test_cfg = cfg.MODEL.MASK_FORMER.TEST
    evaluators = []
    if test_cfg.PANOPTIC_ON and metadata.get("panoptic_json", None):
        evaluators.append(build_panoptic_evaluator(dataset_name, output_folder))
    if test_cfg.SEMANTIC_ON and records and "sem_seg_file_name" in records[0]:
        evaluators.append(CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    if not evaluators:
        raise ValueError(
            f"no evaluator for {dataset_name!r} (evaluator_type={metadata.get('evaluator_type', None)!r}): "
            "it has neither panoptic_json (PQ) nor sem_seg_file_name records (mIoU), or "
            "MODEL.MASK_FORMER.TEST.PANOPTIC_ON and SEMANTIC_ON are both off"
        )
    return DatasetEvaluators(evaluators)
