"""Mapper "labeled_panoptic": a labeled panoptic dataset dict -> one training sample (spec §2.3).

Resize-shortest-edge (INPUT.MIN_SIZE_TRAIN, MAX_SIZE_TRAIN, MIN_SIZE_TRAIN_SAMPLING) -> random crop
(INPUT.CROP) -> SSD colour distortion (INPUT.COLOR_AUG_SSD) -> horizontal flip (p 0.5) -> padding on
the right/bottom to a multiple of INPUT.SIZE_DIVISIBILITY with INPUT.PAD_VALUE. The colour step acts
on pixel values only, so it commutes with the flip; it is applied after the geometry.

Call convention (all dearli training mappers): ``mapper(dataset_dict, rng)`` with ``rng`` a
``numpy.random.Generator`` supplied by the loader; the mapper draws nothing from global generators.
Output: see the contract in :mod:`dearli.data.sampling` and the README ("Labeled training sample").
"""
import copy

import numpy as np
from detectron2.config import configurable

from ..registry import MAPPER_REGISTRY
from .augmentation import GeometrySpec, augment_image, check_rgb_format, padded_image_fields
from .panoptic_targets import (
    padded_sem_seg,
    panoptic_ids,
    panoptic_instances,
    read_panoptic_rgb,
    read_sem_seg,
    read_training_image,
)


class LabeledPanopticMapper:
    """Labeled panoptic training sample with targets as ``Instances`` (gt_classes, gt_masks)."""

    @configurable
    def __init__(
        self,
        *,
        is_train: bool = True,
        geometry: GeometrySpec,
        color_aug_ssd: bool,
        size_divisibility: int,
        pad_value: int,
        num_classes: int,
    ):
        """
        Args:
            is_train: when False, ``geometry`` is a fixed resize (no crop, no flip) and no colour
                change is applied; ``rng`` may then be None.
            geometry: resize / crop / flip settings.
            color_aug_ssd: apply SSD's photometric distortion.
            size_divisibility: pad height and width up to a multiple of this (<= 0: no padding).
            pad_value: image value of padded pixels (masks are False there, sem_seg 255).
            num_classes: semantic label values must be below this (or 255).
        """
        self.is_train = is_train
        self.geometry = geometry
        self.color_aug_ssd = color_aug_ssd and is_train
        self.size_divisibility = size_divisibility
        self.pad_value = pad_value
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, is_train=True):
        check_rgb_format(cfg.INPUT.FORMAT)
        if is_train:
            geometry = GeometrySpec.from_config(cfg)
        else:
            min_size = int(cfg.INPUT.MIN_SIZE_TEST)
            geometry = GeometrySpec((min_size,), int(cfg.INPUT.MAX_SIZE_TEST), crop_enabled=False, flip_prob=0.0)
        return {
            "is_train": is_train,
            "geometry": geometry,
            "color_aug_ssd": bool(cfg.INPUT.COLOR_AUG_SSD),
            "size_divisibility": int(cfg.INPUT.SIZE_DIVISIBILITY),
            "pad_value": int(cfg.INPUT.PAD_VALUE),
            "num_classes": int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        }

    def __call__(self, dataset_dict, rng: np.random.Generator):
        if rng is None:
            if self.is_train:
                raise ValueError("the labeled training mapper needs a numpy Generator (mapper(dataset_dict, rng))")
            rng = np.random.default_rng(0)  # only feeds sample_seed; test-mode geometry draws nothing random
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_training_image(dataset_dict)
        pan_rgb = read_panoptic_rgb(dataset_dict, image.shape)
        sem_seg = read_sem_seg(dataset_dict, self.num_classes, image.shape)

        image, transforms = augment_image(image, self.geometry, self.color_aug_ssd, rng)
        pan_rgb = transforms.apply_segmentation(pan_rgb)
        if sem_seg is not None:
            sem_seg = transforms.apply_segmentation(sem_seg)

        canvas_hw, image_fields = padded_image_fields(image, self.size_divisibility, self.pad_value, rng)
        sample = {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            **image_fields,
            "instances": panoptic_instances(panoptic_ids(pan_rgb), dataset_dict["segments_info"], canvas_hw),
        }
        if sem_seg is not None:
            sample["sem_seg"] = padded_sem_seg(sem_seg, canvas_hw)
        return sample


@MAPPER_REGISTRY.register()
def labeled_panoptic(cfg, is_train=True):
    """Registry entry ``INPUT.DATASET_MAPPER_NAME: labeled_panoptic``."""
    return LabeledPanopticMapper(cfg, is_train)
