#!/usr/bin/env python
"""Measure what the tiny foundation models trained here know, on a labeled dataset.

    python tools/eval_tiny_foundation.py clip [--config-file configs/shapes/tiny_dear_clip.yaml]
        [--dataset dearli_shapes_val] [--num-images N] [--json out.json] [--threads N] [KEY VALUE ...]

``clip``: zero-shot classification of every ground-truth segment through the model's own zero-shot
branch (dense CLIP features, mask pooling, CLIP image head, text classifier with synonyms and
templates; see dearli/engine/zero_shot_eval.py). Prints the accuracy of things, stuff and all
segments (a Markdown table) and, with ``--json``, writes it with the confusion matrix (atomically).
The decoder's weights play no part, so MODEL.WEIGHTS may stay empty.
"""
import argparse
import logging
import sys

from detectron2.data import DatasetCatalog
from tabulate import tabulate

import dearli  # noqa: F401
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.data.datasets import shapes  # noqa: F401  (registers dearli_shapes_*)
from dearli.engine.predictor import DEARLiPredictor
from dearli.engine.zero_shot_eval import GROUPS, zero_shot_segment_accuracy
from dearli.utils.atomic_io import atomic_write_json
from dearli.utils.threads import setup_threads

DEFAULT_CLIP_CONFIG = "configs/shapes/tiny_dear_clip.yaml"


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("model", choices=["clip"], help="clip: zero-shot segment classification accuracy")
    parser.add_argument("--config-file", default=DEFAULT_CLIP_CONFIG, help=f"default {DEFAULT_CLIP_CONFIG}")
    parser.add_argument("--dataset", default="", help="labeled panoptic dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--json", default="", help="also write the result to this file")
    add_tool_arguments(parser)
    return parser


def accuracy_table(result):
    rows = [[group, result[group]["correct"], result[group]["total"],
             f"{100 * result[group]['accuracy']:.1f}"] for group in GROUPS]
    return tabulate(rows, headers=["segments", "correct", "total", "accuracy %"], tablefmt="pipe")


def evaluate_clip(args):
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    records = DatasetCatalog.get(dataset)
    if args.num_images > 0:
        records = records[:args.num_images]
    result = zero_shot_segment_accuracy(DEARLiPredictor(cfg), records)
    result.update(dataset=dataset, num_images=len(records), config_file=args.config_file,
                  opts=list(args.opts), clip_model=cfg.MODEL.OPEN_CLIP.MODEL_NAME,
                  clip_weights=cfg.MODEL.OPEN_CLIP.PRETRAINED)
    return result


def main(argv=None):
    logging.basicConfig(level=logging.WARNING)
    args = parse_tool_args(get_parser(), argv)
    setup_threads(args.threads)
    result = evaluate_clip(args)
    print(f"Zero-shot segment classification on {result['dataset']} ({result['num_images']} images, "
          f"CLIP {result['clip_model']} from {result['clip_weights'] or 'random weights'}):")
    print(accuracy_table(result))
    if args.json:
        atomic_write_json(args.json, result, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
