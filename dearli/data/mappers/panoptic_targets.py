"""Reading training images and panoptic annotations, and turning them into padded training targets.

Panoptic ground truth is COCO's format: an RGB PNG whose pixel id is ``R + 256 G + 256^2 B``
(panopticapi's ``rgb2id``; 0 = void) plus ``segments_info`` with Detectron2's contiguous
``category_id`` (what ``load_coco_panoptic_json`` produces). Geometric transforms are applied to the
RGB PNG itself (nearest neighbour, uint8) and ids are decoded afterwards, because torch cannot
resize integer id maps with nearest interpolation.
"""
from typing import List, Optional

import numpy as np
import torch
from detectron2.data import detection_utils as utils
from detectron2.structures import Instances
from panopticapi.utils import rgb2id

from .augmentation import pad_bottom_right

SEM_SEG_IGNORE = 255


def read_image_checked(file_name, image_format="RGB") -> np.ndarray:
    """An HWC uint8 image; grayscale and RGBA files are converted to RGB by PIL (alpha dropped).

    A missing, corrupt or truncated file raises an error that names it.
    """
    try:
        return utils.read_image(file_name, format=image_format)
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise OSError(f"cannot read image {file_name!r}: {e}") from e


def read_training_image(dataset_dict, image_format="RGB") -> np.ndarray:
    """The dataset dict's image, checked against its recorded height/width when present."""
    image = read_image_checked(dataset_dict["file_name"], image_format)
    utils.check_image_size(dataset_dict, image)
    return image


def read_panoptic_rgb(dataset_dict) -> np.ndarray:
    """The panoptic PNG as uint8 HxWx3 (ids still RGB-encoded), checked against the image size."""
    file_name = dataset_dict["pan_seg_file_name"]
    pan_rgb = read_image_checked(file_name, "RGB")
    expected = (dataset_dict.get("height"), dataset_dict.get("width"))
    if None not in expected and pan_rgb.shape[:2] != expected:
        raise ValueError(
            f"panoptic PNG {file_name!r} is {pan_rgb.shape[0]}x{pan_rgb.shape[1]} but its image "
            f"{dataset_dict['file_name']!r} is {expected[0]}x{expected[1]}"
        )
    return pan_rgb


def read_sem_seg(dataset_dict) -> Optional[np.ndarray]:
    """The semantic label PNG as uint8 HxW (contiguous ids, 255 ignore), or None if the dict has none."""
    file_name = dataset_dict.get("sem_seg_file_name")
    if not file_name:
        return None
    sem_seg = read_image_checked(file_name, "L")
    return sem_seg.squeeze(-1) if sem_seg.ndim == 3 else sem_seg


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
