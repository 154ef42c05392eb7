"""The CLIP classification head (method spec §1.3-§1.4).

``CLIPClassificationHead`` (SEM_SEG_HEADS_REGISTRY) = pixel decoder + masked-attention decoder whose
class logits are cosines against the CLIP text classifier. Scoring embeddings against the classifier,
the zero-shot branch and the ensemble live in :mod:`.text_classifier`.
"""
from typing import Dict, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder


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
