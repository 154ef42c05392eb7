"""ORACLE class-agnostic proposals: a panoptic dataset's ground-truth segments, without classes.

The CPU demo has no pretrained SAM (and a random SAM makes no masks worth learning from), so its
warm-up needs another class-agnostic proposal source that is not a random network. This module
writes every non-crowd ground-truth segment (things and stuff, as SAM also segments stuff) of a
panoptic dataset into the pseudo-label format of ``dearli.data.sam_format``, with predicted IoU
and stability 1. It is an ORACLE: the masks are perfect and come from the labels, so a warm-up
on them says nothing about how good SAM's masks are. Everything that comes out of it says so:
``meta.json`` has ``"source": "oracle"``, the folder is ``oracle/ground_truth_segments``, the
dataset names contain ``oracle``, and loading it logs a warning.
"""
import logging

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from dearli.data.datasets.validate import read_panoptic_ids
from dearli.data.sam_format import (
    ensure_meta,
    image_key,
    make_record,
    mask_annotation,
    remove_stale_temp_files,
    update_index,
    verify_finished,
    write_record,
)

logger = logging.getLogger(__name__)

ORACLE_SUBDIR = "oracle/ground_truth_segments"
ORACLE_META = {
    "source": "oracle",
    "description": "ORACLE: ground-truth panoptic segments without classes (not SAM output)",
}


def oracle_annotations(dataset_dict):
    """(height, width, annotations) of one panoptic dataset dict's non-crowd segments."""
    if "pan_seg_file_name" not in dataset_dict or "segments_info" not in dataset_dict:
        raise KeyError(
            f"{dataset_dict.get('file_name')}: oracle proposals need panoptic ground truth "
            "('pan_seg_file_name' and 'segments_info'); this dataset has none"
        )
    segment_ids = read_panoptic_ids(dataset_dict["pan_seg_file_name"], dataset_dict["segments_info"])
    annotations = []
    for segment in dataset_dict["segments_info"]:
        mask = segment_ids == segment["id"]
        if segment.get("iscrowd", 0) or not mask.any():
            continue
        annotations.append(mask_annotation(mask, predicted_iou=1.0, stability_score=1.0))
    return segment_ids.shape[0], segment_ids.shape[1], annotations


def with_panoptic_ground_truth(dataset_name):
    """The dataset's dicts with panoptic ground truth, also for image-only (unlabeled) registrations.

    Dicts without ``segments_info`` get it from the dataset metadata's ``panoptic_json`` (by image
    id), which the synthetic set and the COCO-style registrations record for every split.
    """
    dicts = DatasetCatalog.get(dataset_name)
    if all("segments_info" in d for d in dicts):
        return dicts
    meta = MetadataCatalog.get(dataset_name)
    if not all(hasattr(meta, k) for k in ("panoptic_json", "panoptic_root", "image_root")):
        raise KeyError(f"{dataset_name}: oracle proposals need panoptic ground truth, and its metadata names none")
    full = load_coco_panoptic_json(meta.panoptic_json, meta.image_root, meta.panoptic_root, meta.as_dict())
    by_id = {d["image_id"]: d for d in full}
    missing = [d["file_name"] for d in dicts if d["image_id"] not in by_id]
    if missing:
        raise KeyError(f"{dataset_name}: {len(missing)} images are not in {meta.panoptic_json} (e.g. {missing[0]})")
    return [by_id[d["image_id"]] for d in dicts]


def write_oracle_labels(dataset_dicts, label_dir):
    """Write the oracle record of every image that has none yet; returns {key: masks} written.

    Resumable and atomic like SAM generation (records are written with the same writer).
    """
    ensure_meta(label_dir, ORACLE_META)
    remove_stale_temp_files(label_dir)
    done, damaged = verify_finished(label_dir, [image_key(d["file_name"]) for d in dataset_dicts])
    for path, reason in damaged:
        logger.warning("damaged oracle record %s is rewritten (%s)", path, reason)
    todo = [d for d in dataset_dicts if image_key(d["file_name"]) not in done]
    if todo:
        logger.warning("writing ORACLE proposals (ground-truth segments, not SAM) of %d images to %s", len(todo), label_dir)
    written = {}
    for d in todo:
        key = image_key(d["file_name"])
        height, width, annotations = oracle_annotations(d)
        write_record(label_dir, make_record(key, d["file_name"], height, width, annotations))
        written[key] = len(annotations)
    update_index(label_dir, written)
    return written

