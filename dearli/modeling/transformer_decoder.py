"""Masked-attention transformer decoder with CLIP-space classification (the head's predictor).

Mask2Former's decoder as used by FC-CLIP / DEARLi: learnable queries refine themselves layer by
layer, each layer reading one scale of the pixel decoder (round-robin 32, 16, 8, ...) through
cross-attention restricted to the foreground of the previous prediction's masks, then
self-attention, then an FFN. After the initial queries and after each layer, a prediction is made:
mask logits (query embedding . mask features) and class logits (cosine between the query projected
into CLIP space and the text classifier rows, max over each class's synonyms, scaled).

Attention runs through ``F.scaled_dot_product_attention`` (fused kernels where available) while the
parameters keep ``nn.MultiheadAttention``'s names, so reference checkpoints load unchanged.
All tensors are batch-first: [B, tokens, channels].
"""
import math
from functools import partial
from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn
from torch.nn import functional as F

from .position_encoding import PositionEmbeddingSine
from .text_classifier import check_text_classifier, synonym_class_index, text_classifier_logits


class FusedMultiheadAttention(nn.Module):
    """Batch-first multi-head attention on the fused SDPA path, with the parameter names and
    initialisation of ``nn.MultiheadAttention`` (packed ``in_proj_weight``/``in_proj_bias``)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"FusedMultiheadAttention: embed_dim ({embed_dim}) not divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, blocked: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [B, Lq, E], key/value [B, Lk, E]; ``blocked`` bool [B, Lq, Lk], True where a query may
        NOT attend (the ``nn.MultiheadAttention`` convention), shared by all heads. -> [B, Lq, E]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split_heads(F.linear(query, w_q, b_q))
        k = self._split_heads(F.linear(key, w_k, b_k))
        v = self._split_heads(F.linear(value, w_v, b_v))
        allowed = None if blocked is None else ~blocked[:, None]  # SDPA: True = may attend
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, n_queries, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, n_queries, -1))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        return x.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)


class _ResidualBlock(nn.Module):
    """Residual sub-layer with Mask2Former's post-norm (default) or pre-norm placement.

    Subclasses create their sub-layer first and then call ``_add_norm``, so that state-dict keys come
    in the reference order (sub-layer, then ``norm``).
    """

    def _add_norm(self, d_model: int, dropout: float, normalize_before: bool):
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _add_residual(self, tgt: torch.Tensor, sublayer) -> torch.Tensor:
        if self.normalize_before:
            return tgt + self.dropout(sublayer(self.norm(tgt)))
        return self.norm(tgt + self.dropout(sublayer(tgt)))

    def _xavier_init(self):
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)


class SelfAttentionLayer(_ResidualBlock):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = FusedMultiheadAttention(d_model, nhead, dropout)
        self._add_norm(d_model, dropout, normalize_before)
        self._xavier_init()

    def forward(self, tgt, query_pos):
        return self._add_residual(tgt, lambda x: self.self_attn(x + query_pos, x + query_pos, x))


class CrossAttentionLayer(_ResidualBlock):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = FusedMultiheadAttention(d_model, nhead, dropout)
        self._add_norm(d_model, dropout, normalize_before)
        self._xavier_init()

    def forward(self, tgt, memory, blocked, memory_pos, query_pos):
        return self._add_residual(
            tgt, lambda x: self.multihead_attn(x + query_pos, memory + memory_pos, memory, blocked)
        )


class FFNLayer(_ResidualBlock):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self._add_norm(d_model, dropout, normalize_before)
        self._xavier_init()

    def forward(self, tgt):
        return self._add_residual(tgt, lambda x: self.linear2(self.dropout(F.relu(self.linear1(x)))))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims_in, dims_out))

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def attention_block_mask(mask_logits: torch.Tensor, size) -> torch.Tensor:
    """Masked-attention mask from a prediction: [B, Q, H, W] logits -> bool [B, Q, h*w] at ``size``,
    True (blocked) where the resized mask's probability is below 0.5. A query whose mask is empty
    everywhere would attend to nothing (and SDPA would return NaN), so its row is fully un-blocked."""
    resized = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    return (blocked & ~blocked.all(dim=-1, keepdim=True)).detach()


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder with a CLIP-space class head."""

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        dropout: float,
        mask_dim: int,
        enforce_input_project: bool,
        embed_dim: int,
        logit_scale_init: float,
        logit_scale_max: float,
        num_feature_levels: int = 3,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            hidden_dim, nheads, dim_feedforward, dropout, pre_norm: transformer layer shape.
            num_queries: object queries.
            dec_layers: prediction sets = initial queries + (dec_layers - 1) decoder layers.
            mask_dim: channels of the mask features (output of ``mask_embed``).
            enforce_input_project: 1x1 conv on the inputs even when in_channels == hidden_dim.
            embed_dim: CLIP joint embedding size (output of ``class_embed``).
            logit_scale_init, logit_scale_max: initial value and clamp of exp(logit_scale).
            num_feature_levels: scales read round-robin.
        """
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1 (prediction sets), got {dec_layers}")
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.num_feature_levels = num_feature_levels
        self.embed_dim = embed_dim
        self.logit_scale_max = logit_scale_max
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # initial query content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # query positional embedding
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            _input_projection(in_channels, hidden_dim, enforce_input_project) for _ in range(num_feature_levels)
        )
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int):
        mask_former = cfg.MODEL.MASK_FORMER
        return {
            "in_channels": in_channels,
            "hidden_dim": mask_former.HIDDEN_DIM,
            "num_queries": mask_former.NUM_OBJECT_QUERIES,
            "nheads": mask_former.NHEADS,
            "dim_feedforward": mask_former.DIM_FEEDFORWARD,
            "dec_layers": mask_former.DEC_LAYERS,
            "pre_norm": mask_former.PRE_NORM,
            "dropout": mask_former.DROPOUT,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mask_former.ENFORCE_INPUT_PROJ,
            "embed_dim": cfg.MODEL.CLIP_HEAD.EMBED_DIM,
            "logit_scale_init": cfg.MODEL.CLIP_HEAD.LOGIT_SCALE_INIT,
            "logit_scale_max": cfg.MODEL.CLIP_HEAD.LOGIT_SCALE_MAX,
        }

    def forward(
        self,
        multi_scale_features: List[torch.Tensor],
        mask_features: torch.Tensor,
        text_classifier: torch.Tensor,
        num_synonyms: Sequence[int],
    ) -> Dict[str, object]:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps [B, in_channels, H_l, W_l], coarse first.
            mask_features: [B, mask_dim, H/4, W/4].
            text_classifier: [K + 1, embed_dim] normalised rows, void last (see text_classifier_logits).
            num_synonyms: synonym rows per class.

        Returns:
            {"pred_logits": [B, Q, C + 1], "pred_masks": [B, Q, H/4, W/4],
             "aux_outputs": in training, the dec_layers - 1 earlier predictions as dicts with the same
             two keys; in eval mode none (no loss reads them)}.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"MaskedAttentionDecoder: expected {self.num_feature_levels} feature maps, got {len(multi_scale_features)}"
            )
        check_text_classifier(text_classifier, num_synonyms, self.embed_dim)
        class_of_row = synonym_class_index(num_synonyms, text_classifier.device)
        memories, memory_pos, sizes = self._flatten_levels(multi_scale_features)

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        classify = partial(
            text_classifier_logits,
            text_classifier=text_classifier,
            num_synonyms=num_synonyms,
            log_logit_scale=self.logit_scale,
            max_logit_scale=self.logit_scale_max,
            class_of_row=class_of_row,
        )
        predictions = [self._predict(output, mask_features, classify)]
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            blocked = attention_block_mask(predictions[-1]["pred_masks"], sizes[level])
            output = self.transformer_cross_attention_layers[layer](
                output, memories[level], blocked, memory_pos[level], query_pos
            )
            output = self.transformer_self_attention_layers[layer](output, query_pos)
            output = self.transformer_ffn_layers[layer](output)
            predictions.append(self._predict(output, mask_features, classify))
            if not self.training:  # evaluation and the teacher read only the last set: free the others
                predictions = predictions[-1:]
        return {**predictions[-1], "aux_outputs": predictions[:-1]}

    def _flatten_levels(self, features: List[torch.Tensor]):
        """Per level: memory [B, h*w, C] (with level embedding), its sine encoding, and (h, w)."""
        memories, memory_pos, sizes = [], [], []
        for level, feature in enumerate(features):
            sizes.append(tuple(feature.shape[-2:]))
            memory_pos.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
            projected = self.input_proj[level](feature).flatten(2).transpose(1, 2)
            memories.append(projected + self.level_embed.weight[level])
        return memories, memory_pos, sizes

    def _predict(self, output: torch.Tensor, mask_features: torch.Tensor, classify) -> Dict[str, torch.Tensor]:
        decoder_output = self.decoder_norm(output)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoder_output), mask_features)
        return {"pred_logits": classify(self.class_embed(decoder_output)), "pred_masks": mask_logits}


def _input_projection(in_channels: int, hidden_dim: int, enforce: bool) -> nn.Module:
    """Identity when the pixel decoder already outputs hidden_dim channels (no state-dict keys)."""
    if in_channels == hidden_dim and not enforce:
        return nn.Identity()
    projection = Conv2d(in_channels, hidden_dim, kernel_size=1)
    weight_init.c2_xavier_fill(projection)
    return projection
