"""Registry of dataset mappers: a config selects one by ``INPUT.DATASET_MAPPER_NAME``.

Each registered object is a class whose constructor is ``@configurable`` (so it can be built as
``MAPPER_REGISTRY.get(name)(cfg, is_train=True)``) and whose instances map one dataset dict to one
model input.
"""
from detectron2.utils.registry import Registry

MAPPER_REGISTRY = Registry("DEARLI_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers of dearli, selected by INPUT.DATASET_MAPPER_NAME."


def build_mapper(cfg, is_train=True):
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, with a clear error for unknown names."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPER_REGISTRY:
        known = ", ".join(sorted(k for k, _ in MAPPER_REGISTRY))
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered dataset mapper; known: {known}")
    return MAPPER_REGISTRY.get(name)(cfg, is_train)
