"""Every config key of the method, declared once with a comment; :func:`add_dearli_config` adds
them (and the optional extensions' keys of :mod:`.extension_keys`) to Detectron2's defaults.

Keys follow Mask2Former's names where a Mask2Former user would look for them
(``MODEL.MASK_FORMER.*``, ``MODEL.SEM_SEG_HEAD.*``); dearli's own keys live under
``MODEL.OPEN_CLIP``, ``MODEL.CLIP_HEAD``, ``MODEL.TEACHER``, ``INPUT.UNLABELED``, ``SSL`` and ``SAM``.
"""
from detectron2.config import CfgNode as CN

from .extension_keys import add_extension_config


def add_dearli_config(cfg):
    """Add dearli's keys (with their defaults: the reference implementation's values) to ``cfg``."""
    _add_backbone_config(cfg)
    _add_head_config(cfg)
    _add_clip_head_config(cfg)
    _add_input_config(cfg)
    _add_ssl_config(cfg)
    _add_solver_config(cfg)
    _add_sam_config(cfg)
    _add_test_config(cfg)
    add_extension_config(cfg)


def _add_backbone_config(cfg):
    # The registered meta-architecture and backbone (META_ARCH_REGISTRY, BACKBONE_REGISTRY).
    cfg.MODEL.META_ARCHITECTURE = "DEARLi"
    cfg.MODEL.BACKBONE.NAME = "OpenCLIPBackbone"
    # CLIP input statistics (x255), RGB order; CLIP models expect RGB input.
    cfg.MODEL.PIXEL_MEAN = [122.7709383, 116.7460125, 104.09373615]
    cfg.MODEL.PIXEL_STD = [68.5005327, 66.6321579, 70.32316305]
    cfg.INPUT.FORMAT = "RGB"

    cfg.MODEL.OPEN_CLIP = CN()
    # OpenCLIP model name: convnext_base_w_320 (paper), convnext_large_d_320, or one of the tiny
    # test models shipped in dearli/modeling/backbone/model_configs (e.g. dearli_convnext_tiny_test).
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "convnext_base_w_320"
    # Pretrained CLIP weights: an OpenCLIP tag (needs internet on first use) or a local file path
    # (.bin/.pt/.safetensors of open_clip's state dict). Empty = random init (tests, CPU demo).
    # Applied before MODEL.WEIGHTS.
    cfg.MODEL.OPEN_CLIP.PRETRAINED = "laion_aesthetic_s13b_b82k_augreg"
    # Freeze CLIP (requires_grad False, eval mode, no autograd graph). True in every paper config;
    # False only where no pretrained CLIP exists (the CPU demo), so the features can be learned.
    cfg.MODEL.OPEN_CLIP.FREEZE = True
    # Backbone features given to the pixel decoder.
    cfg.MODEL.OPEN_CLIP.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Unpickle arbitrary objects from weight files (MODEL.WEIGHTS, MODEL.TEACHER.WEIGHTS, resume):
    # needed only for Detectron2/Caffe2 model-zoo .pkl files. A pickle can run any code when it is
    # read, so this is off and every weight file is read with torch.load(weights_only=True)
    # (tensors, numbers, strings and containers only); turn it on only for files you trust.
    cfg.MODEL.ALLOW_UNSAFE_PICKLE = False
    # Store the ConvNeXt trunk's weights channels-last (NHWC convolutions on GPU; features handed
    # on stay NCHW). A GPU speed option, used in training, inference and tools/benchmark.py.
    cfg.MODEL.OPEN_CLIP.CHANNELS_LAST = False
    # torch.compile the pixel decoder and the transformer decoder (student and teacher) with
    # BACKEND ("inductor" on GPU; "aot_eager" checks tracing without code generation). The
    # criterion traces without graph breaks but is not compiled: its per-batch target counts and
    # seeds would recompile it every step.
    cfg.MODEL.COMPILE = CN()
    cfg.MODEL.COMPILE.ENABLED = False
    cfg.MODEL.COMPILE.BACKEND = "inductor"


def _add_head_config(cfg):
    # The registered head (SEM_SEG_HEADS_REGISTRY): pixel decoder + transformer decoder + CLIP classifier.
    cfg.MODEL.SEM_SEG_HEAD.NAME = "CLIPClassificationHead"
    # Number of dataset classes (things + stuff, without void); must match the train metadata.
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 150
    # Backbone features read by the pixel decoder; label value ignored in semantic targets.
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    # Pixel decoder width, mask feature width, normalisation and output stride.
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    # Deformable-attention encoder of the pixel decoder: features, depth, heads, points, FFN width.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_N_HEADS = 8
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD = 1024  # hard-coded 1024 in the reference
    # Recompute encoder layers in backward instead of storing sampling activations (GPU memory).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT = False
    # Under AMP the pixel decoder follows the autocast dtype except the deformable sampling itself
    # (always float32); True runs all of it in float32, as the reference does.
    cfg.MODEL.SEM_SEG_HEAD.FP32_PIXEL_DECODER = False

    cfg.MODEL.MASK_FORMER = CN()
    # Transformer decoder: DEC_LAYERS prediction sets = 1 (initial queries) + DEC_LAYERS-1 layers.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    # Queries, width, attention heads, FFN width, dropout, post-norm (PRE_NORM False), and whether
    # to add 1x1 input projections even when the pixel-decoder width equals HIDDEN_DIM.
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 200
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Loss: deep supervision on every prediction set; CE weight of the void class.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Matching-cost and loss weights (CE / point BCE / point Dice). CLASS_WEIGHT 0 = class-agnostic
    # (the SAM warm-up).
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    # Point sampling for matching and mask losses (PointRend importance sampling).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Pad batched images to a multiple of this (the backbone declares none).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Optional per-segment confidence weighting of the pseudo-label loss. The reference computes
    # confidences but never uses them; off by default for parity. "none" | "segment_score".
    cfg.MODEL.MASK_FORMER.PSEUDO_CONFIDENCE_WEIGHTING = "none"
    # Ignore padded pixels in point sampling (the reference treats them as negatives; see README).
    cfg.MODEL.MASK_FORMER.IGNORE_PADDING = False

    cfg.MODEL.MASK_FORMER.TEST = CN()
    # Which outputs evaluation produces: "panoptic_seg" (PQ) and "sem_seg" (mIoU).
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    # Keep a query if not void and its score exceeds this (0.0 in every reference config).
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    # Drop a segment whose visible part is below this fraction of its full mask.
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8
    # Largest original image (height x width pixels) post-processed at its original size, the
    # reference's order (all Q mask logits upsampled first: Q x H x W floats). Larger images are
    # post-processed at the test resolution and only the final panoptic / semantic maps are
    # resized, so memory stays bounded (an 8000x6000 photo). The default covers ADE20K, COCO,
    # CamVid and Cityscapes (2048x1024) frames; 0 = always at the test resolution.
    cfg.MODEL.MASK_FORMER.TEST.POSTPROCESS_MAX_PIXELS = 2_100_000


def _add_clip_head_config(cfg):
    cfg.MODEL.CLIP_HEAD = CN()
    # Joint CLIP embedding size (640 for convnext_base_w_320, 768 for convnext_large_d_320).
    cfg.MODEL.CLIP_HEAD.EMBED_DIM = 640
    # Prompt templates: "vild" (the 14 ViLD templates of the reference) or "single" ("a photo of a {}.").
    cfg.MODEL.CLIP_HEAD.PROMPT_TEMPLATES = "vild"
    # Class-name synonym file in dearli/data/prompts (ade20k_150, coco_panoptic, coco_objects, sa1b),
    # mapped to classes by dataset category id. Empty = take the metadata's `class_synonyms`.
    cfg.MODEL.CLIP_HEAD.CLASS_SYNONYMS = ""
    # "text": CLIP text embeddings of the prompts (the method). "orthogonal": a fixed, seeded,
    # orthonormal class embedding, for configs without pretrained CLIP (random text towers give
    # badly conditioned embeddings); CPU runs then exercise the machinery, not CLIP recognition.
    cfg.MODEL.CLIP_HEAD.CLASS_EMBEDDING = "text"
    # Decoder logit-scale initial value exp(theta) and clamp (reference: 1/0.07 and 100).
    cfg.MODEL.CLIP_HEAD.LOGIT_SCALE_INIT = 1.0 / 0.07
    cfg.MODEL.CLIP_HEAD.LOGIT_SCALE_MAX = 100.0
    # Prompts encoded per text-tower call when building the classifier.
    cfg.MODEL.CLIP_HEAD.TEXT_BATCH_SIZE = 128
    # On-disk cache of text classifiers; keyed by (model name, weight hash, names, templates).
    # Empty = $DEARLI_CACHE or ~/.cache/dearli/text_classifiers.
    cfg.MODEL.CLIP_HEAD.CACHE_DIR = ""
    # Zero-shot branch: mask-pooled dense CLIP features vs. the same text classifier, combined with
    # the decoder's classifier by p_in^(1-alpha) * p_out^alpha. Used at inference only.
    cfg.MODEL.CLIP_HEAD.ZERO_SHOT_ENABLED = True  # student/test-time inference
    cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA = 0.4


def _add_input_config(cfg):
    # Dataset mapper for training, from dearli's MAPPER_REGISTRY: "labeled_panoptic",
    # "sam_pseudo_label" (warm-up) ...; the semi-supervised unlabeled mapper is chosen by SSL.ENABLED.
    cfg.INPUT.DATASET_MAPPER_NAME = "labeled_panoptic"
    # Resize short side to one of these (choice), cap the long side; then a random crop.
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(range(320, 1281, 64))
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = 2560
    # Test-time ResizeShortestEdge (ADE20K 640/2560, COCO 512/2048); no test-time augmentation.
    cfg.INPUT.MIN_SIZE_TEST = 640
    cfg.INPUT.MAX_SIZE_TEST = 2560
    # Random crop of CROP.SIZE (absolute pixels) after the resize.
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (640, 640)
    # SSD-style photometric augmentation on labeled images.
    cfg.INPUT.COLOR_AUG_SSD = True
    # Pad training crops (right/bottom, with PAD_VALUE) to a multiple of this; with the crop size as
    # value this is the reference's fixed 640/512 canvas, and larger crops still work. -1 = no pad.
    cfg.INPUT.SIZE_DIVISIBILITY = 640
    # Grey padding value of training crops (before normalisation), as in the reference.
    cfg.INPUT.PAD_VALUE = 128

    cfg.INPUT.UNLABELED = CN()
    # Strong view: ColorJitter (always applied), random grayscale, random Gaussian blur.
    cfg.INPUT.UNLABELED.JITTER_BRIGHTNESS = 0.8
    cfg.INPUT.UNLABELED.JITTER_CONTRAST = 0.8
    cfg.INPUT.UNLABELED.JITTER_SATURATION = 0.8
    cfg.INPUT.UNLABELED.JITTER_HUE = 0.2
    cfg.INPUT.UNLABELED.GRAYSCALE_PROB = 0.2
    cfg.INPUT.UNLABELED.BLUR_PROB = 0.5
    cfg.INPUT.UNLABELED.BLUR_SIGMA = (0.1, 2.0)
    # CutMix: probability per unlabeled sample, box area range (fractions of the partner crop), box
    # aspect-ratio range as HEIGHT / WIDTH (the reference's; U(0.3, 1/0.3) makes ~3 in 4 boxes tall).
    cfg.INPUT.UNLABELED.CUTMIX_PROB = 0.5
    cfg.INPUT.UNLABELED.CUTMIX_AREA = (0.02, 0.4)
    cfg.INPUT.UNLABELED.CUTMIX_ASPECT = (0.3, 1.0 / 0.3)

    # Unlabeled datasets (names in DatasetCatalog) for the semi-supervised stage.
    cfg.DATASETS.TRAIN_UNLABELED = ()
    # Unlabeled samples per labeled sample in each batch (1.0 = 8 labeled + 8 unlabeled).
    cfg.DATALOADER.UNLABELED_RATIO = 1.0
    # Root of the semi-supervised split lists (<root>/ade_splits/1_128/labeled.txt ...).
    # Empty = $DEARLI_SPLITS or $DETECTRON2_DATASETS/splits.
    cfg.DATASETS.SPLITS_ROOT = ""
    _add_command_line_datasets(cfg)


def _add_command_line_datasets(cfg):
    # Datasets declared by config keys (so by KEY VALUE pairs on the command line, no Python):
    # registered under their NAME when the trainer is built (dearli/data/datasets/from_config.py).
    # Put the NAME into DATASETS.TRAIN / DATASETS.TEST to use them.
    cfg.DATASETS.SAM_IMAGES = CN()
    # Name of the SAM image set (warm-up training with the "sam_pseudo_label" mapper).
    cfg.DATASETS.SAM_IMAGES.NAME = "sam_images"
    # Image folder or list file: what was given to tools/generate_sam_pseudolabels.py --images.
    # Empty = no such set.
    cfg.DATASETS.SAM_IMAGES.IMAGES = ""
    # The generator's --output folder (its one <model>/<settings> sub-folder is found), or that
    # sub-folder itself (the one holding meta.json).
    cfg.DATASETS.SAM_IMAGES.LABEL_DIR = ""

    cfg.DATASETS.SEMANTIC_FOLDER = CN()
    # Name of a semantic-only folder dataset (images + label PNGs; every class is stuff), for
    # evaluation (mIoU, and PQ with all-stuff ground truth) or training.
    cfg.DATASETS.SEMANTIC_FOLDER.NAME = "semantic_folder"
    # Image folder and label-PNG folder: <IMAGES>/<stem><IMAGE_EXT> for each <LABELS>/<stem><LABEL_EXT>.
    # Empty IMAGES = no such set.
    cfg.DATASETS.SEMANTIC_FOLDER.IMAGES = ""
    cfg.DATASETS.SEMANTIC_FOLDER.LABELS = ""
    cfg.DATASETS.SEMANTIC_FOLDER.IMAGE_EXT = ".jpg"
    cfg.DATASETS.SEMANTIC_FOLDER.LABEL_EXT = ".png"
    # Class names, label value i = CLASSES[i]. Empty = the classes (and colours, synonyms) of the
    # model's dataset DATASETS.TRAIN[0].
    cfg.DATASETS.SEMANTIC_FOLDER.CLASSES = []
    # Label value meaning "ignore" in the label PNGs (mapped to 255).
    cfg.DATASETS.SEMANTIC_FOLDER.IGNORE_VALUE = 255

    cfg.DATASETS.PANOPTIC_FOLDER = CN()
    # Name of a COCO-format panoptic folder dataset (PQ, and mIoU with SEMANTIC), for evaluation or training.
    cfg.DATASETS.PANOPTIC_FOLDER.NAME = "panoptic_folder"
    # Image folder, folder of RGB-encoded panoptic PNGs, and the COCO panoptic json listing them;
    # the json's categories, in its order, must be the model's classes. Empty IMAGES = no such set.
    cfg.DATASETS.PANOPTIC_FOLDER.IMAGES = ""
    cfg.DATASETS.PANOPTIC_FOLDER.PANOPTIC = ""
    cfg.DATASETS.PANOPTIC_FOLDER.JSON = ""
    # Optional folder of semantic PNGs (contiguous class ids, 255 = ignore) named like the panoptic
    # PNGs, for mIoU. Empty = PQ only.
    cfg.DATASETS.PANOPTIC_FOLDER.SEMANTIC = ""


def _add_ssl_config(cfg):
    cfg.SSL = CN()
    # Mean-teacher semi-supervised training on DATASETS.TRAIN_UNLABELED.
    cfg.SSL.ENABLED = False
    # Weight of the pseudo-label set loss (the reference adds it with weight 1, no ramp).
    cfg.SSL.PSEUDO_LOSS_WEIGHT = 1.0

    cfg.MODEL.TEACHER = CN()
    # Separate teacher initialisation (DEARLi: the SAM warm-up checkpoint). Empty = copy of student.
    cfg.MODEL.TEACHER.WEIGHTS = ""
    # EMA decay d in teacher <- d*teacher + (1-d)*student.
    cfg.MODEL.TEACHER.EMA_DECAY = 0.999
    # Ramp d_t = min(1 - 1/(t+1), EMA_DECAY): "auto" = only when TEACHER.WEIGHTS is empty
    # (the reference rule), "on", "off".
    cfg.MODEL.TEACHER.EMA_RAMP = "auto"
    # Zero-shot ensemble when the teacher makes pseudo-labels.
    cfg.MODEL.TEACHER.ZERO_SHOT_ENABLED = True
    # Teacher thresholds; negative = use MODEL.MASK_FORMER.TEST's values (the reference default).
    cfg.MODEL.TEACHER.OBJECT_MASK_THRESHOLD = -1.0
    cfg.MODEL.TEACHER.OVERLAP_THRESHOLD = -1.0
    # Drop pseudo-segments with fewer pixels than this (0 = keep all, the reference behaviour).
    cfg.MODEL.TEACHER.MIN_SEGMENT_AREA = 0
    # Evaluate the teacher too in periodic evaluation (and in --eval-only with --eval-teacher).
    cfg.MODEL.TEACHER.EVALUATE = True
    # Number of pseudo-label / CutMix images written to TensorBoard per logging period.
    cfg.SSL.VIS_IMAGES = 2
    cfg.SSL.VIS_PERIOD = 500
    # Pseudo-label quality at every evaluation: the teacher's pseudo-labels of this many images of
    # DATASETS.TRAIN_UNLABELED[0] (fixed weak-view crops) scored against their withheld ground
    # truth, logged as pseudo_quality/* (engine/pseudo_label_quality.py). 0 = off; needs an
    # unlabeled split whose metadata names its source's panoptic json (shapes, CamVid, COCO, ADE20K).
    cfg.SSL.PSEUDO_QUALITY_IMAGES = 0


def _add_solver_config(cfg):
    # AdamW, LR 1e-4, weight decay 0.05 except on normalisation layers (0).
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    # Weight decay of nn.Embedding weights (queries, level embeddings, void embedding).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # LR multiplier of backbone parameters (only matters when MODEL.OPEN_CLIP.FREEZE is False);
    # 0.1 as in the reference's base configs.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Poly LR: lr = base * (1 - it/max_iter)^POWER, ending at CONSTANT_ENDING.
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # No LR warm-up in the reference.
    cfg.SOLVER.WARMUP_ITERS = 0
    # Full-model gradient-norm clipping at 0.01 (implemented by dearli on unscaled gradients;
    # Detectron2 0.6 only clips per parameter).
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    # Mixed precision on GPU: "bf16" (no grad scaler) or "fp16" (with scaler). CPU always fp32.
    cfg.SOLVER.AMP.ENABLED = False
    cfg.SOLVER.AMP.PRECISION = "bf16"
    # TF32 tensor-core matmuls and convolutions for the float32 parts on CUDA (Ampere and later):
    # ~10 mantissa bits in the products, float32 accumulation. Ignored on CPU.
    cfg.SOLVER.AMP.TF32 = True


def _add_sam_config(cfg):
    cfg.SAM = CN()
    # segment_anything model type (vit_b, vit_l, vit_h) and checkpoint path.
    cfg.SAM.MODEL_TYPE = "vit_h"
    cfg.SAM.CHECKPOINT = ""
    # SamAutomaticMaskGenerator parameters (the paper's values).
    cfg.SAM.POINTS_PER_SIDE = 32
    cfg.SAM.PRED_IOU_THRESH = 0.88
    cfg.SAM.STABILITY_SCORE_THRESH = 0.95
    cfg.SAM.POINTS_PER_BATCH = 256
    # Directory of generated pseudo-labels for the warm-up (see dearli/data/sam_format.py): the
    # folder holding meta.json, e.g. <root>/vit_h/points_per_side_32_pred_iou_thresh_0.88_
    # stability_score_thresh_0.95. Empty = the folder the dataset registration names.
    cfg.SAM.LABEL_DIR = ""
    # Drop SAM masks smaller than this many pixels after augmentation (0 = only empty ones).
    cfg.SAM.MIN_MASK_AREA = 1
    # A corrupt pseudo-label file at training time: "error" (default) or "skip" with a warning.
    cfg.SAM.ON_CORRUPT_FILE = "error"


def _add_test_config(cfg):
    # Evaluate every EVAL_PERIOD iterations (0 = only at the end).
    cfg.TEST.EVAL_PERIOD = 20000
    # Test-time augmentation is not implemented (as in the reference); True raises in evaluation.
    cfg.TEST.AUG.ENABLED = False

