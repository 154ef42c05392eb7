#!/usr/bin/env python
"""Estimate the student's activation memory of one training forward, without a GPU.

    python tools/activation_memory.py --config-file configs/shapes/tiny_dearli.yaml \
        --images 1 --size 320 --scale-to-images 16 --scale-to-size 640 [KEY VALUE ...]

Runs the model's training forward (backbone, both decoders, criterion) on random crops with
random targets under ``torch.autograd.graph.saved_tensors_hooks`` and sums the bytes of every
distinct storage autograd keeps for backward, parameters excluded: the activations a GPU would
hold at the peak between forward and backward (weights, gradients, optimizer state and the
allocator's slack come on top). Activation checkpointing (MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT)
and dtypes are as configured (CPU runs fp32). Activations grow linearly with the number of
crops and, at a fixed number of queries, about linearly with the pixels, so a measurement at
``--images``/``--size`` is scaled by (images ratio) x (pixel ratio) to ``--scale-to-*``.
"""
import argparse
from typing import Dict, List

import torch
from detectron2.structures import BitMasks, Instances

import dearli  # noqa: F401  (registers the model parts and datasets)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.engine.trainer import DEARLiTrainer
from dearli.utils.atomic_io import atomic_write_json
from dearli.utils.threads import setup_threads


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config (YAML) of the model to measure")
    parser.add_argument("--images", type=int, default=1, help="crops in the measured forward")
    parser.add_argument("--size", type=int, default=320, help="square crop side in pixels")
    parser.add_argument("--targets", type=int, default=20, help="random target segments per crop")
    parser.add_argument("--scale-to-images", type=int, help="crops per iteration to scale to (e.g. 16 = 8+8)")
    parser.add_argument("--scale-to-size", type=int, help="crop side to scale to (e.g. 640)")
    parser.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    add_tool_arguments(parser)
    return parser


def random_samples(num_images: int, size: int, num_targets: int, num_classes: int, seed: int = 0) -> List[Dict]:
    """Crops of random pixels whose targets are random rectangles of random classes."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(num_images):
        masks = torch.zeros(num_targets, size, size, dtype=torch.bool)
        corners = torch.randint(0, size // 2, (num_targets, 2), generator=g)
        for k, (top, left) in enumerate(corners.tolist()):
            masks[k, top:top + size // 3, left:left + size // 3] = True
        instances = Instances((size, size))
        instances.gt_classes = torch.randint(0, num_classes, (num_targets,), generator=g)
        instances.gt_masks = BitMasks(masks)
        samples.append({
            "image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
            "instances": instances,
            "valid_mask": torch.ones(size, size, dtype=torch.bool),
            "sample_seed": index,
        })
    return samples


def saved_activation_bytes(model: torch.nn.Module, samples: List[Dict]) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one training forward."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters and storage.device.type != "meta":
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        losses = model(samples)
    del losses
    return sum(storages.values())


def main(argv=None) -> Dict:
    args = parse_tool_args(get_parser(), argv)
    setup_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    model = DEARLiTrainer.build_model(cfg).train()
    samples = random_samples(args.images, args.size, args.targets, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    measured = saved_activation_bytes(model, samples)
    images_ratio = (args.scale_to_images or args.images) / args.images
    pixel_ratio = ((args.scale_to_size or args.size) / args.size) ** 2
    result = {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "images": args.images,
        "size": args.size,
        "targets_per_image": args.targets,
        "measured_gib": measured / 2**30,
        "scaled_images": args.scale_to_images or args.images,
        "scaled_size": args.scale_to_size or args.size,
        "scaled_gib": measured * images_ratio * pixel_ratio / 2**30,
    }
    print(f"saved activations: {result['measured_gib']:.3f} GiB for {args.images} crop(s) of {args.size}^2; "
          f"scaled to {result['scaled_images']} crops of {result['scaled_size']}^2: {result['scaled_gib']:.2f} GiB")
    if args.json:
        atomic_write_json(args.json, result, indent=1, separators=(",", ": "))
    return result


if __name__ == "__main__":
    main()
