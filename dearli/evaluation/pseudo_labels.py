"""Pseudo-label quality: the teacher's pseudo-labels scored against withheld ground truth.

:func:`score_pseudo_labels` takes per image the pseudo-label targets as the training step gets
them (contiguous class ids [K] and bool masks [K, H, W]), the ground truth of the same crop in the
same format, and the crop's valid (unpadded) area, and returns:

- PQ / SQ / RQ (all, things, stuff; and per class ``PQ-<class>`` ...) from the evaluator's own
  code: the images are written as COCO panoptic PNGs and scored by :func:`compute_pq_stat` /
  :func:`summarize_pq` (panopticapi's matching, as in :class:`PerClassPanopticEvaluator`);
- ``mIoU`` and ``IoU-<class>`` from Detectron2's ``SemSegEvaluator``, the evaluator periodic
  evaluation uses. A pixel no pseudo-segment covers is a pixel without prediction: it counts for
  no class (``SemSegEvaluator``'s rule for predictions outside the class range), so mIoU measures
  the labels the teacher gives and ``coverage`` how much it labels;
- ``coverage``: the share (in %) of valid pixels that some pseudo-segment covers.

Pixels outside the valid area are void in the ground truth and dropped from the pseudo-labels.
"""
import logging
import os
import tempfile
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from detectron2.evaluation import SemSegEvaluator
from panopticapi.utils import id2rgb
from PIL import Image

from .panoptic import compute_pq_stat, summarize_pq

# (classes int64 [K], masks bool [K, H, W]) of one image, contiguous class ids.
Segments = Tuple[torch.Tensor, torch.Tensor]
SEM_SEG_IGNORE = 255


def score_pseudo_labels(pred_segments: Sequence[Segments], gt_segments: Sequence[Segments],
                        valid_masks: Sequence[torch.Tensor], metadata: Mapping) -> Dict[str, float]:
    """Pseudo-label quality of a list of images (module docstring); every value in % .

    ``metadata``: the dataset's Detectron2 metadata (``stuff_classes``,
    ``stuff_dataset_id_to_contiguous_id`` over all classes, ``thing_dataset_id_to_contiguous_id``).
    """
    if not (len(pred_segments) == len(gt_segments) == len(valid_masks)) or not pred_segments:
        raise ValueError(f"score_pseudo_labels needs as many pseudo-labels ({len(pred_segments)}), ground "
                         f"truths ({len(gt_segments)}) and valid masks ({len(valid_masks)}), at least one")
    class_names = list(metadata["stuff_classes"])
    dataset_id_of = {c: d for d, c in metadata["stuff_dataset_id_to_contiguous_id"].items()}
    thing_ids = set(metadata["thing_dataset_id_to_contiguous_id"])
    valid_masks = [v.cpu().bool() for v in valid_masks]
    pred_maps = [_id_map(*segments, valid) for segments, valid in zip(pred_segments, valid_masks)]
    gt_maps = [_id_map(*segments, valid) for segments, valid in zip(gt_segments, valid_masks)]
    results = _panoptic_quality(pred_maps, gt_maps, dataset_id_of, thing_ids, class_names)
    results.update(_semantic_quality(pred_maps, gt_maps, class_names))
    covered = sum(int((ids > 0).sum()) for ids, _ in pred_maps)
    results["coverage"] = 100.0 * covered / max(sum(int(v.sum()) for v in valid_masks), 1)
    return results


def _id_map(classes: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor):
    """(int64 id map [H, W] with segment k as k + 1, 0 = none or outside ``valid``; classes list)."""
    if masks.shape[-2:] != valid.shape or len(classes) != len(masks):
        raise ValueError(f"segments {tuple(masks.shape)} with {len(classes)} classes do not fit the valid "
                         f"mask {tuple(valid.shape)}")
    masks = masks.cpu().bool()
    ids = torch.zeros(valid.shape, dtype=torch.int64)
    for k in range(len(masks)):  # later masks win where they overlap (pseudo-labels never overlap)
        ids[masks[k]] = k + 1
    return torch.where(valid, ids, 0).numpy(), [int(c) for c in classes.tolist()]


def _panoptic_quality(pred_maps, gt_maps, dataset_id_of, thing_ids, class_names) -> Dict[str, float]:
    categories = [{"id": d, "name": class_names[c], "isthing": int(d in thing_ids)}
                  for c, d in sorted(dataset_id_of.items())]
    gt_json = {"categories": categories, "annotations": []}
    predictions = []
    with tempfile.TemporaryDirectory(prefix="pseudo_quality") as root:
        gt_dir, pred_dir = os.path.join(root, "gt"), os.path.join(root, "pred")
        os.makedirs(gt_dir)
        os.makedirs(pred_dir)
        for index, (pred, gt) in enumerate(zip(pred_maps, gt_maps)):
            file_name = f"{index}.png"
            gt_json["annotations"].append(_write_png(gt, dataset_id_of, gt_dir, index, file_name))
            predictions.append(_write_png(pred, dataset_id_of, pred_dir, index, file_name))
        pq_stat = compute_pq_stat(gt_json, predictions, gt_dir, pred_dir, "<withheld ground truth>")
    by_id = {c["id"]: c for c in categories}
    results = summarize_pq(pq_stat, by_id, {c["id"]: c["name"] for c in categories})
    for suffix in ("", "_th", "_st"):
        results.pop("n" + suffix)
    return results


def _write_png(id_map, dataset_id_of, folder, image_id, file_name) -> Dict:
    """One COCO panoptic annotation (PNG in ``folder``) of an (id map, classes) pair."""
    ids, classes = id_map
    Image.fromarray(id2rgb(ids)).save(os.path.join(folder, file_name))
    segment_ids, areas = np.unique(ids, return_counts=True)
    area_of = dict(zip(segment_ids.tolist(), areas.tolist()))
    segments = [{"id": k + 1, "category_id": dataset_id_of[c], "iscrowd": 0, "area": area_of[k + 1]}
                for k, c in enumerate(classes) if k + 1 in area_of]
    return {"image_id": image_id, "file_name": file_name, "segments_info": segments}


def _semantic_quality(pred_maps, gt_maps, class_names) -> Dict[str, float]:
    num_classes = len(class_names)
    with tempfile.TemporaryDirectory(prefix="pseudo_quality_sem") as root:
        gt_files, inputs, outputs = {}, [], []
        for index, (pred, gt) in enumerate(zip(pred_maps, gt_maps)):
            gt_files[str(index)] = os.path.join(root, f"{index}.png")
            Image.fromarray(_semantic_map(*gt, SEM_SEG_IGNORE).astype(np.uint8)).save(gt_files[str(index)])
            # Uncovered pixels get the index num_classes: SemSegEvaluator counts them for no class.
            pred_classes = torch.from_numpy(_semantic_map(*pred, num_classes))
            scores = torch.nn.functional.one_hot(pred_classes, num_classes + 1).permute(2, 0, 1)
            inputs.append({"file_name": str(index)})
            outputs.append({"sem_seg": scores})
        evaluator = _FileSemSegEvaluator(gt_files, class_names, SEM_SEG_IGNORE)
        evaluator.reset()
        evaluator.process(inputs, outputs)
        sem_seg = evaluator.evaluate()["sem_seg"]
    return {k: v for k, v in sem_seg.items() if k == "mIoU" or k.startswith("IoU-")}


def _semantic_map(ids: np.ndarray, classes: List[int], fill: int) -> np.ndarray:
    lookup = np.array([fill] + classes, dtype=np.int64)
    return lookup[ids]


class _FileSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` with ground-truth files given directly ({input file_name:
    label PNG}) instead of read from a registered dataset; one process, nothing written."""

    def __init__(self, gt_files: Dict[str, str], class_names: List[str], ignore_label: int):
        # The parent's __init__ needs a registered dataset with sem_seg_file_name records; these
        # are the attributes its process()/evaluate() read.
        self._logger = logging.getLogger(__name__)
        self._dataset_name = "<withheld ground truth>"
        self._distributed = False
        self._output_dir = None
        self._cpu_device = torch.device("cpu")
        self.input_file_to_gt_file = gt_files
        self._contiguous_id_to_dataset_id = None
        self._class_names = list(class_names)
        self._num_classes = len(class_names)
        self._ignore_label = ignore_label
