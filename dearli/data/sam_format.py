"""On-disk format of class-agnostic (SAM) pseudo-labels: schema, atomic writer, reader, index.

Layout of one *label folder* (what ``SAM.LABEL_DIR`` and ``register_sam_dataset`` point at)::

    <root>/<model_type>/points_per_side_32_pred_iou_thresh_0.88_stability_score_thresh_0.95/
        meta.json              who made the labels: source ("sam" or "oracle"), model type,
                               checkpoint sha256, every generator parameter, format version
        masks/<hh>/<key>.json  one record per image; <hh> = first 2 hex digits of sha1(<key>)
        index.json             {key: number of masks} of finished images (rebuilt after each run)
        summaries/*.json       per-shard run summaries written by tools/generate_sam_pseudolabels.py

The folder name encodes the generator settings (``settings_dirname``), so labels produced with
different settings never mix. ``<key>`` is the image file's stem (``ADE_train_00000001``,
``000000000009``), the same key whether the image comes from a registered dataset or a folder.

Why one JSON file per image, in 256 hashed buckets (instead of a few large shard files):
- ~25k ADE20K and ~118k COCO images -> ~100 / ~460 files per bucket, fine for any file system
  and for ``ls``; a whole COCO run is ~118k files of typically 20-80 kB (compressed RLE).
- Training reads one image's masks at random: a per-image file is one open + one small read, no
  shard index to keep in memory in every data-loader worker.
- Resuming and sharding over GPUs/machines need no coordination: an image is finished iff its
  file exists and reads back whole, and each file is written atomically (temp file in the same
  folder, fsync, ``os.replace``), so a killed run leaves either the complete file or an ignored
  ``.tmp-*`` file. A rerun verifies every existing record of its images (``verify_finished``:
  schema, key and checksum; one JSON read per record, no mask decoding) and regenerates the
  damaged ones (a disk error or a hand edit), naming them.
- The index is only a summary (fast "which images are done" without opening files); the record
  files are the ground truth, so a stale index can never make training read a partial file.

Record schema (``FORMAT_VERSION`` 1), close to the reference's ``instance_anns/<id>.json``::

    {"format": "dearli-sam-masks", "version": 1,
     "image": {"key": str, "file_name": str, "height": int, "width": int},
     "annotations": [{"id": int, "segmentation": {"size": [h, w], "counts": str},  # COCO RLE
                      "area": int, "bbox": [x, y, w, h], "predicted_iou": float,
                      "stability_score": float, "point_coords": [[x, y]]}, ...],
     "checksum": sha256 of the canonical JSON of "annotations"}

Masks may overlap (SAM output is instance-style, not panoptic). The checksum lets the reader
detect a damaged file before the RLE decoder sees inconsistent run lengths.
"""
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from dearli.utils.atomic_io import TMP_PREFIX, atomic_write_json, remove_temp_leftovers  # noqa: F401  (re-exported)

FORMAT_NAME = "dearli-sam-masks"
FORMAT_VERSION = 1
META_FILE = "meta.json"
INDEX_FILE = "index.json"
MASKS_DIR = "masks"
SUMMARIES_DIR = "summaries"
# Image keys become file names: keep them to a portable, unambiguous character set.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class SamLabelError(ValueError):
    """A pseudo-label file or folder is missing, corrupt or inconsistent (message names the path)."""


def settings_dirname(model_type, points_per_side, pred_iou_thresh, stability_score_thresh):
    """Relative folder for labels made with these settings (the reference's folder naming)."""
    params = (
        f"points_per_side_{int(points_per_side)}"
        f"_pred_iou_thresh_{float(pred_iou_thresh):g}"
        f"_stability_score_thresh_{float(stability_score_thresh):g}"
    )
    return f"{model_type}/{params}"


def image_key(file_name):
    """The record key of an image: its file stem, validated to be a safe file name."""
    key = Path(file_name).stem
    if not _KEY_PATTERN.match(key):
        raise SamLabelError(
            f"image {file_name!r}: its stem {key!r} cannot be used as a pseudo-label key "
            "(allowed: letters, digits, '_', '.', '-', not starting with '.' or '-')"
        )
    return key


def record_path(label_dir, key):
    """Path of the record of image ``key`` inside ``label_dir``."""
    bucket = hashlib.sha1(key.encode("utf-8")).hexdigest()[:2]
    return Path(label_dir) / MASKS_DIR / bucket / f"{key}.json"


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SamLabelError(f"corrupt pseudo-label file {path}: {e}") from e


# ----------------------------------------------------------------------------- masks <-> RLE
def encode_mask(mask):
    """COCO RLE (counts as str, JSON-ready) of a bool HxW mask."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def mask_annotation(mask, predicted_iou=1.0, stability_score=1.0, point_coords=()):
    """A full annotation of a bool HxW mask (for proposal sources other than SAM, and tests)."""
    segmentation = encode_mask(mask)
    rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))
    return {
        "segmentation": segmentation,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "predicted_iou": float(predicted_iou),
        "stability_score": float(stability_score),
        "point_coords": [list(map(float, p)) for p in point_coords],
    }


def _annotations_checksum(annotations):
    canonical = json.dumps(annotations, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def make_record(key, file_name, height, width, annotations):
    """A record ready for ``write_record``; annotation ids are renumbered 1..N in list order."""
    annotations = [dict(ann, id=i + 1) for i, ann in enumerate(annotations)]
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "image": {"key": key, "file_name": str(file_name), "height": int(height), "width": int(width)},
        "annotations": annotations,
        "checksum": _annotations_checksum(annotations),
    }


def write_record(label_dir, record):
    """Atomically write one image's record; returns its path."""
    path = record_path(label_dir, record["image"]["key"])
    atomic_write_json(path, record)
    return path


# ----------------------------------------------------------------------------- reading
def _check(condition, path, what):
    if not condition:
        raise SamLabelError(f"corrupt pseudo-label file {path}: {what}")


def _validate_annotation(ann, index, height, width, path):
    where = f"annotation {index}"
    _check(isinstance(ann, dict), path, f"{where} is not an object")
    seg = ann.get("segmentation")
    _check(isinstance(seg, dict) and isinstance(seg.get("counts"), str), path, f"{where} has no compressed RLE")
    _check(seg.get("size") == [height, width], path, f"{where} RLE size {seg.get('size')} != image {[height, width]}")
    for name in ("area", "predicted_iou", "stability_score"):
        _check(isinstance(ann.get(name), (int, float)), path, f"{where} has no numeric {name!r}")


def read_record(path):
    """Load and validate one record; ``SamLabelError`` naming ``path`` if it is damaged."""
    record = _read_json(path)
    _check(isinstance(record, dict) and record.get("format") == FORMAT_NAME, path, f"not a {FORMAT_NAME} record")
    _check(record.get("version") == FORMAT_VERSION, path, f"format version {record.get('version')} != {FORMAT_VERSION}")
    image = record.get("image")
    _check(isinstance(image, dict), path, "missing 'image'")
    height, width = image.get("height"), image.get("width")
    _check(isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0, path, "bad image size")
    annotations = record.get("annotations")
    _check(isinstance(annotations, list), path, "missing 'annotations' list")
    _check(record.get("checksum") == _annotations_checksum(annotations), path, "checksum mismatch (damaged file)")
    for i, ann in enumerate(annotations):
        _validate_annotation(ann, i, height, width, path)
    return record


def decode_masks(record, path="<record>"):
    """bool[N, H, W] masks of a validated record; checks each decoded area against 'area'."""
    height, width = record["image"]["height"], record["image"]["width"]
    annotations = record["annotations"]
    if not annotations:
        return np.zeros((0, height, width), dtype=bool)
    rles = [dict(a["segmentation"], counts=a["segmentation"]["counts"].encode("ascii")) for a in annotations]
    masks = np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)).astype(bool)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    expected = np.array([a["area"] for a in annotations])
    bad = np.flatnonzero(areas != expected)
    _check(bad.size == 0, path, f"annotation {bad[:1].tolist()} decodes to area {areas[bad[:1]].tolist()}, "
           f"file says {expected[bad[:1]].tolist()}")
    return masks


def load_image_masks(label_dir, key):
    """(record, bool[N,H,W] masks) of image ``key``; clear error if the file is missing or damaged."""
    path = record_path(label_dir, key)
    if not path.is_file():
        raise SamLabelError(
            f"no pseudo-label file {path} for image {key!r}; generate it with "
            f"tools/generate_sam_pseudolabels.py (it resumes where it stopped)"
        )
    record = read_record(path)
    _check(record["image"].get("key") == key, path, f"record is for image {record['image'].get('key')!r}")
    return record, decode_masks(record, path)


# ----------------------------------------------------------------------------- folder-level files
def read_meta(label_dir):
    """The ``meta.json`` of a label folder; clear error if the folder is not one."""
    path = Path(label_dir) / META_FILE
    if not path.is_file():
        raise SamLabelError(
            f"{label_dir} is not a pseudo-label folder (no {META_FILE}); point it at the folder printed "
            "by tools/generate_sam_pseudolabels.py, e.g. <root>/vit_h/points_per_side_32_..."
        )
    meta = _read_json(path)
    _check(isinstance(meta, dict) and meta.get("format") == FORMAT_NAME, path, f"not a {FORMAT_NAME} meta file")
    return meta


def ensure_meta(label_dir, meta):
    """Write ``meta`` into a new label folder, or check that an existing folder was made the same way."""
    meta = dict(meta, format=FORMAT_NAME, version=FORMAT_VERSION)
    path = Path(label_dir) / META_FILE
    if not path.exists():
        atomic_write_json(path, meta)
        return meta
    existing = read_meta(label_dir)
    differing = sorted(k for k in set(meta) | set(existing) if meta.get(k) != existing.get(k))
    if differing:
        details = "; ".join(f"{k}: folder has {existing.get(k)!r}, this run {meta.get(k)!r}" for k in differing)
        raise SamLabelError(f"{path} was written with different settings ({details}); use another output folder")
    return existing


def finished_keys(label_dir):
    """Keys of all images whose record file exists (temp files of killed writers are ignored)."""
    masks_dir = Path(label_dir) / MASKS_DIR
    if not masks_dir.is_dir():
        return set()
    return {
        entry[: -len(".json")]
        for bucket in os.scandir(masks_dir) if bucket.is_dir()
        for entry in os.listdir(bucket.path) if entry.endswith(".json") and not entry.startswith(TMP_PREFIX)
    }


def record_damage(label_dir, key):
    """None if the record of image ``key`` reads back whole (schema, key, checksum), else why not."""
    path = record_path(label_dir, key)
    try:
        record = read_record(path)
        _check(record["image"].get("key") == key, path, f"record is for image {record['image'].get('key')!r}")
    except SamLabelError as e:
        return str(e)
    return None


def verify_finished(label_dir, keys):
    """(keys among ``keys`` with a sound record, [[path, reason], ...] of the damaged records).

    Damaged records are deleted, so they are regenerated like missing ones; a run killed before
    that leaves them missing, which the next run also regenerates.
    """
    existing = finished_keys(label_dir) & set(keys)
    damaged = []
    for key in sorted(existing):
        reason = record_damage(label_dir, key)
        if reason is not None:
            path = record_path(label_dir, key)
            damaged.append([str(path), reason])
            path.unlink(missing_ok=True)
            existing.discard(key)
    return existing, damaged


def remove_stale_temp_files(label_dir):
    """Delete ``.tmp-*`` leftovers of killed writers in ``label_dir``; returns how many were
    removed. Only while no other process writes the folder (see dearli.sam.pipeline.label_dir_lock)."""
    return len(remove_temp_leftovers(label_dir)) if Path(label_dir).is_dir() else 0


def update_index(label_dir, new_counts=None):
    """Rewrite ``index.json`` = {key: number of masks} for every finished record.

    Counts come from ``new_counts`` (what the caller just wrote), then the previous index; only
    records in neither are opened. Records on disk are the truth: keys without a file are dropped.
    """
    known = {**read_index(label_dir), **(new_counts or {})}
    counts = {}
    for key in sorted(finished_keys(label_dir)):
        counts[key] = known[key] if key in known else len(read_record(record_path(label_dir, key))["annotations"])
    index = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "images": counts}
    atomic_write_json(Path(label_dir) / INDEX_FILE, index)
    return counts


def read_index(label_dir):
    """{key: number of masks} from ``index.json`` (empty if the folder has none yet)."""
    path = Path(label_dir) / INDEX_FILE
    if not path.is_file():
        return {}
    return dict(_read_json(path).get("images", {}))
