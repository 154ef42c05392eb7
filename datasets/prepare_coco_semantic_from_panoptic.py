#!/usr/bin/env python
"""133-class semantic PNGs from COCO panoptic annotations (the mIoU ground truth of COCO panoptic).

Reads   <coco>/annotations/panoptic_{split}.json and <coco>/panoptic_{split}/*.png
Writes  <coco>/panoptic_semseg_{split}/<image>.png: contiguous class ids 0..132 in Detectron2's
        COCO panoptic order, 255 where the panoptic PNG is void. Crowd segments keep their class.

Files are written atomically; existing outputs are skipped, so an interrupted run is resumed by
running the command again. Every PNG is checked against its json (ids, categories).

    python datasets/prepare_coco_semantic_from_panoptic.py [--root $DETECTRON2_DATASETS/coco]
        [--subsets train2017 val2017] [--workers N]
"""
import functools
import json
import os
import sys

from dearli.data.datasets.metadata import IGNORE_LABEL, coco_panoptic_categories
from dearli.data.datasets.prepare_utils import (
    map_in_pool, paint_segments, run_per_subset, save_png_atomic,
)
from dearli.data.datasets.validate import read_panoptic_ids


def contiguous_ids(categories):
    """{dataset category id: contiguous id} in table order."""
    return {c["id"]: i for i, c in enumerate(categories)}


def semantic_labels(segment_ids, segments_info, contiguous_of, where):
    """uint8 semantic map of one panoptic image (void -> 255)."""
    value_of = {}
    for segment in segments_info:
        if segment["category_id"] not in contiguous_of:
            raise ValueError(f"{where}: segment {segment['id']} has unknown category_id "
                             f"{segment['category_id']}")
        value_of[segment["id"]] = contiguous_of[segment["category_id"]]
    return paint_segments(segment_ids, value_of, IGNORE_LABEL)


def convert_annotation(annotation, panoptic_dir, output_dir, contiguous_of):
    """Write the semantic PNG of one json annotation (skipped when it exists). Returns True if
    written."""
    stem = os.path.splitext(annotation["file_name"])[0]
    output = os.path.join(output_dir, stem + ".png")
    if os.path.isfile(output):
        return False
    png = os.path.join(panoptic_dir, annotation["file_name"])
    segment_ids = read_panoptic_ids(png, annotation["segments_info"])
    save_png_atomic(semantic_labels(segment_ids, annotation["segments_info"], contiguous_of, png),
                    output)
    return True


def convert_split(coco_root, split, workers):
    json_file = os.path.join(coco_root, "annotations", f"panoptic_{split}.json")
    with open(json_file, "r", encoding="utf-8") as f:
        annotations = json.load(f)["annotations"]
    output_dir = os.path.join(coco_root, f"panoptic_semseg_{split}")
    os.makedirs(output_dir, exist_ok=True)
    convert = functools.partial(
        convert_annotation, panoptic_dir=os.path.join(coco_root, f"panoptic_{split}"),
        output_dir=output_dir, contiguous_of=contiguous_ids(coco_panoptic_categories()))
    written = sum(map_in_pool(convert, annotations, workers))
    print(f"{split}: wrote {written} semantic PNGs, {len(annotations) - written} already existed "
          f"-> {output_dir}")


def main(argv=None):
    run_per_subset(argv, __doc__.split("\n")[0], "coco", ("train2017", "val2017"), convert_split)


if __name__ == "__main__":
    main(sys.argv[1:])
