"""ADE20K panoptic (150 classes: 100 things / 50 stuff) and its semi-supervised splits.

Layout under ``<root>/ADEChallengeData2016`` (``<root>`` = ``$DETECTRON2_DATASETS``), made by
``datasets/prepare_ade20k_sem_seg.py`` and ``datasets/prepare_ade20k_pan_seg.py``::

    images/{training,validation}/*.jpg
    ade20k_panoptic_{train,val}.json, ade20k_panoptic_{train,val}/*.png   (panoptic GT)
    annotations_detectron2/{training,validation}/*.png                    (150-class semantic GT)

Registered names: ``ade20k_panoptic_train``, ``ade20k_panoptic_val`` (panoptic GT for PQ plus
``sem_seg_root`` for mIoU) and, per split S in ``ADE20K_SPLITS``,
``ade20k_panoptic_train_{S}_labeled`` (train dicts listed in ``<splits>/ade_splits/S/labeled.txt``)
and ``ade20k_panoptic_train_{S}_unlabeled`` (image-only dicts of ``.../S/unlabeled.txt``), with
``..._unlabeled_tagged``: the same images with tags derived from their ground truth (:mod:`.tagged`).
"""
import os

from .metadata import ade20k_categories, build_panoptic_metadata
from .panoptic import panoptic_dataset, register_panoptic_dataset
from .splits import register_labeled_split, register_unlabeled_list
from .tagged import register_tagged_list

ADE20K_DIRNAME = "ADEChallengeData2016"
ADE20K_SPLITS = ("1_128", "1_64", "1_32", "1_16", "1_8")
ADE20K_EVALUATOR_TYPE = "ade20k_panoptic_seg"
ADE20K_PROMPT_FILE = "ade20k_150"
_FOLDERS = {"train": "training", "val": "validation"}
_PREPARE_HINT = ("run datasets/prepare_ade20k_sem_seg.py and datasets/prepare_ade20k_pan_seg.py "
                 "(see datasets/README.md)")


def ade20k_metadata():
    """Category metadata of ADE20K panoptic (no paths)."""
    return build_panoptic_metadata(ade20k_categories(), prompt_file=ADE20K_PROMPT_FILE)


def ade20k_paths(root, subset):
    """Paths of ``subset`` ("train" / "val") under ``<root>/ADEChallengeData2016``."""
    ade_root = os.path.join(root, ADE20K_DIRNAME)
    folder = _FOLDERS[subset]
    return {
        "image_root": os.path.join(ade_root, "images", folder),
        "panoptic_root": os.path.join(ade_root, f"ade20k_panoptic_{subset}"),
        "panoptic_json": os.path.join(ade_root, f"ade20k_panoptic_{subset}.json"),
        "sem_seg_root": os.path.join(ade_root, "annotations_detectron2", folder),
    }


def register_ade20k_panoptic(root):
    """Register ``ade20k_panoptic_train`` and ``ade20k_panoptic_val`` under ``root``."""
    for subset in _FOLDERS:
        register_panoptic_dataset(f"ade20k_panoptic_{subset}", ade20k_metadata(),
                                  ade20k_paths(root, subset), ADE20K_EVALUATOR_TYPE, _PREPARE_HINT)


def register_ade20k_splits(root, splits_root):
    """Register the labeled / unlabeled split datasets, reading lists from ``splits_root``."""
    paths = ade20k_paths(root, "train")
    metadata, load_train = panoptic_dataset(ade20k_metadata(), paths, ADE20K_EVALUATOR_TYPE,
                                            _PREPARE_HINT)
    for split in ADE20K_SPLITS:
        split_dir = os.path.join(splits_root, "ade_splits", split)
        labeled_file = os.path.join(split_dir, "labeled.txt")
        register_labeled_split(f"ade20k_panoptic_train_{split}_labeled", load_train, metadata,
                               labeled_file, source=paths["panoptic_json"])
        register_unlabeled_list(f"ade20k_panoptic_train_{split}_unlabeled",
                                os.path.join(split_dir, "unlabeled.txt"), labeled_file,
                                os.path.join(root, ADE20K_DIRNAME), metadata)
        register_tagged_list(f"ade20k_panoptic_train_{split}_unlabeled_tagged",
                             os.path.join(split_dir, "unlabeled.txt"), labeled_file, load_train, metadata,
                             source=paths["panoptic_json"])
