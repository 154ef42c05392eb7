"""SAM automatic-mask pseudo-labels for the class-agnostic warm-up (the "Li" of DEARLi).

Writes the on-disk format defined in :mod:`dearli.data.sam_format`.
"""
from .generator import GeneratorSettings, SamCheckpointError, SamMaskGenerator, build_sam  # noqa: F401
from .tiny import build_tiny_sam  # noqa: F401
