"""The DEARLi model: registered backbone, head and meta-architecture, plus their building blocks.

Importing this package registers ``OpenCLIPBackbone`` (BACKBONE_REGISTRY),
``CLIPClassificationHead`` (SEM_SEG_HEADS_REGISTRY) and ``DEARLi`` (META_ARCH_REGISTRY).
"""
from .backbone import OpenCLIPBackbone  # noqa: F401
from .pixel_decoder import MSDeformAttn, MSDeformAttnPixelDecoder  # noqa: F401
from .transformer_decoder import MaskedAttentionDecoder  # noqa: F401
from .clip_head import CLIPClassificationHead  # noqa: F401
from .inference import panoptic_inference, semantic_inference  # noqa: F401
from .meta_arch import DEARLi  # noqa: F401
from .checkpoint import DEARLiCheckpointer  # noqa: F401
