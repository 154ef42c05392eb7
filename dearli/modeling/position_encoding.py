"""Sine positional encoding of a 2-D feature map (DETR / Mask2Former convention, normalize=True).

Used by the pixel decoder (for the deformable encoder) and by the masked-attention decoder (for the
keys of cross-attention). Released checkpoints were trained with exactly this encoding, so its
numerics follow Mask2Former's: positions are the 1-based row/column counts divided by the map
size (no half-pixel shift) and scaled to [0, 2*pi]; channels are [y-features, x-features], each
interleaving sin (even channels) and cos (odd channels).
"""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding with ``2 * num_pos_feats`` channels; it has no parameters.

    Args:
        num_pos_feats: channels per axis (half of the output channels).
        temperature: base of the geometric frequency progression.
        scale: range the normalised positions are stretched to.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for the spatial grid of ``x`` [B, C, H, W]: float32 [B, 2*num_pos_feats, H, W].

        Only the shape, device and batch size of ``x`` are used (there is no padding mask: the
        decoders always see fully valid maps).
        """
        batch, _, height, width = x.shape
        eps = 1e-6  # guards the division, kept for numerical parity with the reference
        rows = torch.arange(1, height + 1, dtype=torch.float32, device=x.device)
        cols = torch.arange(1, width + 1, dtype=torch.float32, device=x.device)
        y_pos = rows / (height + eps) * self.scale
        x_pos = cols / (width + eps) * self.scale

        y_enc = self._encode_axis(y_pos)[:, None, :].expand(height, width, -1)
        x_enc = self._encode_axis(x_pos)[None, :, :].expand(height, width, -1)
        pos = torch.cat((y_enc, x_enc), dim=-1).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(batch, -1, -1, -1)

    def _encode_axis(self, positions: torch.Tensor) -> torch.Tensor:
        """[N] positions -> [N, num_pos_feats]: sin on even channels, cos on odd ones."""
        channel = torch.arange(self.num_pos_feats, dtype=torch.float32, device=positions.device)
        # Channels 2k and 2k+1 share one wavelength.
        wavelength = self.temperature ** (2 * torch.div(channel, 2, rounding_mode="floor") / self.num_pos_feats)
        angles = positions[:, None] / wavelength
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)

    def extra_repr(self) -> str:
        return f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, scale={self.scale:.4f}"
