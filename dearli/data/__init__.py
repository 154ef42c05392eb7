"""Everything between files on disk and the model.

Importing this package registers the builtin datasets (ADE20K, COCO panoptic, COCO-objects, CamVid,
the synthetic ``dearli_shapes_*`` set, the SAM warm-up image sets; registration reads no files) and the training dataset
mappers of ``MAPPER_REGISTRY``.
"""
from . import datasets  # noqa: F401  (ADE20K / COCO / COCO-objects / CamVid registrations)
from .datasets import shapes  # noqa: F401  (dearli_shapes_* synthetic panoptic set)
from . import mappers  # noqa: F401  (labeled_panoptic, sam_pseudo_label, unlabeled_weak_strong)
from .datasets import sam_images  # noqa: F401  (ade20k_sam_train, coco_sam_train, oracle set)
from .registry import MAPPER_REGISTRY, build_mapper  # noqa: F401
