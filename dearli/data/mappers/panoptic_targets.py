"""Reading training images and panoptic annotations, and turning them into padded training targets.

Panoptic ground truth is COCO's format: an RGB PNG whose pixel id is ``R + 256 G + 256^2 B``
(panopticapi's ``rgb2id``; 0 = void) plus ``segments_info`` with contiguous ``category_id`` (what
Detectron2's and dearli's panoptic loaders produce). Files are read through
:mod:`dearli.data.datasets.validate` (errors name the file; PNG ids missing from the json are
refused). Geometric transforms act on the id map re-encoded as RGB uint8 (nearest neighbour, as
for the semantic map) and ids are decoded afterwards: torch cannot resize integer maps with nearest
interpolation, and PIL's nearest keeps the panoptic and semantic maps aligned.
"""
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances
from panopticapi.utils import id2rgb, rgb2id

from ..datasets import validate
from .augmentation import check_rgb_format, pad_bottom_right

SEM_SEG_IGNORE = 255


def read_training_image(dataset_dict, image_format="RGB") -> np.ndarray:
    """The dataset dict's image as RGB uint8 HxWx3 (conversions and errors: ``validate.read_rgb_image``),
    checked against the dict's height/width when present (and filled in when absent)."""
    check_rgb_format(image_format)
    image = validate.read_rgb_image(dataset_dict["file_name"])
    utils.check_image_size(dataset_dict, image)
    return image


def read_panoptic_rgb(dataset_dict, image_shape) -> np.ndarray:
    """The validated panoptic id map, RGB-encoded as uint8 HxWx3 for nearest-neighbour transforms."""
    ids = validate.read_panoptic_ids(dataset_dict["pan_seg_file_name"], dataset_dict["segments_info"])
    validate.check_same_size(dataset_dict["file_name"], image_shape, dataset_dict["pan_seg_file_name"], ids.shape)
    return id2rgb(ids)


def read_sem_seg(dataset_dict, num_classes, image_shape) -> Optional[np.ndarray]:
    """The semantic label PNG as uint8 HxW (contiguous ids, 255 ignore), or None if the dict has none."""
    file_name = dataset_dict.get("sem_seg_file_name")
    if not file_name:
        return None
    sem_seg = validate.read_sem_seg(file_name, num_classes, SEM_SEG_IGNORE)
    validate.check_same_size(dataset_dict["file_name"], image_shape, file_name, sem_seg.shape)
    return sem_seg


def panoptic_ids(pan_rgb: np.ndarray) -> np.ndarray:
    """int64 HxW segment ids of an RGB-encoded panoptic map."""
    return rgb2id(pan_rgb).astype(np.int64)


def panoptic_instances(pan_ids: np.ndarray, segments_info: List[dict], canvas_hw) -> Instances:
    """Targets on the padded canvas: one bool mask and contiguous class per kept segment.

    Crowd segments are dropped (Mask2Former's rule), and so are segments with no pixel left (e.g.
    cropped away), which would otherwise be matched and trained towards an empty mask (spec B4).
    Pixels of the padded area and of void (id 0) belong to no mask.
    """
    ids = torch.from_numpy(pan_ids)
    classes, masks = [], []
    for segment in segments_info:
        if segment.get("iscrowd", 0):
            continue
        if segment["id"] == 0:
            raise ValueError(f"segment id 0 is reserved for void in COCO panoptic PNGs: {segment}")
        mask = ids == segment["id"]
        if mask.any():
            classes.append(int(segment["category_id"]))
            masks.append(mask)
    instances = Instances(tuple(canvas_hw))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        instances.gt_masks = pad_bottom_right(torch.stack(masks), canvas_hw, False)
    else:
        instances.gt_masks = torch.zeros((0, *canvas_hw), dtype=torch.bool)
    return instances


def padded_sem_seg(sem_seg: np.ndarray, canvas_hw) -> torch.Tensor:
    """int64 [H, W] semantic target, padded with the ignore value 255."""
    sem = torch.from_numpy(np.ascontiguousarray(sem_seg).astype(np.int64))
    return pad_bottom_right(sem, canvas_hw, SEM_SEG_IGNORE)
