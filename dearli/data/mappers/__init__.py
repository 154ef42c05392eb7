"""Training dataset mappers (registered in ``dearli.data.registry.MAPPER_REGISTRY`` on import).

- ``labeled_panoptic``: :class:`LabeledPanopticMapper` (labeled panoptic crops with Instances targets).
- ``unlabeled_weak_strong``: :class:`UnlabeledWeakStrongMapper` (teacher/student views + CutMix).

Both are called as ``mapper(dataset_dict, rng)`` with a ``numpy.random.Generator`` from the loader.
"""
from .labeled import LabeledPanopticMapper
from .unlabeled import UnlabeledWeakStrongMapper

__all__ = ["LabeledPanopticMapper", "UnlabeledWeakStrongMapper"]
