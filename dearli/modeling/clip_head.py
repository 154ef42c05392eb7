"""The CLIP classification head (method spec §1.3-§1.4).

``CLIPClassificationHead`` (SEM_SEG_HEADS_REGISTRY) = pixel decoder + masked-attention decoder whose
class logits are cosines against the CLIP text classifier. Scoring embeddings against the classifier,
the zero-shot branch and the ensemble live in :mod:`.text_classifier`.
"""
import functools
from typing import Callable, Dict, Sequence

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
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module, compile_backend: str = ""):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        # A backend name compiles both decoders (MODEL.COMPILE); "" runs them eagerly.
        self.compile_backend = compile_backend

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {
            "pixel_decoder": MSDeformAttnPixelDecoder(cfg, input_shape),
            "predictor": MaskedAttentionDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM),
            "compile_backend": cfg.MODEL.COMPILE.BACKEND if cfg.MODEL.COMPILE.ENABLED else "",
        }

    def forward(self, features: Dict[str, torch.Tensor], text_classifier: torch.Tensor,
                num_synonyms: Sequence[int]):
        forward_features = type(self.pixel_decoder).forward_features
        predict = type(self.predictor).forward
        if self.compile_backend:
            forward_features = compiled(forward_features, self.compile_backend)
            predict = compiled(predict, self.compile_backend)
        mask_features, multi_scale_features = forward_features(self.pixel_decoder, features)
        return predict(self.predictor, multi_scale_features, mask_features, text_classifier, num_synonyms)


@functools.lru_cache(maxsize=None)
def compiled(function: Callable, backend: str) -> Callable:
    """``torch.compile`` of a plain (unbound) function, made once per process. Compiling the
    class's function rather than a module keeps modules picklable and deep-copyable (the teacher is
    a deep copy of the student): each instance gets its own graphs through dynamo's guards."""
    return torch.compile(function, backend=backend)
