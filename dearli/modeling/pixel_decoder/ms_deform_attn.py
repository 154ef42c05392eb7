"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch.

Each query attends to ``n_points`` sampling locations per head and per feature level, placed around
its reference point by learned offsets and mixed with learned weights that are softmax-normalised
over all levels and points of a head. Values are read with bilinear interpolation through
``F.grid_sample`` (``align_corners=False``, zero padding), so the block runs on any device with no
compiled extension.

Coordinate convention (shared by the reference CUDA op): a location is a normalised ``(x, y)`` in
[0, 1] of its level, where pixel ``(row i, col j)`` of an ``H x W`` map has its centre at
``((j + 0.5) / W, (i + 0.5) / H)``. Offsets are predicted in pixels of each level.

The sampling itself always computes in float32: under bf16 autocast the normalised sampling
locations would be quantised to ~0.3 px at the stride-8 level (8 mantissa bits), and more once
offsets are added. The four projections (values, offsets in pixels, mixing logits, output) follow
the caller's autocast: a pixel offset or a mixing logit loses nothing that matters in bf16.
"""
import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

SpatialShapes = Sequence[Tuple[int, int]]


def ms_deform_attn_sample(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinearly sampled values: the core of multi-scale deformable attention.

    Args:
        value: [B, S, M, D] per-head values of all levels flattened level after level, each level
            row-major; S = sum(H_l * W_l).
        spatial_shapes: the (H_l, W_l) of each of the L levels, as Python ints.
        sampling_locations: [B, Lq, M, L, P, 2] normalised (x, y) locations (see module docstring).
        attention_weights: [B, Lq, M, L, P] mixing weights (not re-normalised here).

    Returns:
        [B, Lq, M * D], heads concatenated along the channels.
    """
    batch, _, n_heads, head_dim = value.shape
    _, n_queries, _, n_levels, n_points, _ = sampling_locations.shape
    level_sizes = [height * width for height, width in spatial_shapes]
    values_per_level = value.split(level_sizes, dim=1)
    # grid_sample takes [-1, 1] coordinates; with align_corners=False, -1 is the left edge of the
    # first pixel, which is exactly the [0, 1] convention above.
    grids = 2 * sampling_locations - 1

    output = value.new_zeros(batch * n_heads, head_dim, n_queries)
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = values_per_level[level].permute(0, 2, 3, 1).reshape(batch * n_heads, head_dim, height, width)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * n_heads, n_queries, n_points, 2)
        sampled = F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        level_weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * n_heads, 1, n_queries, n_points)
        # Accumulating level by level avoids materialising all levels' samples at once.
        output = output + (sampled * level_weights).sum(-1)
    return output.view(batch, n_heads * head_dim, n_queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with Deformable DETR's parameters and initialisation.

    Args:
        d_model: channels of queries, values and output.
        n_levels: number of feature levels attended to.
        n_heads: attention heads; ``d_model`` must be divisible by it.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's initialisation.

        Offsets start query-independent (zero weight) with a bias that places the points of head h
        on a ring in direction 2*pi*h/n_heads, point k at distance k+1 pixels (on the unit square's
        border, so diagonal heads are not shorter); every level gets the same pattern. Attention
        weights start uniform (all zero logits).
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        ring = directions[:, None, None, :] * distances[None, None, :, None]  # [M, 1, P, 2]
        ring = ring.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def attention_probabilities(self, query: torch.Tensor) -> torch.Tensor:
        """[B, Lq, C] -> [B, Lq, M, L, P] mixing weights; each head's sum over L*P points is one."""
        batch, n_queries, _ = query.shape
        logits = self.attention_weights(query).view(batch, n_queries, self.n_heads, self.n_levels * self.n_points)
        return logits.softmax(-1).view(batch, n_queries, self.n_heads, self.n_levels, self.n_points)

    def sampling_locations(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: SpatialShapes
    ) -> torch.Tensor:
        """Reference points [B or 1, Lq, L, 2] plus pixel offsets -> [B, Lq, M, L, P, 2] (normalised)."""
        batch, n_queries, _ = query.shape
        offsets = self.sampling_offsets(query).view(
            batch, n_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        # One pixel of level l is 1/W_l (x) and 1/H_l (y) in normalised coordinates.
        level_size_xy = torch.tensor([[width, height] for height, width in spatial_shapes], dtype=torch.float32)
        level_size_xy = level_size_xy.to(offsets.device, non_blocking=True)  # host constants: no wait
        return reference_points[:, :, None, :, None, :].float() + offsets.float() / level_size_xy[None, None, None, :, None, :]

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value_input: torch.Tensor,
        spatial_shapes: SpatialShapes,
    ) -> torch.Tensor:
        """Attend from every query to its sampling points (the sampling in float32).

        Args:
            query: [B, Lq, d_model] (positional encoding already added).
            reference_points: [B or 1, Lq, n_levels, 2] normalised (x, y) per level.
            value_input: [B, S, d_model], the levels flattened as described in
                :func:`ms_deform_attn_sample`.
            spatial_shapes: (H_l, W_l) of each level, Python ints.

        Returns:
            [B, Lq, d_model]: float32, or the autocast dtype under autocast.
        """
        self._check_inputs(query, reference_points, value_input, spatial_shapes)
        batch, n_values, _ = value_input.shape
        value = self.value_proj(value_input)
        value = value.view(batch, n_values, self.n_heads, self.d_model // self.n_heads)
        locations = self.sampling_locations(query, reference_points, spatial_shapes)
        weights = self.attention_probabilities(query)
        with torch.autocast(device_type=query.device.type, enabled=False):
            sampled = ms_deform_attn_sample(value.float(), spatial_shapes, locations, weights.float())
        return self.output_proj(sampled)

    def _check_inputs(self, query, reference_points, value_input, spatial_shapes: SpatialShapes):
        if len(spatial_shapes) != self.n_levels:
            raise ValueError(f"MSDeformAttn: built for {self.n_levels} levels, got spatial_shapes {list(spatial_shapes)}")
        expected_values = sum(height * width for height, width in spatial_shapes)
        if value_input.shape[1] != expected_values:
            raise ValueError(
                f"MSDeformAttn: value_input has {value_input.shape[1]} positions but spatial_shapes "
                f"{list(spatial_shapes)} need {expected_values}"
            )
        if reference_points.shape[-2:] != (self.n_levels, 2) or reference_points.shape[1] != query.shape[1]:
            raise ValueError(
                f"MSDeformAttn: reference_points must be [B, {query.shape[1]}, {self.n_levels}, 2], "
                f"got {list(reference_points.shape)}"
            )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, n_points={self.n_points}"
