"""The set criterion: one class for labeled targets and for the teacher's pseudo-labels.

Per prediction set (the final one and, with deep supervision, every auxiliary one) queries are
matched to targets (:class:`HungarianMatcher`), then

* ``loss_ce``: cross-entropy over C+1 classes for all queries, unmatched queries -> void, void
  weighted ``NO_OBJECT_WEIGHT`` (PyTorch's weighted mean);
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and Dice (+1 smoothing) of each matched pair on
  importance-sampled points, summed over masks and divided by ``num_masks``;

each multiplied by its weight (CLASS/MASK/DICE_WEIGHT). Auxiliary set i gets the suffix ``_{i}``.

Normalisers are global: ``num_masks`` (targets in the whole distributed batch / world size,
clamped >= 1) and the CE weight sum are all-reduced in one call, so the gradient of a batch split
over several processes equals the gradient of the same batch on one process. On one process
``loss_ce`` is exactly ``F.cross_entropy(..., weight=empty_weight)``.

Class-agnostic mode (``CLASS_WEIGHT == 0``, the SAM warm-up): every target is the single class 0
("object"), matching reads masks only, and ``loss_ce`` is computed and multiplied by 0, which keeps
the classifier in the autograd graph (DDP requires every parameter to receive a gradient).
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.config import configurable
from detectron2.structures import BitMasks
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from .matcher import HungarianMatcher
from .point_sampling import LOSS_PURPOSE, MATCHER_PURPOSE, point_sample, seeded_generator, uncertain_points

CONFIDENCE_WEIGHTINGS = ("none", "segment_score")


def as_mask_tensor(masks, name: str = "gt_masks") -> torch.Tensor:
    """The bool [N, H, W] tensor of ``masks`` (a bool tensor or detectron2 ``BitMasks``)."""
    if isinstance(masks, BitMasks):
        return masks.tensor
    if isinstance(masks, torch.Tensor) and masks.dtype == torch.bool and masks.dim() == 3:
        return masks
    described = type(masks).__name__
    if isinstance(masks, torch.Tensor):
        described += f" of dtype {masks.dtype} and shape {tuple(masks.shape)}"
    raise TypeError(f"{name} must be a bool tensor [N, H, W] or detectron2 BitMasks, got {described}")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-mask Dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) of logits/targets [M, P] -> [M]."""
    probs = logits.sigmoid()
    if weights is not None:
        probs, targets = probs * weights, targets * weights
    numerator = 2.0 * (probs * targets).sum(-1)
    return 1.0 - (numerator + 1.0) / (probs.sum(-1) + targets.sum(-1) + 1.0)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-mask sigmoid BCE averaged over points (weighted mean with ``weights``) [M, P] -> [M]."""
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if weights is None:
        return per_point.mean(-1)
    return (per_point * weights).sum(-1) / weights.sum(-1).clamp(min=1e-6)


class SetCriterion(nn.Module):
    """Mask2Former's set loss, for labeled and pseudo-labeled targets alike.

    ``forward(outputs, targets)`` takes the predictor's outputs ({"pred_logits" [B,Q,C+1],
    "pred_masks" [B,Q,h,w], "aux_outputs": [...]}) and per image a target dict:
    "labels" int64 [N], "masks" bool [N, H, W] or ``BitMasks`` (on the padded canvas the
    predictions cover), optional "seed" (int: seeds this image's points), "valid_mask" bool [H, W]
    (read when ``ignore_padding``) and "weights" float [N] (read when ``use_segment_weights``:
    scales each target's BCE and Dice terms; CE is not weighted).
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
        targets = [self._checked_target(t, i) for i, t in enumerate(targets)]
        pred_logits = outputs["pred_logits"]
        device_type = pred_logits.device.type
        aux_outputs = outputs.get("aux_outputs", []) if self.deep_supervision else []
        # Layer index seeds the points: the final set has the same index with or without aux sets.
        prediction_sets = [(f"_{i}", i, aux) for i, aux in enumerate(aux_outputs)]
        prediction_sets.append(("", len(outputs.get("aux_outputs", [])), outputs))
        with torch.autocast(device_type=device_type, enabled=False):
            num_masks, ce_weight_sum = self._global_normalisers(targets, pred_logits.shape[1], pred_logits.device)
            losses = {}
            for suffix, layer, prediction in prediction_sets:
                set_losses = self._set_losses(prediction, targets, (seed_stream, layer), num_masks, ce_weight_sum)
                for name, value in set_losses.items():
                    losses[name + suffix] = value
        return losses

    def _checked_target(self, target: Dict, index: int) -> Dict:
        masks = as_mask_tensor(target["masks"], name=f"targets[{index}]['masks']")
        labels = target["labels"]
        if len(labels) != len(masks):
            raise ValueError(f"targets[{index}]: {len(labels)} labels but {len(masks)} masks")
        if self.class_agnostic:
            labels = torch.zeros_like(labels)  # one "object" class
        elif len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"targets[{index}]: class ids must lie in [0, {self.num_classes}) "
                f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES), got {labels.tolist()}"
            )
        return {**target, "labels": labels, "masks": masks}

    def _global_normalisers(self, targets, num_queries: int, device):
        """(num_masks, CE weight sum), each summed over processes and divided by the world size.

        Matched queries have CE weight 1 and unmatched ones NO_OBJECT_WEIGHT; each image has
        min(Q, N) matched queries in every prediction set, so the weight sum needs only N.
        """
        num_targets = torch.tensor([float(len(t["labels"])) for t in targets], device=device)
        matched = num_targets.clamp(max=num_queries)
        ce_weight_sum = (matched + self.no_object_weight * (num_queries - matched)).sum()
        totals = torch.stack([num_targets.sum(), ce_weight_sum])
        world_size = comm.get_world_size()
        if world_size > 1:
            dist.all_reduce(totals)
            totals = totals / world_size
        return totals[0].clamp(min=1.0), totals[1].clamp(min=1e-12)

    def _set_losses(self, prediction, targets, seed_offsets, num_masks, ce_weight_sum) -> Dict[str, torch.Tensor]:
        logits = prediction["pred_logits"].float()
        masks = prediction["pred_masks"].float()
        seeds = [t.get("seed") for t in targets]
        matcher_generators = [seeded_generator(s, (*seed_offsets, MATCHER_PURPOSE), masks.device) for s in seeds]
        indices = self.matcher(logits, masks, targets, matcher_generators)
        loss_ce = self._class_loss(logits, targets, indices) / ce_weight_sum
        loss_generators = [seeded_generator(s, (*seed_offsets, LOSS_PURPOSE), masks.device) for s in seeds]
        loss_mask, loss_dice = self._mask_losses(masks, targets, indices, loss_generators)
        return {
            "loss_ce": self.class_weight * loss_ce,
            "loss_mask": self.mask_weight * loss_mask / num_masks,
            "loss_dice": self.dice_weight * loss_dice / num_masks,
        }

    def _class_loss(self, logits, targets, indices) -> torch.Tensor:
        """Weighted CE summed over all queries (void for unmatched ones)."""
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (query_idx, target_idx) in enumerate(indices):
            target_classes[b, query_idx.to(logits.device)] = targets[b]["labels"].to(logits.device)[target_idx]
        per_query = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.empty_weight, reduction="none")
        return per_query.sum()

    def _mask_losses(self, masks, targets, indices, generators):
        """BCE and Dice summed over matched pairs, on importance-sampled points."""
        device = masks.device
        matched_preds, matched_targets, counts = [], [], []
        for b, (query_idx, target_idx) in enumerate(indices):
            matched_preds.append(masks[b, query_idx.to(device)])
            matched_targets.append(targets[b]["masks"][target_idx.to(targets[b]["masks"].device)].to(device))
            counts.append(len(query_idx))
        if sum(counts) == 0:
            zero = masks.sum() * 0.0  # keeps the mask head in the graph
            return zero, zero
        preds = torch.cat(matched_preds)[:, None]  # [M, 1, h, w]
        points = torch.cat([
            uncertain_points(p[:, None], self.num_points, self.oversample_ratio, self.importance_sample_ratio, g)
            for p, g in zip(matched_preds, generators)
            if len(p)
        ])  # [M, P, 2]; each image's points from its own generator
        pred_points = point_sample(preds, points)[:, 0]
        target_points = self._sample_targets(matched_targets, points)
        point_weights = self._point_validity(targets, counts, points)
        bce = sigmoid_ce_loss(pred_points, target_points, point_weights)
        dice = dice_loss(pred_points, target_points, point_weights)
        segment_weights = self._segment_weights(targets, indices, device)
        if segment_weights is not None:
            bce, dice = bce * segment_weights, dice * segment_weights
        return bce.sum(), dice.sum()

    @staticmethod
    def _sample_targets(matched_targets: Sequence[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """Target values at the points; images may differ in canvas size, so sample per image."""
        values, start = [], 0
        for target_masks in matched_targets:
            n = len(target_masks)
            if n:
                values.append(point_sample(target_masks[:, None].to(points.dtype), points[start:start + n])[:, 0])
            start += n
        return torch.cat(values)

    def _point_validity(self, targets, counts, points) -> Optional[torch.Tensor]:
        """Per-point weights 1 on real pixels, 0 on padding (when ignoring padding), else None."""
        if not self.ignore_padding:
            return None
        weights, start = [], 0
        for target, n in zip(targets, counts):
            chunk = points[start:start + n]
            valid = target.get("valid_mask")
            if valid is None:
                weights.append(chunk.new_ones(chunk.shape[:2]))
            elif n:
                valid_map = valid[None, None].to(chunk).expand(n, 1, *valid.shape)
                weights.append(point_sample(valid_map, chunk)[:, 0])
            start += n
        return torch.cat(weights)

    def _segment_weights(self, targets, indices, device) -> Optional[torch.Tensor]:
        if not self.use_segment_weights:
            return None
        weights = []
        for target, (_, target_idx) in zip(targets, indices):
            per_target = target.get("weights")
            if per_target is None:
                weights.append(torch.ones(len(target_idx), device=device))
            else:
                weights.append(per_target.to(device=device, dtype=torch.float32)[target_idx.to(per_target.device)])
        return torch.cat(weights)
