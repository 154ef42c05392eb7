"""Pictures of a finished protocol stage (dearli/engine/protocol.py): val predictions of its
student and teacher, and the teacher's pseudo-labels next to the student's CutMix target.

Both read the stage's final checkpoint through a :class:`DEARLiTrainer` resumed from its folder,
so they work on a stage finished by an earlier invocation too.
"""
import os

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.utils.events import EventStorage

from ..data import sampling
from ..data.datasets.validate import read_rgb_image
from ..utils.atomic_io import save_png_atomic
from .hooks import pseudo_label_panels
from .panels import panel_row
from .trainer import DEARLiTrainer
from .visualization import draw_panoptic


class _FinishedStage(DEARLiTrainer):
    """A trainer that only reads a stage: no event writers, so no new files in its folder."""

    def build_writers(self):
        return []


def _finished_trainer(cfg) -> DEARLiTrainer:
    """A trainer holding the stage's final student and teacher (from its last checkpoint)."""
    trainer = _FinishedStage(cfg)
    trainer.resume_or_load(resume=True)
    return trainer


def _enlarge(image: np.ndarray, seg, scale: int):
    """Nearest-neighbour enlargement of an HxWx3 image and its [H, W] segment map."""
    seg = torch.as_tensor(seg).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return np.repeat(np.repeat(image, scale, 0), scale, 1), seg


def save_stage_predictions(cfg, name: str, visuals_dir: str, count: int, scale: int = 4) -> list:
    """``<name>_val<k>.png``: val image | student prediction | teacher prediction, for the first
    ``count`` images of DATASETS.TEST[0]; ``scale`` enlarges small images. Returns the paths."""
    trainer = _finished_trainer(cfg)
    dataset = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    models = (trainer.model, trainer.teacher.model)
    for model in models:
        model.eval()
    paths = []
    with torch.no_grad():
        for k, inputs in enumerate(DEARLiTrainer.build_test_loader(cfg, dataset)):
            if k >= count:
                break
            image = read_rgb_image(inputs[0]["file_name"])  # the mappers' reader: the pixels the model saw
            drawn = [_enlarge(image, np.zeros(image.shape[:2]), scale)[0]]
            for model in models:
                seg, segments = model(inputs)[0]["panoptic_seg"]
                large_image, large_seg = _enlarge(image, seg, scale)
                drawn.append(draw_panoptic(large_image, large_seg, segments, metadata))
            titles = ("val image", f"student ({name})", f"teacher ({name})")
            paths.append(os.path.join(visuals_dir, f"{name}_val{k}.png"))
            save_png_atomic(panel_row(drawn, titles), paths[-1])
    return paths


def save_pseudo_label_panels(cfg, visuals_dir: str, count: int, scale: int = 4) -> list:
    """``pseudo_labels_<k>.png``: weak view + the final teacher's pseudo-label | CutMix strong view
    + the student's target, on the first unlabeled batch of the (semi-supervised) stage ``cfg``."""
    trainer = _finished_trainer(cfg)
    batch = sampling.build_train_batches(cfg, start_iter=0).batch_at(0)
    with EventStorage(0), torch.no_grad():
        trainer.teacher.pseudo_label(batch["unlabeled"])
    samples, labels, unlabeled, teacher_labels = trainer.teacher.last_pseudo_labels
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    paths = []
    for k, panel in enumerate(pseudo_label_panels(samples, labels, unlabeled, teacher_labels, metadata, count, scale)):
        paths.append(os.path.join(visuals_dir, f"pseudo_labels_{k}.png"))
        save_png_atomic(panel, paths[-1])
    return paths
