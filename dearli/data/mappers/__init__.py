"""Training dataset mappers (registered in ``dearli.data.registry.MAPPER_REGISTRY`` on import).

- ``labeled_panoptic``: :class:`LabeledPanopticMapper` (labeled panoptic crops with Instances targets).
- ``sam_pseudo_label``: :class:`SamPseudoLabelMapper` (SAM warm-up crops with class-agnostic masks).
- ``unlabeled_weak_strong``: :class:`UnlabeledWeakStrongMapper` (teacher/student views + CutMix).

All are called as ``mapper(dataset_dict, rng)`` with a ``numpy.random.Generator`` from the loader.
"""
from .labeled import LabeledPanopticMapper
from .sam_mapper import SamPseudoLabelMapper
from .unlabeled import UnlabeledWeakStrongMapper

__all__ = ["LabeledPanopticMapper", "SamPseudoLabelMapper", "UnlabeledWeakStrongMapper"]
