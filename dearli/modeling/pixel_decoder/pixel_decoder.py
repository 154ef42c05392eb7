"""Mask2Former's multi-scale deformable-attention pixel decoder (pure PyTorch).

Data flow: the coarsest backbone levels (res3..res5 in the paper) are projected to ``conv_dim``
channels, refined jointly by a deformable-attention encoder, and the finer levels (res2) are added
FPN-style on top. Outputs: the stride-4 ``mask_features`` that the predictor dots query embeddings
with, and the encoder outputs at strides 32, 16, 8 that its masked cross-attention reads.

State-dict names follow the reference checkpoints (``input_proj.i``, ``transformer.level_embed``,
``transformer.encoder.layers.i.*``, ``adapter_1``, ``layer_1``, ``mask_features``).
"""
import contextlib
import math
from typing import Dict, List, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..position_encoding import PositionEmbeddingSine
from .ms_deform_attn import MSDeformAttn, SpatialShapes

# The masked-attention decoder always reads three scales.
NUM_MULTI_SCALE_FEATURES = 3


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then a ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes: SpatialShapes):
        """src, pos: [B, S, d_model]; reference_points: [1, S, L, 2]. Returns [B, S, d_model]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.dropout2(F.relu(self.linear1(src)))
        return self.norm2(src + self.dropout3(self.linear2(hidden)))


class MSDeformAttnEncoder(nn.Module):
    """A stack of encoder layers; optionally recomputes each layer in backward to save memory."""

    def __init__(self, layers: List[MSDeformAttnEncoderLayer], checkpoint_layers: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpoint_layers = checkpoint_layers

    def forward(self, src, pos, spatial_shapes: SpatialShapes):
        reference_points = pixel_centre_reference_points(spatial_shapes, src.device)
        for layer in self.layers:
            if self.checkpoint_layers and torch.is_grad_enabled():
                src = checkpoint(layer, src, pos, reference_points, spatial_shapes, use_reentrant=False)
            else:
                src = layer(src, pos, reference_points, spatial_shapes)
        return src


def pixel_centre_reference_points(spatial_shapes: SpatialShapes, device) -> torch.Tensor:
    """Every position of every level refers to its own pixel centre, at the same relative place on
    all levels (maps are never padded here, so no valid-ratio correction): [1, S, L, 2] (x, y)."""
    centres = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1))
    points = torch.cat(centres, dim=0)
    return points[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)


class MSDeformAttnTransformer(nn.Module):
    """Flattens the projected levels, adds positional + level embeddings, runs the encoder."""

    def __init__(self, d_model, n_heads, n_layers, d_ffn, dropout, n_levels, n_points, checkpoint_layers):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        layers = [
            MSDeformAttnEncoderLayer(d_model, d_ffn, dropout, n_levels, n_heads, n_points) for _ in range(n_layers)
        ]
        self.encoder = MSDeformAttnEncoder(layers, checkpoint_layers)
        self.reset_parameters()

    def reset_parameters(self):
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        # The generic xavier pass above must not override the deformable-attention initialisation.
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]) -> List[torch.Tensor]:
        """srcs, pos_embeds: per level [B, C, H_l, W_l] -> encoded maps, same shapes."""
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        flat_src = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        flat_pos = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level] for level, pos in enumerate(pos_embeds)], dim=1
        )
        memory = self.encoder(flat_src, flat_pos, spatial_shapes)
        per_level = memory.split([height * width for height, width in spatial_shapes], dim=1)
        return [
            level.transpose(1, 2).reshape(src.shape[0], -1, *shape)
            for level, src, shape in zip(per_level, srcs, spatial_shapes)
        ]


class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder on the coarse levels + FPN levels down to ``common_stride``."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: Sequence[str],
        conv_dim: int,
        mask_dim: int,
        norm: str,
        common_stride: int,
        transformer_enc_layers: int,
        transformer_nheads: int,
        transformer_n_points: int,
        transformer_dim_feedforward: int,
        transformer_dropout: float,
        checkpoint_encoder_layers: bool = False,
        fp32: bool = False,
    ):
        """
        Args:
            input_shape: backbone features given to the decoder (channels and stride of each).
            transformer_in_features: the subset refined by the deformable encoder.
            conv_dim: width of every internal map; mask_dim: channels of ``mask_features``.
            norm: detectron2 norm name of the FPN convs ("GN" in the paper; "" = bias, no norm).
            common_stride: stride of ``mask_features``; FPN levels are added down to it.
            transformer_*: encoder depth, heads, sampling points per head/level, FFN width, dropout.
            checkpoint_encoder_layers: recompute encoder layers in backward (activation checkpointing).
            fp32: run the whole decoder in float32 under autocast (the reference's choice).
        """
        super().__init__()
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: encoder features {missing} (MODEL.SEM_SEG_HEAD."
                f"DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES) are not among the inputs {sorted(input_shape)}"
            )
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]
        # Encoder levels from coarse to fine (res5, res4, res3): input_proj.0 is res5.
        encoder_levels = [(name, shape) for name, shape in by_stride if name in transformer_in_features][::-1]
        self.transformer_in_features = [name for name, _ in encoder_levels]

        self.input_proj = nn.ModuleList(
            [_input_projection(shape.channels, conv_dim) for _, shape in encoder_levels]
        )
        self.transformer = MSDeformAttnTransformer(
            d_model=conv_dim,
            n_heads=transformer_nheads,
            n_layers=transformer_enc_layers,
            d_ffn=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=len(encoder_levels),
            n_points=transformer_n_points,
            checkpoint_layers=checkpoint_encoder_layers,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)
        self.mask_dim = mask_dim
        self.fp32 = fp32
        self.common_stride = common_stride

        finest_encoder_stride = min(shape.stride for _, shape in encoder_levels)
        num_fpn_levels = int(round(math.log2(finest_encoder_stride) - math.log2(common_stride)))
        # adapter_1/layer_1 belong to the finest input; (number, feature) pairs are kept in top-down
        # order (coarse to fine), the order forward_features adds them in.
        fpn_levels = [(index + 1, name) for index, name in enumerate(self.in_features[:num_fpn_levels])]
        for number, name in fpn_levels:
            self._add_fpn_level(number, input_shape[name].channels, conv_dim, norm)
        self.fpn_levels = fpn_levels[::-1]
        num_outputs = len(encoder_levels) + num_fpn_levels
        if num_outputs < NUM_MULTI_SCALE_FEATURES:
            raise ValueError(
                f"MSDeformAttnPixelDecoder: {num_outputs} output levels, the predictor needs "
                f"{NUM_MULTI_SCALE_FEATURES}; add input features or lower MODEL.SEM_SEG_HEAD.COMMON_STRIDE"
            )

    def _add_fpn_level(self, number: int, in_channels: int, conv_dim: int, norm: str):
        use_bias = norm == ""  # a norm layer makes the conv bias redundant
        lateral = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
        output = Conv2d(
            conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
            norm=get_norm(norm, conv_dim), activation=F.relu,
        )
        weight_init.c2_xavier_fill(lateral)
        weight_init.c2_xavier_fill(output)
        self.add_module(f"adapter_{number}", lateral)
        self.add_module(f"layer_{number}", output)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [name for name in head.IN_FEATURES if name not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES lists {missing}, which the backbone does not output "
                f"(it outputs {sorted(input_shape)})"
            )
        return {
            "input_shape": {name: input_shape[name] for name in head.IN_FEATURES},
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "common_stride": head.COMMON_STRIDE,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_nheads": head.DEFORMABLE_N_HEADS,
            "transformer_n_points": head.DEFORMABLE_N_POINTS,
            "transformer_dim_feedforward": head.DEFORMABLE_DIM_FEEDFORWARD,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "checkpoint_encoder_layers": head.DEFORMABLE_CHECKPOINT,
            "fp32": head.FP32_PIXEL_DECODER,
        }

    def forward_features(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Backbone features -> (mask_features [B, mask_dim, H/4, W/4], [stride 32, 16, 8 maps]).

        Follows the caller's autocast except for the deformable sampling (ms_deform_attn.py); with
        ``fp32`` (MODEL.SEM_SEG_HEAD.FP32_PIXEL_DECODER) all of it runs in float32, as the reference.
        """
        self._check_feature_sizes(features)
        device_type = next(iter(features.values())).device.type
        precision = torch.autocast(device_type=device_type, enabled=False) if self.fp32 else contextlib.nullcontext()
        with precision:
            srcs, pos_embeds = [], []
            for name, projection in zip(self.transformer_in_features, self.input_proj):
                feature = features[name] if not self.fp32 else features[name].float()
                srcs.append(projection(feature))
                pos_embeds.append(self.pe_layer(feature))
            outputs = self.transformer(srcs, pos_embeds)
            for number, name in self.fpn_levels:
                feature = features[name] if not self.fp32 else features[name].float()
                outputs.append(self._fpn_level(number, feature, outputs[-1]))
            return self.mask_features(outputs[-1]), outputs[:NUM_MULTI_SCALE_FEATURES]

    def _fpn_level(self, number: int, feature: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        lateral = getattr(self, f"adapter_{number}")(feature)
        upsampled = F.interpolate(coarser, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return getattr(self, f"layer_{number}")(lateral + upsampled)

    def _check_feature_sizes(self, features: Dict[str, torch.Tensor]):
        for name in self.in_features:
            if name not in features:
                raise KeyError(f"MSDeformAttnPixelDecoder: feature {name!r} missing; got {sorted(features)}")
            if features[name].shape[-1] == 0 or features[name].shape[-2] == 0:
                raise ValueError(
                    f"MSDeformAttnPixelDecoder: feature {name!r} is empty (shape {list(features[name].shape)}); "
                    "the input image is smaller than the feature stride (check INPUT.SIZE_DIVISIBILITY / "
                    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY and the image size)"
                )


def _input_projection(in_channels: int, conv_dim: int) -> nn.Sequential:
    """1x1 conv + GroupNorm(32) that brings one encoder level to conv_dim channels."""
    projection = nn.Sequential(nn.Conv2d(in_channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
    nn.init.xavier_uniform_(projection[0].weight, gain=1)
    nn.init.zeros_(projection[0].bias)
    return projection
