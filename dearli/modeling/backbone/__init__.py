"""Backbones: the OpenCLIP ConvNeXt backbone (registers ``OpenCLIPBackbone`` in BACKBONE_REGISTRY)."""
from .open_clip_backbone import OpenCLIPBackbone  # noqa: F401
