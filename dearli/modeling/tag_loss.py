"""The student's multi-label image-tag loss (DecoupledNet, extensions.md §4.3 B).

Image-level score of class c: ``s_c = max_q p_q(c)``, the largest probability of c over the final
layer's queries (softmax over C+1, void excluded): DecoupledNet's max pooling. Per image

    l = -(1/C) sum_c w_c [y_c log s_c + (1 - y_c) log(1 - s_c)],   s clamped to [1e-6, 1 - 1e-6],

with targets y and term weights w from :func:`dearli.data.image_tags.student_tag_targets` (the
CutMix rule: w = 1 on every class of an unmixed tagged image; on a mixed one only on classes absent
from both images, y = 0). ``loss_tag`` is the mean of l over the images that carry tag targets
(0 when none does) times the weight; the mean is per process (DDP then averages the gradients).
The loss reads only the class logits, so its gradient reaches the class head and the query
features, never ``mask_embed``.
"""
from typing import Dict, Sequence

import torch

SCORE_CLAMP = 1e-6


def image_class_scores(pred_logits: torch.Tensor) -> torch.Tensor:
    """[B, C]: max over queries of the class probabilities of ``pred_logits`` [B, Q, C+1]."""
    return pred_logits.float().softmax(-1)[..., :-1].amax(1)


def image_tag_loss(pred_logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                   counted: torch.Tensor) -> torch.Tensor:
    """Mean over the ``counted`` images (bool [B]) of the per-image loss l (module docstring);
    ``targets`` [B, C] (0/1), ``weights`` [B, C]. Rows not counted contribute nothing."""
    scores = image_class_scores(pred_logits).clamp(SCORE_CLAMP, 1 - SCORE_CLAMP)
    targets = targets.to(scores)
    per_term = -(targets * scores.log() + (1 - targets) * (1 - scores).log())
    weights = weights.to(scores) * counted.to(scores)[:, None]
    per_image = (per_term * weights).sum(1) / scores.shape[1]
    return per_image.sum() / counted.sum().clamp(min=1)


def tag_losses(pred_logits: torch.Tensor, samples: Sequence[Dict], weight: float) -> Dict[str, torch.Tensor]:
    """``{"loss_tag": weight x image_tag_loss}`` of the pseudo-labeled ``samples`` (those with
    ``tag_targets`` / ``tag_weights`` count, the others contribute nothing)."""
    batch, num_classes = pred_logits.shape[0], pred_logits.shape[-1] - 1
    targets = torch.zeros(batch, num_classes)
    weights = torch.zeros(batch, num_classes)
    counted = torch.zeros(batch, dtype=torch.bool)
    for i, sample in enumerate(samples):
        if sample.get("tag_targets") is not None:
            targets[i], weights[i], counted[i] = sample["tag_targets"].float(), sample["tag_weights"], True
    device = pred_logits.device
    loss = image_tag_loss(pred_logits, targets.to(device, non_blocking=True), weights.to(device, non_blocking=True),
                          counted.to(device, non_blocking=True))
    return {"loss_tag": weight * loss}
