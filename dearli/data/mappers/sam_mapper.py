"""Mapper "sam_pseudo_label": an image + its class-agnostic pseudo-labels -> one warm-up sample.

Geometry and colour are the labeled mapper's (``dearli.data.mappers.augmentation``): resize-shortest-
edge -> random crop -> SSD colour (INPUT.COLOR_AUG_SSD) -> horizontal flip -> padding to a multiple of
INPUT.SIZE_DIVISIBILITY with INPUT.PAD_VALUE, with every draw from the loader's ``rng``. The masks
follow exactly the image's transforms: they are bit-packed (8 masks per uint8 channel) so that one
resize moves all of them at once, with OpenCV's INTER_NEAREST_EXACT, which gives the same pixels as
Detectron2's PIL-nearest ``apply_segmentation`` applied to each mask (tested).

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
import logging

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..registry import MAPPER_REGISTRY
from ..sam_format import SamLabelError, image_key, load_image_masks
from .augmentation import GeometrySpec, augment_image, pad_bottom_right, padded_image_fields
from .panoptic_targets import read_training_image

logger = logging.getLogger(__name__)

ON_CORRUPT_CHOICES = ("error", "skip")
_CV2_MAX_CHANNELS = 512  # cv2.resize refuses more channels than this


# ----------------------------------------------------------------------------- mask geometry
def _resize_packed(packed, transform):
    """Nearest resize of a HxWxC uint8 array (any C), pixel-identical to PIL's NEAREST."""
    size = (transform.new_w, transform.new_h)
    chunks = [
        cv2.resize(np.ascontiguousarray(packed[:, :, i : i + _CV2_MAX_CHANNELS]), size, interpolation=cv2.INTER_NEAREST_EXACT)
        for i in range(0, packed.shape[2], _CV2_MAX_CHANNELS)
    ]
    return np.concatenate([c.reshape(size[1], size[0], -1) for c in chunks], axis=2)


def transform_masks(transforms, masks):
    """Apply a ``TransformList`` of resize/crop/flip transforms to bool masks [N, H, W]."""
    if len(masks) == 0:
        height, width = transforms.apply_segmentation(np.zeros(masks.shape[1:], dtype=np.uint8)).shape[:2]
        return np.zeros((0, height, width), dtype=bool)
    packed = np.packbits(masks, axis=0).transpose(1, 2, 0)  # HxWxceil(N/8), bit k of channel c = mask 8c+k
    for transform in transforms.transforms:
        if isinstance(transform, T.ResizeTransform):
            packed = _resize_packed(packed, transform)
        else:  # crop, flip, no-op: index arithmetic, valid for any channel count
            packed = transform.apply_segmentation(packed)
    return np.unpackbits(packed, axis=2, count=len(masks)).transpose(2, 0, 1).astype(bool)


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
        if on_corrupt not in ON_CORRUPT_CHOICES:
            raise ValueError(f"SAM.ON_CORRUPT_FILE={on_corrupt!r} must be one of {ON_CORRUPT_CHOICES}")
        self.geometry = geometry
        self.color_aug_ssd = color_aug_ssd
        self.size_divisibility = size_divisibility
        self.pad_value = pad_value
        self.label_dir = label_dir
        self.min_mask_area = min_mask_area
        self.on_corrupt = on_corrupt
        self.image_format = image_format
        self._reported = set()

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

    def _label_dir_of(self, dataset_dict):
        label_dir = self.label_dir or dataset_dict.get("sam_label_dir")
        if not label_dir:
            raise SamLabelError(
                f"no pseudo-label folder for {dataset_dict['file_name']}: set SAM.LABEL_DIR or register the "
                "dataset with one (dearli.data.datasets.sam_images.register_sam_dataset)"
            )
        return label_dir

    def _load_masks(self, dataset_dict, image_hw):
        """bool [N, H, W] masks of the image, or None when a bad file is skipped."""
        label_dir = self._label_dir_of(dataset_dict)
        key = dataset_dict.get("sam_key") or image_key(dataset_dict["file_name"])
        try:
            record, masks = load_image_masks(label_dir, key)
            if masks.shape[1:] != tuple(image_hw):
                raise SamLabelError(
                    f"pseudo-labels of {key!r} in {label_dir} are {masks.shape[1]}x{masks.shape[2]} but image "
                    f"{dataset_dict['file_name']} is {image_hw[0]}x{image_hw[1]}; regenerate them"
                )
            return masks
        except SamLabelError as e:
            if self.on_corrupt == "error":
                raise
            if key not in self._reported:
                self._reported.add(key)
                logger.warning("SAM.ON_CORRUPT_FILE=skip: %s; the image is used without targets", e)
            return None

    def __call__(self, dataset_dict, rng: np.random.Generator):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_training_image(dataset_dict, self.image_format)
        height, width = image.shape[:2]
        masks = self._load_masks(dataset_dict, (height, width))
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
