"""Hook: the teacher's pseudo-labels scored against the unlabeled images' withheld ground truth.

At every evaluation (the iterations at which Detectron2's ``EvalHook`` evaluates, the final one
included) the teacher pseudo-labels the same SSL.PSEUDO_QUALITY_IMAGES images: the first ones of
DATASETS.TRAIN_UNLABELED[0], each with a weak view whose crop and flip come from a fixed
per-image seed (identical at every evaluation, in every run and branch). The unlabeled mapper's
``with_ground_truth`` transforms the ground truth with the weak view's geometry. The targets that
``MeanTeacher.pseudo_label`` returns for these views (no CutMix partner, so before CutMix) are
scored by :func:`dearli.evaluation.pseudo_labels.score_pseudo_labels`; the results go into the event
storage as ``pseudo_quality/<metric>`` (metrics.json, TensorBoard). Main process only. With the
SAM-guided refinement (SSL.SAM_REFINE) those are the refined targets, and the teacher's labels
before refinement are scored too, as ``pseudo_quality_unrefined/<metric>``.
"""
import logging
import math

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase

from ..data.datasets.withheld import withheld_ground_truth
from ..data.mappers import UnlabeledWeakStrongMapper
from ..evaluation.pseudo_labels import score_pseudo_labels
from .teacher import MeanTeacher
from .teacher_refinement import unrefined_targets

logger = logging.getLogger(__name__)
SCALAR_PREFIX = "pseudo_quality/"
UNREFINED_PREFIX = "pseudo_quality_unrefined/"  # before the SAM refinement
# Base of the per-image crop seeds: fixed, so every run and branch scores the same crops.
CROP_SEED = 0


class PseudoLabelQuality(HookBase):
    """Logs ``pseudo_quality/*`` after each evaluation (module docstring).

    Args:
        cfg: the config (SSL.PSEUDO_QUALITY_IMAGES, DATASETS.TRAIN_UNLABELED, TEST.EVAL_PERIOD, INPUT.*).
        teacher: the run's :class:`MeanTeacher`.
    """

    def __init__(self, cfg, teacher: MeanTeacher):
        self.num_images = int(cfg.SSL.PSEUDO_QUALITY_IMAGES)
        if self.num_images < 1:
            raise ValueError(f"SSL.PSEUDO_QUALITY_IMAGES must be >= 1 for the pseudo-label quality hook, "
                             f"got {self.num_images}")
        if not cfg.DATASETS.TRAIN_UNLABELED:
            raise ValueError("SSL.PSEUDO_QUALITY_IMAGES > 0 needs DATASETS.TRAIN_UNLABELED (with withheld "
                             "ground truth) to score pseudo-labels on")
        self.dataset_name = cfg.DATASETS.TRAIN_UNLABELED[0]
        self.period = cfg.TEST.EVAL_PERIOD
        self.teacher = teacher
        self.mapper = UnlabeledWeakStrongMapper(cfg)
        self._samples = None  # built at the first evaluation

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self.period > 0 and next_iter % self.period == 0 and next_iter != self.trainer.max_iter:
            self.log_quality()

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # EvalHook's rule for the final evaluation
            self.log_quality()

    def samples(self):
        """The scored weak views with their ground truth (built once, identical at every evaluation)."""
        if self._samples is None:
            records = withheld_ground_truth(self.dataset_name, self.num_images)
            self._samples = [self.mapper.with_ground_truth(record, np.random.default_rng([CROP_SEED, index]))
                             for index, record in enumerate(records)]
        return self._samples

    def score(self):
        """The quality dict of :func:`score_pseudo_labels` for the teacher as it is now (with the
        SAM refinement also the scores of the labels before it, keys prefixed ``unrefined/``)."""
        samples = self.samples()
        refinement = self.teacher.refinement
        # The training step's telemetry state stays untouched.
        kept = self.teacher.last_pseudo_labels, refinement.last if refinement is not None else None
        try:
            targets = self.teacher.pseudo_label(samples)
            unrefined = unrefined_targets(self.teacher, samples) if refinement is not None else []
        finally:
            self.teacher.last_pseudo_labels = kept[0]
            if refinement is not None:
                refinement.last = kept[1]
        quality = self._score_targets(targets, samples)
        if unrefined:
            quality.update({"unrefined/" + k: v for k, v in self._score_targets(unrefined, samples).items()})
        return quality

    def _score_targets(self, targets, samples):
        predicted = [(t["instances"].gt_classes, t["instances"].gt_masks) for t in targets]
        truth = [(s["gt_instances"].gt_classes, s["gt_instances"].gt_masks) for s in samples]
        metadata = MetadataCatalog.get(self.dataset_name).as_dict()
        return score_pseudo_labels(predicted, truth, [s["valid_mask"] for s in samples], metadata)

    def log_quality(self):
        quality = self.score()
        logger.info("Pseudo-label quality on %d images of %s: PQ %.2f, mIoU %.2f, coverage %.2f",
                    len(self.samples()), self.dataset_name, quality["PQ"], quality["mIoU"], quality["coverage"])
        # NaN marks a class absent from both pseudo-labels and ground truth (or an empty group).
        self.trainer.storage.put_scalars(
            smoothing_hint=False,
            **{_scalar_name(key): value for key, value in quality.items() if not math.isnan(value)},
        )


def _scalar_name(key: str) -> str:
    if key.startswith("unrefined/"):
        return UNREFINED_PREFIX + key[len("unrefined/"):]
    return SCALAR_PREFIX + key
