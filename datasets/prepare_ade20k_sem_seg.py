#!/usr/bin/env python
"""150-class ADE20K semantic labels for mIoU: ``label - 1``, with 0 ("other") -> 255 (ignore).

Reads   <ade>/annotations/{training,validation}/*.png    (SceneParsing labels 0..150)
Writes  <ade>/annotations_detectron2/{training,validation}/*.png  (0..149, 255 = ignore)

The result's values are ADE20K's panoptic dataset ids (0..149), i.e. the contiguous class ids of
``ade20k_panoptic_*``. A value above 150 is an error naming the file. Files are written atomically
and existing outputs are skipped, so an interrupted run is resumed by running it again.

    python datasets/prepare_ade20k_sem_seg.py [--root $DETECTRON2_DATASETS/ADEChallengeData2016]
        [--subsets training validation] [--workers N]
"""
import functools
import os
import sys

import numpy as np

from dearli.data.datasets.metadata import IGNORE_LABEL
from dearli.data.datasets.prepare_utils import map_in_pool, run_per_subset, save_png_atomic
from dearli.data.datasets.validate import read_sem_seg

ADE20K_NUM_CLASSES = 150
FOLDERS = ("training", "validation")


def shift_labels(raw):
    """SceneParsing labels (0 = other, 1..150) -> 0..149 with 255 for "other"."""
    return np.where(raw == 0, IGNORE_LABEL, raw.astype(np.int16) - 1).astype(np.uint8)


def convert_file(file_name, input_dir, output_dir):
    """Convert one annotation (skipped if its output exists); True if written."""
    output = os.path.join(output_dir, file_name)
    if os.path.isfile(output):
        return False
    # Raw values 0..150 are valid: 0 plays the role of "ignore" in the input.
    raw = read_sem_seg(os.path.join(input_dir, file_name), ADE20K_NUM_CLASSES + 1, ignore_label=0)
    save_png_atomic(shift_labels(raw), output)
    return True


def convert_folder(ade_root, folder, workers):
    input_dir = os.path.join(ade_root, "annotations", folder)
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"{input_dir} not found: is --root the ADEChallengeData2016 "
                                "folder?")
    output_dir = os.path.join(ade_root, "annotations_detectron2", folder)
    os.makedirs(output_dir, exist_ok=True)
    files = sorted(f for f in os.listdir(input_dir) if f.endswith(".png"))
    convert = functools.partial(convert_file, input_dir=input_dir, output_dir=output_dir)
    written = sum(map_in_pool(convert, files, workers))
    print(f"{folder}: wrote {written} label PNGs, {len(files) - written} already existed "
          f"-> {output_dir}")


def main(argv=None):
    run_per_subset(argv, __doc__.split("\n")[0], "ADEChallengeData2016", FOLDERS, convert_folder)


if __name__ == "__main__":
    main(sys.argv[1:])
