"""Dense CLIP guidance (SemiVL, ``../shared/design/extensions.md`` §3.4b): an optional per-pixel loss
on the unlabeled images, SSL.DENSE_CLIP_GUIDANCE.*.

Teacher side (inside its own forward on the weak views, no extra backbone pass):

1. the frozen backbone's ``clip_vis_dense`` (stride 32) goes, location by location, through the CLIP
   image head (norm + projection), exactly what the zero-shot branch applies to mask-pooled vectors;
2. cosine with the class text embeddings (max over synonyms / concepts) x CLIP's logit scale
   (min(exp(theta), 100)); the void column is dropped;
3. bilinear upsampling of the logits to the stride-4 grid of the head's masks, softmax over the C
   classes, label = argmax, ignored (255) where the maximum probability is below THRESHOLD;
4. labels outside an image's valid area are ignored; CutMix pastes the partner's labels inside the
   SAME box as the pseudo-labels (:meth:`DenseCLIPGuidance.attach`).

Student side (:func:`dense_guidance_losses`): semantic probabilities of its final prediction,
P(c, x) proportional to sum_q p_q(c) * sigmoid(m_q(x)) (p_q: softmax over C+1 without void),
normalised over c; loss = NLL of the labels summed over non-ignored pixels / ALL pixels, times
lambda(t) = WEIGHT * (1 - t / SOLVER.MAX_ITER) (constant WEIGHT with DECAY off). Labels are integer
maps made under no_grad: no gradient reaches the teacher or the frozen backbone.
"""
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from torch.nn import functional as F

from dearli.data.datasets.metadata import IGNORE_LABEL

from .text_classifier import CLIP_LOGIT_SCALE_MAX, text_classifier_logits

# Added to the semantic normaliser and inside the log of the NLL (probabilities can underflow).
SEMANTIC_EPS = 1e-8
# Stride of the head's mask grid, on which the labels live.
MASK_STRIDE = 4
LOSS_NAME = "loss_dense_clip"


def dense_clip_logits(backbone, clip_dense: torch.Tensor, text_classifier: torch.Tensor,
                      num_synonyms: Sequence[int]) -> torch.Tensor:
    """Per-location CLIP class logits [B, C, h, w] (no void) of dense features [B, Cd, h, w]."""
    batch, _, height, width = clip_dense.shape
    with torch.autocast(device_type=clip_dense.device.type, enabled=False):
        cells = clip_dense.float().flatten(2).transpose(1, 2)  # [B, h*w, Cd]: h*w "1x1 masks"
        embeddings = backbone.visual_prediction_forward(cells).float()
        logits = text_classifier_logits(embeddings, text_classifier.float(), num_synonyms,
                                        backbone.clip_logit_scale.float(), CLIP_LOGIT_SCALE_MAX)
    return logits[..., :len(num_synonyms)].transpose(1, 2).reshape(batch, -1, height, width)


def labels_from_logits(logits: torch.Tensor, grid_size, threshold: float) -> torch.Tensor:
    """int64 [B, H, W] labels on ``grid_size``: argmax of the softmax of the bilinearly upsampled
    ``logits`` [B, C, h, w], IGNORE_LABEL where its maximum is below ``threshold``."""
    upsampled = F.interpolate(logits, size=tuple(grid_size), mode="bilinear", align_corners=False)
    confidence, labels = upsampled.softmax(dim=1).max(dim=1)
    return labels.masked_fill_(confidence < threshold, IGNORE_LABEL)


def to_grid(mask: torch.Tensor, grid_size) -> torch.Tensor:
    """A full-resolution bool map [H, W] (H <= 4 h) sampled at the centres of the stride-4 cells of
    ``grid_size`` (h, w): padded with False to 4h x 4w, then pixel (4i + 2, 4j + 2)."""
    height, width = (MASK_STRIDE * size for size in grid_size)
    if mask.shape[-2] > height or mask.shape[-1] > width:
        raise ValueError(f"a {tuple(mask.shape)} mask does not fit the stride-{MASK_STRIDE} grid {tuple(grid_size)}")
    padded = F.pad(mask, (0, width - mask.shape[-1], 0, height - mask.shape[-2]), value=False)
    centre = MASK_STRIDE // 2
    return padded[..., centre::MASK_STRIDE, centre::MASK_STRIDE]


def semantic_probabilities(pred_logits: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """P(c, x) [B, C, h, w], proportional to sum_q softmax(pred_logits)_q(c) * sigmoid(m_q(x)) (void
    dropped), normalised over c. Float32 (sums over queries)."""
    class_probs = pred_logits.float().softmax(dim=-1)[..., :-1]
    semantic = torch.einsum("bqc,bqhw->bchw", class_probs, pred_masks.float().sigmoid())
    return semantic / (semantic.sum(dim=1, keepdim=True) + SEMANTIC_EPS)


def dense_guidance_loss(semantic: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NLL of ``labels`` [B, h, w] (IGNORE_LABEL skipped) under ``semantic`` [B, C, h, w], summed
    over the labelled pixels and divided by all pixels (SemiVL's mean over all)."""
    if semantic.shape[0] != labels.shape[0] or semantic.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"dense CLIP labels {tuple(labels.shape)} do not match the student's "
                         f"semantic map {tuple(semantic.shape)} (same crops, stride {MASK_STRIDE})")
    labelled = labels != IGNORE_LABEL
    picked = semantic.gather(1, torch.where(labelled, labels, 0)[:, None])[:, 0]
    nll = -torch.log(picked + SEMANTIC_EPS)
    return torch.where(labelled, nll, 0.0).sum() / labels.numel()


def dense_guidance_losses(outputs: Dict, samples: List[Dict]) -> Dict[str, torch.Tensor]:
    """{LOSS_NAME: weight * loss} for the pseudo-labeled ``samples`` that carry ``dense_clip_label``
    (the teacher attaches it when the option is on), else {} with nothing computed."""
    carrying = [sample.get("dense_clip_label") is not None for sample in samples]
    if not any(carrying):
        return {}
    if not all(carrying):
        raise ValueError("dense CLIP guidance: some pseudo-labeled samples carry 'dense_clip_label' and others do not")
    weight = samples[0]["dense_clip_weight"]
    if weight is None:
        raise ValueError("dense CLIP labels made outside a training step (no iteration, no weight) reached the loss")
    device = outputs["pred_masks"].device
    labels = torch.stack([sample["dense_clip_label"] for sample in samples]).to(device, non_blocking=True)
    with torch.autocast(device_type=device.type, enabled=False):  # float32: sums over queries, logs
        semantic = semantic_probabilities(outputs["pred_logits"], outputs["pred_masks"])
        return {LOSS_NAME: weight * dense_guidance_loss(semantic, labels)}


class DenseCLIPGuidance:
    """The teacher's half: labels from its own forward's dense CLIP features, then attached to the
    student's samples (CutMixed with the pseudo-labels' box) with the weight of the iteration."""

    @configurable
    def __init__(self, *, threshold: float, weight: float, decay: bool, max_iter: int):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"SSL.DENSE_CLIP_GUIDANCE.THRESHOLD must lie in [0, 1], got {threshold}")
        if weight < 0:
            raise ValueError(f"SSL.DENSE_CLIP_GUIDANCE.WEIGHT must be >= 0, got {weight}")
        if decay and max_iter <= 0:
            raise ValueError(f"SSL.DENSE_CLIP_GUIDANCE.DECAY needs SOLVER.MAX_ITER > 0, got {max_iter}")
        self.threshold, self.weight, self.decay, self.max_iter = threshold, weight, decay, max_iter

    @classmethod
    def from_config(cls, cfg):
        guidance = cfg.SSL.DENSE_CLIP_GUIDANCE
        return {"threshold": guidance.THRESHOLD, "weight": guidance.WEIGHT, "decay": guidance.DECAY,
                "max_iter": cfg.SOLVER.MAX_ITER}

    def weight_at(self, iteration: Optional[int]) -> Optional[float]:
        """lambda(t) = WEIGHT * (1 - t / T), T = SOLVER.MAX_ITER (clamped at 0); WEIGHT without DECAY;
        None outside training (``iteration`` None: pictures, benchmarks; no loss is computed there)."""
        if iteration is None:
            return None
        if not self.decay:
            return self.weight
        return self.weight * max(0.0, 1.0 - iteration / self.max_iter)

    @torch.no_grad()
    def labels(self, backbone, clip_dense: torch.Tensor, text_classifier: torch.Tensor,
               num_synonyms: Sequence[int], grid_size) -> torch.Tensor:
        """Labels int64 [B, h, w] on the masks' stride-4 ``grid_size`` of one teacher forward."""
        logits = dense_clip_logits(backbone, clip_dense, text_classifier, num_synonyms)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return labels_from_logits(logits, grid_size, self.threshold)

    def attach(self, samples: List[Dict], unlabeled: List[Dict], labels: torch.Tensor,
               partners: List[int], iteration: Optional[int]) -> None:
        """Add ``dense_clip_label`` and ``dense_clip_weight`` to each student sample. ``labels`` holds
        the weak views of ``unlabeled``, then those of the CutMix partners of ``partners``."""
        grid = tuple(labels.shape[-2:])
        partner_labels = dict(zip(partners, labels[len(unlabeled):]))
        weight = self.weight_at(iteration)
        for index, (sample, source) in enumerate(zip(samples, unlabeled)):
            label = _restricted(labels[index], source["valid_mask"], grid)
            cutmix = source.get("cutmix")
            if cutmix is not None:
                box = to_grid(cutmix["box_mask"].to(label.device), grid)
                label = torch.where(box, _restricted(partner_labels[index], cutmix["valid_mask"], grid), label)
            sample["dense_clip_label"] = label
            sample["dense_clip_weight"] = weight


def training_iteration() -> Optional[int]:
    """The iteration of the running training step (Detectron2's trainer sets it on its EventStorage
    before each step), or None outside training (no EventStorage open)."""
    try:
        return get_event_storage().iter
    except AssertionError:  # detectron2 asserts that a storage is open
        return None


def _restricted(label: torch.Tensor, valid: torch.Tensor, grid) -> torch.Tensor:
    """``label`` with IGNORE_LABEL outside the image's valid (unpadded) area."""
    return torch.where(to_grid(valid.to(label.device), grid), label, IGNORE_LABEL)
