"""Teacher panoptic predictions -> student targets, with the CutMix of images and pseudo-labels.

A pseudo-label is held as a :class:`PanopticLabel`: an id map (0 = no segment, k = segment k) and
per-segment class / thing flag / teacher score tables. CutMix (dearli_method.md §2.4, UniMatch
style: the teacher is not re-run on the mixed image):

1. partner segment ids are offset by the main image's segment count;
2. inside the box the partner's ids (and its "no segment" pixels) overwrite the main image's;
3. stuff segments of the same class coming from the two images merge into one target, thing
   segments stay separate instances;
4. segments that vanished (no pixel left) are removed and ids are made contiguous again.

Everything is tensor arithmetic over the whole id map (``torch.unique`` groups segments, lookup
tables remap ids); there is no Python loop over segments. The reference's dead "confidence map"
and per-pixel-logit tensors (§6 B6) are not produced; the per-segment teacher score is kept and
becomes ``segment_weights`` only when MODEL.MASK_FORMER.PSEUDO_CONFIDENCE_WEIGHTING asks for it.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.structures import Instances

from .mask_weights import compact_weight_maps, cutmix_weight_maps, unit_weight_maps


@dataclass
class PanopticLabel:
    """One image's pseudo-label: ``seg`` int64 [H, W] with ids 0..N (0 = none) and [N] tables."""

    seg: torch.Tensor
    classes: torch.Tensor
    isthing: torch.Tensor
    scores: torch.Tensor

    @property
    def num_segments(self) -> int:
        return len(self.classes)


def restrict_to(label: PanopticLabel, keep: torch.Tensor) -> PanopticLabel:
    """``label`` with "no segment" outside ``keep`` (bool [H, W], e.g. the valid, unpadded area)."""
    return PanopticLabel(torch.where(keep.to(label.seg.device), label.seg, 0), label.classes, label.isthing, label.scores)


def merge_and_compact(label: PanopticLabel, min_area: int = 0) -> PanopticLabel:
    """Merge same-class stuff segments, drop segments with fewer than max(min_area, 1) pixels,
    renumber ids 1..K. A merged segment's score is the largest score of its parts.

    Fixed-shape tensor ops up to one read of K (the host must know how many targets there are)."""
    num = label.num_segments
    device = label.seg.device
    if num == 0:
        return label
    # Group of a segment: its first segment with the same key (a thing is its own key; stuff
    # shares the class), numbered in the order of first segments, so targets keep the segment order.
    positions = torch.arange(num, device=device)
    stuff = ~label.isthing
    same_key = (stuff[:, None] & stuff[None, :] & (label.classes[:, None] == label.classes[None, :])) | torch.eye(
        num, dtype=torch.bool, device=device
    )
    first_of_group = torch.where(same_key, positions[None, :], num).amin(1)
    opens_group = first_of_group == positions
    group_of_segment = (torch.cumsum(opens_group.to(torch.int64), 0) - 1)[first_of_group]
    segment_to_group = torch.cat([group_of_segment.new_full((1,), -1), group_of_segment])  # id 0 -> -1
    group_map = segment_to_group[label.seg]
    covered = group_map >= 0
    areas = torch.zeros(num, dtype=torch.int64, device=device).scatter_add_(
        0, group_map.clamp(min=0).flatten(), covered.flatten().to(torch.int64)
    )
    keep = (areas >= max(int(min_area), 1)) & (positions < opens_group.sum())
    new_id = torch.cumsum(keep.to(torch.int64), 0) * keep  # group -> 1..K, dropped -> 0
    seg = torch.where(covered, new_id[group_map.clamp(min=0)], 0)
    slot = torch.where(keep[group_of_segment], new_id[group_of_segment] - 1, num)  # dropped -> spare row
    classes = torch.zeros(num + 1, dtype=torch.int64, device=device).scatter(0, slot, label.classes)
    isthing = torch.zeros(num + 1, dtype=torch.bool, device=device).scatter(0, slot, label.isthing)
    scores = torch.full((num + 1,), float("-inf"), device=device).scatter_reduce(
        0, slot, label.scores.float(), reduce="amax"
    )
    kept = int(keep.sum())
    return PanopticLabel(seg, classes[:kept], isthing[:kept], scores[:kept])


def cutmix_labels(main: PanopticLabel, partner: PanopticLabel, box: torch.Tensor) -> PanopticLabel:
    """The pseudo-label of the CutMix image: ``partner`` inside ``box`` (bool [H, W]), ``main`` outside.

    The result is not compacted; pass it through :func:`merge_and_compact`.
    """
    if main.seg.shape != partner.seg.shape or box.shape != main.seg.shape:
        raise ValueError(
            f"CutMix needs equal canvas sizes: main {tuple(main.seg.shape)}, partner "
            f"{tuple(partner.seg.shape)}, box {tuple(box.shape)}"
        )
    offset_partner = torch.where(partner.seg > 0, partner.seg + main.num_segments, 0)
    seg = torch.where(box.to(main.seg.device, non_blocking=True), offset_partner, main.seg)
    return PanopticLabel(
        seg,
        torch.cat([main.classes, partner.classes]),
        torch.cat([main.isthing, partner.isthing]),
        torch.cat([main.scores, partner.scores]),
    )


def cutmix_image(main: torch.Tensor, partner: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``partner`` pixels inside ``box`` (bool [H, W]), ``main`` elsewhere; images [C, H, W]."""
    if box.device != main.device or partner.device != main.device:  # the loader's views share one
        box, partner = box.to(main.device, non_blocking=True), partner.to(main.device, non_blocking=True)
    return torch.where(box[None], partner, main)


def label_to_instances(label: PanopticLabel) -> Instances:
    """Detectron2 ``Instances`` with gt_classes int64 [K] and gt_masks bool [K, H, W]."""
    ids = torch.arange(1, label.num_segments + 1, device=label.seg.device)
    masks = label.seg[None] == ids[:, None, None]
    instances = Instances(tuple(label.seg.shape))
    instances.gt_classes = label.classes
    instances.gt_masks = masks
    return instances


def build_pseudo_labeled_sample(
    sample: Dict,
    main: PanopticLabel,
    partner: Optional[PanopticLabel],
    *,
    min_area: int = 0,
    restrict_to_valid: bool = False,
    with_segment_weights: bool = False,
    mask_weights: Optional[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = None,
) -> Tuple[Dict, PanopticLabel]:
    """The student's input for one unlabeled ``sample`` (see the unlabeled mapper's contract).

    Returns the strong (CutMixed) image, its valid mask, targets as ``instances``, the sample's
    ``sample_seed`` and, on request, ``segment_weights`` (teacher scores); and the final
    :class:`PanopticLabel` (for telemetry and visualisation). ``mask_weights`` = (main, partner)
    per-segment pixel-weight maps (``dearli.engine.mask_weights``; None = ones) make the sample
    carry ``mask_weights`` [K, H, W], composited by the same box as the segments.
    """
    image, valid = sample["strong_image"], sample["valid_mask"]
    if restrict_to_valid:
        main = restrict_to(main, valid)
    cutmix = sample.get("cutmix")
    weights = None if mask_weights is None else mask_weights[0]
    if mask_weights is not None and cutmix is None and weights is None:
        weights = unit_weight_maps(main)
    if cutmix is not None:
        if partner is None:
            raise ValueError(f"{sample.get('file_name')}: CutMix partner given without its pseudo-label")
        box = cutmix["box_mask"]
        if restrict_to_valid:
            partner = restrict_to(partner, cutmix["valid_mask"])
        image = cutmix_image(image, cutmix["strong_image"], box)
        valid = valid | box
        if mask_weights is not None:
            weights = cutmix_weight_maps(weights, mask_weights[1], box, main, partner)
        main = cutmix_labels(main, partner, box)
    label = merge_and_compact(main, min_area)
    out = {
        "file_name": sample.get("file_name"),
        "image_id": sample.get("image_id"),
        "height": sample.get("height"),
        "width": sample.get("width"),
        "image": image,
        "valid_mask": valid,
        "instances": label_to_instances(label),
        "sample_seed": sample["sample_seed"],
    }
    if with_segment_weights:
        out["segment_weights"] = label.scores
    if weights is not None:
        out["mask_weights"] = compact_weight_maps(main, label, weights)
    return out, label


def pseudo_label_statistics(labels: List[PanopticLabel], valid_masks: List[torch.Tensor], num_classes: int) -> Dict:
    """Telemetry of a batch of pseudo-labels: segments per image, mean score, pixel coverage, class
    counts (CPU int64 [C]) and the classes of all segments (CPU int64), read in one host copy."""
    if not labels:
        return {}
    device = labels[0].seg.device
    segments = sum(label.num_segments for label in labels)
    covered = sum(((label.seg > 0) & valid.to(device, non_blocking=True)).sum() for label, valid in zip(labels, valid_masks))
    valid_pixels = sum(int(valid.sum()) for valid in valid_masks)  # the loader's masks: on the host
    scores = torch.cat([label.scores.float() for label in labels])
    classes = torch.cat([label.classes for label in labels])
    # One copy to the host: [covered pixels, score sum, classes...] (float64 holds them exactly).
    packed = torch.cat([torch.stack([covered.double(), scores.double().sum()]), classes.double()]).cpu()
    host_classes = packed[2:].long()
    return {
        "pseudo_segments_per_image": segments / len(labels),
        "mean_teacher_score": float(packed[1]) / len(scores) if len(scores) else 0.0,
        "pseudo_pixel_coverage": float(packed[0]) / max(valid_pixels, 1),
        "class_counts": torch.bincount(host_classes, minlength=num_classes)[:num_classes],
        "classes": host_classes,
    }
