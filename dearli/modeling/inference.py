"""THE panoptic and semantic post-processing of one image's queries.

Used by the model at evaluation and by the teacher for pseudo-labels (method §1.6):

1. score, label = max / argmax of the class distribution over C+1 (last = void);
2. keep a query when label != void and score > ``object_threshold``;
3. each pixel goes to argmax over kept queries of score * sigmoid(mask logit); the segment of a
   query is {pixels assigned to it with sigmoid >= 0.5};
4. drop a segment when owned / full area < ``overlap_threshold`` (owned = every pixel the query wins
   by the argmax, also below sigmoid 0.5; full = sigmoid >= 0.5 anywhere), or when the full area or
   the segment is empty;
5. stuff segments of one class share an id, thing segments get one id each; ids are 1..n in the
   order of the first query of each segment; 0 = no segment.

Optional ``allowed_classes`` (bool [C], an image's tags) first limits every query's class
distribution to those classes + void (:mod:`.tag_constraint`); without it nothing changes.

The rule is computed with fixed-shape tensor ops only (no boolean indexing, no ``unique``, no host
read): :func:`panoptic_segments` returns tensors and a device-side segment count, so the teacher's
pseudo-label path waits for the device once per batch (:func:`trim_segments`), not per image.

On request (``prob_logits``, for the teacher's SAM-guided refinement) each segment also keeps its
probability map: sigmoid of its query's mask logits, the pixel-wise max over the queries of a
merged stuff segment (extensions.md §1 step 3). The segments themselves do not depend on it.
"""
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import torch

from .tag_constraint import restrict_class_scores


@dataclass
class PanopticSegments:
    """One image's panoptic segmentation as tensors: ``seg`` int64 [H, W] with ids 0..n (0 = no
    segment) and per id-1 tables ``classes`` int64, ``isthing`` bool, ``scores`` float32 (a merged
    stuff segment's score is the largest of its queries). Rows past ``count`` (int64 0-dim, on
    the device) are padding until :func:`trim_segments` cuts them. ``prob_maps`` float32
    [rows, h, w]: the segments' probability maps when asked for (None otherwise)."""

    seg: torch.Tensor
    classes: torch.Tensor
    isthing: torch.Tensor
    scores: torch.Tensor
    count: torch.Tensor
    prob_maps: Optional[torch.Tensor] = None


def panoptic_segments(
    class_scores: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_table: torch.Tensor,
    object_threshold: float,
    overlap_threshold: float,
    allowed_classes: Optional[torch.Tensor] = None,
    prob_logits: Optional[torch.Tensor] = None,
) -> PanopticSegments:
    """The rules 1-5 of the module docstring for one image, without a host round trip.

    Args:
        class_scores: [Q, C+1] class logits or log-probabilities; the last column is void.
        mask_logits: [Q, H, W] mask logits at the output resolution (any float dtype).
        thing_table: bool [C] on the device, True for thing classes (:func:`thing_table_of`).
        allowed_classes: optional bool [C]; classes outside it are never predicted (module docstring).
        prob_logits: [Q, h, w] mask logits (any resolution, e.g. the stride-4 logits ``mask_logits``
            were upsampled from) to make the segments' ``prob_maps`` of; None = no maps.
    """
    if allowed_classes is not None:
        class_scores = restrict_class_scores(class_scores, allowed_classes)
    num_queries, num_classes = class_scores.shape[0], class_scores.shape[-1] - 1
    device = mask_logits.device
    scores, labels = class_scores.float().softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_threshold)
    mask_probs = mask_logits.float().sigmoid()
    # Dropped queries never win a pixel; among kept ones the first maximum wins, as over the kept subset.
    weighted = torch.where(keep[:, None, None], scores[:, None, None] * mask_probs, -1.0)
    owner = weighted.argmax(0)  # [H, W]
    full = mask_probs >= 0.5
    owner_is_on = full.gather(0, owner[None])[0]
    owners = owner.flatten()
    full_area = full.sum((1, 2))
    owned_area = torch.zeros(num_queries, dtype=torch.int64, device=device).scatter_add_(0, owners, torch.ones_like(owners))
    segment_area = torch.zeros(num_queries, dtype=torch.int64, device=device).scatter_add_(
        0, owners, owner_is_on.flatten().to(torch.int64)
    )
    # The reference's numerator is every owned pixel, also those below sigmoid 0.5; only the kept
    # segment is the intersection. Same float64 ratio, so segments exactly at the threshold agree.
    owned_fraction = owned_area.double() / full_area.double().clamp(min=1)
    survives = keep & (full_area > 0) & (segment_area > 0) & (owned_fraction >= overlap_threshold)

    label_of_query = labels.clamp(max=num_classes - 1)  # void only on dropped queries
    is_thing = thing_table[label_of_query]
    segment_of_query, count = _segment_ids(label_of_query, is_thing, survives, num_classes)
    seg = torch.where(owner_is_on, segment_of_query[owner], 0)
    slot = torch.where(survives, segment_of_query - 1, num_queries)  # dropped queries -> a spare row
    classes = torch.zeros(num_queries + 1, dtype=torch.int64, device=device).scatter(0, slot, label_of_query)
    isthing = torch.zeros(num_queries + 1, dtype=torch.bool, device=device).scatter(0, slot, is_thing)
    best_score = scores.new_zeros(num_queries + 1).scatter_reduce(0, slot, scores, reduce="amax", include_self=False)
    prob_maps = None if prob_logits is None else segment_prob_maps(prob_logits, slot)
    return PanopticSegments(seg, classes[:num_queries], isthing[:num_queries], best_score[:num_queries], count, prob_maps)


def segment_prob_maps(prob_logits: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """float32 [Q, h, w]: row k = pixel-wise max of sigmoid(logits) over the queries with slot k
    (0 where no query has it); ``slot`` int64 [Q] in 0..Q, Q = dropped query."""
    num_queries = len(slot)
    probs = prob_logits.float().sigmoid()
    maps = probs.new_zeros((num_queries + 1, *probs.shape[1:]))
    index = slot[:, None, None].expand_as(probs)
    return maps.scatter_reduce_(0, index, probs, "amax", include_self=False)[:num_queries]


def _segment_ids(labels, is_thing, survives, num_classes: int):
    """Segment id (1..n, 0 = dropped) of every query and n (0-dim tensor).

    A thing query is its own segment; surviving stuff queries of one class share the segment of
    their first one. Ids follow the position of each segment's first query.
    """
    num_queries = len(labels)
    positions = torch.arange(num_queries, device=labels.device)
    stuff_position = torch.where(survives & ~is_thing, positions, num_queries)
    first_of_class = torch.full((num_classes,), num_queries, dtype=torch.int64, device=labels.device)
    first_of_class = first_of_class.scatter_reduce(0, labels, stuff_position, reduce="amin")
    first_query = torch.where(is_thing, positions, first_of_class[labels].clamp(max=num_queries - 1))
    opens_segment = survives & (first_query == positions)
    rank = torch.cumsum(opens_segment.to(torch.int64), 0)  # ids of segments opened up to each query
    return torch.where(survives, rank[first_query], 0), opens_segment.sum()


def thing_table_of(thing_ids: Collection[int], num_classes: int, device) -> torch.Tensor:
    """bool [C] on ``device``: True at the thing class ids (ids outside [0, C) are ignored)."""
    table = torch.zeros(num_classes, dtype=torch.bool)
    table[[i for i in thing_ids if 0 <= i < num_classes]] = True
    return table.to(device, non_blocking=True)


def trim_segments(segments: Sequence[PanopticSegments]) -> List[PanopticSegments]:
    """Cut every image's tables to its segment count, after one device-to-host copy of all counts."""
    if not segments:
        return []
    counts = torch.stack([s.count for s in segments]).tolist()
    return [
        PanopticSegments(s.seg, s.classes[:n], s.isthing[:n], s.scores[:n], s.count,
                         None if s.prob_maps is None else s.prob_maps[:n])
        for s, n in zip(segments, counts)
    ]


def panoptic_inference(
    class_scores: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_ids: Collection[int],
    object_threshold: float,
    overlap_threshold: float,
    allowed_classes: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segmentation of one image in Detectron2's format.

    Args:
        class_scores: [Q, C+1] class logits or log-probabilities (softmax makes them the same
            distribution); the last column is void.
        mask_logits: [Q, H, W] mask logits at the output resolution.
        thing_ids: contiguous class ids that are things.
        object_threshold, overlap_threshold: the rules 2 and 4 above.
        allowed_classes: optional bool [C], the classes a query may take (an image's tags).
    Returns:
        (pan_seg int32 [H, W], segments_info: list of {"id", "category_id", "isthing", "score"}).
        A merged stuff segment's score is the largest score of its queries.
    """
    table = thing_table_of(thing_ids, class_scores.shape[-1] - 1, mask_logits.device)
    [segments] = trim_segments([panoptic_segments(class_scores, mask_logits, table, object_threshold, overlap_threshold,
                                                   allowed_classes)])
    return as_detectron2_panoptic(segments)


def as_detectron2_panoptic(segments: PanopticSegments) -> Tuple[torch.Tensor, List[Dict]]:
    """(pan_seg int32 [H, W], segments_info) of trimmed segments."""
    rows = zip(segments.classes.tolist(), segments.isthing.tolist(), segments.scores.tolist())
    info = [{"id": i + 1, "category_id": int(c), "isthing": bool(t), "score": float(s)} for i, (c, t, s) in enumerate(rows)]
    return segments.seg.to(torch.int32), info


def semantic_inference(class_scores: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class scores [C, H, W] = sum over queries of p[q, c] * sigmoid(mask_q); void dropped."""
    class_probs = class_scores.float().softmax(-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", class_probs, mask_logits.float().sigmoid())
