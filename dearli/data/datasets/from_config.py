"""Datasets declared by config keys, so a user registers them with KEY VALUE pairs on the command line.

``register_config_datasets(cfg)`` re-registers the split names (``*_labeled`` / ``*_unlabeled``)
under ``DATASETS.SPLITS_ROOT`` when it is set, and registers, when their IMAGES key is set:

- ``DATASETS.SAM_IMAGES``: an image folder or list file with the pseudo-labels that
  ``tools/generate_sam_pseudolabels.py --images ... --output OUT`` wrote (LABEL_DIR may be OUT
  itself: its one ``<model>/<settings>`` folder holding ``meta.json`` is found), for the warm-up;
- ``DATASETS.SEMANTIC_FOLDER``: an image folder + label-PNG folder (every class stuff), for
  evaluation or training; its classes default to those of the model's dataset DATASETS.TRAIN[0];
- ``DATASETS.PANOPTIC_FOLDER``: images + panoptic PNGs + COCO panoptic json (+ semantic PNGs), whose
  categories, in the json's order, are the classes.

The trainer calls it when it builds the model, the loaders and the evaluators, in every process,
so the names work in DATASETS.TRAIN / DATASETS.TEST like any registered dataset. Calling it again
with the same keys does nothing; a name that another registration owns is refused.
"""
import logging
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from dearli.data.datasets.builtin import register_split_datasets_from_cfg
from dearli.data.datasets.metadata import build_panoptic_metadata, semantic_categories
from dearli.data.datasets.panoptic import read_json, register_panoptic_dataset
from dearli.data.datasets.sam_images import register_sam_dataset
from dearli.data.datasets.semantic import register_semantic_dataset
from dearli.data.sam_format import META_FILE

logger = logging.getLogger(__name__)

# {dataset name: the config values it was registered from}, for the sets registered here.
_REGISTERED = {}


def register_config_datasets(cfg) -> None:
    """Register the datasets that ``cfg.DATASETS.SAM_IMAGES`` / ``SEMANTIC_FOLDER`` declare."""
    register_split_datasets_from_cfg(cfg)  # cheap (paths only), so done on every call
    sam = cfg.DATASETS.SAM_IMAGES
    if sam.IMAGES:
        _register_once("DATASETS.SAM_IMAGES", sam.NAME, (sam.IMAGES, sam.LABEL_DIR),
                       lambda: _register_sam_images(sam))
    folder = cfg.DATASETS.SEMANTIC_FOLDER
    if folder.IMAGES:
        spec = (folder.IMAGES, folder.LABELS, folder.IMAGE_EXT, folder.LABEL_EXT, tuple(folder.CLASSES),
                folder.IGNORE_VALUE)
        _register_once("DATASETS.SEMANTIC_FOLDER", folder.NAME, spec, lambda: _register_semantic_folder(cfg))
    panoptic = cfg.DATASETS.PANOPTIC_FOLDER
    if panoptic.IMAGES:
        spec = (panoptic.IMAGES, panoptic.PANOPTIC, panoptic.JSON, panoptic.SEMANTIC)
        _register_once("DATASETS.PANOPTIC_FOLDER", panoptic.NAME, spec, lambda: _register_panoptic_folder(cfg))


def _register_once(key, name, spec, register) -> None:
    if not name:
        raise ValueError(f"{key}.NAME is empty: the dataset needs a name to be used in DATASETS.TRAIN/TEST")
    if _REGISTERED.get(name) == spec:
        return
    if name not in _REGISTERED and name in DatasetCatalog.list():
        raise ValueError(f"{key}.NAME {name!r} is already a registered dataset; choose another name")
    register()
    _REGISTERED[name] = spec


def find_label_dir(path) -> str:
    """The pseudo-label folder (holding meta.json) at ``path`` or, uniquely, two levels below it
    (``<generator --output>/<model type>/<settings>``)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"DATASETS.SAM_IMAGES.LABEL_DIR {path}: no such folder")
    if (root / META_FILE).is_file():
        return str(root)
    found = sorted(p.parent for p in root.glob(f"*/*/{META_FILE}"))
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise FileNotFoundError(
            f"DATASETS.SAM_IMAGES.LABEL_DIR {path}: no {META_FILE} in it nor in <model>/<settings> below it; "
            "give the --output folder of tools/generate_sam_pseudolabels.py")
    raise ValueError(f"DATASETS.SAM_IMAGES.LABEL_DIR {path} holds {len(found)} pseudo-label folders "
                     f"({', '.join(str(p) for p in found)}); name the one to train on")


def _register_sam_images(sam) -> None:
    if not Path(sam.IMAGES).exists():
        raise FileNotFoundError(f"DATASETS.SAM_IMAGES.IMAGES {sam.IMAGES}: no such folder or list file")
    if not sam.LABEL_DIR:
        raise ValueError("DATASETS.SAM_IMAGES.IMAGES is set but DATASETS.SAM_IMAGES.LABEL_DIR is empty: "
                         "name the --output folder of tools/generate_sam_pseudolabels.py")
    register_sam_dataset(sam.NAME, sam.IMAGES, find_label_dir(sam.LABEL_DIR))


def _register_semantic_folder(cfg) -> None:
    folder = cfg.DATASETS.SEMANTIC_FOLDER
    for key in ("IMAGES", "LABELS"):
        if not Path(folder[key]).is_dir():
            raise FileNotFoundError(f"DATASETS.SEMANTIC_FOLDER.{key} {folder[key]!r}: no such folder")
    classes, colors, prompt_file = _folder_classes(cfg)
    if len(classes) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise ValueError(f"DATASETS.SEMANTIC_FOLDER has {len(classes)} classes but the model has "
                         f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}")
    register_semantic_dataset(folder.NAME, folder.IMAGES, folder.LABELS, classes, folder.IGNORE_VALUE,
                              colors=colors, image_ext=folder.IMAGE_EXT, label_ext=folder.LABEL_EXT,
                              prompt_file=prompt_file)


def _folder_classes(cfg):
    """(class names, colours or None, synonym file or None) of the semantic folder."""
    folder = cfg.DATASETS.SEMANTIC_FOLDER
    if folder.CLASSES:
        return list(folder.CLASSES), None, None
    if not cfg.DATASETS.TRAIN or cfg.DATASETS.TRAIN[0] == folder.NAME:
        raise ValueError("DATASETS.SEMANTIC_FOLDER.CLASSES is empty and DATASETS.TRAIN names no other dataset "
                         "to take the classes from: list the classes (label value i = CLASSES[i])")
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    names = metadata.get("stuff_classes", None)
    if not names:
        raise ValueError(f"DATASETS.SEMANTIC_FOLDER.CLASSES is empty and DATASETS.TRAIN[0] "
                         f"{cfg.DATASETS.TRAIN[0]!r} has no stuff_classes to take them from")
    return list(names), metadata.get("stuff_colors", None), metadata.get("prompt_file", None)


def _register_panoptic_folder(cfg) -> None:
    folder = cfg.DATASETS.PANOPTIC_FOLDER
    for key in ("IMAGES", "PANOPTIC") + (("SEMANTIC",) if folder.SEMANTIC else ()):
        if not Path(folder[key]).is_dir():
            raise FileNotFoundError(f"DATASETS.PANOPTIC_FOLDER.{key} {folder[key]!r}: no such folder")
    if not folder.JSON:
        raise ValueError("DATASETS.PANOPTIC_FOLDER.IMAGES is set but DATASETS.PANOPTIC_FOLDER.JSON is empty")
    categories = read_json(folder.JSON).get("categories")
    if not categories:
        raise ValueError(f"DATASETS.PANOPTIC_FOLDER.JSON {folder.JSON}: no 'categories' list; not a panoptic json")
    if len(categories) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
        raise ValueError(f"DATASETS.PANOPTIC_FOLDER.JSON {folder.JSON} has {len(categories)} categories but the "
                         f"model has MODEL.SEM_SEG_HEAD.NUM_CLASSES {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}")
    _warn_if_names_differ(cfg, [c["name"] for c in categories])
    paths = {"image_root": folder.IMAGES, "panoptic_root": folder.PANOPTIC, "panoptic_json": folder.JSON}
    if folder.SEMANTIC:
        paths["sem_seg_root"] = folder.SEMANTIC
    # Categories without a colour (it is optional in the json) get the fixed per-index fallback.
    fallback = semantic_categories([c["name"] for c in categories])
    categories = [dict(c, color=c.get("color") or f["color"]) for c, f in zip(categories, fallback)]
    register_panoptic_dataset(folder.NAME, build_panoptic_metadata(categories), paths)


def _warn_if_names_differ(cfg, names) -> None:
    """Class i of the json is scored as the model's class i: say so when their names differ."""
    if not cfg.DATASETS.TRAIN:
        return
    model_names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("stuff_classes", None)
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, model_names or names)) if a != b]
    if differ:
        logger.warning("DATASETS.PANOPTIC_FOLDER.JSON %s: %d categories are named unlike the model's classes "
                       "(%s), e.g. category %d %r vs %r; they are scored by position", cfg.DATASETS.PANOPTIC_FOLDER.JSON,
                       len(differ), cfg.DATASETS.TRAIN[0], *differ[0])
