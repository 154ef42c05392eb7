"""Per-segment pixel-weight maps (SemiRES's PWA, ``SSL.SAM_REFINE.PWA``) through CutMix and the
target compaction, alongside the pseudo-labels they weight (``dearli.engine.pseudo_labels``).

A weight map is float [H, W] in its label's frame, one per segment (row k = segment id k + 1).
Convention: where a segment's own image is not visible (the main image inside the CutMix box, the
partner outside it), its map is 1, today's unweighted loss. Then the map of a target that merges a
main and a partner stuff segment of one class is simply the product of their maps: each is 1
where the other holds. The same box cuts labels and maps (extensions.md §2.3 step 8; the
reference merged its confidence maps without the box, spec B6).
"""
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # pseudo_labels imports this module
    from .pseudo_labels import PanopticLabel


def unit_weight_maps(label: "PanopticLabel") -> torch.Tensor:
    """float32 [N, H, W] of ones: the maps of a label without weights (e.g. an image without SAM masks)."""
    return torch.ones((label.num_segments, *label.seg.shape), device=label.seg.device)


def check_weight_maps(maps: torch.Tensor, label: "PanopticLabel", what: str) -> torch.Tensor:
    if maps.shape != (label.num_segments, *label.seg.shape):
        raise ValueError(f"{what}: weight maps {tuple(maps.shape)} do not fit the label's "
                         f"{label.num_segments} segments of {tuple(label.seg.shape)}")
    return maps


def cutmix_weight_maps(main: Optional[torch.Tensor], partner: Optional[torch.Tensor], box: torch.Tensor,
                       main_label: "PanopticLabel", partner_label: "PanopticLabel") -> torch.Tensor:
    """float [N_main + N_partner, H, W], rows in the order of ``cutmix_labels``' segments: the main
    maps outside ``box`` (bool [H, W]) and 1 inside, the partner maps inside and 1 outside.
    ``None`` = unit maps of that label."""
    main = unit_weight_maps(main_label) if main is None else check_weight_maps(main, main_label, "CutMix main")
    partner = (unit_weight_maps(partner_label) if partner is None
               else check_weight_maps(partner, partner_label, "CutMix partner"))
    inside = box.to(main.device, non_blocking=True)[None]
    return torch.cat([torch.where(inside, 1.0, main), torch.where(inside, partner, 1.0)])


def compact_weight_maps(before: "PanopticLabel", after: "PanopticLabel", maps: torch.Tensor) -> torch.Tensor:
    """The maps of ``after = merge_and_compact(before, ...)``: float [K, H, W], row k = the product
    of the maps of the segments of ``before`` that became segment k + 1 (dropped ones vanish).

    Which segment became which is read off the id maps: every pixel of a kept segment carries its
    new id, a dropped segment has none left, so the new id of segment i is the largest id of
    ``after`` over the pixels of i (0 = dropped)."""
    check_weight_maps(maps, before, "compaction")
    device = before.seg.device
    new_id = torch.zeros(before.num_segments + 1, dtype=torch.int64, device=device).scatter_reduce(
        0, before.seg.flatten(), after.seg.flatten(), reduce="amax")[1:]
    index = new_id[:, None, None].expand_as(maps)  # row 0 collects the dropped segments
    merged = maps.new_ones((after.num_segments + 1, *maps.shape[1:]))
    return merged.scatter_reduce_(0, index, maps, reduce="prod")[1:]
