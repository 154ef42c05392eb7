"""SAM-guided refinement of one image's teacher pseudo-label (SemiRES port, ``extensions.md`` §2.3).

:func:`refine_with_sam` is a pure tensor function, run per image in the weak view's frame before
CutMix. Per teacher segment i (mask ``M_i``) and cached SAM mask ``S_j``:

0. scope: thing segments, stuff too only with ``apply_to_stuff``; pre-filter: SAM masks smaller
   than ``min_area_frac`` or larger than ``max_area_frac`` of the valid area are dropped;
1. at the SAM masks' resolution (the matching resolution; teacher masks are read there by nearest
   sampling) ONE fp32 matrix product of the flattened masks gives every intersection ``I[i, j]``;
2. IOM: the SAM mask of highest IoU with ``M_i``, if that IoU is strictly above ``iom_iou``;
3. guarded CPI: the union of the SAM masks that are *parts* of ``M_i`` (``I / |S_j| > cpi_cover``)
   or *guarded supersets* (``I / |M_i| > cpi_cover``, ``|S_j| <= cpi_max_growth |M_i|`` and at
   most ``cpi_max_spill`` of ``S_j`` inside other segments);
4. mode ``best`` keeps the candidate with the higher IoU to ``M_i`` (IOM on a tie); no candidate:
   the segment is *unmatched* and keeps ``M_i``;
5. the chosen regions ``R_i`` are pasted at [H, W] (nearest upsampling, or from full-resolution
   ``paste_masks`` of the chosen SAM masks when the caller has them) and composed into a valid
   map: a pixel in one ``R_i`` -> i; in several -> the one whose teacher mask held it, else the
   highest ``score_i * P_i(x)``; in none or in the padding -> no segment. With ``refined_first``
   (the default) a pixel claimed by a refined segment is decided among the refined ones only, so
   a refined thing can take back pixels the (shifted) teacher gave to an unrefined neighbour such
   as out-of-scope stuff; without it every region ranks equally (§2.3 step 5 read literally:
   things could then never grow into stuff). A segment left empty falls back to ``M_i`` and
   keeps the first rank (refinement never deletes a segment);
6. PWA (``pwa_enabled``): an unmatched in-scope segment's weight map is
   ``w(P) = offset - N(P; mu, var)`` with N the normal *density*
   ``exp(-(P - mu)^2 / (2 var)) / sqrt(2 pi var)``; with the defaults
   w(0.5) = 1.3 - 1.2616 = 0.0384 and w(0) = w(1) = 0.9386, the values of SemiRES's code. Every
   other weight is 1.

Nearest sampling between resolutions maps output index k of n to input index
floor((k + 1/2) * m / n) of m (cell centres, integer arithmetic), for teacher -> matching,
SAM -> [H, W] and probabilities -> [H, W] alike. Reading the top-left pixel of each cell instead
would shift stride-4 masks by 1.5 px (-0.05 mean IoU on the toy benchmark).
"""
import math
from typing import Callable, Dict, NamedTuple, Optional, Union

import torch

from .pseudo_labels import PanopticLabel
from .sam_settings import REFINE_MODES, SamRefineSettings

__all__ = ["REFINE_MODES", "RefineResult", "SamRefineSettings", "nearest_indices", "pwa_weights", "refine_with_sam",
           "resample_nearest"]

# Choice codes per segment.
UNMATCHED, BY_IOM, BY_CPI = 0, 1, 2


class Choice(NamedTuple):
    code: torch.Tensor  # int64 [N]: UNMATCHED / BY_IOM / BY_CPI
    iom_index: torch.Tensor  # int64 [N]: the best-IoU SAM mask (meaningful where code == BY_IOM)
    regions: torch.Tensor  # bool [N, L]: the chosen region, the teacher mask if unmatched
    uses: torch.Tensor  # bool [N, K]: the SAM masks whose union is the chosen region (none if unmatched)


class RefineResult(NamedTuple):
    """The refined label (same tables, new id map), PWA weight maps and telemetry: shares of the
    in-scope segments matched by IOM / CPI / unmatched (``iom_share``, ``cpi_share``,
    ``unmatched_share``), their mean IoU between teacher and refined mask
    (``mean_iou_teacher_refined``) and mean relative area change (``mean_area_change``), the number
    of in-scope segments (``segments_in_scope``) and of SAM masks (``sam_masks``), and the share of
    SAM masks the pre-filter dropped (``sam_dropped_share``; as too large, i.e. whole-image masks:
    ``sam_dropped_large_share``; the rest were too small)."""

    label: PanopticLabel
    weight_maps: torch.Tensor  # float [N, h, w] at prob_maps' resolution
    stats: Dict[str, float]


def nearest_indices(out_size: int, in_size: int, device) -> torch.Tensor:
    """Source index of each of ``out_size`` samples of a length-``in_size`` axis: the input cell
    holding the output cell's centre, floor((k + 1/2) in / out), so a round trip down and up
    neither shifts masks nor loses the pixels a match was counted on."""
    return (2 * torch.arange(out_size, device=device, dtype=torch.int64) + 1) * in_size // (2 * out_size)


def resample_nearest(maps: torch.Tensor, size) -> torch.Tensor:
    """``maps`` [..., h, w] read at ``size`` = (H', W') by :func:`nearest_indices` on both axes."""
    rows = nearest_indices(size[0], maps.shape[-2], maps.device)
    cols = nearest_indices(size[1], maps.shape[-1], maps.device)
    return maps[..., rows[:, None], cols[None, :]]


def pwa_weights(probs: torch.Tensor, settings: SamRefineSettings) -> torch.Tensor:
    """``offset - N(probs; mu, var)`` with N the normal density (see the module docstring)."""
    var = settings.pwa_var
    density = torch.exp(-(probs - settings.pwa_mu) ** 2 / (2.0 * var)) / math.sqrt(2.0 * math.pi * var)
    return settings.pwa_offset - density


def refine_with_sam(
    label: PanopticLabel,
    prob_maps: torch.Tensor,
    sam_masks: torch.Tensor,
    valid: torch.Tensor,
    settings: SamRefineSettings,
    paste_masks: Union[None, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]] = None,
) -> RefineResult:
    """Refine ``label`` (seg [H, W], ids 0..N) with ``sam_masks`` (bool [K, h', w'], same frame).

    ``prob_maps`` float [N, h, w]: each segment's sigmoid mask probability; ``valid`` bool [H, W]:
    the unpadded area. ``label`` is expected to be empty outside ``valid`` (``restrict_to``).
    With no SAM mask left after the pre-filter the input label object is returned unchanged;
    with none given at all (K = 0) the weight maps are all 1 too, otherwise the in-scope segments
    are SAM misses and get PWA weights when PWA is on.

    ``paste_masks`` (optional): the same K SAM masks at [H, W], as a bool tensor [K, H, W] or a
    function from sorted SAM indices (int64 [k]) to bool [k, H, W] that decodes only the chosen
    ones; the chosen regions are then pasted from them instead of upsampling the matching-
    resolution masks (at stride 4 the blocky upsampled edges cost the toy benchmark ~0.1 IoU).
    """
    _check_inputs(label, prob_maps, sam_masks, valid)
    num_segments, num_sam = label.num_segments, sam_masks.shape[0]
    device = label.seg.device
    ones = torch.ones(prob_maps.shape, dtype=torch.float32, device=device)
    seg_low = resample_nearest(label.seg, sam_masks.shape[-2:])
    valid_low = resample_nearest(valid, sam_masks.shape[-2:])
    sam_flat = (sam_masks & valid_low).flatten(1).to(torch.float32)  # [K, L]
    sam_area = sam_flat.sum(1)
    valid_area = valid_low.sum().to(torch.float32)
    kept = prefilter(sam_area, valid_area, settings)
    too_large = sam_area > settings.max_area_frac * valid_area  # whole-image masks, for telemetry
    in_scope = label.isthing.to(torch.bool) | settings.apply_to_stuff
    if num_sam == 0 or num_segments == 0 or not bool(kept.any()):
        # No SAM mask at all: nothing was tried, weights stay 1. All dropped: every segment missed.
        stats = _stats(label, label, torch.zeros(num_segments, dtype=torch.int64, device=device), in_scope,
                       kept, too_large, num_sam)
        return RefineResult(label, _weight_maps(prob_maps, ones, in_scope & (num_sam > 0), settings), stats)

    ids = torch.arange(1, num_segments + 1, device=device)
    teacher_low = (seg_low.flatten()[None, :] == ids[:, None]).to(torch.float32)  # [N, L]
    choice, _, regions_low, uses = choose_regions(teacher_low, sam_flat, kept, in_scope, settings)
    if paste_masks is None:
        pasted = resample_nearest(regions_low.view(num_segments, *sam_masks.shape[-2:]), label.seg.shape)
    else:
        pasted = _union_at_full_resolution(uses, paste_masks, label.seg.shape)
    regions = _paste(label, choice, pasted, valid)
    choice, refined = _fall_back_until_non_empty(label, choice, regions, prob_maps, valid,
                                                 settings.refined_first)
    out = PanopticLabel(refined, label.classes, label.isthing, label.scores)
    stats = _stats(label, out, choice, in_scope, kept, too_large, num_sam)
    return RefineResult(out, _weight_maps(prob_maps, ones, in_scope & (choice == UNMATCHED), settings), stats)


def prefilter(sam_area: torch.Tensor, valid_area: torch.Tensor, settings: SamRefineSettings) -> torch.Tensor:
    """Bool [K]: SAM masks neither smaller than min_area_frac (nor empty) nor larger than
    max_area_frac of the valid area."""
    large_enough = (sam_area >= settings.min_area_frac * valid_area) & (sam_area > 0)
    return large_enough & (sam_area <= settings.max_area_frac * valid_area)


def choose_regions(teacher: torch.Tensor, sam: torch.Tensor, kept: torch.Tensor, in_scope: torch.Tensor,
                   settings: SamRefineSettings) -> Choice:
    """Steps 1-4 on flattened masks (teacher float [N, L], sam float [K, L])."""
    inter = teacher @ sam.T  # [N, K]; exact integer counts in fp32 up to 2^24 pixels
    teacher_area = teacher.sum(1, keepdim=True)
    sam_area = sam.sum(1)[None, :]
    allowed = kept[None, :] & in_scope[:, None] & (teacher_area > 0)
    iou = _safe_ratio(inter, teacher_area + sam_area - inter)
    best_iou, best_sam = torch.where(allowed, iou, -1.0).max(1)
    has_iom = best_iou > settings.iom_iou

    part = _safe_ratio(inter, sam_area) > settings.cpi_cover
    spill = _safe_ratio(inter.sum(0, keepdim=True) - inter, sam_area)
    superset = ((_safe_ratio(inter, teacher_area) > settings.cpi_cover)
                & (sam_area <= settings.cpi_max_growth * teacher_area)
                & (spill <= settings.cpi_max_spill))
    accepted = (part | superset) & allowed
    has_cpi = accepted.any(1)
    union = (accepted.to(torch.float32) @ sam) > 0  # [N, L]
    union_inter = (union.to(torch.float32) * teacher).sum(1)
    cpi_iou = _safe_ratio(union_inter, union.sum(1) + teacher_area[:, 0] - union_inter)

    if settings.mode == "iom":
        has_cpi = torch.zeros_like(has_cpi)
    elif settings.mode == "cpi":
        has_iom = torch.zeros_like(has_iom)
    take_iom = has_iom & (~has_cpi | (best_iou >= cpi_iou))
    choice = torch.where(take_iom, BY_IOM, torch.where(has_cpi, BY_CPI, UNMATCHED))
    iom_uses = torch.zeros_like(accepted).scatter_(1, best_sam[:, None], True)
    uses = torch.where((choice == BY_IOM)[:, None], iom_uses, accepted & (choice == BY_CPI)[:, None])
    regions = torch.where((choice == BY_IOM)[:, None], sam[best_sam] > 0,
                          torch.where((choice == BY_CPI)[:, None], union, teacher > 0))
    return Choice(choice, best_sam, regions, uses)


def compose(label: PanopticLabel, regions: torch.Tensor, prob_maps: torch.Tensor, valid: torch.Tensor,
            first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Step 5: the id map [H, W] of the regions bool [N, H, W] (already restricted to ``valid``).

    ``first`` (bool [N], optional): segments whose regions outrank the others' (a pixel that one of
    them claims is decided among them only)."""
    if first is not None:
        claimed_first = (regions & first[:, None, None]).any(0)
        regions = regions & (first[:, None, None] | ~claimed_first[None])
    count = regions.sum(0)
    teacher_index = (label.seg - 1).clamp(min=0)
    teacher_keeps = (label.seg > 0) & regions.gather(0, teacher_index[None])[0]
    probs = resample_nearest(prob_maps.to(torch.float32), label.seg.shape)  # [N, H, W]
    score_map = torch.where(regions, label.scores.to(torch.float32)[:, None, None] * probs, -math.inf)
    by_score = score_map.argmax(0) + 1
    refined = torch.where(teacher_keeps, label.seg, by_score)
    return torch.where((count > 0) & valid, refined, 0)


def _union_at_full_resolution(uses: torch.Tensor, paste_masks, size) -> torch.Tensor:
    """Bool [N, H, W]: per segment the union of the full-resolution SAM masks it uses."""
    chosen = torch.nonzero(uses.any(0)).flatten()
    masks = paste_masks[chosen] if isinstance(paste_masks, torch.Tensor) else paste_masks(chosen)
    if tuple(masks.shape) != (len(chosen), *size) or masks.dtype != torch.bool:
        raise ValueError(f"paste_masks must give bool [{len(chosen)}, {size[0]}, {size[1]}] for the chosen SAM "
                         f"masks, got {masks.dtype} of shape {tuple(masks.shape)}")
    union = uses[:, chosen].to(torch.float32) @ masks.to(uses.device).flatten(1).to(torch.float32)
    return (union > 0).view(len(uses), *size)


def _paste(label: PanopticLabel, choice: torch.Tensor, pasted: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Regions bool [N, H, W]: the pasted SAM region of matched segments, the teacher mask of
    unmatched ones, inside ``valid``."""
    ids = torch.arange(1, label.num_segments + 1, device=label.seg.device)
    teacher = label.seg[None] == ids[:, None, None]
    return torch.where((choice != UNMATCHED)[:, None, None], pasted, teacher) & valid


def _fall_back_until_non_empty(label, choice, regions, prob_maps, valid, refined_first: bool):
    """Compose; segments left empty become unmatched (keep M_i, and with ``refined_first`` stay in
    the first rank) and the map is composed again, until none is empty: a fallen-back segment
    keeps all its teacher pixels, so this ends within N rounds. Returns (choice, id map)."""
    ids = torch.arange(1, label.num_segments + 1, device=label.seg.device)
    teacher = (label.seg[None] == ids[:, None, None]) & valid
    teacher_present = teacher.flatten(1).any(1)
    first = choice != UNMATCHED
    while True:
        refined = compose(label, regions, prob_maps, valid, first if refined_first else None)
        area = torch.bincount(refined.flatten(), minlength=label.num_segments + 1)[1:]
        emptied = (area == 0) & teacher_present & (choice != UNMATCHED)
        if not bool(emptied.any()):
            return choice, refined
        choice = torch.where(emptied, UNMATCHED, choice)
        regions = torch.where(emptied[:, None, None], teacher, regions)


def _weight_maps(prob_maps, ones, adjusted, settings: SamRefineSettings) -> torch.Tensor:
    if not settings.pwa_enabled or not bool(adjusted.any()):
        return ones
    return torch.where(adjusted[:, None, None], pwa_weights(prob_maps.to(torch.float32), settings), ones)


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), 0.0)


def _stats(before: PanopticLabel, after: PanopticLabel, choice, in_scope, kept, too_large,
           num_sam: int) -> Dict[str, float]:
    """Step 9 telemetry over the in-scope segments (IoU and area change at [H, W])."""
    n = before.num_segments
    bins = n + 1
    area_before = torch.bincount(before.seg.flatten(), minlength=bins)[1:].to(torch.float32)
    area_after = torch.bincount(after.seg.flatten(), minlength=bins)[1:].to(torch.float32)
    same = before.seg == after.seg
    inter = torch.bincount(before.seg[same].flatten(), minlength=bins)[1:].to(torch.float32)
    iou = _safe_ratio(inter, area_before + area_after - inter)
    change = _safe_ratio(area_after - area_before, area_before)
    scope = in_scope.to(torch.float32)
    count = float(scope.sum())
    denominator = max(count, 1.0)

    def share(mask):
        return float((mask.to(torch.float32) * scope).sum()) / denominator

    return {
        "segments_in_scope": count,
        "iom_share": share(choice == BY_IOM),
        "cpi_share": share(choice == BY_CPI),
        "unmatched_share": share(choice == UNMATCHED),
        "mean_iou_teacher_refined": float((iou * scope).sum()) / denominator if count else 1.0,
        "mean_area_change": float((change * scope).sum()) / denominator,
        "sam_masks": float(num_sam),
        "sam_dropped_share": float((~kept).sum()) / num_sam if num_sam else 0.0,
        "sam_dropped_large_share": float(too_large.sum()) / num_sam if num_sam else 0.0,
    }


def _check_inputs(label: PanopticLabel, prob_maps, sam_masks, valid) -> None:
    n = label.num_segments
    if label.seg.dim() != 2:
        raise ValueError(f"label.seg must be [H, W], got shape {tuple(label.seg.shape)}")
    if prob_maps.dim() != 3 or prob_maps.shape[0] != n:
        raise ValueError(f"prob_maps must be [N={n}, h, w], got shape {tuple(prob_maps.shape)}")
    if sam_masks.dim() != 3 or sam_masks.dtype != torch.bool:
        raise ValueError(f"sam_masks must be bool [K, h, w], got {sam_masks.dtype} of shape {tuple(sam_masks.shape)}")
    if tuple(valid.shape) != tuple(label.seg.shape) or valid.dtype != torch.bool:
        raise ValueError(f"valid must be bool {tuple(label.seg.shape)}, got {valid.dtype} of shape {tuple(valid.shape)}")
