"""Registry of dataset mappers, filled by importing :mod:`dearli.data.mappers`.

Each entry is a function ``(cfg, is_train) -> mapper``; a mapper turns one dataset dict into one
model input, called as ``mapper(dataset_dict, rng)`` with the loader's ``numpy.random.Generator``:

- ``labeled_panoptic`` and ``sam_pseudo_label`` map the labeled stream; INPUT.DATASET_MAPPER_NAME
  picks one (:func:`build_mapper`);
- ``unlabeled_weak_strong`` maps the unlabeled stream; the loader picks it when SSL.ENABLED.
"""
from detectron2.utils.registry import Registry

MAPPER_REGISTRY = Registry("DEARLI_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers of dearli: (cfg, is_train) -> mapper(dataset_dict, rng)."


def build_mapper(cfg, is_train=True):
    """The mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``, with a clear error for unknown names."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in MAPPER_REGISTRY:
        known = ", ".join(sorted(k for k, _ in MAPPER_REGISTRY))
        raise KeyError(f"INPUT.DATASET_MAPPER_NAME={name!r} is not a registered dataset mapper; known: {known}")
    return MAPPER_REGISTRY.get(name)(cfg, is_train)
