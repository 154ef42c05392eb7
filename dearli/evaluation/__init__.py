"""Evaluation: Detectron2's COCO panoptic evaluator with per-class PQ/SQ/RQ in its results.

mIoU uses Detectron2's ``SemSegEvaluator`` scoring unchanged (it already returns per-class
``IoU-<name>``). Both evaluators check each image's ground truth before scoring it (``checks``).
"""
from .checks import CheckedSemSegEvaluator  # noqa: F401
from .panoptic import PerClassPanopticEvaluator, build_panoptic_evaluator  # noqa: F401
