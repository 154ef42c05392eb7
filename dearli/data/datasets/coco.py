"""COCO panoptic (133 classes) and COCO-objects (80 things + ``background``), with their splits.

Layout under ``<root>/coco`` (``<root>`` = ``$DETECTRON2_DATASETS``)::

    {train,val}2017/*.jpg
    annotations/panoptic_{train,val}2017.json, panoptic_{train,val}2017/*.png  (COCO download)
    panoptic_semseg_{train,val}2017/*.png       (datasets/prepare_coco_semantic_from_panoptic.py)
    annotations/panoptic_{train,val}2017_objects.json, panoptic_{train,val}2017_objects/*.png,
    masks/*.png (81-class semantic masks)        (datasets/prepare_coco_objects.py)

Registered names:

- ``coco_2017_{train,val}_panoptic``: 133-class PQ + mIoU on ``panoptic_semseg_*``. These replace
  Detectron2's registrations of the same names, whose ``thing_classes`` list only the things.
- ``coco_2017_train_panoptic_{S}_labeled``: train dicts listed in
  ``<splits>/coco_splits/S/labeled.txt``; ``..._{S}_unlabeled``: every other train2017 image
  (the complement, computed from the train json; no unlabeled list is needed);
  ``..._{S}_unlabeled_tagged``: the same images with tags derived from their ground truth
  (:mod:`.tagged`).
- ``coco_objects_2017_val``; ``coco_objects_2017_train_{S}_labeled`` / ``_unlabeled`` likewise.
"""
import os

from .metadata import build_panoptic_metadata, coco_objects_categories, coco_panoptic_categories
from .panoptic import panoptic_dataset, register_panoptic_dataset
from .splits import register_labeled_split, register_unlabeled_complement
from .tagged import register_tagged_complement

COCO_SPLITS = ("1_512", "1_256", "1_128", "1_64", "1_32")
COCO_EVALUATOR_TYPE = "coco_panoptic_seg"
_SUBSETS = ("train", "val")
_PANOPTIC_HINT = ("download COCO 2017 panoptic annotations and run "
                  "datasets/prepare_coco_semantic_from_panoptic.py (see datasets/README.md)")
_OBJECTS_HINT = "run datasets/prepare_coco_objects.py (see datasets/README.md)"


def coco_panoptic_metadata():
    return build_panoptic_metadata(coco_panoptic_categories(), prompt_file="coco_panoptic")


def coco_objects_metadata():
    return build_panoptic_metadata(coco_objects_categories(), prompt_file="coco_objects")


def coco_paths(root, subset, objects=False):
    """Paths of COCO panoptic (or, with ``objects``, COCO-objects) ``subset`` under
    ``<root>/coco``; the 81-class masks of both COCO-objects subsets share ``coco/masks``."""
    coco = os.path.join(root, "coco")
    suffix = "_objects" if objects else ""
    return {
        "image_root": os.path.join(coco, f"{subset}2017"),
        "panoptic_root": os.path.join(coco, f"panoptic_{subset}2017{suffix}"),
        "panoptic_json": os.path.join(coco, "annotations", f"panoptic_{subset}2017{suffix}.json"),
        "sem_seg_root": os.path.join(coco, "masks" if objects else f"panoptic_semseg_{subset}2017"),
    }


def register_coco_panoptic(root):
    """Register ``coco_2017_train_panoptic`` and ``coco_2017_val_panoptic`` under ``root``."""
    for subset in _SUBSETS:
        register_panoptic_dataset(f"coco_2017_{subset}_panoptic", coco_panoptic_metadata(),
                                  coco_paths(root, subset), COCO_EVALUATOR_TYPE,
                                  _PANOPTIC_HINT)


def register_coco_objects(root):
    """Register ``coco_objects_2017_val`` under ``root``."""
    register_panoptic_dataset("coco_objects_2017_val", coco_objects_metadata(),
                              coco_paths(root, "val", objects=True), COCO_EVALUATOR_TYPE,
                              _OBJECTS_HINT)


def _register_splits(prefix, paths, category_metadata, hint, splits_root):
    metadata, load_train = panoptic_dataset(category_metadata, paths, COCO_EVALUATOR_TYPE, hint)
    for split in COCO_SPLITS:
        labeled_file = os.path.join(splits_root, "coco_splits", split, "labeled.txt")
        register_labeled_split(f"{prefix}_{split}_labeled", load_train, metadata, labeled_file,
                               source=paths["panoptic_json"])
        register_unlabeled_complement(f"{prefix}_{split}_unlabeled", load_train, labeled_file,
                                      metadata, source=paths["panoptic_json"])
        register_tagged_complement(f"{prefix}_{split}_unlabeled_tagged", load_train, labeled_file,
                                   metadata, source=paths["panoptic_json"])


def register_coco_splits(root, splits_root):
    """Register the COCO panoptic and COCO-objects labeled / unlabeled split datasets."""
    _register_splits("coco_2017_train_panoptic", coco_paths(root, "train"),
                     coco_panoptic_metadata(), _PANOPTIC_HINT, splits_root)
    _register_splits("coco_objects_2017_train", coco_paths(root, "train", objects=True),
                     coco_objects_metadata(), _OBJECTS_HINT, splits_root)
