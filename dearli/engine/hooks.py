"""Training hooks, one job each; the teacher itself (:class:`~dearli.engine.teacher.MeanTeacher`)
is called by the training step.

Pseudo-label class counts are checkpointed trainer state, so a resumed run writes the same
``pseudo_label_class_counts.json`` as an uninterrupted one. Counts and statistics are this
process's (rank 0's in the written file), like every other logged scalar.
"""
import os
import resource
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.atomic_io import atomic_write_json
from .panels import panel_row
from .pseudo_labels import pseudo_label_statistics
from .teacher import MeanTeacher
from .teacher_refinement import log_refinement
from .visualization import draw_panoptic

CLASS_COUNTS_FILE = "pseudo_label_class_counts.json"


def peak_memory_mb(device_type: str) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in MiB."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PeakMemory(HookBase):
    """Logs ``peak_memory_mb`` (see :func:`peak_memory_mb`) after every step."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def after_step(self):
        self.trainer.storage.put_scalar("peak_memory_mb", peak_memory_mb(self.device_type), smoothing_hint=False)


class PseudoLabelTelemetry(HookBase):
    """Logs what the teacher did in the step: ``ssl/*`` statistics, a class histogram, pseudo-label
    pictures every SSL.VIS_PERIOD steps and the EMA decay; writes the cumulative class counts at the
    end of training.

    Args:
        cfg: the config (SSL.*, MODEL.SEM_SEG_HEAD.NUM_CLASSES, DATASETS.TRAIN, OUTPUT_DIR).
        teacher: the run's :class:`MeanTeacher`.
    """

    def __init__(self, cfg, teacher: MeanTeacher):
        self.teacher = teacher
        self.ssl_enabled = cfg.SSL.ENABLED
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        self.vis_period, self.vis_images = cfg.SSL.VIS_PERIOD, cfg.SSL.VIS_IMAGES
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN else None
        self.output_dir = cfg.OUTPUT_DIR
        self.class_counts = torch.zeros(self.num_classes, dtype=torch.int64)

    def after_step(self):
        storage = self.trainer.storage
        storage.put_scalar("ssl/ema_decay", self.teacher.last_decay, smoothing_hint=False)
        batch = self.teacher.last_pseudo_labels
        if not self.ssl_enabled or batch is None:
            return
        stats = pseudo_label_statistics(batch.labels, [s["valid_mask"] for s in batch.samples], self.num_classes)
        self.class_counts += stats.pop("class_counts")
        classes = stats.pop("classes").float()  # already on the host: read with the statistics
        storage.put_scalars(**{f"ssl/{k}": v for k, v in stats.items()})
        log_refinement(storage, self.teacher.refinement)  # ssl/sam_refine/* (SSL.SAM_REFINE)
        if len(classes):
            storage.put_histogram("ssl/pseudo_label_classes", classes, bins=self.num_classes)
        if comm.is_main_process() and self.vis_period > 0 and storage.iter % self.vis_period == 0:
            panels = pseudo_label_panels(*batch, self.metadata, self.vis_images)
            for k, panel in enumerate(panels):
                storage.put_image(f"ssl/pseudo_labels_{k}", torch.from_numpy(panel).permute(2, 0, 1).float() / 255.0)

    def after_train(self):
        if self.ssl_enabled and comm.is_main_process() and self.output_dir:
            names = _class_names(self.metadata, self.num_classes)
            counts = {names[i]: int(c) for i, c in enumerate(self.class_counts.tolist())}
            atomic_write_json(os.path.join(self.output_dir, CLASS_COUNTS_FILE), counts, indent=1)

    def state_dict(self) -> Dict:
        # Checkpointed with the trainer (Detectron2 saves every hook's non-empty state).
        return {"class_counts": self.class_counts.clone()}

    def load_state_dict(self, state: Dict) -> None:
        if state["class_counts"].shape != self.class_counts.shape:
            raise ValueError(f"checkpointed pseudo-label class counts have {state['class_counts'].numel()} "
                             f"classes, the config has MODEL.SEM_SEG_HEAD.NUM_CLASSES={self.num_classes}")
        self.class_counts = state["class_counts"].to(torch.int64).clone()


def _class_names(metadata, num_classes: int) -> List[str]:
    names = list(metadata.get("stuff_classes", [])) if metadata is not None else []
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def segments_info_of(label) -> List[Dict]:
    """Detectron2 ``segments_info`` of a :class:`PanopticLabel` (visualisation only)."""
    return [
        {"id": i + 1, "category_id": int(c), "isthing": bool(t), "score": float(s)}
        for i, (c, t, s) in enumerate(zip(label.classes.tolist(), label.isthing.tolist(), label.scores.tolist()))
    ]


# Titles of the two panels of a pseudo-label picture.
PSEUDO_LABEL_TITLES = ("teacher pseudo-label (weak view)", "student target (CutMix strong view)")


def pseudo_label_panels(samples, labels, unlabeled, teacher_labels, metadata, limit: int, scale: int = 1) -> List[np.ndarray]:
    """Per image (at most ``limit``), RGB uint8, two titled panels: weak view + teacher pseudo-label |
    strong CutMix view + the student's target; ``scale`` enlarges small crops (nearest neighbour)
    before drawing."""
    panels = []
    for k in range(min(limit, len(samples))):
        weak = _draw(unlabeled[k]["weak_image"], teacher_labels[k], metadata, scale)
        mixed = _draw(samples[k]["image"], labels[k], metadata, scale)
        panels.append(panel_row([weak, mixed], PSEUDO_LABEL_TITLES))
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
