"""Registers dearli's standard dataset names at import (cheap: paths only, loaders are lazy).

Roots:
- datasets: ``$DETECTRON2_DATASETS`` (default ``datasets``), as for Detectron2's own datasets;
- split lists: ``DATASETS.SPLITS_ROOT`` in the config, else ``$DEARLI_SPLITS``, else
  ``$DETECTRON2_DATASETS/splits``. At import the environment decides; every place that loads
  datasets named by a config (the train loader, the model, the test loader and evaluators, the
  predictor, the tools) first calls ``from_config.register_config_datasets``, which calls
  :func:`register_split_datasets_from_cfg`: it re-registers the split names under the config's
  ``DATASETS.SPLITS_ROOT`` when it is set;
- CamVid: ``$DEARLI_CAMVID``, else ``$DETECTRON2_DATASETS/camvid``.

No file is opened here; a missing dataset fails when it is first loaded, with the path and the
preparation step in the message.
"""
import os

from .ade20k import register_ade20k_panoptic, register_ade20k_splits
from .coco import register_coco_objects, register_coco_panoptic, register_coco_splits
from .semantic import camvid_root, register_camvid


def get_datasets_root():
    """``$DETECTRON2_DATASETS`` (default ``datasets``), user-expanded."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def default_splits_root(datasets_root=None):
    """``$DEARLI_SPLITS``, else ``<datasets root>/splits``."""
    return os.environ.get("DEARLI_SPLITS") or os.path.join(
        datasets_root or get_datasets_root(), "splits")


def splits_root_from_cfg(cfg):
    """``cfg.DATASETS.SPLITS_ROOT`` when set, else :func:`default_splits_root`."""
    return os.path.expanduser(cfg.DATASETS.SPLITS_ROOT) or default_splits_root()


def register_split_datasets(splits_root=None, datasets_root=None):
    """(Re-)register every ``*_labeled`` / ``*_unlabeled`` split name, reading lists from
    ``splits_root`` (default :func:`default_splits_root`) when a split is loaded."""
    datasets_root = datasets_root or get_datasets_root()
    splits_root = splits_root or default_splits_root(datasets_root)
    register_ade20k_splits(datasets_root, splits_root)
    register_coco_splits(datasets_root, splits_root)


def register_split_datasets_from_cfg(cfg):
    """Re-register the split names for the config's ``DATASETS.SPLITS_ROOT`` (no-op when empty:
    the names registered at import already read the environment's root)."""
    if cfg.DATASETS.SPLITS_ROOT:
        register_split_datasets(splits_root_from_cfg(cfg))


def register_builtin_datasets(datasets_root=None, splits_root=None, cache_root=None):
    """Register all of dearli's standard names under ``datasets_root`` (default: environment)."""
    datasets_root = datasets_root or get_datasets_root()
    register_ade20k_panoptic(datasets_root)
    register_coco_panoptic(datasets_root)
    register_coco_objects(datasets_root)
    register_split_datasets(splits_root, datasets_root)
    register_camvid(camvid_root(datasets_root), cache_root)


register_builtin_datasets()
