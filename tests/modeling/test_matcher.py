"""HungarianMatcher: optimal against brute force, 0 targets, more targets than queries."""
import itertools

import pytest
import torch
from torch.nn import functional as F

from dearli.modeling.matcher import HungarianMatcher, dice_cost, sigmoid_ce_cost
from dearli.modeling.point_sampling import point_sample, stream_keys, uniform_points

NUM_POINTS = 64


def _random_problem(seed, num_queries, num_targets, num_classes=3, size=8):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, num_queries, num_classes + 1, generator=g) * 2
    masks = torch.randn(1, num_queries, size, size, generator=g) * 3
    target = {
        "labels": torch.randint(0, num_classes, (num_targets,), generator=g),
        "masks": torch.rand(num_targets, 2 * size, 2 * size, generator=g) > 0.5,
    }
    return logits, masks, target


def _pairwise_cost_by_loops(logits, masks, target, points, weights=(2.0, 5.0, 5.0)):
    """Independent cost table: one pair at a time with torch's BCE and the Dice formula."""
    w_class, w_mask, w_dice = weights
    pred = point_sample(masks, points)[0]  # [Q, P]
    tgt = point_sample(target["masks"][None].float(), points)[0]  # [N, P]
    probs = logits[0].softmax(-1)
    cost = torch.empty(len(pred), len(tgt))
    for q in range(len(pred)):
        for n in range(len(tgt)):
            bce = F.binary_cross_entropy_with_logits(pred[q], tgt[n])
            p = pred[q].sigmoid()
            dice = 1 - (2 * (p * tgt[n]).sum() + 1) / (p.sum() + tgt[n].sum() + 1)
            cost[q, n] = -w_class * probs[q, target["labels"][n]] + w_mask * bce + w_dice * dice
    return cost


def _brute_force_minimum(cost):
    num_queries, num_targets = cost.shape
    if num_targets <= num_queries:  # every target gets a distinct query
        return min(
            sum(cost[qs[n], n] for n in range(num_targets))
            for qs in itertools.permutations(range(num_queries), num_targets)
        )
    return min(  # every query gets a distinct target
        sum(cost[q, ts[q]] for q in range(num_queries))
        for ts in itertools.permutations(range(num_targets), num_queries)
    )


@pytest.mark.parametrize("seed,num_queries,num_targets", [(0, 4, 3), (1, 5, 5), (2, 3, 1), (3, 6, 4), (4, 3, 5)])
def test_assignment_is_optimal_against_brute_force(seed, num_queries, num_targets):
    logits, masks, target = _random_problem(seed, num_queries, num_targets)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)
    keys = stream_keys([7], (0,))
    [(query_idx, target_idx)] = matcher(logits, masks, [target], keys)
    points = uniform_points(keys, NUM_POINTS)
    cost = _pairwise_cost_by_loops(logits, masks, target, points)

    assert len(query_idx) == len(target_idx) == min(num_queries, num_targets)
    assert len(set(query_idx.tolist())) == len(query_idx) and len(set(target_idx.tolist())) == len(target_idx)
    matched_cost = cost[query_idx, target_idx].sum()
    assert matched_cost == pytest.approx(float(_brute_force_minimum(cost)), abs=1e-4)


def test_more_targets_than_queries_matches_every_query_once():
    logits, masks, target = _random_problem(5, num_queries=2, num_targets=6)
    [(query_idx, target_idx)] = HungarianMatcher(num_points=NUM_POINTS)(logits, masks, [target])
    assert sorted(query_idx.tolist()) == [0, 1]
    assert len(set(target_idx.tolist())) == 2 and all(0 <= t < 6 for t in target_idx.tolist())


def test_zero_targets_gives_empty_indices_next_to_a_normal_image():
    logits, masks, target = _random_problem(6, num_queries=3, num_targets=2)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    batch_logits, batch_masks = logits.repeat(2, 1, 1), masks.repeat(2, 1, 1, 1)
    indices = HungarianMatcher(num_points=NUM_POINTS)(batch_logits, batch_masks, [empty, target])
    assert indices[0][0].numel() == 0 and indices[0][1].numel() == 0
    assert indices[0][0].dtype == torch.int64
    assert len(indices[1][0]) == 2


def test_class_agnostic_matching_ignores_class_logits():
    logits, masks, target = _random_problem(8, num_queries=4, num_targets=3)
    matcher = HungarianMatcher(cost_class=0.0, cost_mask=5.0, cost_dice=5.0, num_points=NUM_POINTS)
    first = matcher(logits, masks, [target], stream_keys([1], (0,)))
    second = matcher(-10 * logits, masks, [target], stream_keys([1], (0,)))
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[0][1], second[0][1])


def test_pairwise_costs_equal_per_pair_formulas():
    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(3, 10, generator=g), (torch.rand(2, 10, generator=g) > 0.5).float()
    weights = (torch.rand(10, generator=g) > 0.3).float()
    ce, dice = sigmoid_ce_cost(logits, targets, weights), dice_cost(logits, targets, weights)
    for q in range(3):
        for n in range(2):
            bce = F.binary_cross_entropy_with_logits(logits[q], targets[n], reduction="none")
            assert ce[q, n] == pytest.approx(float((bce * weights).sum() / weights.sum()), rel=1e-5)
            p, t = logits[q].sigmoid() * weights, targets[n] * weights
            assert dice[q, n] == pytest.approx(float(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)), rel=1e-5)


def test_non_finite_predictions_fail_with_a_clear_error():
    logits, masks, target = _random_problem(9, num_queries=3, num_targets=2)
    masks[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        HungarianMatcher(num_points=NUM_POINTS)(logits, masks, [target])
