"""A tiny SAM with random weights, built from ``segment_anything.modeling`` parts.

It has the structure of the real models (windowed + global ViT blocks with relative positions,
prompt encoder, two-way-transformer mask decoder with 3 multimask outputs and an IoU head), so
it runs the real ``SamAutomaticMaskGenerator`` code path end to end, but with ~0.1M parameters
and 128-px inputs it runs in well under a second per image on one CPU core. Tests and the CPU
benchmark use it as model type ``"dearli_tiny"``; it makes no meaningful masks (random weights
give low predicted IoU and stability, so tests lower the thresholds).
"""
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

TINY_MODEL_TYPE = "dearli_tiny"
TINY_IMAGE_SIZE = 128  # SAM resizes the longest image side to this (1024 for the real models)
_PATCH_SIZE = 16
_PROMPT_DIM = 32
# Same ImageNet statistics as segment_anything's builders (pixel values 0..255).
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]


def _tiny_image_encoder():
    return ImageEncoderViT(
        img_size=TINY_IMAGE_SIZE,
        patch_size=_PATCH_SIZE,
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        out_chans=_PROMPT_DIM,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=4,
        global_attn_indexes=(1,),  # block 0 windowed, block 1 global, as in the real encoders
    )


def _tiny_mask_decoder():
    return MaskDecoder(
        transformer_dim=_PROMPT_DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=_PROMPT_DIM, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )


def build_tiny_sam(seed=0):
    """A randomly initialised tiny ``Sam`` in eval mode; the same ``seed`` gives the same weights.

    The global torch RNG is left untouched (initialisation runs in a forked RNG state).
    """
    embedding_size = TINY_IMAGE_SIZE // _PATCH_SIZE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=_tiny_image_encoder(),
            prompt_encoder=PromptEncoder(
                embed_dim=_PROMPT_DIM,
                image_embedding_size=(embedding_size, embedding_size),
                input_image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
                mask_in_chans=4,
            ),
            mask_decoder=_tiny_mask_decoder(),
            pixel_mean=_PIXEL_MEAN,
            pixel_std=_PIXEL_STD,
        )
    return sam.eval()
