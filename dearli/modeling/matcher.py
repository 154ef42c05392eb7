"""Hungarian matching of predicted masks (queries) to target segments, per image."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .point_sampling import point_sample, uniform_points


def sigmoid_ce_cost(
    logits: torch.Tensor, targets: torch.Tensor, point_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean sigmoid BCE of every prediction [Q, P] against every target [N, P] -> [Q, N].

    BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), so the pairwise table is two matmuls.
    ``point_weights`` [P] (validity of each point) turns the mean into a weighted mean.
    """
    positive = F.softplus(-logits)
    negative = F.softplus(logits)
    num_points = logits.new_tensor(logits.shape[1])
    if point_weights is not None:
        positive, negative = positive * point_weights, negative * point_weights
        num_points = point_weights.sum().clamp(min=1e-6)
    return (positive @ targets.T + negative @ (1.0 - targets).T) / num_points


def dice_cost(
    logits: torch.Tensor, targets: torch.Tensor, point_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction [Q, P] against every target [N, P] -> [Q, N]."""
    probs = logits.sigmoid()
    if point_weights is not None:
        probs, targets = probs * point_weights, targets * point_weights
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising
    ``cost_class * (-p[q, class]) + cost_mask * BCE + cost_dice * Dice``.

    ``p`` is the softmax over the C+1 classes; BCE and Dice are measured on ``num_points`` uniform
    points shared by all masks of an image, in fp32. With ``cost_class == 0`` (class-agnostic
    mode) the class logits are not read at all.

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
        generators: Optional[Sequence[Optional[torch.Generator]]] = None,
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match one prediction set.

        Args:
            pred_logits: [B, Q, C+1] class logits (or log-probabilities).
            pred_masks: [B, Q, h, w] mask logits covering the same canvas as the target masks.
            targets: per image {"labels": int64 [N], "masks": bool/float [N, H, W]} and, when
                ``ignore_padding``, "valid_mask": bool [H, W].
            generators: per image, the generator of its points (None = global RNG).
        Returns:
            per image (query indices, target indices), int64 CPU tensors of length min(Q, N).
        """
        if generators is None:
            generators = [None] * len(targets)
        masks = pred_masks.float()
        # One draw of shared points per image (its own generator), then one sampling call for all
        # predictions of the batch: [B, Q, P].
        points = torch.cat([uniform_points(1, self.num_points, masks.device, g) for g in generators])
        pred_points = point_sample(masks, points)
        costs = [
            self._cost_matrix(pred_logits[b].float(), pred_points[b], points[b:b + 1], target)
            for b, target in enumerate(targets)
        ]
        return self._assign(costs)

    def _cost_matrix(self, logits, pred_points, points, target) -> torch.Tensor:
        """[Q, N] matching cost of one image, on the prediction's device."""
        num_queries, num_targets = pred_points.shape[0], len(target["labels"])
        if num_targets == 0:
            return pred_points.new_zeros(num_queries, 0)
        target_points = point_sample(target["masks"][None].to(pred_points), points)[0]  # [N, P]
        point_weights = None
        if self.ignore_padding and target.get("valid_mask") is not None:
            point_weights = point_sample(target["valid_mask"][None, None].to(pred_points), points)[0, 0]
        cost = pred_points.new_zeros(num_queries, num_targets)
        if self.cost_mask:
            cost += self.cost_mask * sigmoid_ce_cost(pred_points, target_points, point_weights)
        if self.cost_dice:
            cost += self.cost_dice * dice_cost(pred_points, target_points, point_weights)
        if self.cost_class:
            probs = logits.softmax(-1)
            cost += self.cost_class * -probs[:, target["labels"].to(logits.device)]
        return cost

    @staticmethod
    def _assign(costs: List[torch.Tensor]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Solve every image's assignment after one device-to-CPU copy of all cost matrices."""
        if not costs:
            return []
        flat = torch.cat([c.reshape(-1) for c in costs]).cpu()
        blocks = torch.split(flat, [c.numel() for c in costs])
        indices = []
        for block, cost in zip(blocks, costs):
            table = block.view(cost.shape).numpy()
            if not torch.isfinite(block).all():
                raise FloatingPointError(
                    "HungarianMatcher: the matching cost has NaN/inf entries; the predictions "
                    "(pred_logits / pred_masks) are not finite"
                )
            queries, targets = linear_sum_assignment(table)
            indices.append(
                (torch.as_tensor(queries, dtype=torch.int64), torch.as_tensor(targets, dtype=torch.int64))
            )
        return indices
