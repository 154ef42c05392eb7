"""The mean teacher (method spec §2): an EMA copy of the student that labels the unlabeled images.

It exists in every run (a supervised-only run's EMA teacher is evaluated for comparison); the
training step asks it for pseudo-labels only with SSL.ENABLED. Telemetry is a hook's job.
"""
import copy
import logging
from typing import Dict, List, NamedTuple

import torch
from torch import nn

from ..modeling.checkpoint import DEARLiCheckpointer
from ..modeling.dense_guidance import DenseCLIPGuidance, training_iteration
from ..modeling.weight_files import read_weight_file
from .ema import ModelEMA, ema_decay, resolve_ema_ramp, unwrap_model
from .pseudo_labels import PanopticLabel, build_pseudo_labeled_sample
from .tag_teacher import TeacherTags
from .teacher_refinement import TeacherRefinement, main_and_partner

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


def read_teacher_state(path: str) -> Dict[str, torch.Tensor]:
    """The teacher's state dict stored in a training checkpoint written by DEARLiTrainer (read
    tensors-only)."""
    return teacher_state_of(read_weight_file(path), path)


def teacher_state_of(checkpoint, path: str) -> Dict[str, torch.Tensor]:
    """The teacher entry of a loaded training ``checkpoint`` (read from ``path``)."""
    if not isinstance(checkpoint, dict) or "teacher" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise KeyError(f"{path} holds no teacher (entries: {found}); pass a training checkpoint written by "
                       "DEARLiTrainer (OUTPUT_DIR/model_*.pth), or an exported teacher as MODEL.WEIGHTS")
    return checkpoint["teacher"]


class PseudoLabels(NamedTuple):
    """One batch's pseudo-labels: the student's samples and their final (CutMixed) labels, the
    unlabeled samples and the teacher's labels of their weak views (for telemetry and pictures)."""

    samples: List[Dict]
    labels: List[PanopticLabel]
    unlabeled: List[Dict]
    teacher_labels: List[PanopticLabel]


class MeanTeacher:
    """Builds the teacher (sharing the frozen CLIP), initialises it, pseudo-labels, EMA-updates;
    a checkpointer entry (``state_dict`` / ``load_state_dict``).

    Args:
        cfg: the config (MODEL.TEACHER.*, MODEL.MASK_FORMER.* thresholds and weighting).
        student: the student (DDP-wrapped or not), already broadcast across processes, so the
            teacher copied from it is identical on every rank.
    """

    def __init__(self, cfg, student: nn.Module):
        self.student = unwrap_model(student)
        self.model = build_teacher(self.student)
        self.ema = ModelEMA(self.model, self.student)
        teacher_cfg, test_cfg = cfg.MODEL.TEACHER, cfg.MODEL.MASK_FORMER.TEST
        self.weights = teacher_cfg.WEIGHTS
        self.allow_unsafe_pickle = cfg.MODEL.ALLOW_UNSAFE_PICKLE
        self.decay = teacher_cfg.EMA_DECAY
        self.ramp = resolve_ema_ramp(teacher_cfg.EMA_RAMP, teacher_cfg.WEIGHTS)
        ema_decay(0, self.decay, self.ramp)  # validates EMA_DECAY now rather than after step 0
        self.zero_shot = teacher_cfg.ZERO_SHOT_ENABLED
        self.object_threshold = _teacher_threshold(teacher_cfg.OBJECT_MASK_THRESHOLD, test_cfg.OBJECT_MASK_THRESHOLD)
        self.overlap_threshold = _teacher_threshold(teacher_cfg.OVERLAP_THRESHOLD, test_cfg.OVERLAP_THRESHOLD)
        self.min_area = teacher_cfg.MIN_SEGMENT_AREA
        self.restrict_to_valid = cfg.MODEL.MASK_FORMER.IGNORE_PADDING
        self.with_segment_weights = cfg.MODEL.MASK_FORMER.PSEUDO_CONFIDENCE_WEIGHTING == "segment_score"
        self.tags = TeacherTags.from_config(cfg)  # image tags (SSL.IMAGE_TAGS); None when off
        # SemiVL dense CLIP guidance (SSL.DENSE_CLIP_GUIDANCE): None = off, nothing computed. A loss
        # on pseudo-labeled images, so a supervised-only run (SSL off, e.g. a protocol stage) ignores it.
        guided = cfg.SSL.DENSE_CLIP_GUIDANCE.ENABLED and cfg.SSL.ENABLED
        self.dense_clip = DenseCLIPGuidance(cfg) if guided else None
        self.refinement = TeacherRefinement.from_config(cfg)  # SSL.SAM_REFINE; None when off
        self.last_pseudo_labels = None  # PseudoLabels of the latest batch (None before the first)
        self.last_decay = None  # decay of the latest update

    def initialize(self) -> None:
        """Fresh run: load MODEL.TEACHER.WEIGHTS into the teacher, or copy the (loaded) student."""
        if self.weights:
            checkpointer = DEARLiCheckpointer(self.model, save_to_disk=False, allow_unsafe_pickle=self.allow_unsafe_pickle)
            checkpointer.load(self.weights, checkpointables=[])
            logger.info("Teacher initialised from MODEL.TEACHER.WEIGHTS=%s", self.weights)
        else:
            self.ema.copy_student()
            logger.info("Teacher initialised as a copy of the student")

    @torch.no_grad()
    def pseudo_label(self, unlabeled: List[Dict]) -> List[Dict]:
        """Teacher panoptic inference on the weak views (and CutMix partners), then the student's
        samples: strong (CutMixed) images with the (CutMixed) pseudo-labels as targets."""
        if not unlabeled:
            self.last_pseudo_labels = None
            return []
        partners = [i for i, s in enumerate(unlabeled) if s.get("cutmix") is not None]
        weak = [s["weak_image"] for s in unlabeled] + [unlabeled[i]["cutmix"]["weak_image"] for i in partners]
        allowed = self.tags.allowed_classes(unlabeled, partners, self.model.device) if self.tags else None
        optional = {} if self.dense_clip is None else {"dense_clip": self.dense_clip}  # off: today's call
        if self.tags:
            optional.update(self.tags.inference_kwargs(allowed))
        if self.refinement is not None:  # each segment's probability map, for the SAM refinement
            optional["with_prob_maps"] = True
        predictions = self.model.predict_panoptic(
            weak, zero_shot=self.zero_shot, object_threshold=self.object_threshold,
            overlap_threshold=self.overlap_threshold, as_segments=True, **optional,
        )
        if self.dense_clip is not None:
            predictions, dense_labels = predictions
        labels = [PanopticLabel(p.seg, p.classes, p.isthing, p.scores) for p in predictions]
        if self.tags:
            labels = self.tags.after_inference(labels, allowed)
        weights = None  # per-view pixel-weight maps (SSL.SAM_REFINE.PWA)
        if self.refinement is not None:  # before CutMix, each view with its own SAM masks
            views = unlabeled + [unlabeled[i]["cutmix"] for i in partners]
            labels, weights = self.refinement.refine(views, predictions, labels, len(unlabeled))
        partner_of = dict(zip(partners, range(len(unlabeled), len(labels))))
        samples, final_labels = [], []
        for i, sample in enumerate(unlabeled):
            student_sample, label = build_pseudo_labeled_sample(
                sample, labels[i], labels[partner_of[i]] if i in partner_of else None, min_area=self.min_area,
                restrict_to_valid=self.restrict_to_valid, with_segment_weights=self.with_segment_weights,
                mask_weights=main_and_partner(weights, i, partner_of.get(i)),
            )
            if self.tags:
                student_sample.update(self.tags.student_fields(sample))
            samples.append(student_sample)
            final_labels.append(label)
        if self.dense_clip is not None:  # weighted by the running step's iteration
            self.dense_clip.attach(samples, unlabeled, dense_labels, partners, training_iteration())
        self.last_pseudo_labels = PseudoLabels(samples, final_labels, unlabeled, labels[: len(unlabeled)])
        return samples

    def update(self, iteration: int) -> float:
        """EMA of the student into the teacher after optimizer step ``iteration``; returns the decay."""
        self.last_decay = ema_decay(iteration, self.decay, self.ramp)
        self.ema.update(self.last_decay)
        return self.last_decay

    def state_dict(self) -> Dict:
        """The teacher's state dict (the backbone leaves a frozen CLIP out)."""
        return self.model.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        """Load strictly against the teacher's own state-dict keys."""
        expected = set(self.model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"teacher state in the checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
        self.model.load_state_dict(state)


def _teacher_threshold(teacher_value: float, test_value: float) -> float:
    # Negative teacher thresholds mean "use the test-time value" (config comment).
    return test_value if teacher_value < 0 else teacher_value
