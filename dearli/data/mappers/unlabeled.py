"""Mapper "unlabeled_weak_strong": an unlabeled image -> teacher (weak) and student (strong) views.

Spec §2.3–2.4. The weak view is resize / crop / flip only (INPUT.MIN_SIZE_TRAIN, INPUT.CROP, as for
labeled images); the strong view is the *same* crop with ColorJitter (always applied, random op
order as torchvision's), random grayscale and random Gaussian blur (INPUT.UNLABELED.*). With
probability INPUT.UNLABELED.CUTMIX_PROB the sample also carries a CutMix partner — another unlabeled
image, drawn by the loader, with its own weak and strong views — and a box inside the real pixels of
the partner crop (it may reach over the main image's padding). The student image is mixed later (by the engine, together with the teacher's
pseudo-labels), so the box is returned as a mask and no pixels are pasted here.

Call convention: ``mapper(dataset_dict, rng, draw_partner=None)``. ``draw_partner(rng)`` returns the
partner's dataset dict; without it no CutMix is made. Draw order from ``rng``: main views, CutMix
coin, partner choice, partner views, box.

With SSL.IMAGE_TAGS.ENABLED the sample and its ``cutmix`` entry also carry ``image_tags`` (bool
[C], multi-hot) and ``has_tags`` (:func:`dearli.data.image_tags.image_tag_fields`); reading them
draws nothing from ``rng``, so the views are those of a run without tags.

With SSL.SAM_REFINE.ENABLED the sample (and its ``cutmix`` entry) also carries ``sam_masks``: the
image's cached SAM masks under exactly its weak view's resize, crop, flip and padding, bool
[K, H/s, W/s] on the padded canvas at s = SSL.SAM_REFINE.MATCH_STRIDE (``dearli.data.sam_masks``),
or None for an image without masks under SSL.SAM_REFINE.MISSING_MASKS "skip"; with
PASTE_FULL_RESOLUTION also ``sam_masks_packed``, the same masks at the canvas size, bit-packed.
Reading them draws nothing from ``rng`` either.
"""
import copy
from typing import Callable, Optional, Tuple

import numpy as np
from detectron2.config import configurable

from ..registry import MAPPER_REGISTRY
from .augmentation import (
    GeometrySpec,
    StrongColorSpec,
    apply_strong_color,
    check_rgb_format,
    hwc_to_chw_tensor,
    pad_bottom_right,
    padded_size,
    sample_cutmix_box,
    sample_geometry,
    sample_seed_of,
    sample_strong_color,
    valid_mask,
)
from ..datasets.splits import image_only
from ..image_tags import image_tag_fields
from ..sam_masks import SamMaskCache, refine_mask_cache
from .panoptic_targets import panoptic_ids, panoptic_instances, read_panoptic_rgb, read_training_image


class UnlabeledWeakStrongMapper:
    """Weak/strong views of an unlabeled image, optionally with a CutMix partner and box."""

    @configurable
    def __init__(
        self,
        *,
        geometry: GeometrySpec,
        strong: StrongColorSpec,
        cutmix_prob: float,
        cutmix_area: Tuple[float, float],
        cutmix_aspect: Tuple[float, float],
        size_divisibility: int,
        pad_value: int,
        tag_classes: int = 0,
        sam_masks: Optional[SamMaskCache] = None,
        sam_stride: int = 4,
        sam_full_resolution: bool = False,
    ):
        """
        Args:
            geometry: resize / crop / flip settings shared by both views.
            strong: photometric settings of the student view.
            cutmix_prob: probability that a sample gets a CutMix partner and box.
            cutmix_area: box area range, as fractions of the partner crop's real-pixel area.
            cutmix_aspect: box height/width range.
            size_divisibility, pad_value: padding of every view (right/bottom).
            tag_classes: C, to carry image tags as multi-hot [C] vectors; 0 = no tag fields.
            sam_masks: reader of the cached SAM masks to emit (SSL.SAM_REFINE); None = emit none.
            sam_stride: stride of the emitted masks on the padded canvas (SSL.SAM_REFINE.MATCH_STRIDE).
            sam_full_resolution: also emit them bit-packed at the canvas size (PASTE_FULL_RESOLUTION).
        """
        for name, (low, high) in (("CUTMIX_AREA", cutmix_area), ("CUTMIX_ASPECT", cutmix_aspect)):
            if not 0 < low <= high:
                raise ValueError(f"INPUT.UNLABELED.{name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        self.geometry = geometry
        self.strong = strong
        self.cutmix_prob = cutmix_prob
        self.cutmix_area = tuple(cutmix_area)
        self.cutmix_aspect = tuple(cutmix_aspect)
        self.size_divisibility = size_divisibility
        self.pad_value = pad_value
        self.tag_classes = tag_classes
        self.sam_masks, self.sam_stride, self.sam_full_resolution = sam_masks, sam_stride, sam_full_resolution

    @classmethod
    def from_config(cls, cfg, is_train=True):
        if not is_train:
            raise ValueError("the unlabeled weak/strong mapper is for training only (is_train=False given)")
        check_rgb_format(cfg.INPUT.FORMAT)
        unlabeled = cfg.INPUT.UNLABELED
        sam_masks, sam_stride, sam_full_resolution = refine_mask_cache(cfg)
        return {
            "sam_masks": sam_masks,
            "sam_stride": sam_stride,
            "sam_full_resolution": sam_full_resolution,
            "geometry": GeometrySpec.from_config(cfg),
            "strong": StrongColorSpec.from_config(cfg),
            "cutmix_prob": float(unlabeled.CUTMIX_PROB),
            "cutmix_area": tuple(unlabeled.CUTMIX_AREA),
            "cutmix_aspect": tuple(unlabeled.CUTMIX_ASPECT),
            "size_divisibility": int(cfg.INPUT.SIZE_DIVISIBILITY),
            "pad_value": int(cfg.INPUT.PAD_VALUE),
            "tag_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if cfg.SSL.IMAGE_TAGS.ENABLED else 0,
        }

    def views(self, dataset_dict, rng):
        """(weak, strong) uint8 [3, h, w] views of one image, unpadded, with shared geometry, and the
        image's original (height, width)."""
        return self._views_and_geometry(dataset_dict, rng)[:3]

    def _views_and_geometry(self, dataset_dict, rng):
        image = read_training_image(copy.copy(dataset_dict))
        transforms = sample_geometry(image.shape[0], image.shape[1], self.geometry, rng)
        weak = hwc_to_chw_tensor(transforms.apply_image(image))
        strong = apply_strong_color(weak, sample_strong_color(self.strong, rng))
        return weak, strong, image.shape[:2], transforms

    def __call__(self, dataset_dict, rng: np.random.Generator, draw_partner: Optional[Callable] = None):
        return self._sample(dataset_dict, rng, draw_partner)[0]

    def with_ground_truth(self, dataset_dict, rng: np.random.Generator):
        """Evaluation only: the sample ``mapper(image_only(dataset_dict), rng)`` gives (no CutMix),
        plus ``gt_instances``: the dict's withheld panoptic ground truth (``pan_seg_file_name``,
        ``segments_info``) under the weak view's geometry, on the same padded canvas."""
        sample, transforms = self._sample(image_only(dataset_dict), rng, None)
        pan_rgb = read_panoptic_rgb(dataset_dict, (sample["height"], sample["width"], 3))
        pan_ids = panoptic_ids(transforms.apply_segmentation(pan_rgb))
        sample["gt_instances"] = panoptic_instances(pan_ids, dataset_dict["segments_info"],
                                                    tuple(sample["valid_mask"].shape))
        return sample

    def _sample(self, dataset_dict, rng, draw_partner):
        """The sample of ``__call__`` and the main image's geometric transforms."""
        weak, strong, (height, width), transforms = self._views_and_geometry(dataset_dict, rng)
        partner = None
        if draw_partner is not None and rng.random() < self.cutmix_prob:
            partner_dict = draw_partner(rng)
            partner = (partner_dict, *self._views_and_geometry(partner_dict, rng))

        image_hws = [weak.shape[-2:]] + ([partner[1].shape[-2:]] if partner else [])
        canvas_hw = padded_size(
            max(hw[0] for hw in image_hws), max(hw[1] for hw in image_hws), self.size_divisibility
        )
        sample = {
            "file_name": dataset_dict["file_name"],
            "image_id": dataset_dict["image_id"],
            "height": height,
            "width": width,
            "sample_seed": sample_seed_of(rng),
            **self._padded_views(weak, strong, canvas_hw),
            "cutmix": None,
        }
        if partner is not None:
            sample["cutmix"] = self._cutmix_entry(partner, canvas_hw, rng)
        if self.tag_classes:
            sample.update(image_tag_fields(dataset_dict, self.tag_classes))
        if self.sam_masks is not None:
            sample.update(self._sam_fields(dataset_dict, (height, width), transforms, canvas_hw))
            if partner is not None:
                partner_dict, _, _, partner_hw, partner_transforms = partner
                sample["cutmix"].update(self._sam_fields(partner_dict, partner_hw, partner_transforms, canvas_hw))
        return sample, transforms

    def _sam_fields(self, dataset_dict, image_hw, transforms, canvas_hw):
        return self.sam_masks.view_fields(dataset_dict, image_hw, transforms, canvas_hw, self.sam_stride,
                                          self.sam_full_resolution)

    def _padded_views(self, weak, strong, canvas_hw):
        return {
            "weak_image": pad_bottom_right(weak, canvas_hw, self.pad_value),
            "strong_image": pad_bottom_right(strong, canvas_hw, self.pad_value),
            "valid_mask": valid_mask(weak.shape[-2:], canvas_hw),
        }

    def _cutmix_entry(self, partner, canvas_hw, rng):
        partner_dict, weak, strong = partner[:3]
        # As in the reference the box lies anywhere in the partner crop, so it may cover the main
        # image's padding: the student's valid area becomes main valid | box (engine/pseudo_labels).
        box = sample_cutmix_box(tuple(weak.shape[-2:]), self.cutmix_area, self.cutmix_aspect, rng)
        entry = {
            "file_name": partner_dict["file_name"],
            **self._padded_views(weak, strong, canvas_hw),
            "box_mask": box.mask(canvas_hw),
        }
        if self.tag_classes:
            entry.update(image_tag_fields(partner_dict, self.tag_classes))
        return entry


@MAPPER_REGISTRY.register()
def unlabeled_weak_strong(cfg, is_train=True):
    """Registry entry ``unlabeled_weak_strong`` (chosen by the loader when SSL.ENABLED)."""
    return UnlabeledWeakStrongMapper(cfg, is_train)
