"""The semi-supervised hook: it owns the EMA teacher, makes pseudo-labels and logs telemetry.

Detectron2 0.6 hooks never see the batch, so the work is split:

* the step runner (:mod:`dearli.engine.trainer`) calls :meth:`SemiSupervisedHook.student_inputs`
  between the data fetch and the student forward: the teacher labels the weak views (its own
  timer), the pseudo-labels are CutMixed and handed to the student with the strong views;
* :meth:`SemiSupervisedHook.after_step` updates the teacher by EMA after every optimizer step.
  Registered before PeriodicCheckpointer and EvalHook, a checkpoint or evaluation at iteration k
  sees the teacher after update k.

The teacher exists in every run (also supervised-only ones, whose EMA teacher is evaluated for
comparison); pseudo-labels are made only with SSL.ENABLED.
"""
import copy
import logging
import os
import resource
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from ..modeling.checkpoint import DEARLiCheckpointer
from ..utils.atomic_io import atomic_write_json
from .ema import ModelEMA, ema_decay, resolve_ema_ramp, unwrap_model
from .pseudo_labels import build_pseudo_labeled_sample, label_from_prediction, pseudo_label_statistics
from .visualization import draw_panoptic

logger = logging.getLogger(__name__)


def build_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that shares its frozen CLIP; always in eval mode, never trained.

    A fully frozen backbone is shared as one module; with a (partly) trainable backbone only its
    frozen parameters are shared and the rest is copied.
    """
    student = unwrap_model(student)
    backbone = getattr(student, "backbone", None)
    memo = {}
    if backbone is not None:
        if not any(p.requires_grad for p in backbone.parameters()):
            memo[id(backbone)] = backbone
        else:
            memo.update({id(p): p for p in backbone.parameters() if not p.requires_grad})
    teacher = copy.deepcopy(student, memo)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher.eval()


class TeacherCheckpointable:
    """The teacher as a checkpointer entry: its state dict (the backbone leaves a frozen CLIP out),
    loaded strictly against the teacher's own state-dict keys."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    def state_dict(self) -> Dict:
        return self.teacher.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        expected = set(self.teacher.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"teacher state in the checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        self.teacher.load_state_dict(state)


def read_teacher_state(path: str) -> Dict[str, torch.Tensor]:
    """The teacher's state dict stored in a training checkpoint written by DEARLiTrainer."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "teacher" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise KeyError(f"{path} holds no teacher (entries: {found}); pass a training checkpoint written by "
                       "DEARLiTrainer (OUTPUT_DIR/model_*.pth), or an exported teacher as MODEL.WEIGHTS")
    return checkpoint["teacher"]


def peak_memory_mb(device_type: str) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class SemiSupervisedHook(HookBase):
    """Owns the teacher; pseudo-labels unlabeled batches; EMA after every step; telemetry.

    Args:
        cfg: the config (MODEL.TEACHER.*, SSL.*, MODEL.MASK_FORMER.* thresholds and weighting).
        student: the student (DDP-wrapped or not), already broadcast across processes.
    """

    def __init__(self, cfg, student: nn.Module):
        self.student = unwrap_model(student)
        self.teacher = build_teacher(self.student)
        self.ema = ModelEMA(self.teacher, self.student)
        teacher_cfg, test_cfg = cfg.MODEL.TEACHER, cfg.MODEL.MASK_FORMER.TEST
        self.ssl_enabled = cfg.SSL.ENABLED
        self.teacher_weights = teacher_cfg.WEIGHTS
        self.decay = teacher_cfg.EMA_DECAY
        self.ramp = resolve_ema_ramp(teacher_cfg.EMA_RAMP, teacher_cfg.WEIGHTS)
        ema_decay(0, self.decay, self.ramp)  # validates EMA_DECAY now rather than after step 0
        self.zero_shot = teacher_cfg.ZERO_SHOT_ENABLED
        self.object_threshold = _teacher_threshold(teacher_cfg.OBJECT_MASK_THRESHOLD, test_cfg.OBJECT_MASK_THRESHOLD)
        self.overlap_threshold = _teacher_threshold(teacher_cfg.OVERLAP_THRESHOLD, test_cfg.OVERLAP_THRESHOLD)
        self.min_area = teacher_cfg.MIN_SEGMENT_AREA
        self.restrict_to_valid = cfg.MODEL.MASK_FORMER.IGNORE_PADDING
        self.with_segment_weights = cfg.MODEL.MASK_FORMER.PSEUDO_CONFIDENCE_WEIGHTING == "segment_score"
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.vis_period, self.vis_images = cfg.SSL.VIS_PERIOD, cfg.SSL.VIS_IMAGES
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        self.device_type = torch.device(cfg.MODEL.DEVICE).type
        self.output_dir = cfg.OUTPUT_DIR
        self.class_counts = torch.zeros(self.num_classes, dtype=torch.int64)
        # (student samples, their labels, unlabeled samples, teacher labels) of the last batch,
        # for visualisations outside the training loop (the demo).
        self.last_pseudo_labels = None

    # ---- teacher initialisation ------------------------------------------------------------------

    def initialize_teacher(self) -> None:
        """Fresh run: load MODEL.TEACHER.WEIGHTS into the teacher, or copy the (loaded) student."""
        if self.teacher_weights:
            DEARLiCheckpointer(self.teacher, save_to_disk=False).load(self.teacher_weights, checkpointables=[])
            logger.info("Teacher initialised from MODEL.TEACHER.WEIGHTS=%s", self.teacher_weights)
        else:
            self.ema.copy_student()
            logger.info("Teacher initialised as a copy of the student")

    # ---- pseudo-labels (called by the step runner) ----------------------------------------------

    def student_inputs(self, batch: Dict[str, List[Dict]]):
        """Model input of one step: the labeled list, plus pseudo-labeled samples when SSL is on."""
        if not self.ssl_enabled:
            return batch["labeled"]
        return {"labeled": batch["labeled"], "pseudo_labeled": self.pseudo_label(batch["unlabeled"])}

    @torch.no_grad()
    def pseudo_label(self, unlabeled: List[Dict]) -> List[Dict]:
        """Teacher panoptic inference on the weak views (and CutMix partners), then CutMix targets."""
        if not unlabeled:
            return []
        partners = [i for i, s in enumerate(unlabeled) if s.get("cutmix") is not None]
        weak = [s["weak_image"] for s in unlabeled] + [unlabeled[i]["cutmix"]["weak_image"] for i in partners]
        predictions = self.teacher.predict_panoptic(
            weak, zero_shot=self.zero_shot, object_threshold=self.object_threshold,
            overlap_threshold=self.overlap_threshold,
        )
        labels = [label_from_prediction(seg, info) for seg, info in predictions]
        partner_label = dict(zip(partners, labels[len(unlabeled):]))
        samples, final_labels = [], []
        for i, sample in enumerate(unlabeled):
            student_sample, label = build_pseudo_labeled_sample(
                sample, labels[i], partner_label.get(i), min_area=self.min_area,
                restrict_to_valid=self.restrict_to_valid, with_segment_weights=self.with_segment_weights,
            )
            samples.append(student_sample)
            final_labels.append(label)
        self._log_pseudo_labels(samples, final_labels, unlabeled, labels[: len(unlabeled)])
        self.last_pseudo_labels = (samples, final_labels, unlabeled, labels[: len(unlabeled)])
        return samples

    def _log_pseudo_labels(self, samples, labels, unlabeled, teacher_labels) -> None:
        storage = get_event_storage()
        stats = pseudo_label_statistics(labels, [s["valid_mask"] for s in samples], self.num_classes)
        class_counts = stats.pop("class_counts")
        self.class_counts += class_counts
        storage.put_scalars(**{f"ssl/{k}": v for k, v in stats.items()})
        classes = torch.cat([label.classes.cpu() for label in labels]).float()
        if len(classes):
            storage.put_histogram("ssl/pseudo_label_classes", classes, bins=self.num_classes)
        if comm.is_main_process() and self.vis_period > 0 and storage.iter % self.vis_period == 0:
            self._put_images(storage, samples, labels, unlabeled, teacher_labels)

    def _put_images(self, storage, samples, labels, unlabeled, teacher_labels) -> None:
        panels = pseudo_label_panels(samples, labels, unlabeled, teacher_labels, self.metadata, self.vis_images)
        for k, panel in enumerate(panels):
            storage.put_image(f"ssl/pseudo_labels_{k}", torch.from_numpy(panel).permute(2, 0, 1).float() / 255.0)

    # ---- EMA and telemetry after the optimizer step ------------------------------------------------

    def after_step(self):
        decay = ema_decay(self.trainer.iter, self.decay, self.ramp)
        self.ema.update(decay)
        storage = self.trainer.storage
        storage.put_scalar("ssl/ema_decay", decay, smoothing_hint=False)
        storage.put_scalar("peak_memory_mb", peak_memory_mb(self.device_type), smoothing_hint=False)

    def after_train(self):
        if self.ssl_enabled and comm.is_main_process() and self.output_dir:
            names = _class_names(self.metadata, self.num_classes)
            counts = {names[i]: int(c) for i, c in enumerate(self.class_counts.tolist())}
            atomic_write_json(os.path.join(self.output_dir, "pseudo_label_class_counts.json"), counts, indent=1)


def _teacher_threshold(teacher_value: float, test_value: float) -> float:
    # Negative teacher thresholds mean "use the test-time value" (config comment).
    return test_value if teacher_value < 0 else teacher_value


def _class_names(metadata, num_classes: int) -> List[str]:
    names = list(metadata.get("stuff_classes", [])) if metadata is not None else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def segments_info_of(label) -> List[Dict]:
    """Detectron2 ``segments_info`` of a :class:`PanopticLabel` (visualisation only)."""
    return [
        {"id": i + 1, "category_id": int(c), "isthing": bool(t), "score": float(s)}
        for i, (c, t, s) in enumerate(zip(label.classes.tolist(), label.isthing.tolist(), label.scores.tolist()))
    ]


def pseudo_label_panels(samples, labels, unlabeled, teacher_labels, metadata, limit: int, scale: int = 1) -> List[np.ndarray]:
    """Per image (at most ``limit``), RGB uint8: weak view + teacher pseudo-label | strong CutMix
    view + the student's target; ``scale`` enlarges small crops (nearest neighbour) before drawing."""
    panels = []
    for k in range(min(limit, len(samples))):
        weak = _draw(unlabeled[k]["weak_image"], teacher_labels[k], metadata, scale)
        mixed = _draw(samples[k]["image"], labels[k], metadata, scale)
        panels.append(np.concatenate([weak, mixed], axis=1))
    return panels


def _draw(image: torch.Tensor, label, metadata, scale: int = 1) -> np.ndarray:
    image, seg = image.cpu(), label.seg.cpu()
    if scale > 1:
        image = image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        seg = seg.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    rgb = image.permute(1, 2, 0).numpy().astype(np.uint8)
    if metadata is None:
        return rgb
    return draw_panoptic(rgb, seg, segments_info_of(label), metadata)
