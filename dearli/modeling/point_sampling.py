"""Point sampling for the matcher and the mask losses (PointRend-style), with explicit generators.

Every random draw takes a ``torch.Generator`` (or ``None`` = the global RNG). The criterion derives
one generator per image from the sample's ``sample_seed`` plus a (layer, purpose) offset, so an
image's points do not depend on which other images share its batch or process: the loss of a batch
split over two processes equals the loss of the concatenated batch on one, and resuming from a
checkpoint replays the same points.
"""
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

# Purposes of a random draw; part of the seed so the matcher and the loss use different points.
MATCHER_PURPOSE = 0
LOSS_PURPOSE = 1


def point_sample(inputs: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read ``inputs`` [N, C, H, W] at ``point_coords`` [N, P, 2] -> [N, C, P].

    Coordinates are (x, y) in [0, 1] relative to the whole map (0 = left/top edge, 1 = right/bottom
    edge), so maps of different resolutions covering the same canvas are read at the same places.
    Points outside the map read zeros.
    """
    grid = 2.0 * point_coords.unsqueeze(2) - 1.0  # [N, P, 1, 2] in grid_sample's [-1, 1]
    return F.grid_sample(inputs, grid, mode="bilinear", align_corners=False).squeeze(3)


def seeded_generator(seed: Optional[int], offsets: Sequence[int], device) -> Optional[torch.Generator]:
    """A generator on ``device`` seeded from ``seed`` and ``offsets``; ``None`` when seed is None.

    Seeds are mixed by numpy's SeedSequence, so neighbouring (seed, layer, purpose) triples give
    unrelated streams.
    """
    if seed is None:
        return None
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF] + [int(o) for o in offsets]
    mixed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed & 0x7FFFFFFFFFFFFFFF)
    return generator


def uniform_points(
    num_masks: int, num_points: int, device, generator: Optional[torch.Generator]
) -> torch.Tensor:
    """Uniform random points [num_masks, num_points, 2] in [0, 1)."""
    return torch.rand(num_masks, num_points, 2, device=device, generator=generator)


def uncertain_points(
    mask_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """PointRend importance sampling on ``mask_logits`` [N, 1, H, W] -> points [N, num_points, 2].

    Draw ``oversample_ratio * num_points`` uniform candidates, keep the
    ``importance_sample_ratio * num_points`` most uncertain ones (smallest |logit|) and fill up with
    fresh uniform points. The logits only choose points; no gradient flows through the choice.
    """
    num_masks, device = mask_logits.shape[0], mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_uniform = num_points - num_uncertain
    candidates = uniform_points(num_masks, num_candidates, device, generator)
    fresh = uniform_points(num_masks, num_uniform, device, generator)
    with torch.no_grad():
        candidate_logits = point_sample(mask_logits.detach(), candidates)[:, 0]  # [N, candidates]
        most_uncertain = torch.topk(-candidate_logits.abs(), k=num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, most_uncertain.unsqueeze(-1).expand(-1, -1, 2))
    return torch.cat([chosen, fresh], dim=1)
