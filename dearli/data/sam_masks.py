"""Cached SAM masks of any image, read once and moved into a training view's frame.

One home for what both consumers of the SAM cache need (``dearli.data.sam_format`` is the file
format; this module is the geometry and the error policy on top of it):

- the warm-up mapper (``sam_pseudo_label``): the image's masks under the crop's resize, crop and
  flip, as class-agnostic targets;
- the unlabeled mapper with ``SSL.SAM_REFINE.ENABLED``: the masks of the main image and of the
  CutMix partner under exactly their weak views' resize, crop, flip and bottom-right padding, zero
  in the padding, reduced to the matching stride (``SSL.SAM_REFINE.MATCH_STRIDE``), and at full
  resolution bit-packed (``SSL.SAM_REFINE.PASTE_FULL_RESOLUTION``), for the teacher's SAM-guided
  refinement (``dearli.engine.sam_refine``).

It lives in ``dearli.data`` (not ``dearli.sam``, as extensions.md §2.3 names the module) because
the mappers are data-layer code and a lower layer never imports a higher one
(``tests/test_import_layers.py``); nothing here needs the SAM model.
"""
import logging
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import transforms as T

from .sam_format import SamLabelError, image_key, load_image_masks

logger = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("error", "skip")
_CV2_MAX_CHANNELS = 512  # cv2.resize refuses more channels than this


# ----------------------------------------------------------------------------- geometry
def _resize_packed(packed, transform):
    """Nearest resize of a HxWxC uint8 array (any C), pixel-identical to PIL's NEAREST."""
    size = (transform.new_w, transform.new_h)
    chunks = [
        cv2.resize(np.ascontiguousarray(packed[:, :, i : i + _CV2_MAX_CHANNELS]), size, interpolation=cv2.INTER_NEAREST_EXACT)
        for i in range(0, packed.shape[2], _CV2_MAX_CHANNELS)
    ]
    return np.concatenate([c.reshape(size[1], size[0], -1) for c in chunks], axis=2)


def transform_packed(transforms, masks) -> np.ndarray:
    """uint8 [H', W', ceil(N/8)]: bool masks [N, H, W] (N >= 1) bit-packed along N (numpy's bit
    order: mask 8c + b is bit 7 - b of channel c) and moved by a ``TransformList`` of resize / crop /
    flip transforms. One resize moves all of them at once, with OpenCV's INTER_NEAREST_EXACT: the
    same pixels as Detectron2's PIL-nearest ``apply_segmentation`` applied to each mask (tested)."""
    packed = np.packbits(masks, axis=0).transpose(1, 2, 0)
    for transform in transforms.transforms:
        if isinstance(transform, T.ResizeTransform):
            packed = _resize_packed(packed, transform)
        else:  # crop, flip, no-op: index arithmetic, valid for any channel count
            packed = transform.apply_segmentation(packed)
    return packed


def transform_masks(transforms, masks, stride: int = 1):
    """Apply a ``TransformList`` of resize/crop/flip transforms to bool masks [N, H, W]
    (:func:`transform_packed`). ``stride`` s > 1 then keeps the pixel (s*i + s//2, s*j + s//2) of
    every s x s cell, before unpacking (see :func:`masks_on_canvas`)."""
    if len(masks) == 0:
        moved = transforms.apply_segmentation(np.zeros(masks.shape[1:], dtype=np.uint8))
        return np.zeros((0, *_cell_centres(moved, stride).shape[:2]), dtype=bool)
    return _unpack(_cell_centres(transform_packed(transforms, masks), stride), len(masks))


def _unpack(packed: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(packed, axis=2, count=count).transpose(2, 0, 1).astype(bool)


def unpack_masks(packed: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """bool [k, H, W]: the masks ``indices`` (int64 [k]) of bit-packed masks uint8 [C, H, W]
    (``sam_masks_packed``, numpy's bit order); tensor ops only, on the tensors' device."""
    shifts = (7 - indices % 8).to(torch.uint8)
    return ((packed[indices // 8] >> shifts[:, None, None]) & 1).bool()


def _cell_centres(array: np.ndarray, stride: int) -> np.ndarray:
    """Rows and columns (the first two axes) s*i + s//2 of ``array``: the centre pixel of each s x s cell."""
    return array[stride // 2 :: stride, stride // 2 :: stride]


def masks_on_canvas(masks: np.ndarray, canvas_hw, stride: int = 1, strided: bool = False) -> torch.Tensor:
    """bool [N, ceil(H/s), ceil(W/s)]: ``masks`` [N, h, w] at the top-left of an all-False canvas of
    (H, W) (the views' bottom-right padding), at stride ``s``.

    Stride-s cell (i, j) is canvas pixel (s*i + s//2, s*j + s//2), its centre: the nearest sampling
    ``dearli.engine.sam_refine.nearest_indices`` applies to the teacher's masks (for a canvas that is
    a multiple of s), so a SAM mask equal to a teacher segment stays equal at the matching
    resolution, unshifted. ``strided``: ``masks`` are already sampled so (:func:`transform_masks`
    with ``stride``)."""
    if stride < 1:
        raise ValueError(f"SSL.SAM_REFINE.MATCH_STRIDE must be >= 1, got {stride}")
    if not strided:
        masks = _cell_centres(masks.transpose(1, 2, 0), stride).transpose(2, 0, 1)
    height, width = (-(-int(side) // stride) for side in canvas_hw)
    if masks.shape[1] > height or masks.shape[2] > width:
        raise ValueError(f"masks of {masks.shape[1]}x{masks.shape[2]} at stride {stride} do not fit the canvas "
                         f"{tuple(canvas_hw)}")
    canvas = np.zeros((len(masks), height, width), dtype=bool)
    canvas[:, : masks.shape[1], : masks.shape[2]] = masks
    return torch.from_numpy(canvas)


# ----------------------------------------------------------------------------- reading
class SamMaskCache:
    """Reads an image's cached SAM masks with one error policy.

    Args:
        label_dir: the SAM label folder of every image (the one holding ``meta.json``); empty = the
            folder each dataset dict names in ``sam_label_dir`` (``register_sam_dataset``).
        on_error: "error" raises :class:`SamLabelError` naming the image and the folder; "skip"
            logs it once per image and returns None (the caller goes on without masks).
        config_key: the key that sets ``on_error``, named in messages.
    """

    def __init__(self, label_dir: str = "", on_error: str = "error", config_key: str = "SAM.ON_CORRUPT_FILE"):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"{config_key}={on_error!r} must be one of {ON_ERROR_CHOICES}")
        self.label_dir = label_dir
        self.on_error = on_error
        self.config_key = config_key
        self.skipped = 0  # images returned without masks by this reader (this process)
        self._reported = set()

    def label_dir_of(self, dataset_dict) -> str:
        label_dir = self.label_dir or dataset_dict.get("sam_label_dir")
        if not label_dir:
            raise SamLabelError(
                f"no SAM mask folder for {dataset_dict['file_name']}: set SAM.LABEL_DIR (or "
                "SSL.SAM_REFINE.LABEL_DIR) or register the dataset with one "
                "(dearli.data.datasets.sam_images.register_sam_dataset)"
            )
        return label_dir

    def read(self, dataset_dict, image_hw) -> Optional[np.ndarray]:
        """bool [N, H, W] masks of the image (original size ``image_hw``), or None when skipped."""
        try:
            label_dir = self.label_dir_of(dataset_dict)
            key = dataset_dict.get("sam_key") or image_key(dataset_dict["file_name"])
            _, masks = load_image_masks(label_dir, key)
            if masks.shape[1:] != tuple(image_hw):
                raise SamLabelError(
                    f"SAM masks of {key!r} in {label_dir} are {masks.shape[1]}x{masks.shape[2]} but image "
                    f"{dataset_dict['file_name']} is {image_hw[0]}x{image_hw[1]}; regenerate them"
                )
            return masks
        except SamLabelError as e:
            if self.on_error == "error":
                raise
            self.skipped += 1
            if dataset_dict["file_name"] not in self._reported:
                self._reported.add(dataset_dict["file_name"])
                logger.warning("%s=skip (%d images skipped so far in this process): %s", self.config_key, self.skipped, e)
            return None

    def in_view(self, dataset_dict, image_hw, transforms, canvas_hw, stride: int = 1) -> Optional[torch.Tensor]:
        """The image's masks in a view's frame: ``transforms`` (the view's resize, crop and flip),
        bottom-right padding to ``canvas_hw`` (False there), stride ``stride``
        (:func:`masks_on_canvas`); None when the image is skipped."""
        return self.view_fields(dataset_dict, image_hw, transforms, canvas_hw, stride)["sam_masks"]

    def view_fields(self, dataset_dict, image_hw, transforms, canvas_hw, stride: int = 1,
                    full_resolution: bool = False) -> Dict[str, Optional[torch.Tensor]]:
        """The sample fields of the image's masks in a view's frame: ``sam_masks`` (:meth:`in_view`)
        and, with ``full_resolution``, ``sam_masks_packed``: the same masks at the canvas size,
        bit-packed uint8 [ceil(K/8), H, W] (:func:`unpack_masks`; 1/8 of the bool masks' memory),
        for pasting the chosen ones at full resolution. None values when the image is skipped."""
        if stride < 1:
            raise ValueError(f"SSL.SAM_REFINE.MATCH_STRIDE must be >= 1, got {stride}")
        masks = self.read(dataset_dict, image_hw)
        fields = {"sam_masks": None}
        if full_resolution:
            fields["sam_masks_packed"] = None
        if masks is None:
            return fields
        if len(masks) == 0:
            packed = np.zeros((*transform_masks(transforms, masks).shape[1:], 0), dtype=np.uint8)
        else:
            packed = transform_packed(transforms, masks)
        fields["sam_masks"] = masks_on_canvas(_unpack(_cell_centres(packed, stride), len(masks)), canvas_hw, stride,
                                              strided=True)
        if full_resolution:
            canvas = np.zeros((packed.shape[2], *canvas_hw), dtype=np.uint8)
            canvas[:, : packed.shape[0], : packed.shape[1]] = packed.transpose(2, 0, 1)
            fields["sam_masks_packed"] = torch.from_numpy(canvas)
        return fields


def refine_mask_cache(cfg) -> Tuple[Optional[SamMaskCache], int, bool]:
    """(reader of the unlabeled images' SAM masks, None when SSL.SAM_REFINE is off; matching
    stride; emit full-resolution packed masks too). The folder: SSL.SAM_REFINE.LABEL_DIR, else
    SAM.LABEL_DIR, else each dataset dict's own."""
    refine = cfg.SSL.SAM_REFINE
    stride, full_resolution = int(refine.MATCH_STRIDE), bool(refine.PASTE_FULL_RESOLUTION)
    if not refine.ENABLED:
        return None, stride, full_resolution
    label_dir = refine.LABEL_DIR or cfg.SAM.LABEL_DIR
    return SamMaskCache(label_dir, refine.MISSING_MASKS, "SSL.SAM_REFINE.MISSING_MASKS"), stride, full_resolution
