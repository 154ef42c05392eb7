"""``COCOPanopticEvaluator`` that also returns per-class PQ / SQ / RQ and survives all-stuff data.

Detectron2's evaluator calls ``panopticapi.evaluation.pq_compute``, which computes per-class
numbers but only returns averages, and divides by zero when a dataset has no thing (or no stuff)
class, as every semantic-only dataset does. This subclass keeps prediction handling (``process``)
and the matching (panopticapi's ``pq_compute_single_core`` / ``pq_compute_multi_core``: IoU > 0.5,
void and same-class crowd regions excused) and computes the averages itself:

- the standard keys ``PQ SQ RQ PQ_th SQ_th RQ_th PQ_st SQ_st RQ_st`` keep Detectron2's meaning
  and values (means over the classes that occur in ground truth or predictions), NaN where a group
  has no class (e.g. ``PQ_th`` of an all-stuff dataset) instead of an exception;
- ``PQ-<class>``, ``SQ-<class>``, ``RQ-<class>`` per class (NaN for a class that occurs in neither
  the ground truth nor the predictions), like ``SemSegEvaluator``'s ``IoU-<class>``.

``process`` checks each image's ground truth first (:mod:`.checks`): panopticapi would silently
skip PNG ids that the json does not list.
"""
import contextlib
import io
import itertools
import json
import logging
import math
import os
import tempfile
from collections import OrderedDict

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from panopticapi.evaluation import pq_compute_multi_core, pq_compute_single_core
from tabulate import tabulate

from .checks import PanopticGroundTruth

logger = logging.getLogger(__name__)

# Below this many images a process pool costs more than it saves.
_SERIAL_IMAGE_LIMIT = 16
_GROUPS = (("", None), ("_th", True), ("_st", False))


def class_quality(stat):
    """(pq, sq, rq) of one class from its panopticapi counts, or None if it never occurs."""
    if stat.tp + stat.fp + stat.fn == 0:
        return None
    matched_or_not = stat.tp + 0.5 * stat.fp + 0.5 * stat.fn
    sq = stat.iou / stat.tp if stat.tp else 0.0
    return stat.iou / matched_or_not, sq, stat.tp / matched_or_not


def summarize_pq(pq_stat, categories, class_names):
    """Results dict (module docstring) from panopticapi's ``PQStat``.

    ``categories``: {dataset id: json category}; ``class_names``: {dataset id: display name}.
    """
    quality = {cat_id: class_quality(pq_stat.pq_per_cat[cat_id]) for cat_id in categories}
    results = {}
    for suffix, isthing in _GROUPS:
        group = [q for cat_id, q in quality.items() if q is not None and
                 (isthing is None or bool(categories[cat_id]["isthing"]) == isthing)]
        for index, metric in enumerate(("PQ", "SQ", "RQ")):
            values = [q[index] for q in group]
            results[metric + suffix] = 100 * sum(values) / len(values) if values else math.nan
        results["n" + suffix] = len(group)
    for cat_id in categories:
        q = quality[cat_id]
        for index, metric in enumerate(("PQ", "SQ", "RQ")):
            results[f"{metric}-{class_names[cat_id]}"] = 100 * q[index] if q else math.nan
    return results


def compute_pq_stat(gt_json, pred_annotations, gt_folder, pred_folder, json_file="<gt json>"):
    """panopticapi's per-class counts for predictions of every ground-truth image."""
    categories = {c["id"]: c for c in gt_json["categories"]}
    by_image = {ann["image_id"]: ann for ann in pred_annotations}
    missing = [ann["image_id"] for ann in gt_json["annotations"] if ann["image_id"] not in by_image]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of the {len(gt_json['annotations'])} "
                         f"images of {json_file} (e.g. {missing[:3]}); PQ needs all of them")
    matched = [(ann, by_image[ann["image_id"]]) for ann in gt_json["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # panopticapi prints progress
        if len(matched) <= _SERIAL_IMAGE_LIMIT:
            return pq_compute_single_core(0, matched, gt_folder, pred_folder, categories)
        return pq_compute_multi_core(matched, gt_folder, pred_folder, categories)


class PerClassPanopticEvaluator(COCOPanopticEvaluator):
    """Detectron2's ``COCOPanopticEvaluator`` plus per-class results (module docstring)."""

    def process(self, inputs, outputs):
        ground_truth = self._ground_truth()
        for sample, output in zip(inputs, outputs):
            ground_truth.check(sample, output["panoptic_seg"][0].shape[-2:])
        super().process(inputs, outputs)

    def _ground_truth(self):
        """The dataset's panoptic json, read once per evaluator (on first use)."""
        if getattr(self, "_checked_ground_truth", None) is None:
            json_file = PathManager.get_local_path(self._metadata.panoptic_json)
            with open(json_file, "r", encoding="utf-8") as f:
                gt_json = json.load(f)
            panoptic_root = PathManager.get_local_path(self._metadata.panoptic_root)
            self._checked_ground_truth = PanopticGroundTruth(gt_json, json_file, panoptic_root)
        return self._checked_ground_truth

    def evaluate(self):
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None
        json_file = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with open(json_file, "r", encoding="utf-8") as f:
            gt_json = json.load(f)
        with tempfile.TemporaryDirectory(prefix="panoptic_eval") as pred_dir:
            annotations = self._write_predictions(predictions, pred_dir, gt_json)
            pq_stat = compute_pq_stat(gt_json, annotations, gt_folder, pred_dir, json_file)
        categories = {c["id"]: c for c in gt_json["categories"]}
        results = summarize_pq(pq_stat, categories, self._class_names(categories))
        _log_summary(results)
        for suffix, _ in _GROUPS:
            results.pop("n" + suffix)
        return OrderedDict({"panoptic_seg": results})

    def _write_predictions(self, predictions, pred_dir, gt_json):
        """Prediction PNGs into ``pred_dir``; the predictions json also into ``output_dir``."""
        annotations = []
        for prediction in predictions:
            prediction = dict(prediction)
            with open(os.path.join(pred_dir, prediction["file_name"]), "wb") as f:
                f.write(prediction.pop("png_string"))
            annotations.append(prediction)
        if self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
                f.write(json.dumps(dict(gt_json, annotations=annotations)))
        return annotations

    def _class_names(self, categories):
        """Display name per dataset id: the metadata's class names (json names as fallback)."""
        contiguous = self._metadata.stuff_dataset_id_to_contiguous_id
        names = self._metadata.stuff_classes
        return {cat_id: names[contiguous[cat_id]] if cat_id in contiguous else cat["name"]
                for cat_id, cat in categories.items()}


def _log_summary(results):
    rows = [[name] + [results[metric + suffix] for metric in ("PQ", "SQ", "RQ")]
            + [results["n" + suffix]]
            for name, (suffix, _) in zip(("All", "Things", "Stuff"), _GROUPS)]
    table = tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe",
                     floatfmt=".3f", stralign="center", numalign="center")
    logger.info("Panoptic Evaluation Results:\n" + table)


def build_panoptic_evaluator(dataset_name, output_dir=None):
    """The panoptic evaluator dearli uses for ``dataset_name`` (metadata: panoptic_json/root)."""
    return PerClassPanopticEvaluator(dataset_name, output_dir)
