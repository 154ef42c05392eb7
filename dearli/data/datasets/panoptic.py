"""Generic COCO-format panoptic dataset: one loader for ADE20K, COCO panoptic and COCO-objects.

A panoptic dataset is an image folder, a folder of RGB-encoded panoptic PNGs, a COCO panoptic json
and optionally a folder of semantic PNGs (contiguous class ids, 255 = ignore) for mIoU. Loaded
dataset dicts (Detectron2's standard panoptic format)::

    {"file_name", "image_id" (as in the json), "height", "width", "pan_seg_file_name",
     "sem_seg_file_name" (when a semantic root is given),
     "segments_info": [{"id", "category_id" (contiguous), "isthing" (bool), "iscrowd", "area",
                        "bbox"}]}

Loading checks the json against the registered category table (same ids, same thing/stuff split)
and every segment's category, so that a json prepared for another table fails with a clear error
instead of producing wrong labels. Per-file checks (ids in the PNG, image decoding) happen when a
mapper reads the files, through :mod:`dearli.data.datasets.validate`.
"""
import json
import os

from .metadata import register_dataset


class PanopticAnnotationError(ValueError):
    """A panoptic json does not match its registration (names the json and the entry at fault)."""


def read_json(json_file, prepare_hint=""):
    """Parse a json annotation file; a missing file names the preparation step that makes it."""
    if not os.path.isfile(json_file):
        hint = f"; {prepare_hint}" if prepare_hint else ""
        raise FileNotFoundError(f"panoptic json {json_file} not found{hint}")
    with open(json_file, "r", encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise PanopticAnnotationError(f"{json_file}: not valid json ({e})") from e


def check_json_categories(json_categories, metadata, json_file):
    """The json's categories must be exactly the registered table, with the same thing/stuff split.

    PQ_th / PQ_st are computed from the json's ``isthing`` flags, so a disagreement would silently
    change the reported numbers.
    """
    expected_ids = set(metadata["stuff_dataset_id_to_contiguous_id"])
    thing_ids = set(metadata["thing_dataset_id_to_contiguous_id"])
    json_ids = {c["id"] for c in json_categories}
    if json_ids != expected_ids:
        raise PanopticAnnotationError(
            f"{json_file}: category ids differ from the registered table (in the json only: "
            f"{sorted(json_ids - expected_ids)[:10]}, missing from the json: "
            f"{sorted(expected_ids - json_ids)[:10]}); was it prepared for another dataset?"
        )
    flipped = sorted(c["id"] for c in json_categories
                     if bool(c["isthing"]) != (c["id"] in thing_ids))
    if flipped:
        raise PanopticAnnotationError(
            f"{json_file}: categories {flipped[:10]} have a different thing/stuff flag than the "
            f"registered table ({len(thing_ids)} things); re-create the json with the dearli "
            "preparation script"
        )


def _convert_segment(segment, metadata, json_file, image_id):
    """A json segment with its category made contiguous and ``isthing`` added (a new dict)."""
    dataset_id = segment["category_id"]
    contiguous = metadata["stuff_dataset_id_to_contiguous_id"].get(dataset_id)
    if contiguous is None:
        raise PanopticAnnotationError(
            f"{json_file}: image {image_id!r}, segment {segment.get('id')}: unknown category_id "
            f"{dataset_id}"
        )
    converted = dict(segment)
    converted["category_id"] = contiguous
    converted["isthing"] = dataset_id in metadata["thing_dataset_id_to_contiguous_id"]
    converted["iscrowd"] = int(segment.get("iscrowd", 0))
    return converted


def load_panoptic_json(json_file, image_root, panoptic_root, metadata, sem_seg_root=None,
                       prepare_hint=""):
    """Dataset dicts (module docstring) of a COCO-format panoptic json.

    ``metadata``: the category dict of :func:`build_panoptic_metadata`.
    Images are located through the json's ``images`` table (``file_name``), so any extension works.
    """
    json_info = read_json(json_file, prepare_hint)
    for key in ("images", "annotations", "categories"):
        if key not in json_info:
            raise PanopticAnnotationError(f"{json_file}: no {key!r} list; not a panoptic json")
    check_json_categories(json_info["categories"], metadata, json_file)
    images = {image["id"]: image for image in json_info["images"]}
    dataset_dicts = []
    for ann in json_info["annotations"]:
        image_id = ann["image_id"]
        image = images.get(image_id)
        if image is None:
            raise PanopticAnnotationError(
                f"{json_file}: annotation {ann.get('file_name')!r} refers to image id "
                f"{image_id!r}, which is not in the json's images list"
            )
        record = {
            "file_name": os.path.join(image_root, image["file_name"]),
            "image_id": image_id,
            "height": image["height"],
            "width": image["width"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": [
                _convert_segment(s, metadata, json_file, image_id) for s in ann["segments_info"]
            ],
        }
        if sem_seg_root is not None:
            stem = os.path.splitext(ann["file_name"])[0]
            record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
        dataset_dicts.append(record)
    if not dataset_dicts:
        raise PanopticAnnotationError(f"{json_file}: no annotations")
    _check_first_files(dataset_dicts[0], json_file)
    return dataset_dicts


def _check_first_files(record, json_file):
    # Stat only the first record: a wrong root fails here at once, without 100k stat calls; the
    # remaining files are checked when a mapper opens them.
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        if key in record and not os.path.isfile(record[key]):
            raise FileNotFoundError(
                f"{record[key]} (the {key} of the first entry of {json_file}) does not exist; "
                "check the dataset root and that the preparation script has run"
            )


def panoptic_dataset(category_metadata, paths, evaluator_type, prepare_hint=""):
    """``(metadata, loader)`` of a panoptic dataset; nothing is read until ``loader()`` is called.

    ``paths``: ``image_root``, ``panoptic_root``, ``panoptic_json`` and optionally
    ``sem_seg_root``; they are added to the metadata (the evaluators read them there) together
    with ``evaluator_type``.
    """
    metadata = dict(category_metadata, evaluator_type=evaluator_type, **paths)

    def load():
        return load_panoptic_json(paths["panoptic_json"], paths["image_root"],
                                  paths["panoptic_root"], category_metadata,
                                  paths.get("sem_seg_root"), prepare_hint)

    return metadata, load


def register_panoptic_dataset(name, category_metadata, paths, evaluator_type="coco_panoptic_seg",
                              prepare_hint=""):
    """Register the panoptic dataset of :func:`panoptic_dataset` as ``name`` (lazy)."""
    metadata, load = panoptic_dataset(category_metadata, paths, evaluator_type, prepare_hint)
    register_dataset(name, load, metadata)
    return load
