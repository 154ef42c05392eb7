"""Evaluation: Detectron2's COCO panoptic evaluator with per-class PQ/SQ/RQ in its results.

mIoU uses Detectron2's ``SemSegEvaluator`` unchanged; it already returns per-class ``IoU-<name>``.
"""
from .panoptic import PerClassPanopticEvaluator, build_panoptic_evaluator  # noqa: F401
