"""Dataset registrations (ADE20K / COCO panoptic, COCO-objects, semantic-only, SSL splits).

Importing this package registers the standard names (see :mod:`.builtin`); nothing is read from
disk until a dataset is loaded through ``DatasetCatalog.get``.
"""
from . import builtin  # noqa: F401  (registers the standard names)
from .builtin import (  # noqa: F401
    default_splits_root,
    get_datasets_root,
    register_builtin_datasets,
    register_split_datasets,
    register_split_datasets_from_cfg,
    splits_root_from_cfg,
)
from .panoptic import load_panoptic_json, register_panoptic_dataset  # noqa: F401
from .semantic import register_semantic_dataset  # noqa: F401
