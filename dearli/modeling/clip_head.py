"""The CLIP classification head and the zero-shot branch (method spec §1.3-§1.5).

``CLIPClassificationHead`` (SEM_SEG_HEADS_REGISTRY) = pixel decoder + masked-attention decoder whose
class logits are cosines against the CLIP text classifier. The zero-shot ("out-of-vocabulary")
branch used at inference is a few functions: binarised mask pooling of the dense CLIP feature, the
CLIP image head, cosine against the same text classifier with CLIP's own temperature, and the
geometric ensemble with the decoder's ("in-vocabulary") class distribution.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder, text_classifier_logits

# Clamp of exp(theta_CLIP) in the zero-shot logits (the reference's value; ~100 for LAION weights).
CLIP_LOGIT_SCALE_MAX = 100.0
# Added inside log(p + eps) of the final distribution (reference value).
LOG_EPS = 1e-8
# Added to the mask area in mask pooling, so an empty mask pools to a zero vector.
AREA_EPS = 1e-8


@SEM_SEG_HEADS_REGISTRY.register()
class CLIPClassificationHead(nn.Module):
    """forward(features, text_classifier [K+1,D], num_synonyms) -> the predictor's outputs
    {"pred_logits" [B,Q,C+1], "pred_masks" [B,Q,H/4,W/4], "aux_outputs"}."""

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "pixel_decoder": MSDeformAttnPixelDecoder(cfg, input_shape),
            "predictor": MaskedAttentionDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM),
        }

    def forward(self, features: Dict[str, torch.Tensor], text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]):
        mask_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, text_classifier, num_synonyms)


def mask_pool(dense: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average of ``dense`` [B,C,h,w] inside each binarised mask: [B,Q,H,W] logits are bilinearly
    resized to h x w and thresholded at 0 (no gradient through the masks). Float32 even under
    autocast (the sums run over whole feature maps). An empty mask pools to zeros. -> [B,Q,C]."""
    with torch.autocast(device_type=dense.device.type, enabled=False):
        dense = dense.float()
        resized = F.interpolate(mask_logits.detach().float(), size=dense.shape[-2:],
                                mode="bilinear", align_corners=False)
        inside = (resized > 0).float()
        area = inside.sum(dim=(-2, -1)).unsqueeze(-1)
        return torch.einsum("bqhw,bchw->bqc", inside, dense) / (area + AREA_EPS)


def zero_shot_logits(backbone, clip_dense: torch.Tensor, mask_logits: torch.Tensor,
                     text_classifier: torch.Tensor, num_synonyms: Sequence[int]) -> torch.Tensor:
    """Out-of-vocabulary logits [B,Q,C+1] (void last): mask-pooled dense CLIP features through the
    CLIP image head, cosine against ``text_classifier`` [K+1,D] scaled by min(exp(theta_CLIP), 100),
    max over each class's synonyms (the predictor's own function)."""
    pooled = mask_pool(clip_dense, mask_logits)
    with torch.autocast(device_type=pooled.device.type, enabled=False):
        embeddings = backbone.visual_prediction_forward(pooled).float()
        return text_classifier_logits(embeddings, text_classifier.float(), num_synonyms,
                                      backbone.clip_logit_scale.float(), CLIP_LOGIT_SCALE_MAX)


def geometric_ensemble(logits_in: torch.Tensor, logits_out: torch.Tensor, alpha: float) -> torch.Tensor:
    """Final per-query class log-probabilities [B,Q,C+1] (void last), spec §1.5 steps 5-7.

    p_in = softmax_C(z_in[:C]), p_out = softmax_C(z_out[:C]) (the void column of ``logits_out``, if
    any, is dropped), p_ens proportional to p_in^(1-alpha) * p_out^alpha, p_void =
    softmax_{C+1}(z_in)[void]; returns log([(1 - p_void) * p_ens, p_void] + 1e-8).
    """
    num_classes = logits_in.shape[-1] - 1
    if logits_out.shape[-1] not in (num_classes, num_classes + 1) or \
            logits_out.shape[:-1] != logits_in.shape[:-1]:
        raise ValueError(f"geometric_ensemble: logits_in {tuple(logits_in.shape)} (C+1 columns) and "
                         f"logits_out {tuple(logits_out.shape)} (C or C+1 columns) do not match")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.CLIP_HEAD.ENSEMBLE_ALPHA must lie in [0, 1], got {alpha}")
    logits_in, logits_out = logits_in.float(), logits_out.float()
    # Weighted sum of log-probabilities = log of the geometric mean; softmax renormalises it.
    log_p_in = logits_in[..., :num_classes].log_softmax(dim=-1)
    log_p_out = logits_out[..., :num_classes].log_softmax(dim=-1)
    p_ens = ((1.0 - alpha) * log_p_in + alpha * log_p_out).softmax(dim=-1)
    p_void = logits_in.softmax(dim=-1)[..., -1:]
    return torch.log(torch.cat([(1.0 - p_void) * p_ens, p_void], dim=-1) + LOG_EPS)


def ensemble_class_scores(backbone, features: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor],
                          text_classifier: torch.Tensor, num_synonyms: Sequence[int],
                          alpha: float) -> torch.Tensor:
    """The decoder's final class logits ensembled with the zero-shot branch: log-probabilities
    [B,Q,C+1] from the backbone features ("clip_vis_dense") and head outputs of one forward."""
    out_logits = zero_shot_logits(backbone, features["clip_vis_dense"], outputs["pred_masks"],
                                  text_classifier, num_synonyms)
    return geometric_ensemble(outputs["pred_logits"], out_logits, alpha)
