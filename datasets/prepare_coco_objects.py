#!/usr/bin/env python
"""COCO-objects: COCO panoptic with all stuff AND void merged into one ``background`` class.

Reads   <coco>/annotations/panoptic_{split}.json, <coco>/panoptic_{split}/*.png
Writes  <coco>/panoptic_{split}_objects/*.png, <coco>/annotations/panoptic_{split}_objects.json
        (81 categories: ``background`` id 0 (stuff) + COCO's 80 thing categories), and
        <coco>/masks/<image>.png: 81-class semantic masks (0 = background, 1..80 = the things in
        COCO id order), the mIoU ground truth of COCO-objects. There is no ignore pixel.

Thing segments (crowd ones included, still ``iscrowd``) keep their ids and pixels; every stuff
pixel and every void pixel becomes one ``background`` segment whose id is the smallest positive id
not used by a thing of that image. In the masks, crowd pixels carry their class.

Resumable: finished images are logged in <coco>/.panoptic_<split>_objects.progress.jsonl after
their PNGs were written atomically; a rerun skips them; the json is written at the end.

    python datasets/prepare_coco_objects.py [--root $DETECTRON2_DATASETS/coco]
        [--subsets train2017 val2017] [--workers N]
"""
import functools
import json
import os
import sys

import numpy as np

from dearli.data.datasets.metadata import (
    COCO_OBJECTS_BACKGROUND, coco_objects_categories, coco_panoptic_categories,
)
from dearli.data.datasets.prepare_utils import (
    ProgressLog, atomic_write_json, map_in_pool, paint_segments, run_per_subset,
    save_panoptic_png, save_png_atomic, segment_records,
)
from dearli.data.datasets.validate import read_panoptic_ids

BACKGROUND_ID = COCO_OBJECTS_BACKGROUND["id"]
COCO_STUFF_IDS = frozenset(c["id"] for c in coco_panoptic_categories() if not c["isthing"])


def objects_contiguous_ids():
    """{dataset id: contiguous id}: background 0, then the 80 things."""
    return {c["id"]: i for i, c in enumerate(coco_objects_categories())}


def objects_segment_ids(segment_ids, segments_info, contiguous_of, where):
    """Segment-id map with stuff + void merged, ``{id: category}``, ``{id: iscrowd}``.

    ``contiguous_of`` maps the thing category ids; other segments must be COCO stuff.
    """
    thing_segments = []
    for segment in segments_info:
        if segment["category_id"] in contiguous_of:
            thing_segments.append(segment)
        elif segment["category_id"] not in COCO_STUFF_IDS:
            raise ValueError(f"{where}: segment {segment['id']} has unknown category_id "
                             f"{segment['category_id']}")
    used = {s["id"] for s in thing_segments}
    background = next(i for i in range(1, len(used) + 2) if i not in used)
    is_thing = paint_segments(segment_ids, {s["id"]: 1 for s in thing_segments}, 0).astype(bool)
    merged = np.where(is_thing, segment_ids, background)
    category_of = {s["id"]: s["category_id"] for s in thing_segments}
    category_of[background] = BACKGROUND_ID
    iscrowd_of = {s["id"]: s.get("iscrowd", 0) for s in thing_segments}
    return merged, category_of, iscrowd_of


def convert_annotation(item, paths, contiguous_of):
    """Write one image's objects PNG and 81-class mask; return (stem, record)."""
    image, annotation = item
    stem = os.path.splitext(annotation["file_name"])[0]
    png = os.path.join(paths["panoptic"], annotation["file_name"])
    segment_ids = read_panoptic_ids(png, annotation["segments_info"])
    thing_contiguous = {k: v for k, v in contiguous_of.items() if k != BACKGROUND_ID}
    merged, category_of, iscrowd_of = objects_segment_ids(
        segment_ids, annotation["segments_info"], thing_contiguous, png)
    mask = paint_segments(merged, {sid: contiguous_of[c] for sid, c in category_of.items()}, 0)
    save_panoptic_png(merged, os.path.join(paths["output"], stem + ".png"))
    save_png_atomic(mask, os.path.join(paths["masks"], stem + ".png"))
    return stem, {"image": image, "annotation": {
        "image_id": annotation["image_id"], "file_name": stem + ".png",
        "segments_info": segment_records(merged, category_of, iscrowd_of)}}


def _finished(log, paths):
    """Logged records whose two output files exist."""
    return {stem: record for stem, record in log.finished().items()
            if os.path.isfile(os.path.join(paths["output"], stem + ".png"))
            and os.path.isfile(os.path.join(paths["masks"], stem + ".png"))}


def convert_split(coco_root, split, workers):
    json_file = os.path.join(coco_root, "annotations", f"panoptic_{split}.json")
    with open(json_file, "r", encoding="utf-8") as f:
        source = json.load(f)
    images = {image["id"]: image for image in source["images"]}
    paths = {"panoptic": os.path.join(coco_root, f"panoptic_{split}"),
             "output": os.path.join(coco_root, f"panoptic_{split}_objects"),
             "masks": os.path.join(coco_root, "masks")}
    log = ProgressLog(os.path.join(coco_root, f".panoptic_{split}_objects.progress.jsonl"))
    records = _finished(log, paths)
    todo = [(images[ann["image_id"]], ann) for ann in source["annotations"]
            if os.path.splitext(ann["file_name"])[0] not in records]
    convert = functools.partial(convert_annotation, paths=paths,
                                contiguous_of=objects_contiguous_ids())
    for stem, record in map_in_pool(convert, todo, workers):
        log.append(stem, record)
        records[stem] = record
    stems = [os.path.splitext(ann["file_name"])[0] for ann in source["annotations"]]
    output_json = os.path.join(coco_root, "annotations", f"panoptic_{split}_objects.json")
    atomic_write_json(output_json, {
        "images": [records[s]["image"] for s in stems],
        "annotations": [records[s]["annotation"] for s in stems],
        "categories": coco_objects_categories(),
    })
    log.remove()
    print(f"{split}: {len(todo)} images converted, {len(stems) - len(todo)} resumed -> "
          f"{output_json}")


def main(argv=None):
    run_per_subset(argv, __doc__.split("\n")[0], "coco", ("train2017", "val2017"), convert_split)


if __name__ == "__main__":
    main(sys.argv[1:])
