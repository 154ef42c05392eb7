"""SAM-guided refinement of the teacher's pseudo-labels (SemiRES, SSL.SAM_REFINE; extensions.md §1
step 4 and §2.3): the teacher-side wiring of the pure function
:func:`dearli.engine.sam_refine.refine_with_sam`.

Each weak view (main image and CutMix partner separately) is refined with its own SAM masks, which
the unlabeled mapper moved into that view's frame (``sample["sam_masks"]``,
``sample["cutmix"]["sam_masks"]``), BEFORE CutMix: the masks belong to one image, and the teacher is
never re-run on the mixed image. With SSL.SAM_REFINE.PASTE_FULL_RESOLUTION the chosen SAM masks are
pasted from the view's full-resolution bit-packed masks (``sample["sam_masks_packed"]``), unpacked
on the device for the chosen indices only. With PWA the per-segment weight maps are brought to the label's
resolution so that CutMix cuts them with exactly the box that cuts the segments
(``dearli.engine.mask_weights``). A view whose image has no cached masks (MISSING_MASKS "skip") keeps
its teacher label and unit weights; such views are counted. A refined view has no segment in its
padding (the refinement's input is restricted to the valid area).
"""
import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..data.sam_masks import unpack_masks
from .pseudo_labels import PanopticLabel, build_pseudo_labeled_sample, restrict_to
from .sam_refine import SamRefineSettings, refine_with_sam, resample_nearest

SCALAR_PREFIX = "ssl/sam_refine/"


class RefinementRecord(NamedTuple):
    """What the refinement did to one batch (telemetry and the pseudo-label quality hook)."""

    unrefined: List[PanopticLabel]  # the main views' teacher labels before refinement
    stats: Dict[str, float]  # refine_with_sam's statistics, mean over the refined views
    refined_views: int
    skipped_views: int  # views of images without cached SAM masks


class TeacherRefinement:
    """Refines a batch of teacher labels with the views' SAM masks (module docstring).

    Args:
        settings: the refinement's settings (SSL.SAM_REFINE.*).
        with_weights: SSL.SAM_REFINE.PWA.ENABLED: also return per-segment pixel-weight maps.
    """

    def __init__(self, settings: SamRefineSettings, with_weights: bool):
        self.settings = settings
        self.with_weights = with_weights
        self.last: Optional[RefinementRecord] = None

    @classmethod
    def from_config(cls, cfg) -> Optional["TeacherRefinement"]:
        """The refinement of SSL.SAM_REFINE, or None when it is off."""
        refine = cfg.SSL.SAM_REFINE
        return cls(SamRefineSettings.from_config(cfg), bool(refine.PWA.ENABLED)) if refine.ENABLED else None

    def refine(self, views: Sequence[Dict], segments: Sequence, labels: Sequence[PanopticLabel],
               num_main: int) -> Tuple[List[PanopticLabel], Optional[List[Optional[torch.Tensor]]]]:
        """(refined labels, weight maps float [N, H, W] per view or None without PWA).

        ``views``: the weak-view dicts in prediction order (``sam_masks``, ``valid_mask``);
        ``segments``: their predictions with ``prob_maps``; the first ``num_main`` are main views.
        """
        refined, weights, stats, skipped = [], [], [], 0
        for view, segment, label in zip(views, segments, labels):
            sam_masks = _sam_masks_of(view)
            if sam_masks is None:
                skipped += 1
                refined.append(label)
                weights.append(None)
                continue
            device = label.seg.device
            valid = view["valid_mask"].to(device, non_blocking=True)
            # Refinement works on the real pixels: a refined view has no segment in its padding.
            result = refine_with_sam(restrict_to(label, valid), prob_maps_of(label, segment),
                                     sam_masks.to(device, non_blocking=True), valid, self.settings,
                                     paste_masks=_full_resolution_masks(view, device))
            refined.append(result.label)
            weights.append(_at_label_size(result.weight_maps, result.label) if self.with_weights else None)
            stats.append(result.stats)
        self.last = RefinementRecord(list(labels[:num_main]), mean_stats(stats), len(stats), skipped)
        return refined, (weights if self.with_weights else None)


def main_and_partner(weights: Optional[List[Optional[torch.Tensor]]], main: int, partner: Optional[int]):
    """The (main, partner) weight maps of one sample for ``build_pseudo_labeled_sample``; None
    without PWA."""
    if weights is None:
        return None
    return weights[main], None if partner is None else weights[partner]


def prob_maps_of(label: PanopticLabel, prediction) -> torch.Tensor:
    """The probability maps of ``label``'s segments: those of ``prediction`` (the teacher's
    ``PanopticSegments``) when the label is its segments, else (the label was made from it by
    dropping, renumbering or merging segments, e.g. image tags in ``drop`` mode) row k = the
    pixel-wise max of the maps of the predicted segments that became segment k + 1, read off the id
    maps as in :func:`dearli.engine.mask_weights.compact_weight_maps`."""
    maps = prediction.prob_maps
    if label.seg is prediction.seg or (len(maps) == label.num_segments and torch.equal(label.seg, prediction.seg)):
        return maps
    new_id = torch.zeros(len(maps) + 1, dtype=torch.int64, device=maps.device).scatter_reduce(
        0, prediction.seg.flatten(), label.seg.flatten(), reduce="amax")[1:]
    out = maps.new_zeros((label.num_segments + 1, *maps.shape[1:]))
    out.scatter_reduce_(0, new_id[:, None, None].expand_as(maps), maps, reduce="amax", include_self=False)
    return out[1:]


def _sam_masks_of(view: Dict) -> Optional[torch.Tensor]:
    if "sam_masks" not in view:
        raise KeyError(f"{view.get('file_name', 'an unlabeled sample')}: SSL.SAM_REFINE.ENABLED but the sample has "
                       "no 'sam_masks'; build the unlabeled mapper from the same config")
    return view["sam_masks"]


def _full_resolution_masks(view: Dict, device):
    """The decoder of the chosen SAM masks at the view's size from ``sam_masks_packed``
    (SSL.SAM_REFINE.PASTE_FULL_RESOLUTION), or None (the refinement upsamples the strided masks)."""
    packed = view.get("sam_masks_packed")
    if packed is None:
        return None
    packed = packed.to(device, non_blocking=True)
    return lambda indices: unpack_masks(packed, indices)


def _at_label_size(weight_maps: torch.Tensor, label: PanopticLabel) -> torch.Tensor:
    """Weight maps [N, h, w] at the label's size [N, H, W], by the refinement's own nearest sampling
    (the frame in which it pasted SAM masks and read probabilities)."""
    size = tuple(label.seg.shape)
    if tuple(weight_maps.shape[-2:]) == size:
        return weight_maps.float()
    return resample_nearest(weight_maps.float(), size)


def mean_stats(stats: Sequence[Dict]) -> Dict[str, float]:
    """Per key, the mean over the views that report a finite value (a view without segments has no
    share of matched segments)."""
    values = {}
    for view_stats in stats:
        for key, value in view_stats.items():
            value = float(value)
            if math.isfinite(value):
                values.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in values.items()}


def log_refinement(storage, refinement: Optional[TeacherRefinement]) -> None:
    """``ssl/sam_refine/*`` of the latest batch into the event storage: the mean statistics, the
    number of refined views and of views skipped for missing SAM masks."""
    if refinement is None or refinement.last is None:
        return
    record = refinement.last
    scalars = {SCALAR_PREFIX + key: value for key, value in record.stats.items()}
    scalars[SCALAR_PREFIX + "refined_views"] = record.refined_views
    scalars[SCALAR_PREFIX + "skipped_views"] = record.skipped_views
    storage.put_scalars(smoothing_hint=False, **scalars)


def unrefined_targets(teacher, samples: Sequence[Dict]) -> List[Dict]:
    """The student targets the teacher's latest labels of ``samples`` (no CutMix) would have given
    without refinement (for the quality hook's "before refinement" scores)."""
    record = teacher.refinement.last
    return [
        build_pseudo_labeled_sample(sample, label, None, min_area=teacher.min_area,
                                    restrict_to_valid=teacher.restrict_to_valid)[0]
        for sample, label in zip(samples, record.unrefined)
    ]
