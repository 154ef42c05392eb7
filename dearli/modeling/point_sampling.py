"""Point sampling for the matcher and the mask losses (PointRend-style), with a counter-based RNG.

Random points come from a keyed hash of a counter rather than from a stateful generator: value k of
a stream with key K is ``hash(K, k)``. A stream's key is mixed (on the host, in plain Python) from
the sample's ``sample_seed`` and a (stream, layer, purpose) offset, and a matched pair's key from its
image's key and its rank among the image's pairs. So an image's points depend only on
(seed, iteration, rank, slot) through its ``sample_seed``, not on which other images share its
batch or process: the loss of a batch split over two processes equals the loss of the concatenated
batch on one, resuming from a checkpoint replays the same points, and a whole batch (or every
matched pair of a prediction set) is drawn by one group of elementwise ops with no generator
objects and no host round trip.

The hash works on 32-bit words held in int64 tensors; every product stays below 2**63.
"""
from typing import Optional, Sequence

import torch
from torch.nn import functional as F

# Purposes of a random draw; part of the key so the matcher and the loss use different points.
MATCHER_PURPOSE = 0
LOSS_PURPOSE = 1

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers below 2**31 (a 32-bit value times one of them fits in a signed 64-bit integer).
_MULTIPLIER_A = 0x7FEB352D
_MULTIPLIER_B = 0x5BD1E995


def point_sample(inputs: torch.Tensor, point_coords: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinearly read ``inputs`` [N, C, H, W] at ``point_coords`` [N, P, 2] -> [N, C, P].

    Coordinates are (x, y) in [0, 1] relative to the whole map (0 = left/top edge, 1 = right/bottom
    edge), so maps of different resolutions covering the same canvas are read at the same places.
    Points outside the map read zeros (``padding_mode="border"``: the nearest edge value).
    """
    grid = 2.0 * point_coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in grid_sample's [-1, 1]
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False).squeeze(3)


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def stream_key(seed: int, offsets: Sequence[int]) -> Sequence[int]:
    """The two 32-bit key words of the stream of ``seed`` and ``offsets`` (plain Python: host only).

    Every offset is folded in through splitmix64, so neighbouring (seed, layer, purpose) triples
    give unrelated keys.
    """
    mixed = _splitmix64(int(seed) & _MASK64)
    for offset in offsets:
        mixed = _splitmix64(mixed ^ (int(offset) & _MASK64))
    return mixed & _MASK32, mixed >> 32


def stream_keys(seeds: Sequence[Optional[int]], offsets: Sequence[int]) -> torch.Tensor:
    """int64 host tensor [B, 2] of key words, one row per seed; a ``None`` seed gets a key drawn
    from torch's global generator (reseeded every step by the trainer)."""
    keys = torch.tensor([stream_key(0 if s is None else s, offsets) for s in seeds], dtype=torch.int64)
    unseeded = [i for i, s in enumerate(seeds) if s is None]
    if unseeded:
        keys[unseeded] = torch.randint(0, 2**32, (len(unseeded), 2), dtype=torch.int64)
    return keys.view(len(seeds), 2)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift-multiply) on int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * _MULTIPLIER_A) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MULTIPLIER_B) & _MASK32
    return x ^ (x >> 16)


def pair_keys(image_keys: torch.Tensor, pair_rank: torch.Tensor) -> torch.Tensor:
    """Keys [M, 2] of matched pairs from their image's key [M, 2] and their rank in the image [M]."""
    first = _mix32(image_keys[:, 0] ^ _mix32(pair_rank + 1))
    return torch.stack([first, image_keys[:, 1]], dim=1)


def counter_uniform(keys: torch.Tensor, count: int) -> torch.Tensor:
    """Uniform values [K, count] in [0, 1): value k of row i is a hash of (keys[i], k)."""
    counters = torch.arange(count, device=keys.device, dtype=torch.int64)
    hashed = _mix32(_mix32(counters[None, :] ^ keys[:, :1]) ^ keys[:, 1:])
    return (hashed >> 8).to(torch.float32) * (1.0 / (1 << 24))  # 24 bits: exact in float32


def uniform_points(keys: torch.Tensor, num_points: int) -> torch.Tensor:
    """Uniform random points [K, num_points, 2] in [0, 1), one stream per key row [K, 2]."""
    return counter_uniform(keys, 2 * num_points).view(len(keys), num_points, 2)


def num_candidates_and_uniform(num_points: int, oversample_ratio: float, importance_sample_ratio: float):
    """(uniform candidates drawn, uncertain ones kept, fresh uniform ones) of importance sampling."""
    num_uncertain = int(importance_sample_ratio * num_points)
    return int(num_points * oversample_ratio), num_uncertain, num_points - num_uncertain


def uncertain_points(
    mask_logits: torch.Tensor,
    keys: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """PointRend importance sampling on ``mask_logits`` [N, 1, H, W] -> points [N, num_points, 2];
    mask n draws from the stream of ``keys[n]`` (see :func:`select_uncertain`)."""
    num_candidates, _, num_uniform = num_candidates_and_uniform(num_points, oversample_ratio, importance_sample_ratio)
    drawn = uniform_points(keys, num_candidates + num_uniform)
    return select_uncertain(mask_logits, drawn, num_points, oversample_ratio, importance_sample_ratio)


def select_uncertain(
    mask_logits: torch.Tensor,
    drawn: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Importance sampling from uniform draws ``drawn`` [N, candidates + fresh, 2]: of the
    ``oversample_ratio * num_points`` candidates keep the ``importance_sample_ratio * num_points``
    most uncertain ones (smallest |logit|), then the fresh uniform points. The logits only choose
    points; no gradient flows through the choice."""
    num_candidates, num_uncertain, _ = num_candidates_and_uniform(num_points, oversample_ratio, importance_sample_ratio)
    candidates, fresh = drawn[:, :num_candidates], drawn[:, num_candidates:]
    with torch.no_grad():
        candidate_logits = point_sample(mask_logits.detach(), candidates)[:, 0]  # [N, candidates]
        most_uncertain = torch.topk(-candidate_logits.abs(), k=num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, most_uncertain.unsqueeze(-1).expand(-1, -1, 2))
    return torch.cat([chosen, fresh], dim=1)
