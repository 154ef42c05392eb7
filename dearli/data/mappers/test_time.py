"""The test-time mapper: Detectron2's ``DatasetMapper(cfg, is_train=False)`` contract, dearli's reader.

Detectron2's mapper reads images with ``detection_utils.read_image``, which clips 16-bit images to
white (Pillow's ``convert("RGB")``) and also decodes the semantic ground truth it then throws away.
This mapper reads the image through :func:`dearli.data.datasets.validate.read_rgb_image` (the
reader of every other dearli path), checks it against the dict's height/width, resizes it with
``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)`` (Detectron2's test augmentation)
and returns ``{"image": uint8 [3, h, w], "height", "width", ...}`` with the dict's other keys
except ``annotations``. Ground truth is read by the evaluators, which check it
(:mod:`dearli.evaluation.checks`).
"""
import numpy as np
import torch
from detectron2.data import transforms as T

from .augmentation import check_rgb_format
from .panoptic_targets import read_training_image


def test_resize(cfg) -> T.ResizeShortestEdge:
    """The test-time resize of images (shared by this mapper and ``DEARLiPredictor``)."""
    return T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)


class TestImageMapper:
    """``mapper(dataset_dict) -> model input`` for evaluation loaders (module docstring)."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, cfg):
        check_rgb_format(cfg.INPUT.FORMAT)
        self.resize = test_resize(cfg)

    def __call__(self, dataset_dict):
        sample = {k: v for k, v in dataset_dict.items() if k != "annotations"}
        image = read_training_image(sample)  # fills height/width when the dict has none
        resized = self.resize.get_transform(image).apply_image(image)
        sample["image"] = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        return sample
