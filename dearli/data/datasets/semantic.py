"""Semantic-only datasets (an image folder + a label-PNG folder, e.g. CamVid): every class is stuff.

``register_semantic_dataset`` registers such a folder pair for training and for both evaluators:

- every class is a stuff class; ``thing_dataset_id_to_contiguous_id`` is ``{}``;
- the label value that means "ignore" in the files (11 for CamVid) becomes 255;
- panoptic ground truth for PQ with all-stuff classes (one segment per class present in an image)
  and the remapped semantic labels are generated from the label PNGs into a cache folder on first
  load (atomic per-file writes; the json is written last). The cache records each label file's size
  and modification time and regenerates entries whose source changed. The cache folder is
  ``<cache>/semantic/<name>`` with ``<cache>`` = ``$DEARLI_DATASET_CACHE`` or
  ``~/.cache/dearli/datasets``.

A label value that is neither a class nor the ignore value is an error naming the file.

CamVid (11 classes, 360x480) is registered from ``$DEARLI_CAMVID`` or
``$DETECTRON2_DATASETS/camvid`` (layout ``{train,val}/images/*.jpg``,
``{train,val}/labels/*.png``): ``camvid_train``, ``camvid_val``, and a deterministic 1/8 labeled
split ``camvid_train_1_8_labeled`` (the ``round(N/8)`` label files chosen by
``numpy.random.default_rng(0)`` among the sorted stems; 46 of 367) with
``camvid_train_1_8_unlabeled`` (the others, image-only) and ``camvid_train_1_8_unlabeled_tagged``
(the same images with tags derived from their ground truth, :mod:`.tagged`). The labeled split has
its own panoptic json (``<cache>/semantic/camvid_train_1_8_labeled/panoptic.json``), so it can be
evaluated (PQ and mIoU on the training images, e.g. for a train-vs-val gap).
"""
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .metadata import IGNORE_LABEL, build_panoptic_metadata, register_dataset, semantic_categories
from .panoptic import load_panoptic_json, read_json
from .prepare_utils import atomic_write_json, save_panoptic_png, save_png_atomic, segment_records
from .splits import image_only, record_stem
from .tagged import register_tagged
from .validate import DatasetFileError, read_sem_seg

SEMANTIC_EVALUATOR_TYPE = "sem_seg"
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign symbol", "fence",
                  "car", "pedestrian", "bicyclist")
# The usual CamVid (SegNet) palette, RGB.
CAMVID_COLORS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                 (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                 (0, 128, 192))
CAMVID_IGNORE_VALUE = 11
CAMVID_LABELED_FRACTION = 1 / 8
CAMVID_SPLIT_SEED = 0


def dataset_cache_root():
    """Root of generated dataset files: $DEARLI_DATASET_CACHE or ~/.cache/dearli/datasets."""
    return os.environ.get("DEARLI_DATASET_CACHE") or os.path.expanduser("~/.cache/dearli/datasets")


def _file_signature(path):
    stat = os.stat(path)
    return f"{stat.st_size}-{stat.st_mtime_ns}"


@dataclass(frozen=True)
class SemanticSource:
    """A semantic-only folder pair and the cache folder of its generated panoptic ground truth."""

    image_dir: str
    label_dir: str
    class_names: tuple
    ignore_value: int  # label value meaning "ignore" in the source files
    cache_dir: str
    image_ext: str = ".jpg"
    label_ext: str = ".png"
    missing_hint: str = ""  # appended to "label folder ... not found" (e.g. which variable to set)

    @property
    def paths(self):
        return {
            "image_root": self.image_dir,
            "panoptic_root": os.path.join(self.cache_dir, "panoptic"),
            "panoptic_json": os.path.join(self.cache_dir, "panoptic.json"),
            "sem_seg_root": os.path.join(self.cache_dir, "sem_seg"),
        }

    def stems(self):
        """Sorted stems of the label files; each must have an image."""
        if not os.path.isdir(self.label_dir):
            raise FileNotFoundError(f"label folder {self.label_dir} not found{self.missing_hint}")
        stems = sorted(os.path.splitext(f)[0] for f in os.listdir(self.label_dir)
                       if f.endswith(self.label_ext))
        if not stems:
            raise FileNotFoundError(f"no *{self.label_ext} label files in {self.label_dir}")
        for stem in stems:
            image = os.path.join(self.image_dir, stem + self.image_ext)
            if not os.path.isfile(image):
                raise DatasetFileError(f"{image}: image of label "
                                       f"{os.path.join(self.label_dir, stem + self.label_ext)} "
                                       "not found")
        return stems

    def ensure_cache(self):
        """Generate what is missing or stale in the cache; return the panoptic json dict."""
        signatures = {stem: _file_signature(self._label_path(stem)) for stem in self.stems()}
        cached = self._read_cached_json()
        cached_images = {image["id"]: image for image in cached.get("images", [])}
        cached_annotations = {ann["image_id"]: ann for ann in cached.get("annotations", [])}
        unchanged = {k: v.get("source_signature") for k, v in cached_images.items()} == signatures
        if unchanged and all(self._cache_files_exist(stem) for stem in signatures):
            return cached
        images, annotations = [], []
        for stem, signature in signatures.items():
            image = cached_images.get(stem)
            if image is None or image.get("source_signature") != signature \
                    or not self._cache_files_exist(stem):
                image, annotation = self._convert(stem, signature)
            else:
                annotation = cached_annotations[stem]
            images.append(image)
            annotations.append(annotation)
        json_info = {
            "images": images, "annotations": annotations,
            "categories": semantic_categories(self.class_names),
            "dearli_source": {"label_dir": os.path.abspath(self.label_dir),
                              "ignore_value": self.ignore_value},
        }
        atomic_write_json(self.paths["panoptic_json"], json_info)
        return json_info

    def _label_path(self, stem):
        return os.path.join(self.label_dir, stem + self.label_ext)

    def _read_cached_json(self):
        json_path = self.paths["panoptic_json"]
        if not os.path.isfile(json_path):
            return {}
        cached = read_json(json_path)
        source = {"label_dir": os.path.abspath(self.label_dir), "ignore_value": self.ignore_value}
        # A cache made from another folder or ignore value is rebuilt entirely.
        return cached if cached.get("dearli_source") == source else {}

    def _cache_files_exist(self, stem):
        return all(os.path.isfile(os.path.join(self.paths[key], stem + ".png"))
                   for key in ("panoptic_root", "sem_seg_root"))

    def _convert(self, stem, signature):
        """Write the remapped semantic PNG and the all-stuff panoptic PNG of one label file."""
        label_path = self._label_path(stem)
        raw = read_sem_seg(label_path, len(self.class_names), ignore_label=self.ignore_value)
        image_path = os.path.join(self.image_dir, stem + self.image_ext)
        with Image.open(image_path) as image:  # header only: the size, no decoding
            if image.size != (raw.shape[1], raw.shape[0]):
                raise DatasetFileError(f"{label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but "
                                       f"its image {image_path} is {image.size[0]}x{image.size[1]}")
        labels = np.where(raw == self.ignore_value, IGNORE_LABEL, raw).astype(np.uint8)
        # One segment per class present: segment id = class + 1 (0 stays void).
        segment_ids = np.where(labels == IGNORE_LABEL, 0, labels.astype(np.int32) + 1)
        category_of = {c + 1: c for c in range(len(self.class_names))}
        save_png_atomic(labels, os.path.join(self.paths["sem_seg_root"], stem + ".png"))
        save_panoptic_png(segment_ids, os.path.join(self.paths["panoptic_root"], stem + ".png"))
        image = {"id": stem, "file_name": stem + self.image_ext, "height": int(raw.shape[0]),
                 "width": int(raw.shape[1]), "source_signature": signature}
        annotation = {"image_id": stem, "file_name": stem + ".png",
                      "segments_info": segment_records(segment_ids, category_of)}
        return image, annotation

    def load(self, category_metadata):
        """Dataset dicts (standard panoptic format, with ``sem_seg_file_name``)."""
        self.ensure_cache()
        paths = self.paths
        return load_panoptic_json(paths["panoptic_json"], paths["image_root"],
                                  paths["panoptic_root"], category_metadata, paths["sem_seg_root"])


def semantic_metadata(source, colors=None, prompt_file=None):
    """Metadata of a semantic-only dataset: all classes stuff, empty thing map, cache paths."""
    category_metadata = build_panoptic_metadata(
        semantic_categories(list(source.class_names), colors), prompt_file=prompt_file)
    return category_metadata, dict(category_metadata, evaluator_type=SEMANTIC_EVALUATOR_TYPE,
                                   **source.paths)


def register_semantic_dataset(name, image_dir, label_dir, class_names, ignore_label, *,
                              colors=None, image_ext=".jpg", label_ext=".png", cache_dir=None,
                              prompt_file=None, missing_hint=""):
    """Register a semantic-only dataset ``name`` (lazy; see the module docstring).

    ``ignore_label``: the label value that means "ignore" in the files (mapped to 255).
    Returns the :class:`SemanticSource`, which split registrations reuse.
    """
    source = SemanticSource(image_dir, label_dir, tuple(class_names), int(ignore_label),
                            cache_dir or os.path.join(dataset_cache_root(), "semantic", name),
                            image_ext, label_ext, missing_hint)
    category_metadata, metadata = semantic_metadata(source, colors, prompt_file)
    register_dataset(name, lambda: source.load(category_metadata), metadata)
    return source


def choose_labeled_stems(stems, fraction, seed):
    """Deterministic labeled subset: ``round(N * fraction)`` (at least 1) stems, seeded choice."""
    ordered = sorted(stems)
    count = max(1, int(round(len(ordered) * fraction)))
    chosen = np.random.default_rng(seed).choice(len(ordered), size=count, replace=False)
    return {ordered[i] for i in chosen.tolist()}


def subset_panoptic_json(json_info, image_ids):
    """The panoptic json restricted to ``image_ids`` (images and annotations; categories kept)."""
    keep = set(image_ids)
    return dict(json_info, images=[image for image in json_info["images"] if image["id"] in keep],
                annotations=[ann for ann in json_info["annotations"] if ann["image_id"] in keep])


def register_semantic_split(prefix, source, fraction, seed, colors=None, prompt_file=None):
    """Register ``<prefix>_labeled`` (a seeded ``fraction`` of ``source``) and ``_unlabeled``.

    The labeled split gets its own panoptic json (``<cache>/semantic/<prefix>_labeled/panoptic.json``,
    written when its records are loaded, i.e. before any evaluation of it): PQ is computed over the
    json's images, so with the whole source's json the split could not be evaluated (e.g. the
    train-vs-val gap of a model trained on it). The unlabeled split keeps the source's json, which
    the pseudo-label quality reads its withheld ground truth from."""
    category_metadata, metadata = semantic_metadata(source, colors, prompt_file)
    labeled_json = os.path.join(os.path.dirname(source.cache_dir), f"{prefix}_labeled", "panoptic.json")

    def records(labeled):
        loaded = source.load(category_metadata)
        chosen = choose_labeled_stems([record_stem(r) for r in loaded], fraction, seed)
        return [r for r in loaded if (record_stem(r) in chosen) == labeled]

    def labeled_records():
        chosen = records(True)
        subset = subset_panoptic_json(read_json(source.paths["panoptic_json"]), [r["image_id"] for r in chosen])
        if not os.path.isfile(labeled_json) or read_json(labeled_json) != subset:
            atomic_write_json(labeled_json, subset)
        return chosen

    register_dataset(f"{prefix}_labeled", labeled_records, dict(metadata, panoptic_json=labeled_json))
    register_dataset(f"{prefix}_unlabeled", lambda: [image_only(r) for r in records(False)], metadata)
    register_tagged(f"{prefix}_unlabeled_tagged", lambda: records(False), metadata)


def camvid_root(datasets_root):
    """CamVid folder: ``$DEARLI_CAMVID``, else ``<datasets_root>/camvid``."""
    return os.environ.get("DEARLI_CAMVID") or os.path.join(datasets_root, "camvid")


def register_camvid(root, cache_root=None):
    """Register ``camvid_train``, ``camvid_val`` and the 1/8 split from CamVid folder ``root``."""
    cache_root = cache_root or dataset_cache_root()
    hint = ("; set DEARLI_CAMVID to the CamVid folder (layout {train,val}/images/*.jpg and "
            "{train,val}/labels/*.png) or place it at $DETECTRON2_DATASETS/camvid")
    sources = {}
    for subset in ("train", "val"):
        name = f"camvid_{subset}"
        sources[subset] = register_semantic_dataset(
            name, os.path.join(root, subset, "images"), os.path.join(root, subset, "labels"),
            CAMVID_CLASSES, CAMVID_IGNORE_VALUE, colors=CAMVID_COLORS,
            cache_dir=os.path.join(cache_root, "semantic", name), missing_hint=hint)
    register_semantic_split("camvid_train_1_8", sources["train"], CAMVID_LABELED_FRACTION,
                            CAMVID_SPLIT_SEED, colors=CAMVID_COLORS)
