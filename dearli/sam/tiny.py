"""The tiny SAM (model type ``dearli_tiny``), built from ``segment_anything.modeling`` parts.

It has the structure of the real models (windowed + global ViT blocks with relative positions,
prompt encoder, two-way-transformer mask decoder with 3 multimask outputs and an IoU head), at
~0.4M parameters and 128-px inputs, so the real ``SamAutomaticMaskGenerator`` runs end to end on
one CPU core. Its patch size is 8 (16 for the real models): the synthetic scenes it is trained on
(``tools/pretrain_tiny_sam.py``) are 96 px with shapes ~10 px across, and a 16x16 embedding grid
keeps their masks resolvable. The position encoding of points and image is SAM's own (random
Fourier features, scale 1). Built without a checkpoint the weights are random and the masks
noise; the weights trained here ship as ``dearli/weights/dearli_tiny_sam_shapes.safetensors``.
"""
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

TINY_MODEL_TYPE = "dearli_tiny"
TINY_IMAGE_SIZE = 128  # SAM resizes the longest image side to this (1024 for the real models)
_PATCH_SIZE = 8
_ENCODER_DIM = 64
_PROMPT_DIM = 48  # image-embedding channels = prompt / mask-decoder width
# Same ImageNet statistics as segment_anything's builders (pixel values 0..255).
_PIXEL_MEAN = [123.675, 116.28, 103.53]
_PIXEL_STD = [58.395, 57.12, 57.375]


def _tiny_image_encoder():
    return ImageEncoderViT(
        img_size=TINY_IMAGE_SIZE,
        patch_size=_PATCH_SIZE,
        embed_dim=_ENCODER_DIM,
        depth=4,
        num_heads=4,
        mlp_ratio=3.0,
        out_chans=_PROMPT_DIM,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=8,
        global_attn_indexes=(1, 3),  # windowed and global blocks alternate, as in the real encoders
    )


def _tiny_mask_decoder():
    return MaskDecoder(
        transformer_dim=_PROMPT_DIM,
        transformer=TwoWayTransformer(depth=2, embedding_dim=_PROMPT_DIM, mlp_dim=4 * _PROMPT_DIM, num_heads=4),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=64,
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
                mask_in_chans=8,
            ),
            mask_decoder=_tiny_mask_decoder(),
            pixel_mean=_PIXEL_MEAN,
            pixel_std=_PIXEL_STD,
        )
    return sam.eval()
