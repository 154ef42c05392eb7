"""Pure-PyTorch multi-scale deformable attention and Mask2Former's pixel decoder."""
from .ms_deform_attn import MSDeformAttn, ms_deform_attn_sample
from .pixel_decoder import MSDeformAttnPixelDecoder

__all__ = ["MSDeformAttn", "ms_deform_attn_sample", "MSDeformAttnPixelDecoder"]
