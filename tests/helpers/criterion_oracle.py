"""Test oracle: the set criterion and matcher computed one image at a time (the pre-batching code).

Kept only to check the batched production code (:mod:`dearli.modeling.criterion`) against an
independent per-image computation: per image its own cost table (pairwise loops over its
targets), its own assignment, its own point draws, then the losses summed over images. It draws
from the same counter-based streams (``point_sampling``), so both paths read the same points.
"""
from typing import Dict, List

import torch
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F

from dearli.modeling.criterion import dice_loss, sigmoid_ce_loss
from dearli.modeling.matcher import dice_cost, sigmoid_ce_cost
from dearli.modeling.point_sampling import (
    LOSS_PURPOSE, MATCHER_PURPOSE, pair_keys, point_sample, stream_keys, uncertain_points, uniform_points,
)


def match_image(criterion, logits, masks, target, key) -> tuple:
    """(query indices, target indices) of one image [Q, C+1], [Q, h, w] and its key [1, 2]."""
    matcher = criterion.matcher
    num_targets = len(target["labels"])
    if num_targets == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    points = uniform_points(key, matcher.num_points)  # [1, P, 2]
    pred_points = point_sample(masks[None].float(), points)[0]
    target_points = point_sample(target["masks"][None].float(), points)[0]
    weights = None
    if matcher.ignore_padding and target.get("valid_mask") is not None:
        weights = point_sample(target["valid_mask"][None, None].float(), points)[0, 0]
    cost = torch.zeros(len(pred_points), num_targets)
    if matcher.cost_mask:
        cost += matcher.cost_mask * sigmoid_ce_cost(pred_points, target_points, weights)
    if matcher.cost_dice:
        cost += matcher.cost_dice * dice_cost(pred_points, target_points, weights)
    if matcher.cost_class:
        cost -= matcher.cost_class * logits.float().softmax(-1)[:, target["labels"]]
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def set_losses(criterion, prediction: Dict, targets: List[Dict], stream: int, layer: int):
    """Unweighted, unnormalised (CE sum, BCE sum, Dice sum) and the matches of one prediction set."""
    seeds = [t.get("seed") for t in targets]
    matcher_keys = stream_keys(seeds, (stream, layer, MATCHER_PURPOSE))
    loss_keys = stream_keys(seeds, (stream, layer, LOSS_PURPOSE))
    logits, masks = prediction["pred_logits"].float(), prediction["pred_masks"].float()
    ce = bce = dice = masks.sum() * 0.0
    matches = []
    for b, target in enumerate(targets):
        labels = torch.zeros_like(target["labels"]) if criterion.class_agnostic else target["labels"]
        target = {**target, "labels": labels}
        query_idx, target_idx = match_image(criterion, logits[b], masks[b], target, matcher_keys[b:b + 1])
        matches.append((query_idx, target_idx))
        classes = torch.full((logits.shape[1],), criterion.num_classes, dtype=torch.int64)
        classes[query_idx] = labels[target_idx]
        ce = ce + F.cross_entropy(logits[b], classes, weight=criterion.empty_weight, reduction="sum")
        if len(query_idx) == 0:
            continue
        preds = masks[b, query_idx][:, None]
        keys = pair_keys(loss_keys[b:b + 1].expand(len(query_idx), 2), torch.arange(len(query_idx)))
        points = uncertain_points(preds, keys, criterion.num_points, criterion.oversample_ratio,
                                  criterion.importance_sample_ratio)
        pred_points = point_sample(preds, points)[:, 0]
        target_points = point_sample(target["masks"][target_idx][:, None].float(), points)[:, 0]
        weights = None
        if criterion.ignore_padding and target.get("valid_mask") is not None:
            valid = target["valid_mask"].float()[None, None].expand(len(query_idx), 1, *target["valid_mask"].shape)
            weights = point_sample(valid, points)[:, 0]
        elif criterion.ignore_padding and any(t.get("valid_mask") is not None for t in targets):
            weights = torch.ones_like(pred_points)
        per_bce = sigmoid_ce_loss(pred_points, target_points, weights)
        per_dice = dice_loss(pred_points, target_points, weights)
        if criterion.use_segment_weights:
            segment = target.get("weights", torch.ones(len(labels)))[target_idx].float()
            per_bce, per_dice = per_bce * segment, per_dice * segment
        bce, dice = bce + per_bce.sum(), dice + per_dice.sum()
    return (ce, bce, dice), matches


def oracle_losses(criterion, outputs: Dict, targets: List[Dict], stream: int = 0):
    """The criterion's loss dict (one process) and the matches of every set, image by image."""
    aux = outputs.get("aux_outputs", []) if criterion.deep_supervision else []
    sets = [(f"_{i}", i, p) for i, p in enumerate(aux)] + [("", len(outputs.get("aux_outputs", [])), outputs)]
    num_queries = outputs["pred_logits"].shape[1]
    num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    matched = [min(num_queries, len(t["labels"])) for t in targets]
    ce_weight_sum = sum(m + criterion.no_object_weight * (num_queries - m) for m in matched)
    losses, all_matches = {}, []
    for suffix, layer, prediction in sets:
        (ce, bce, dice), matches = set_losses(criterion, prediction, targets, stream, layer)
        losses["loss_ce" + suffix] = criterion.class_weight * ce / ce_weight_sum
        losses["loss_mask" + suffix] = criterion.mask_weight * bce / num_masks
        losses["loss_dice" + suffix] = criterion.dice_weight * dice / num_masks
        all_matches.append(matches)
    return losses, all_matches
