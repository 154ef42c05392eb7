#!/usr/bin/env python
"""ADE20K panoptic ground truth (COCO panoptic format) from the semantic + instance annotations.

Inputs, under <ade> = ADEChallengeData2016:
  images/{training,validation}/*.jpg
  annotations/{training,validation}/*.png          SceneParsing labels (0 = other, 1..150)
  annotations_instance/{training,validation}/*.png ADE20K instance release: R = instance class
                                                   (1..100), G = instance id (0 = no instance)
  the instance release's category mapping (--instance-mapping; by default the first found of
  <ade>/categoryMapping.txt, <ade>/annotations_instance/categoryMapping.txt,
  <ade>/ade20k_instance_catid_mapping.txt): a header line, then one row per instance class,
  "<instance class> <SceneParse150 class> [<full ADE20K id> ...]", whitespace-separated, 1-based.
Outputs:
  ade20k_panoptic_{train,val}/*.png (RGB-encoded segment ids), ade20k_panoptic_{train,val}.json
  with the 150 categories of dearli's ADE20K table (ids 0..149, 100 things / 50 stuff).

Segments: one per stuff class present in the semantic map, then one per instance (R, G) of the
instance PNG, with the semantic class the mapping gives for R, painted over the stuff (the two
annotations overlap slightly). Pixels of "other" and thing-class pixels without an instance are
void. Segment ids are 1..n in that order. The mapping's thing classes must equal the table's.

Resumable: finished images are logged in <ade>/.ade20k_panoptic_<subset>.progress.jsonl after their
PNG was written atomically; a rerun skips them, and the json is written (atomically) at the end.

    python datasets/prepare_ade20k_pan_seg.py [--root $DETECTRON2_DATASETS/ADEChallengeData2016]
        [--instance-mapping FILE] [--subsets train val] [--workers N]
"""
import functools
import os
import sys

import numpy as np
from PIL import Image

from dearli.data.datasets.metadata import ADE20K_THING_IDS, ade20k_categories
from dearli.data.datasets.prepare_utils import (
    ProgressLog, atomic_write_json, map_in_pool, preparation_parser, save_panoptic_png,
    segment_records,
)
from dearli.data.datasets.validate import DatasetFileError, check_same_size, read_sem_seg

FOLDERS = {"train": "training", "val": "validation"}
MAPPING_CANDIDATES = ("categoryMapping.txt", "annotations_instance/categoryMapping.txt",
                      "ade20k_instance_catid_mapping.txt")
NUM_SEMANTIC_CLASSES = 150


def read_instance_mapping(path):
    """{instance class (R value): ADE20K dataset id 0..149} from the release's mapping file."""
    mapping = {}
    with open(path, "r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or (line_number == 1 and not fields[0].isdigit()):
                continue  # blank line or the header ("Instance100 SceneParse150 FullADE20K")
            if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
                raise ValueError(f"{path}:{line_number}: expected '<instance class> "
                                 f"<SceneParse150 class> ...', got {line.strip()!r}")
            instance_class, semantic_class = int(fields[0]), int(fields[1])
            if not 1 <= semantic_class <= NUM_SEMANTIC_CLASSES:
                raise ValueError(f"{path}:{line_number}: SceneParse150 class {semantic_class} is "
                                 f"outside 1..{NUM_SEMANTIC_CLASSES}")
            if mapping.get(instance_class, semantic_class - 1) != semantic_class - 1:
                raise ValueError(f"{path}:{line_number}: instance class {instance_class} mapped "
                                 f"to {semantic_class}, earlier to {mapping[instance_class] + 1}")
            mapping[instance_class] = semantic_class - 1
    if not mapping:
        raise ValueError(f"{path}: no mapping rows")
    return mapping


def check_mapping_against_table(mapping, path):
    """The mapping's thing classes must be the table's 100 things (they define PQ_th / PQ_st)."""
    things = set(mapping.values())
    if things != ADE20K_THING_IDS:
        raise ValueError(
            f"{path}: its thing classes differ from dearli's ADE20K table (only in the file: "
            f"{sorted(things - ADE20K_THING_IDS)}, only in the table: "
            f"{sorted(ADE20K_THING_IDS - things)}; ids are 0-based)"
        )


def find_mapping_file(ade_root, explicit):
    if explicit:
        return explicit
    for candidate in MAPPING_CANDIDATES:
        path = os.path.join(ade_root, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "no instance category mapping found (tried " +
        ", ".join(os.path.join(ade_root, c) for c in MAPPING_CANDIDATES) +
        "); pass --instance-mapping with the mapping file of the ADE20K instance release"
    )


def read_instances(path, shape):
    """(R, G) instance key per pixel (R * 256 + G; 0 where G == 0) of an instance PNG."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                raise DatasetFileError(f"{path}: instance PNG must be RGB (mode {image.mode!r})")
            pixels = np.asarray(image, dtype=np.int32)
    except FileNotFoundError as e:
        raise DatasetFileError(f"{path}: instance annotation not found") from e
    check_same_size("the semantic annotation", shape, path, pixels.shape)
    red, green = pixels[..., 0], pixels[..., 1]
    if np.any((green > 0) & (red == 0)):
        raise DatasetFileError(f"{path}: instance pixels (G > 0) with instance class R = 0")
    return np.where(green > 0, red * 256 + green, 0)


def panoptic_ids(semantic_raw, instance_keys, mapping, instance_path):
    """Segment-id map and {segment id: category id} of one image (module docstring)."""
    category = semantic_raw.astype(np.int32) - 1  # -1 = "other"
    stuff = [int(c) for c in np.unique(category) if c >= 0 and c not in ADE20K_THING_IDS]
    lookup = np.zeros(NUM_SEMANTIC_CLASSES + 1, dtype=np.int32)  # indexed by category + 1
    lookup[[c + 1 for c in stuff]] = np.arange(1, len(stuff) + 1)
    segment_ids = lookup[category + 1]
    category_of = {i + 1: c for i, c in enumerate(stuff)}
    keys = np.unique(instance_keys[instance_keys > 0])
    for offset, key in enumerate(keys.tolist(), start=len(stuff) + 1):
        if key // 256 not in mapping:
            raise DatasetFileError(f"{instance_path}: instance class R = {key // 256} is not in "
                                   "the category mapping")
        category_of[offset] = mapping[key // 256]
    if len(keys):
        thing_ids = np.searchsorted(keys, instance_keys) + len(stuff) + 1
        segment_ids = np.where(instance_keys > 0, thing_ids, segment_ids)
    return segment_ids, category_of


def convert_image(stem, paths, mapping):
    """Write one panoptic PNG; return (stem, images entry, annotations entry)."""
    semantic_path = os.path.join(paths["semantic"], stem + ".png")
    instance_path = os.path.join(paths["instance"], stem + ".png")
    semantic_raw = read_sem_seg(semantic_path, NUM_SEMANTIC_CLASSES + 1, ignore_label=0)
    image_path = os.path.join(paths["images"], stem + ".jpg")
    with Image.open(image_path) as image:  # the header is enough for the size
        check_same_size(image_path, image.size[::-1], semantic_path, semantic_raw.shape)
    instance_keys = read_instances(instance_path, semantic_raw.shape)
    segment_ids, category_of = panoptic_ids(semantic_raw, instance_keys, mapping, instance_path)
    save_panoptic_png(segment_ids, os.path.join(paths["output"], stem + ".png"))
    height, width = semantic_raw.shape
    return stem, {
        "image": {"id": stem, "file_name": stem + ".jpg", "height": height, "width": width},
        "annotation": {"image_id": stem, "file_name": stem + ".png",
                       "segments_info": segment_records(segment_ids, category_of)},
    }


def convert_subset(ade_root, subset, mapping, workers):
    folder = FOLDERS.get(subset)
    if folder is None:
        raise ValueError(f"unknown subset {subset!r}; choose from {list(FOLDERS)}")
    paths = {"images": os.path.join(ade_root, "images", folder),
             "semantic": os.path.join(ade_root, "annotations", folder),
             "instance": os.path.join(ade_root, "annotations_instance", folder),
             "output": os.path.join(ade_root, f"ade20k_panoptic_{subset}")}
    if not os.path.isdir(paths["images"]):
        raise FileNotFoundError(f"{paths['images']} not found: is --root ADEChallengeData2016?")
    os.makedirs(paths["output"], exist_ok=True)
    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(paths["images"])
                   if f.endswith(".jpg"))
    log = ProgressLog(os.path.join(ade_root, f".ade20k_panoptic_{subset}.progress.jsonl"))
    records = {stem: record for stem, record in log.finished().items()
               if os.path.isfile(os.path.join(paths["output"], stem + ".png"))}
    todo = [stem for stem in stems if stem not in records]
    convert = functools.partial(convert_image, paths=paths, mapping=mapping)
    for stem, record in map_in_pool(convert, todo, workers):
        log.append(stem, record)
        records[stem] = record
    json_info = {"images": [records[s]["image"] for s in stems],
                 "annotations": [records[s]["annotation"] for s in stems],
                 "categories": ade20k_categories()}
    json_file = os.path.join(ade_root, f"ade20k_panoptic_{subset}.json")
    atomic_write_json(json_file, json_info)
    log.remove()
    print(f"{subset}: {len(todo)} images converted, {len(stems) - len(todo)} resumed -> "
          f"{json_file}")


def parse_args(argv):
    parser = preparation_parser(__doc__.split("\n")[0], "ADEChallengeData2016", FOLDERS)
    parser.add_argument("--instance-mapping", default="",
                        help="category mapping file of the ADE20K instance release")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    mapping_file = find_mapping_file(args.root, args.instance_mapping)
    mapping = read_instance_mapping(mapping_file)
    check_mapping_against_table(mapping, mapping_file)
    for subset in args.subsets:
        convert_subset(args.root, subset, mapping, args.workers)


if __name__ == "__main__":
    main(sys.argv[1:])
