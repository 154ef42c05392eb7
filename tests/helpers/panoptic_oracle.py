"""Test oracle: panoptic inference of one image with data-dependent shapes (the pre-batching code).

Kept only to check the sync-free production code (:mod:`dearli.modeling.inference`, and
``merge_and_compact`` of :mod:`dearli.engine.pseudo_labels`): the kept
queries are selected by boolean indexing and segments are numbered through ``torch.unique``, an
independent route to the same rule (overlap rule of the reference: owned / full area).
"""
from typing import Collection, Dict, List, Tuple

import torch


def oracle_panoptic_inference(
    class_scores: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_ids: Collection[int],
    object_threshold: float,
    overlap_threshold: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Panoptic segmentation of one image.

    Args:
        class_scores: [Q, C+1] class logits or log-probabilities (softmax makes them the same
            distribution); the last column is void.
        mask_logits: [Q, H, W] mask logits at the output resolution.
        thing_ids: contiguous class ids that are things.
        object_threshold, overlap_threshold: the rules 2 and 4 above.
    Returns:
        (pan_seg int32 [H, W], segments_info: list of {"id", "category_id", "isthing", "score"}).
        A merged stuff segment's score is the largest score of its queries.
    """
    num_classes = class_scores.shape[-1] - 1
    scores, labels = class_scores.float().softmax(-1).max(-1)
    keep = (labels != num_classes) & (scores > object_threshold)
    height, width = mask_logits.shape[-2:]
    pan_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    if not keep.any():
        return pan_seg, []
    scores, labels = scores[keep], labels[keep]
    mask_probs = mask_logits[keep].float().sigmoid()  # [K, H, W]
    owner = (scores[:, None, None] * mask_probs).argmax(0)  # [H, W] index into kept queries
    full = mask_probs >= 0.5
    owned = owner[None] == torch.arange(len(scores), device=owner.device)[:, None, None]
    full_area, owned_area, segment_area = full.sum((1, 2)), owned.sum((1, 2)), (owned & full).sum((1, 2))
    # The reference's numerator is every owned pixel, also those below sigmoid 0.5; only the kept
    # segment is the intersection. Same float64 ratio, so segments exactly at the threshold agree.
    owned_fraction = owned_area.double() / full_area.double().clamp(min=1)
    survives = (full_area > 0) & (segment_area > 0) & (owned_fraction >= overlap_threshold)
    if not survives.any():
        return pan_seg, []

    is_thing = _is_thing(labels, thing_ids)
    segment_of_query, num_segments = _segment_ids(labels, is_thing, survives, num_classes)
    # Pixel -> its owner's segment id, only where the owner's own mask is on (0 elsewhere).
    owner_is_on = full.gather(0, owner[None])[0]
    pan_seg = torch.where(owner_is_on, segment_of_query[owner], pan_seg).to(torch.int32)
    return pan_seg, _segments_info(segment_of_query, num_segments, labels, is_thing, scores)


def _is_thing(labels: torch.Tensor, thing_ids: Collection[int]) -> torch.Tensor:
    thing_table = torch.zeros(int(labels.max()) + 1, dtype=torch.bool)
    known = [i for i in thing_ids if 0 <= i < len(thing_table)]
    thing_table[known] = True
    return thing_table.to(labels.device)[labels]


def _segment_ids(labels, is_thing, survives, num_classes: int):
    """Segment id (1..n, 0 = dropped) of every kept query, and the number n of segments.

    A segment key is the class for stuff and ``num_classes + query position`` for a thing, so stuff
    queries of one class share a key. Ids follow the position of each key's first query.
    """
    positions = torch.arange(len(labels), device=labels.device)
    keys = torch.where(is_thing, num_classes + positions, labels)[survives]
    unique_keys, key_index = torch.unique(keys, return_inverse=True)
    first_position = torch.full((len(unique_keys),), len(labels), dtype=torch.int64, device=labels.device)
    first_position = first_position.scatter_reduce(0, key_index, positions[survives], reduce="amin")
    rank = torch.empty_like(first_position)
    rank[first_position.argsort()] = torch.arange(len(unique_keys), device=labels.device)
    segment_of_query = torch.zeros(len(labels), dtype=torch.int32, device=labels.device)
    segment_of_query[survives] = (rank[key_index] + 1).to(torch.int32)
    return segment_of_query, len(unique_keys)


def _segments_info(segment_of_query, num_segments: int, labels, is_thing, scores) -> List[Dict]:
    segment = segment_of_query.long() - 1
    member = segment >= 0
    best_score = scores.new_zeros(num_segments).scatter_reduce(
        0, segment[member], scores[member], reduce="amax", include_self=False
    )
    # Any member query gives the segment's class and kind.
    first_member = torch.zeros(num_segments, dtype=torch.int64, device=labels.device)
    first_member[segment[member]] = torch.nonzero(member)[:, 0]
    rows = zip(
        labels[first_member].tolist(), is_thing[first_member].tolist(), best_score.tolist()
    )
    return [
        {"id": i + 1, "category_id": int(c), "isthing": bool(t), "score": float(s)}
        for i, (c, t, s) in enumerate(rows)
    ]


def oracle_merge_and_compact(label, min_area: int = 0):
    """Merge same-class stuff segments, drop segments with fewer than max(min_area, 1) pixels,
    renumber ids 1..K. A merged segment's score is the largest score of its parts."""
    num = label.num_segments
    device = label.seg.device
    if num == 0:
        return label
    # Group key: a thing is its own group; stuff groups by class (keys >= num never clash).
    keys = torch.where(label.isthing, torch.arange(num, device=device), num + label.classes)
    _, key_group = torch.unique(keys, return_inverse=True)
    num_groups = int(key_group.max().item()) + 1
    # Order groups by their first segment, so targets keep the segment order (main before partner).
    segment_index = torch.arange(num, device=device)
    first_segment = torch.full((num_groups,), num, device=device).scatter_reduce(0, key_group, segment_index, reduce="amin")
    group_of_segment = torch.argsort(torch.argsort(first_segment))[key_group]
    segment_to_group = torch.cat([group_of_segment.new_full((1,), -1), group_of_segment])  # id 0 -> -1
    group_map = segment_to_group[label.seg]
    covered = group_map >= 0
    areas = torch.bincount(group_map[covered], minlength=num_groups)
    keep = areas >= max(int(min_area), 1)
    new_id = torch.cumsum(keep.to(torch.int64), 0) * keep  # group -> 1..K, dropped -> 0
    seg = torch.where(covered, new_id[group_map.clamp(min=0)], 0)
    classes = torch.zeros(num_groups, dtype=torch.int64, device=device).scatter_(0, group_of_segment, label.classes)
    isthing = torch.zeros(num_groups, dtype=torch.bool, device=device).scatter_(0, group_of_segment, label.isthing)
    scores = torch.full((num_groups,), float("-inf"), device=device).scatter_reduce(
        0, group_of_segment, label.scores.float(), reduce="amax"
    )
    return type(label)(seg, classes[keep], isthing[keep], scores[keep])
