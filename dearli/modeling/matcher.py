"""Hungarian matching of predicted masks (queries) to target segments, batched.

The cost tables of a whole batch (and of every prediction set of a criterion call) are computed by
batched tensor ops, padded to the largest target count; the assignments are then solved on the
host by one custom op, ``dearli::hungarian_match``: one device-to-host copy of every cost table,
SciPy's ``linear_sum_assignment`` per table, one non-blocking copy of the indices back. Being a
custom op with a shape-only fake implementation, it lets ``torch.compile`` trace the rest of the
criterion without a graph break.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .point_sampling import point_sample, uniform_points
from .target_batch import TargetBatch, build_target_batch


def sigmoid_ce_cost(
    logits: torch.Tensor, targets: torch.Tensor, point_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean sigmoid BCE of every prediction [..., Q, P] against every target [..., N, P] -> [..., Q, N].

    BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), so the pairwise table is two matmuls.
    ``point_weights`` [..., P] (validity of each point) turns the mean into a weighted mean.
    """
    positive = F.softplus(-logits)
    negative = F.softplus(logits)
    num_points = float(logits.shape[-1])
    if point_weights is not None:
        positive, negative = positive * point_weights.unsqueeze(-2), negative * point_weights.unsqueeze(-2)
        num_points = point_weights.sum(-1).clamp(min=1e-6)[..., None, None]
    targets_t = targets.transpose(-1, -2)
    return (positive @ targets_t + negative @ (1.0 - targets_t)) / num_points


def dice_cost(
    logits: torch.Tensor, targets: torch.Tensor, point_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction [..., Q, P] against every target [..., N, P] -> [..., Q, N]."""
    probs = logits.sigmoid()
    if point_weights is not None:
        probs, targets = probs * point_weights.unsqueeze(-2), targets * point_weights.unsqueeze(-2)
    numerator = 2.0 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


@torch.library.custom_op("dearli::hungarian_match", mutates_args=())
def hungarian_match(costs: torch.Tensor, num_targets: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Optimal assignments of cost tables ``costs`` [S, B, Q, N_max] (image b uses its first
    ``num_targets[b]`` columns) -> (query indices, target indices), int64 [S, M] on the tables'
    device with M = sum_b min(Q, N_b): per set, image by image, pairs in increasing query order."""
    host = costs.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(host).all():  # padded columns are finite too (zeros + finite costs)
        raise FloatingPointError(
            "HungarianMatcher: the matching cost has NaN/inf entries; the predictions "
            "(pred_logits / pred_masks) are not finite"
        )
    queries, targets = [], []
    for set_costs in host:
        for table, count in zip(set_costs, num_targets):
            rows, cols = linear_sum_assignment(table[:, :count])
            queries.append(rows)
            targets.append(cols)
    shape = (costs.shape[0], matched_pairs(costs.shape[2], num_targets))
    query_idx = torch.from_numpy(np.concatenate(queries).astype(np.int64) if queries else np.zeros(0, np.int64))
    target_idx = torch.from_numpy(np.concatenate(targets).astype(np.int64) if targets else np.zeros(0, np.int64))
    return (query_idx.view(shape).to(costs.device, non_blocking=True),
            target_idx.view(shape).to(costs.device, non_blocking=True))


@hungarian_match.register_fake
def _hungarian_match_shape(costs, num_targets):
    shape = (costs.shape[0], matched_pairs(costs.shape[2], num_targets))
    return costs.new_empty(shape, dtype=torch.int64), costs.new_empty(shape, dtype=torch.int64)


def matched_pairs(num_queries: int, num_targets: Sequence[int]) -> int:
    """Pairs of one prediction set: each image gets min(Q, N) of them."""
    return sum(min(num_queries, int(n)) for n in num_targets)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    ``cost_class * (-p[q, class]) + cost_mask * BCE + cost_dice * Dice``.

    ``p`` is the softmax over the C+1 classes; BCE and Dice are measured on ``num_points`` uniform
    points shared by all masks of an image (its own random stream), in fp32. With
    ``cost_class == 0`` (class-agnostic mode) the class logits are not read at all.

    An image with N targets and Q queries gets min(Q, N) pairs. When N > Q, every query is matched
    and the N - Q targets left out are those the optimal assignment does not use (the cheapest
    choice of Q targets); they get no loss from this prediction set.
    """

    def __init__(
        self,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        num_points: int = 12544,
        ignore_padding: bool = False,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0 (MODEL.MASK_FORMER.*_WEIGHT); nothing to match on")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.ignore_padding = ignore_padding

    @torch.no_grad()
    def forward(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        keys: Optional[torch.Tensor] = None,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match one prediction set (a convenience over :meth:`cost_tables` + ``hungarian_match``).

        Args:
            pred_logits: [B, Q, C+1] class logits (or log-probabilities).
            pred_masks: [B, Q, h, w] mask logits covering the same canvas as the target masks.
            targets: per image {"labels": int64 [N], "masks": bool [N, H, W]} and, when
                ``ignore_padding``, "valid_mask": bool [H, W].
            keys: int64 [B, 2] point-stream keys (``point_sampling.stream_keys``); None draws them.
        Returns:
            per image (query indices, target indices), int64 CPU tensors of length min(Q, N).
        """
        num_classes = pred_logits.shape[-1] - 1
        batch = build_target_batch(targets, num_classes, pred_masks.device, class_agnostic=self.cost_class == 0,
                                   with_valid=self.ignore_padding)
        if keys is None:
            keys = torch.randint(0, 2**32, (len(targets), 2), dtype=torch.int64)
        points = uniform_points(keys.to(pred_masks.device), self.num_points)
        costs = self.cost_tables(pred_logits, pred_masks, batch, points)
        query_idx, target_idx = hungarian_match(costs[None], batch.counts)
        query_idx, target_idx = query_idx[0].cpu(), target_idx[0].cpu()
        sizes = [min(pred_masks.shape[1], n) for n in batch.counts]
        return list(zip(torch.split(query_idx, sizes), torch.split(target_idx, sizes)))

    @torch.no_grad()
    def cost_tables(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, batch: TargetBatch,
                    points: torch.Tensor) -> torch.Tensor:
        """[B, Q, N_max] matching costs of one prediction set (columns past an image's N are padding),
        on ``points`` [B, P, 2] (``uniform_points`` of each image's stream)."""
        num_images, num_queries = pred_masks.shape[:2]
        width = max(batch.max_count, 1)
        pred_points = point_sample(pred_masks.float(), points)  # [B, Q, P]
        cost = pred_points.new_zeros(num_images, num_queries, width)
        if batch.max_count == 0:
            return cost
        image_of_target, slot_of_target = batch.image_of_target, batch.slot_of_target
        target_points = point_sample(batch.masks[:, None], points[image_of_target])[:, 0]  # [T, P]
        padded = pred_points.new_zeros(num_images, width, self.num_points)
        padded = padded.index_put((image_of_target, slot_of_target), target_points)
        point_weights = None
        if self.ignore_padding and batch.valid is not None:
            point_weights = point_sample(batch.valid[:, None], points)[:, 0]  # [B, P]
        if self.cost_mask:
            cost = cost + self.cost_mask * sigmoid_ce_cost(pred_points, padded, point_weights)
        if self.cost_dice:
            cost = cost + self.cost_dice * dice_cost(pred_points, padded, point_weights)
        if self.cost_class:
            labels = pred_points.new_zeros(num_images, width, dtype=torch.int64)
            labels = labels.index_put((image_of_target, slot_of_target), batch.labels)
            probs = pred_logits.float().softmax(-1)
            cost = cost - self.cost_class * probs.gather(2, labels[:, None, :].expand(-1, num_queries, -1))
        return cost
