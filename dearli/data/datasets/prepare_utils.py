"""Helpers shared by the dataset preparation scripts (``datasets/prepare_*.py``) and the
semantic-only panoptic cache: atomic PNG writes, COCO panoptic segment records from an id map,
label maps painted per segment, a resumable progress log, and an optional process pool.

Atomicity: every output file is written to a temporary name in its final folder and renamed with
``os.replace``, so an interrupted run leaves complete files or ignorable ``.tmp-*`` files, never a
truncated PNG that a later run would mistake for a finished one.
"""
import argparse
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
from panopticapi.utils import id2rgb
from scipy import ndimage

from dearli.utils.atomic_io import atomic_write_json, save_png_atomic

__all__ = [
    "atomic_write_json", "save_png_atomic", "save_panoptic_png", "segment_records",
    "paint_segments", "ProgressLog", "map_in_pool", "default_workers", "preparation_parser",
    "run_per_subset",
]


def save_panoptic_png(segment_ids, path):
    """Write an integer segment-id map in COCO's RGB encoding (id = R + 256 G + 256^2 B)."""
    if segment_ids.max(initial=0) >= 256 ** 3:
        raise ValueError(f"{path}: segment ids must be < 2^24 to fit the RGB encoding")
    save_png_atomic(id2rgb(segment_ids.astype(np.uint32)).astype(np.uint8), path)


def segment_records(segment_ids, category_of, iscrowd_of=None):
    """COCO panoptic ``segments_info`` for every non-zero id of ``segment_ids`` (0 = void).

    ``category_of`` / ``iscrowd_of`` map a segment id to its dataset category id / crowd flag.
    Areas and boxes ([x, y, w, h]) are computed in one pass over the map (no per-segment masks).
    """
    ids = np.unique(segment_ids)
    # Dense labels 1..K (searchsorted is much faster than unique's argsort-based inverse).
    dense = np.searchsorted(ids, segment_ids) + 1
    counts = np.bincount(dense.ravel(), minlength=len(ids) + 1)[1:]
    boxes = ndimage.find_objects(dense)
    records = []
    for segment_id, area, box in zip(ids.tolist(), counts.tolist(), boxes):
        if segment_id == 0:
            continue
        rows, cols = box
        records.append({
            "id": int(segment_id),
            "category_id": int(category_of[segment_id]),
            "iscrowd": int(iscrowd_of.get(segment_id, 0)) if iscrowd_of else 0,
            "area": int(area),
            "bbox": [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start],
        })
    return records


def paint_segments(segment_ids, value_of, default):
    """uint8 map giving each pixel ``value_of[its segment id]`` (``default`` for other ids)."""
    ids = np.unique(segment_ids)
    values = np.array([value_of.get(int(i), default) for i in ids], dtype=np.uint8)
    return values[np.searchsorted(ids, segment_ids)]


class ProgressLog:
    """Append-only JSON-lines log of finished items, so an interrupted preparation resumes.

    One line per finished item (``{"key": ..., "record": ...}``), appended after that item's output
    files were written. A line cut short by a crash is ignored on reading (the item is redone).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def finished(self):
        """{key: record} of the items logged so far."""
        done = {}
        if not self.path.is_file():
            return done
        with open(self.path, "r", encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of an interrupted run
                done[entry["key"]] = entry["record"]
        return done

    def append(self, key, record):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "record": record}, separators=(",", ":")) + "\n")
            f.flush()

    def remove(self):
        if self.path.is_file():
            self.path.unlink()


def map_in_pool(function, items, workers):
    """``function`` over ``items`` (results in any order), in ``workers`` processes if > 1.

    ``function`` must be a module-level callable (it is pickled to the workers).
    """
    if workers <= 1:
        yield from map(function, items)
        return
    with multiprocessing.Pool(processes=workers) as pool:
        yield from pool.imap_unordered(function, items, chunksize=8)


def default_workers():
    """Worker processes for the preparation scripts: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def preparation_parser(description, dataset_dirname, default_subsets):
    """Command line shared by the preparation scripts: --root, --subsets, --workers."""
    default_root = os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), dataset_dirname)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default=default_root,
                        help=f"the {dataset_dirname} folder (default: %(default)s)")
    parser.add_argument("--subsets", nargs="+", default=list(default_subsets),
                        help="subsets to convert (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes; 1 = none (default: all CPUs)")
    return parser


def run_per_subset(argv, description, dataset_dirname, default_subsets, convert):
    """Main of a script that calls ``convert(root, subset, workers)`` for each chosen subset."""
    args = preparation_parser(description, dataset_dirname, default_subsets).parse_args(argv)
    for subset in args.subsets:
        convert(args.root, subset, args.workers)
