#!/usr/bin/env python
"""Toy pseudo-label benchmark of SAM-guided refinement (extensions.md §2.4): numbers, not timings.

    python tools/toy_sam_refine.py [--images 50] [--size 128] [--match-stride 4] [--seed 0]
                                   [--apply-to-stuff] [--json out.json] [--threads N]

Ground truth: synthetic shapes images (``dearli.data.datasets.shapes.render_sample``). Teacher:
every GT segment shifted by +-3 px in x and y (random signs), painted in order, so the masks are
disjoint (things over stuff, later things over earlier ones). Simulated SAM, two regimes:

* ``wholes+parts``: each GT thing instance, plus its random 2- or 3-way split into parts (cut
  across a random direction at equal-area quantiles), plus one background mask (all stuff) and
  one whole-image mask;
* ``parts``: the same without the whole instances (over-segmentation).

SAM masks are taken at the matching stride (nearest), as the unlabeled mapper emits them; the
chosen ones are pasted back upsampled from there or (``--paste full``) from the full-resolution
masks, as a caller holding RLE masks can. Reported: mean IoU against GT over the thing segments
(over all segments with --apply-to-stuff) of the teacher and of the refined label per mode.

The simulated SAM is derived from ground truth: this checks the mechanism, it is no evidence that
refinement helps with real SAM masks.
"""
import argparse
import json
from typing import Dict, List

import numpy as np
import torch

from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.data.datasets.shapes import render_sample
from dearli.engine.pseudo_labels import PanopticLabel
from dearli.engine.sam_refine import REFINE_MODES, SamRefineSettings, refine_with_sam, resample_nearest
from dearli.utils.atomic_io import atomic_write_json
from dearli.utils.threads import setup_threads

REGIMES = ("wholes+parts", "parts")
SHIFT = 3  # teacher error in pixels, per axis


def gt_scene(rng: np.random.Generator, size: int):
    """GT masks bool [N, H, W] (stuff first, as rendered) and thing flags [N]."""
    _, ids, segments = render_sample(rng, (size, size))
    ids = torch.from_numpy(ids.astype(np.int64))
    masks = torch.stack([ids == segment_id for segment_id, _ in segments])
    isthing = torch.tensor([category >= 1 and category <= 5 for _, category in segments])
    return masks, isthing


def shifted_teacher(rng: np.random.Generator, masks: torch.Tensor) -> torch.Tensor:
    """Id map of the GT masks, each shifted by (+-SHIFT, +-SHIFT) and painted in order (disjoint)."""
    seg = torch.zeros(masks.shape[1:], dtype=torch.int64)
    for index, mask in enumerate(masks):
        dy, dx = (int(rng.choice((-SHIFT, SHIFT))) for _ in range(2))
        shifted = torch.zeros_like(mask)
        src = mask[max(0, -dy):mask.shape[0] - max(0, dy), max(0, -dx):mask.shape[1] - max(0, dx)]
        shifted[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        seg[shifted] = index + 1
    return seg


def split_into_parts(rng: np.random.Generator, mask: torch.Tensor) -> List[torch.Tensor]:
    """2 or 3 parts of ``mask`` cut across a random direction at equal-area quantiles."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    angle = rng.uniform(0, np.pi)
    along = xs.double() * np.cos(angle) + ys.double() * np.sin(angle)
    num_parts = int(rng.integers(2, 4))
    cuts = torch.quantile(along, torch.linspace(0, 1, num_parts + 1, dtype=torch.float64)[1:-1])
    part_of_pixel = torch.bucketize(along, cuts)
    parts = []
    for part in range(num_parts):
        piece = torch.zeros_like(mask)
        piece[ys[part_of_pixel == part], xs[part_of_pixel == part]] = True
        parts.append(piece)
    return parts


def simulated_sam(rng: np.random.Generator, masks: torch.Tensor, isthing: torch.Tensor, regime: str) -> torch.Tensor:
    things = [mask for mask, thing in zip(masks, isthing) if thing]
    sam = list(things) if regime == "wholes+parts" else []
    for mask in things:
        sam.extend(split_into_parts(rng, mask))
    background = ~torch.stack(things).any(0) if things else torch.ones_like(masks[0])
    return torch.stack(sam + [background, torch.ones_like(masks[0])])


def segment_ious(seg: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IoU of segment i + 1 of ``seg`` with GT mask i, for every i."""
    ids = torch.arange(1, len(masks) + 1)
    refined = seg[None] == ids[:, None, None]
    inter = (refined & masks).flatten(1).sum(1).double()
    union = (refined | masks).flatten(1).sum(1).double()
    return inter / union.clamp(min=1)


def run_benchmark(images: int, size: int, match_stride: int, seed: int, apply_to_stuff: bool,
                  paste_full: bool = False) -> Dict:
    """Mean segment IoU against GT: {regime: {"teacher": x, mode: x, ...}} (plus counts)."""
    results = {}
    for regime in REGIMES:
        ious = {name: [] for name in ("teacher",) + REFINE_MODES}
        for image in range(images):
            rng = np.random.default_rng([seed, image])
            masks, isthing = gt_scene(rng, size)
            seg = shifted_teacher(rng, masks)
            sam = simulated_sam(rng, masks, isthing, regime)
            low = (size // match_stride, size // match_stride)
            sam_low = resample_nearest(sam, low)
            ids = torch.arange(1, len(masks) + 1)
            probs = resample_nearest((seg[None] == ids[:, None, None]).float() * 0.8 + 0.1, low)
            label = PanopticLabel(seg, torch.arange(len(masks)), isthing, torch.linspace(0.9, 0.5, len(masks)))
            scored = isthing | apply_to_stuff
            ious["teacher"].append(segment_ious(seg, masks)[scored])
            valid = torch.ones(size, size, dtype=torch.bool)
            for mode in REFINE_MODES:
                settings = SamRefineSettings(mode=mode, apply_to_stuff=apply_to_stuff, match_stride=match_stride)
                refined = refine_with_sam(label, probs, sam_low, valid, settings, sam if paste_full else None).label
                ious[mode].append(segment_ious(refined.seg, masks)[scored])
        results[regime] = {name: float(torch.cat(values).mean()) for name, values in ious.items()}
        results[regime]["segments"] = int(sum(len(v) for v in ious["teacher"]))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--match-stride", type=int, default=4, help="resolution of the SAM masks (1 = full)")
    parser.add_argument("--paste", choices=("upsampled", "full"), default="upsampled",
                        help="paste the chosen SAM masks upsampled from the matching stride or at full resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--apply-to-stuff", action="store_true", help="refine and score stuff segments too")
    parser.add_argument("--json", help="also write the numbers to this file")
    add_tool_arguments(parser, overrides=False)
    args = parse_tool_args(parser, argv)
    setup_threads(args.threads)
    results = run_benchmark(args.images, args.size, args.match_stride, args.seed, args.apply_to_stuff,
                            args.paste == "full")
    print(f"mean segment IoU vs GT ({args.images} images {args.size}px, match stride {args.match_stride}, "
          f"{args.paste} paste, "
          f"{'all segments' if args.apply_to_stuff else 'things'})")
    print(f"{'regime':14s} {'segments':>8s} {'teacher':>8s} " + " ".join(f"{m:>8s}" for m in REFINE_MODES))
    for regime, row in results.items():
        print(f"{regime:14s} {row['segments']:8d} {row['teacher']:8.3f} " + " ".join(f"{row[m]:8.3f}" for m in REFINE_MODES))
    if args.json:
        atomic_write_json(args.json, {"settings": vars(args), "results": results})
    return results


if __name__ == "__main__":
    main()
