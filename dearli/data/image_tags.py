"""Image-level tags of unlabeled images (DecoupledNet, ``../shared/design/extensions.md`` §4.3).

A tag is a class known to be present in an image; an image's tags are its complete list of
present classes (every other class is known absent). Tags reach training as a field
``image_tags`` (sorted contiguous class ids) of an unlabeled dataset dict, from one of two sources:

- a **tag file** (SSL.IMAGE_TAGS.FILE), in one of two formats:

  * JSON: ``{"<file name>": ["<class>", ...], ...}`` (file extension ``.json``);
  * text (any other extension), one image per line: ``<file name><TAB><class>, <class>, ...``,
    or ``<file name>: <class>, ...`` when the line has no TAB. An empty class list means "none of
    the classes" (all negatives). Blank lines and lines starting with ``#`` are skipped.

  Class names are the dataset's class names (metadata ``stuff_classes``), exactly. An image is
  named by its file name (a path or a bare name: it is matched by its stem, as in the split lists)
  or by its dataset ``image_id``. Every problem is an error naming ``file:line``: a malformed
  line, an unknown class, an image that is not in the dataset, an image listed twice.
- **derived from ground truth** (the ``*_unlabeled_tagged`` datasets, :mod:`.datasets.tagged`):
  their dicts carry ``class_areas`` ({class id: pixels}); a class is a tag when it covers at least
  max(1 pixel, SSL.IMAGE_TAGS.MIN_AREA_FRACTION x image area). These are *perfect* tags: results
  with them are an upper bound for real, noisy tags.

SSL.IMAGE_TAGS.FRACTION keeps the tags of a seeded subset of the tagged images only.
"""
import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog

from .datasets.splits import record_stem
from .datasets.tagged import DERIVED_TAGS_NOTE

logger = logging.getLogger(__name__)


class TagFileError(ValueError):
    """A tag file is malformed or disagrees with the dataset (names the file and line)."""


@dataclass(frozen=True)
class TagEntry:
    """One image's line of a tag file."""

    where: str  # "file:line"
    image: str  # the image as written (file name or image id)
    class_names: Tuple[str, ...]


# ----------------------------------------------------------------------------- reading tag files
def read_tag_file(path: str) -> List[TagEntry]:
    """The entries of a tag file (JSON by extension ``.json``, text otherwise; module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tag file {path} not found (SSL.IMAGE_TAGS.FILE)")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    entries = _read_json_tags(path, text) if path.endswith(".json") else _read_text_tags(path, text)
    _check_unique_images(entries)
    return entries


def _read_text_tags(path: str, text: str) -> List[TagEntry]:
    entries = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        separator = "\t" if "\t" in line else ":"
        if separator not in line:
            raise TagFileError(f"{path}:{line_number}: expected '<file name><TAB or :><class>, <class>, ...', "
                               f"got {stripped!r}")
        image, classes = line.split(separator, 1)
        names = tuple(name.strip() for name in classes.split(",")) if classes.strip() else ()
        if not image.strip() or any(not name for name in names):
            raise TagFileError(f"{path}:{line_number}: empty file name or class name in {stripped!r}")
        entries.append(TagEntry(f"{path}:{line_number}", image.strip(), names))
    return entries


def _read_json_tags(path: str, text: str) -> List[TagEntry]:
    key_lines = _key_lines(text)

    def refuse_duplicates(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                lines = key_lines.get(key, [1, 1])
                raise TagFileError(f"{path}:{lines[min(1, len(lines) - 1)]}: image {key!r} is listed twice "
                                   f"(first at line {lines[0]})")
            seen.add(key)
        return dict(pairs)

    try:
        table = json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as error:
        raise TagFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(table, dict):
        raise TagFileError(f"{path}:1: expected a JSON object {{file name: [class names]}}, "
                           f"got a {type(table).__name__}")
    entries = []
    for image, names in table.items():
        where = f"{path}:{key_lines.get(image, [1])[0]}"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TagFileError(f"{where}: the tags of {image!r} must be a list of class names, got {names!r}")
        entries.append(TagEntry(where, image, tuple(names)))
    return entries


# A JSON string followed by a colon: an object key (string values are never followed by one).
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def _key_lines(text: str) -> Dict[str, List[int]]:
    """{object key: the lines it appears on as a key}, in one pass over ``text`` (json itself keeps
    no positions; a tag file of COCO's 118k images must not be rescanned per key)."""
    lines: Dict[str, List[int]] = {}
    line, position = 1, 0
    for match in _JSON_KEY.finditer(text):
        line += text.count("\n", position, match.start())
        position = match.start()
        lines.setdefault(json.loads(f'"{match.group(1)}"'), []).append(line)
    return lines


def _check_unique_images(entries: Sequence[TagEntry]) -> None:
    first = {}
    for entry in entries:
        key = _stem(entry.image)
        if key in first:
            raise TagFileError(f"{entry.where}: image {entry.image!r} is listed twice (first at {first[key]})")
        first[key] = entry.where


def _stem(image: str) -> str:
    return os.path.splitext(os.path.basename(image))[0]


# ----------------------------------------------------------------------------- checking against a dataset
def class_ids_of(entry: TagEntry, class_names: Sequence[str]) -> Tuple[int, ...]:
    """Sorted contiguous ids of the entry's class names; an unknown name is an error at its line."""
    index = {name: i for i, name in enumerate(class_names)}
    ids = set()
    for name in entry.class_names:
        if name not in index:
            close = difflib.get_close_matches(name, list(class_names), n=3, cutoff=0.6)
            raise TagFileError(f"{entry.where}: unknown class {name!r} for image {entry.image!r} "
                               f"(close class names: {close or 'none'}; {len(class_names)} classes)")
        ids.add(index[name])
    return tuple(sorted(ids))


def tags_by_record(entries: Sequence[TagEntry], dataset_dicts: Sequence[Dict], class_names: Sequence[str],
                   source: str) -> Dict[int, Tuple[int, ...]]:
    """{index in ``dataset_dicts``: class ids} of every entry; an image that is not among the
    dicts (by stem or image id) is an error at its line. ``source`` names the dataset(s)."""
    by_key = {}
    for position, record in enumerate(dataset_dicts):
        by_key.setdefault(record_stem(record), position)
        by_key.setdefault(str(record.get("image_id")), position)
    tags = {}
    for entry in entries:
        position = by_key.get(_stem(entry.image), by_key.get(entry.image))
        if position is None:
            raise TagFileError(f"{entry.where}: image {entry.image!r} is not in the dataset "
                               f"({len(dataset_dicts)} images in {source})")
        if position in tags:
            raise TagFileError(f"{entry.where}: image {entry.image!r} names the same dataset image as an "
                               "earlier line")
        tags[position] = class_ids_of(entry, class_names)
    return tags


# ----------------------------------------------------------------------------- derived tags
def derived_tags(record: Mapping, min_area_fraction: float) -> Tuple[int, ...]:
    """Sorted class ids covering >= max(1, ``min_area_fraction`` x height x width) pixels."""
    minimum = max(1.0, float(min_area_fraction) * int(record["height"]) * int(record["width"]))
    return tuple(sorted(int(c) for c, area in record["class_areas"].items() if area >= minimum))


# ----------------------------------------------------------------------------- attaching tags
def keep_fraction(indices: Sequence[int], fraction: float, seed: int) -> set:
    """The seeded subset (round(N x fraction) items) of ``indices`` that keeps its tags."""
    if not 0 < fraction <= 1:
        raise ValueError(f"SSL.IMAGE_TAGS.FRACTION must be in (0, 1], got {fraction}")
    ordered = sorted(indices)
    count = int(round(len(ordered) * fraction))
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return {ordered[i] for i in chosen.tolist()}


def attach_image_tags(dataset_dicts: Sequence[Dict], class_names: Sequence[str], *, tag_file: str = "",
                      fraction: float = 1.0, seed: int = 0, min_area_fraction: float = 0.0,
                      source: str = "the dataset") -> List[Dict]:
    """Copies of ``dataset_dicts``; the tagged ones (from ``tag_file``, else derived from their
    ``class_areas``) that the seeded ``fraction`` keeps get ``image_tags``. No dict keeps
    ``class_areas`` (ground-truth facts beyond the tags stay out of training)."""
    if tag_file:
        tags = tags_by_record(read_tag_file(tag_file), dataset_dicts, class_names, source)
    else:
        tags = {i: derived_tags(r, min_area_fraction) for i, r in enumerate(dataset_dicts) if "class_areas" in r}
        if not tags:
            raise ValueError(f"SSL.IMAGE_TAGS.ENABLED but no tags: {source} has no derived tags (use a "
                             "'*_unlabeled_tagged' dataset) and SSL.IMAGE_TAGS.FILE is empty")
    kept = keep_fraction(list(tags), fraction, seed)
    logger.info("image tags: %d of %d unlabeled images tagged (%s, FRACTION %.3g)", len(kept), len(dataset_dicts),
                f"file {tag_file}" if tag_file else DERIVED_TAGS_NOTE, fraction)
    out = []
    for i, record in enumerate(dataset_dicts):
        record = {k: v for k, v in record.items() if k != "class_areas"}
        if i in kept:
            record["image_tags"] = tags[i]
        out.append(record)
    return out


def attach_image_tags_from_cfg(cfg, dataset_dicts: Sequence[Dict]) -> List[Dict]:
    """:func:`attach_image_tags` with the SSL.IMAGE_TAGS keys and the class names of the model's
    dataset DATASETS.TRAIN[0]; the dicts unchanged when tags are off."""
    tags_cfg = cfg.SSL.IMAGE_TAGS
    if not tags_cfg.ENABLED:
        return list(dataset_dicts)
    class_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("stuff_classes", None)
    if not class_names:
        raise ValueError(f"SSL.IMAGE_TAGS.ENABLED: DATASETS.TRAIN[0] {cfg.DATASETS.TRAIN[0]!r} lists no "
                         "stuff_classes to read tag names against")
    return attach_image_tags(dataset_dicts, class_names, tag_file=tags_cfg.FILE, fraction=tags_cfg.FRACTION,
                             seed=tags_cfg.SUBSET_SEED, min_area_fraction=tags_cfg.MIN_AREA_FRACTION,
                             source=f"DATASETS.TRAIN_UNLABELED {tuple(cfg.DATASETS.TRAIN_UNLABELED)}")


# ----------------------------------------------------------------------------- samples and the CutMix rule
def image_tag_fields(dataset_dict: Mapping, num_classes: int) -> Dict:
    """The unlabeled mapper's tag fields of one image: ``image_tags`` bool [C] (multi-hot; all
    False when untagged) and ``has_tags``."""
    multi_hot = torch.zeros(num_classes, dtype=torch.bool)
    tags = dataset_dict.get("image_tags")
    if tags is not None:
        bad = [c for c in tags if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"{dataset_dict.get('file_name')}: image tags {bad} are not class ids 0..{num_classes - 1}")
        multi_hot[list(tags)] = True
    return {"image_tags": multi_hot, "has_tags": tags is not None}


def student_tag_targets(sample: Mapping) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(targets bool [C], term weights float [C]) of the tag loss on the student image of an
    unlabeled ``sample`` (the mapper's output), or None when it contributes nothing.

    The CutMix rule (extensions.md §4.3): a mixed image's true tags are unknown (the box may cut a
    class out of the main image, or paste none of the partner's), so

    - a sample without a box: every class is a term, tags positive, the others negative;
    - a boxed sample: no positive term; negative terms only on classes absent from BOTH images,
      which needs both images tagged;
    - an untagged sample (or a boxed one with an untagged partner): no term at all.
    """
    if not sample.get("has_tags"):
        return None
    tags = sample["image_tags"]
    cutmix = sample.get("cutmix")
    if cutmix is None:
        return tags, torch.ones(tags.shape, dtype=torch.float32)
    if not cutmix.get("has_tags"):
        return None
    absent_from_both = ~(tags | cutmix["image_tags"])
    return torch.zeros_like(tags), absent_from_both.float()
