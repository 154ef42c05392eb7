#!/usr/bin/env python
"""Recall of a panoptic dataset's ground-truth segments by class-agnostic masks (SAM pseudo-labels).

Measures the output of ``tools/generate_sam_pseudolabels.py`` as it is written to disk, e.g. the tiny
SAM trained here on the synthetic validation images::

    python tools/generate_sam_pseudolabels.py --dataset dearli_shapes_val --model-type dearli_tiny \\
        --checkpoint dearli/weights/dearli_tiny_sam_shapes.safetensors --output output/shapes/tiny_sam_val
    python tools/eval_sam_recall.py --dataset dearli_shapes_val \\
        --labels output/shapes/tiny_sam_val/dearli_tiny/points_per_side_32_pred_iou_thresh_0.88_stability_score_thresh_0.95

Prints a Markdown table: recall at IoU >= 0.5 of things, stuff and all segments, masks per image and
precision (see ``dearli/evaluation/sam_recall.py``); ``--json`` also writes it (atomically).
"""
import argparse
import sys

from detectron2.data import DatasetCatalog
from tabulate import tabulate

import dearli  # noqa: F401  (registers the datasets)
from dearli.data.sam_format import SamLabelError, read_meta
from dearli.evaluation.sam_recall import IOU_THRESHOLD, evaluate_label_folder
from dearli.utils.atomic_io import atomic_write_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="pseudo-label folder (the one holding meta.json)")
    p.add_argument("--dataset", default="dearli_shapes_val", help="registered panoptic dataset with ground truth")
    p.add_argument("--num-images", type=int, default=0, help="first N images only (0: all)")
    p.add_argument("--iou-threshold", type=float, default=IOU_THRESHOLD)
    p.add_argument("--json", default="", help="also write the result to this file")
    return p.parse_args(argv)


def result_table(summary):
    row = [f"{100 * summary['recall_things']:.1f}", f"{100 * summary['recall_stuff']:.1f}",
           f"{100 * summary['recall']:.1f}", f"{summary['masks_per_image']:.1f}", f"{100 * summary['precision']:.1f}",
           summary["images"]]
    headers = ["recall things %", "recall stuff %", "recall all %", "masks/image", "precision %", "images"]
    return tabulate([row], headers=headers, tablefmt="pipe", disable_numparse=True)


def main(argv=None):
    args = parse_args(argv)
    try:
        meta = read_meta(args.labels)
        dicts = DatasetCatalog.get(args.dataset)
        if args.num_images:
            dicts = dicts[: args.num_images]
        counts = evaluate_label_folder(dicts, args.labels, args.iou_threshold)
    except (SamLabelError, FileNotFoundError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    summary = {**counts.summary(), "dataset": args.dataset, "labels": args.labels, "iou_threshold": args.iou_threshold,
               "label_meta": meta}
    print(result_table(summary))
    if args.json:
        atomic_write_json(args.json, summary, indent=1, sort_keys=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
