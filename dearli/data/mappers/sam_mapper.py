"""Mapper "sam_pseudo_label": an image + its class-agnostic pseudo-labels -> one warm-up sample.

Geometry and colour are the labeled mapper's (``dearli.data.mappers.augmentation``): resize-shortest-
edge -> random crop -> SSD colour (INPUT.COLOR_AUG_SSD) -> horizontal flip -> padding to a multiple of
INPUT.SIZE_DIVISIBILITY with INPUT.PAD_VALUE, with every draw from the loader's ``rng``. The masks
follow exactly the image's transforms. Reading them and moving them with the crop is
``dearli.data.sam_masks`` (shared with the unlabeled mapper, which reads the same cache for the
SAM-guided refinement of pseudo-labels).

Targets (spec §3.2, with bug B4 fixed):
- every mask becomes one instance of class 0 ("segment"); ``Instances(gt_classes, gt_masks)`` as in
  the contract, masks False on the padding;
- masks with fewer than ``max(1, SAM.MIN_MASK_AREA)`` pixels left after the crop are dropped, so no
  query is trained towards an empty mask and ``num_masks`` counts only real targets;
- overlapping SAM masks stay overlapping instance targets. The set loss matches each target to its
  own query (Hungarian matching, one query per target) and scores each matched pair by itself, so
  a pixel may belong to several targets; painting them into a panoptic map would instead delete
  the parts of large masks that smaller ones cover. The reference does the same.

Bad labels: a missing, corrupt or mismatched label file raises ``SamLabelError`` naming the file.
With ``SAM.ON_CORRUPT_FILE: "skip"`` it is logged (once per file) and the image is returned with no
targets; with the warm-up's class-loss weight 0 such a sample adds no loss, i.e. it is skipped.
"""
import copy

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import Instances

from ..registry import MAPPER_REGISTRY
from ..sam_masks import SamMaskCache, transform_masks  # noqa: F401  (transform_masks re-exported)
from .augmentation import GeometrySpec, augment_image, pad_bottom_right, padded_image_fields
from .panoptic_targets import read_training_image


# ----------------------------------------------------------------------------- targets
def class_agnostic_instances(masks, canvas_hw, min_area):
    """Instances of class 0 for the masks with at least ``max(1, min_area)`` pixels, padded to the canvas."""
    keep = masks.sum(axis=(1, 2)) >= max(1, int(min_area))
    kept = torch.from_numpy(np.ascontiguousarray(masks[keep]))
    instances = Instances(tuple(canvas_hw))
    instances.gt_classes = torch.zeros(len(kept), dtype=torch.int64)
    instances.gt_masks = pad_bottom_right(kept, canvas_hw, False) if len(kept) else torch.zeros((0, *canvas_hw), dtype=torch.bool)
    return instances


# ----------------------------------------------------------------------------- mapper
class SamPseudoLabelMapper:
    """Warm-up training sample: augmented image + class-agnostic instance targets from SAM masks."""

    @configurable
    def __init__(self, *, geometry: GeometrySpec, color_aug_ssd: bool, size_divisibility: int, pad_value: int,
                 label_dir: str = "", min_mask_area: int = 1, on_corrupt: str = "error", image_format: str = "RGB"):
        """
        Args:
            geometry: resize / crop / flip settings (INPUT.*).
            color_aug_ssd: apply SSD's photometric distortion to the image.
            size_divisibility, pad_value: padding of the crop (INPUT.SIZE_DIVISIBILITY, PAD_VALUE).
            label_dir: label folder for every image (SAM.LABEL_DIR); empty = each dataset dict's
                ``sam_label_dir`` (the folder its registration names).
            min_mask_area: drop masks with fewer pixels after augmentation (SAM.MIN_MASK_AREA).
            on_corrupt: "error" or "skip" (SAM.ON_CORRUPT_FILE).
        """
        self.mask_cache = SamMaskCache(label_dir, on_corrupt, "SAM.ON_CORRUPT_FILE")
        self.geometry = geometry
        self.color_aug_ssd = color_aug_ssd
        self.size_divisibility = size_divisibility
        self.pad_value = pad_value
        self.min_mask_area = min_mask_area
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if not is_train:
            raise ValueError("the sam_pseudo_label mapper is for training only (the warm-up has no evaluation)")
        return {
            "geometry": GeometrySpec.from_config(cfg),
            "color_aug_ssd": bool(cfg.INPUT.COLOR_AUG_SSD),
            "size_divisibility": int(cfg.INPUT.SIZE_DIVISIBILITY),
            "pad_value": int(cfg.INPUT.PAD_VALUE),
            "label_dir": cfg.SAM.LABEL_DIR,
            "min_mask_area": int(cfg.SAM.MIN_MASK_AREA),
            "on_corrupt": cfg.SAM.ON_CORRUPT_FILE,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict, rng: np.random.Generator):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_training_image(dataset_dict, self.image_format)
        height, width = image.shape[:2]
        masks = self.mask_cache.read(dataset_dict, (height, width))
        if masks is None:
            masks = np.zeros((0, height, width), dtype=bool)

        image, transforms = augment_image(image, self.geometry, self.color_aug_ssd, rng)
        masks = transform_masks(transforms, masks)

        canvas_hw, image_fields = padded_image_fields(image, self.size_divisibility, self.pad_value, rng)
        return {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
            "height": height,
            "width": width,
            **image_fields,
            "instances": class_agnostic_instances(masks, canvas_hw, self.min_mask_area),
        }


@MAPPER_REGISTRY.register()
def sam_pseudo_label(cfg, is_train=True):
    """Registry entry ``INPUT.DATASET_MAPPER_NAME: sam_pseudo_label``."""
    return SamPseudoLabelMapper(cfg, is_train)
