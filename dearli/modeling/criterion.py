"""The set criterion: one class for labeled targets and for the teacher's pseudo-labels.

Per prediction set (the final one and, with deep supervision, every auxiliary one) queries are
matched to targets (:class:`HungarianMatcher`), then

* ``loss_ce``: cross-entropy over C+1 classes for all queries, unmatched queries -> void, void
  weighted ``NO_OBJECT_WEIGHT`` (PyTorch's weighted mean);
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and Dice (+1 smoothing) of each matched pair on
  importance-sampled points, summed over masks and divided by ``num_masks``;

each multiplied by its weight (CLASS/MASK/DICE_WEIGHT). Auxiliary set i gets the suffix ``_{i}``.

Batched: the targets are flattened once per call (:mod:`.target_batch`); the cost tables of all
prediction sets are solved by one host round trip (``dearli::hungarian_match``); the class loss of
all sets is one cross-entropy; the mask losses of a set are one group of ops over all its matched
pairs, whose points come from a counter-based RNG keyed by each image's ``seed`` and the pair's
rank (:mod:`.point_sampling`), so they do not depend on the batch. There is no data-dependent
host branch: ``torch._dynamo`` traces the whole criterion without a graph break.

Normalisers are global: ``num_masks`` (targets in the whole distributed batch / world size,
clamped >= 1) and the CE weight sum are all-reduced in one call, so the gradient of a batch split
over several processes equals the gradient of the same batch on one process. On one process
``loss_ce`` is exactly ``F.cross_entropy(..., weight=empty_weight)``.

Class-agnostic mode (``CLASS_WEIGHT == 0``, the SAM warm-up): every target is the single class 0
("object"), matching reads masks only, and ``loss_ce`` is computed and multiplied by 0, which keeps
the classifier in the autograd graph (DDP requires every parameter to receive a gradient).
"""
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from .matcher import HungarianMatcher, hungarian_match
from .point_sampling import (
    LOSS_PURPOSE, MATCHER_PURPOSE, num_candidates_and_uniform, pair_keys, point_sample, select_uncertain, stream_keys,
    uniform_points,
)
from .target_batch import TargetBatch, build_target_batch

CONFIDENCE_WEIGHTINGS = ("none", "segment_score")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None,
              pixel_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-mask Dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) of logits/targets [M, P] -> [M].

    ``weights`` (padding validity) multiplies p and t; ``pixel_weights`` w (SemiRES's PWA) gives
    1 - (2 sum w p t + 1) / (sum w p + sum w t + 1); w = 1 computes the unweighted values bitwise.
    """
    probs = logits.sigmoid()
    if weights is not None:
        probs, targets = probs * weights, targets * weights
    if pixel_weights is not None:
        numerator = 2.0 * (pixel_weights * probs * targets).sum(-1)
        return 1.0 - (numerator + 1.0) / ((pixel_weights * probs).sum(-1) + (pixel_weights * targets).sum(-1) + 1.0)
    numerator = 2.0 * (probs * targets).sum(-1)
    return 1.0 - (numerator + 1.0) / (probs.sum(-1) + targets.sum(-1) + 1.0)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None,
                    pixel_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-mask sigmoid BCE averaged over points (weighted mean with ``weights``) [M, P] -> [M].

    ``pixel_weights`` multiply each point's BCE before that mean and are not renormalised
    (SemiRES's PWA: down-weighted points lower the loss).
    """
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if pixel_weights is not None:
        per_point = per_point * pixel_weights
    if weights is None:
        return per_point.mean(-1)
    return (per_point * weights).sum(-1) / weights.sum(-1).clamp(min=1e-6)


class _PairLayout:
    """Host-known layout of the matched pairs (the same in every prediction set), and the point
    keys of every set, moved to the device in one non-blocking copy.

    Pair m belongs to image ``image[m]``, is its ``rank[m]``-th pair and its target's flat index is
    ``offset[m] + target_idx[m]``.
    """

    def __init__(self, batch: TargetBatch, num_queries: int, seed_stream: int, layers: List[int], device):
        per_image = [min(num_queries, n) for n in batch.counts]
        self.num_pairs = sum(per_image)
        self.max_pairs = max(per_image, default=0)
        image = [b for b, n in enumerate(per_image) for _ in range(n)]
        rank = [k for n in per_image for k in range(n)]
        offset = [batch.offsets[b] for b in image]
        keys = torch.stack([
            torch.stack([stream_keys(batch.seeds, (seed_stream, layer, purpose)) for purpose in (MATCHER_PURPOSE, LOSS_PURPOSE)])
            for layer in layers
        ])  # [S, 2, B, 2]
        pairs = torch.tensor([image, rank, offset], dtype=torch.int64).view(3, -1)
        packed = torch.cat([keys.reshape(-1), pairs.reshape(-1)]).to(device, non_blocking=True)
        keys_on_device, pairs_on_device = packed.split([keys.numel(), pairs.numel()])
        self.keys = keys_on_device.view(keys.shape)
        self.image, self.rank, self.offset = pairs_on_device.view(3, -1)


class SetCriterion(nn.Module):
    """Mask2Former's set loss, for labeled and pseudo-labeled targets alike.

    ``forward(outputs, targets)`` takes the predictor's outputs ({"pred_logits" [B,Q,C+1],
    "pred_masks" [B,Q,h,w], "aux_outputs": [...]}) and per image a target dict:
    "labels" int64 [N], "masks" bool [N, H, W] or ``BitMasks`` (on the padded canvas the
    predictions cover), optional "seed" (int: seeds this image's points), "valid_mask" bool [H, W]
    (read when ``ignore_padding``), "weights" float [N] (read when ``use_segment_weights``:
    scales each target's BCE and Dice terms; CE is not weighted) and "mask_weights" float [N, h, w]
    (per-pixel weights of the BCE and Dice terms, read at the target masks' points; any resolution,
    one per batch; missing = ones; matching and CE are not weighted).
    """
    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        deep_supervision: bool = True,
        use_segment_weights: bool = False,
        ignore_padding: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.use_segment_weights = use_segment_weights
        self.ignore_padding = ignore_padding
        self.class_agnostic = class_weight == 0
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        # A constant re-created at construction: not part of checkpoints.
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @classmethod
    def from_config(cls, cfg, num_classes: Optional[int] = None):
        mf = cfg.MODEL.MASK_FORMER
        weighting = mf.PSEUDO_CONFIDENCE_WEIGHTING
        if weighting not in CONFIDENCE_WEIGHTINGS:
            raise ValueError(
                f"MODEL.MASK_FORMER.PSEUDO_CONFIDENCE_WEIGHTING={weighting!r}; expected one of {CONFIDENCE_WEIGHTINGS}"
            )
        matcher = HungarianMatcher(
            cost_class=mf.CLASS_WEIGHT,
            cost_mask=mf.MASK_WEIGHT,
            cost_dice=mf.DICE_WEIGHT,
            num_points=mf.TRAIN_NUM_POINTS,
            ignore_padding=mf.IGNORE_PADDING,
        )
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if num_classes is None else num_classes,
            "matcher": matcher,
            "class_weight": mf.CLASS_WEIGHT,
            "mask_weight": mf.MASK_WEIGHT,
            "dice_weight": mf.DICE_WEIGHT,
            "no_object_weight": mf.NO_OBJECT_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": mf.DEEP_SUPERVISION,
            "use_segment_weights": weighting == "segment_score",
            "ignore_padding": mf.IGNORE_PADDING,
        }

    def forward(self, outputs: Dict, targets: List[Dict], seed_stream: int = 0) -> Dict[str, torch.Tensor]:
        """The weighted losses of every prediction set. ``seed_stream`` separates the point streams
        of target sets whose samples may share seeds (the model passes 0 labeled, 1 pseudo)."""
        pred_logits = outputs["pred_logits"]
        device = pred_logits.device
        aux_outputs = outputs.get("aux_outputs", []) if self.deep_supervision else []
        # Layer index keys the points: the final set has the same index with or without aux sets.
        suffixes = [f"_{i}" for i in range(len(aux_outputs))] + [""]
        layers = list(range(len(aux_outputs))) + [len(outputs.get("aux_outputs", []))]
        predictions = list(aux_outputs) + [outputs]
        with torch.autocast(device_type=device.type, enabled=False):
            batch = build_target_batch(targets, self.num_classes, device, class_agnostic=self.class_agnostic,
                                       with_valid=self.ignore_padding, with_weights=self.use_segment_weights)
            layout = _PairLayout(batch, pred_logits.shape[1], seed_stream, layers, device)
            num_masks, ce_weight_sum = self._global_normalisers(batch, pred_logits.shape[1], device)
            # The points of every set in one draw: [S, B, P, 2] for matching, [S, M, ., 2] for the losses.
            num_sets, num_images = len(predictions), batch.num_images
            matcher_points = uniform_points(layout.keys[:, MATCHER_PURPOSE].reshape(-1, 2), self.matcher.num_points)
            matcher_points = matcher_points.view(num_sets, num_images, -1, 2)
            costs = torch.stack([
                self.matcher.cost_tables(p["pred_logits"], p["pred_masks"], batch, matcher_points[s])
                for s, p in enumerate(predictions)
            ])
            query_idx, target_idx = hungarian_match(costs, batch.counts)  # [S, M] each
            loss_ce = self._class_losses(predictions, batch, layout, query_idx, target_idx) / ce_weight_sum
            loss_draws = self._loss_draws(layout, num_sets)
            losses = {}
            for s, (suffix, prediction) in enumerate(zip(suffixes, predictions)):
                loss_mask, loss_dice = self._mask_losses(
                    prediction["pred_masks"].float(), batch, layout, loss_draws[s], query_idx[s], target_idx[s]
                )
                losses["loss_ce" + suffix] = self.class_weight * loss_ce[s]
                losses["loss_mask" + suffix] = self.mask_weight * loss_mask / num_masks
                losses["loss_dice" + suffix] = self.dice_weight * loss_dice / num_masks
        return losses

    def _global_normalisers(self, batch: TargetBatch, num_queries: int, device):
        """(num_masks, CE weight sum), each summed over processes and divided by the world size.

        Matched queries have CE weight 1 and unmatched ones NO_OBJECT_WEIGHT; each image has
        min(Q, N) matched queries in every prediction set, so the weight sum needs only the target
        counts, which the host knows: one process needs no tensor at all.
        """
        num_targets = float(sum(batch.counts))
        matched = [min(num_queries, n) for n in batch.counts]
        ce_weight_sum = float(sum(m + self.no_object_weight * (num_queries - m) for m in matched))
        world_size = comm.get_world_size()
        if world_size == 1:
            return max(num_targets, 1.0), max(ce_weight_sum, 1e-12)
        totals = torch.tensor([num_targets, ce_weight_sum], device=device)
        dist.all_reduce(totals)
        totals = totals / world_size
        return totals[0].clamp(min=1.0), totals[1].clamp(min=1e-12)

    def _class_losses(self, predictions, batch: TargetBatch, layout: _PairLayout, query_idx, target_idx) -> torch.Tensor:
        """Weighted CE summed over all queries (void for unmatched ones), per set: [S]."""
        logits = torch.stack([p["pred_logits"].float() for p in predictions])  # [S, B, Q, C+1]
        num_sets, num_images, num_queries = logits.shape[:3]
        target_classes = torch.full((num_sets, num_images, num_queries), self.num_classes, dtype=torch.int64,
                                    device=logits.device)
        if layout.num_pairs:
            set_of_pair = torch.arange(num_sets, device=logits.device)[:, None].expand_as(query_idx)
            labels = batch.labels[layout.offset[None] + target_idx]
            target_classes = target_classes.index_put((set_of_pair, layout.image[None].expand_as(query_idx), query_idx), labels)
        per_query = F.cross_entropy(logits.flatten(0, 2), target_classes.flatten(), weight=self.empty_weight, reduction="none")
        return per_query.view(num_sets, -1).sum(1)

    def _loss_draws(self, layout: _PairLayout, num_sets: int) -> torch.Tensor:
        """Uniform draws [S, M, candidates + fresh, 2] of every matched pair of every set; pair m of
        set s uses the stream of its image's (set, loss) key and its rank in the image."""
        candidates, _, fresh = num_candidates_and_uniform(self.num_points, self.oversample_ratio,
                                                          self.importance_sample_ratio)
        image_keys = layout.keys[:, LOSS_PURPOSE][:, layout.image]  # [S, M, 2]
        keys = pair_keys(image_keys.reshape(-1, 2), layout.rank.repeat(num_sets))
        return uniform_points(keys, candidates + fresh).view(num_sets, layout.num_pairs, candidates + fresh, 2)

    def _mask_losses(self, masks, batch: TargetBatch, layout: _PairLayout, drawn, query_idx, target_idx):
        """BCE and Dice summed over the matched pairs of one set, on importance-sampled points."""
        if layout.num_pairs == 0:
            zero = masks.sum() * 0.0  # keeps the mask head in the graph
            return zero, zero
        preds = masks[layout.image, query_idx][:, None]  # [M, 1, h, w]
        points = select_uncertain(preds, drawn, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
        pred_points = point_sample(preds, points)[:, 0]
        target_of_pair = layout.offset + target_idx
        target_points = _sample_targets(batch.masks, target_of_pair, points)
        point_weights = self._point_validity(batch, layout, points)
        pixel_weights = None if batch.mask_weights is None else _sample_pixel_weights(batch.mask_weights, target_of_pair, points)
        bce = sigmoid_ce_loss(pred_points, target_points, point_weights, pixel_weights)
        dice = dice_loss(pred_points, target_points, point_weights, pixel_weights)
        if self.use_segment_weights:
            segment_weights = batch.weights[target_of_pair]
            bce, dice = bce * segment_weights, dice * segment_weights
        return bce.sum(), dice.sum()

    def _point_validity(self, batch: TargetBatch, layout: _PairLayout, points) -> Optional[torch.Tensor]:
        """Per-point weights 1 on real pixels, 0 on padding (when ignoring padding), else None.

        Each image's valid map is read once at the points of all its pairs: the pairs' points are
        laid out per image ([B, max pairs * P]) for one sampling call.
        """
        if not self.ignore_padding or batch.valid is None:
            return None
        num_points = points.shape[1]
        grid = points.new_zeros(batch.num_images, layout.max_pairs, num_points, 2)
        grid = grid.index_put((layout.image, layout.rank), points).flatten(1, 2)
        values = point_sample(batch.valid[:, None], grid)[:, 0].view(batch.num_images, layout.max_pairs, num_points)
        return values[layout.image, layout.rank]


def _sample_targets(target_masks: torch.Tensor, target_of_pair: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Values [M, P] of each pair's target mask at its points: every target of the batch is read
    once (a target is in at most one pair of a set), with no copy of the masks."""
    per_target = points.new_zeros(len(target_masks), *points.shape[1:]).index_put((target_of_pair,), points)
    return point_sample(target_masks[:, None], per_target)[:, 0][target_of_pair]


def _sample_pixel_weights(mask_weights: torch.Tensor, target_of_pair: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Each pair's per-pixel weights [M, P] at its target's points. The complement 1 - w is read
    (edge values extended beyond the map), so unit weights read exactly 1 and change no bit."""
    per_target = points.new_zeros(len(mask_weights), *points.shape[1:]).index_put((target_of_pair,), points)
    complement = point_sample(1.0 - mask_weights[:, None], per_target, padding_mode="border")[:, 0]
    return 1.0 - complement[target_of_pair]
