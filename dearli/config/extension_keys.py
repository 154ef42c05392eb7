"""Config keys of the optional extensions (``../shared/design/extensions.md``): SAM-guided
pseudo-label refinement (SemiRES), class definitions and dense CLIP guidance (SemiVL), image-level
tags (DecoupledNet). Every extension is off by default, so the paper configs train the reference
method unchanged. Each extension declares its keys in its own function below, with a comment per key.
"""
from detectron2.config import CfgNode as CN


def add_extension_config(cfg):
    """Add the extensions' keys (all disabled by default) to ``cfg``; called by ``add_dearli_config``."""
    _add_sam_refine_config(cfg)
    _add_sam_refine_data_config(cfg)
    _add_image_tags_config(cfg)
    _add_class_definitions_config(cfg)
    _add_dense_guidance_config(cfg)
    return cfg


def _add_sam_refine_config(cfg):
    """SemiRES's SAM-guided refinement of the teacher's pseudo-labels (extensions.md §2.3); read by
    ``dearli.engine.sam_settings.SamRefineSettings.from_config``. Needs cfg.SSL (added before)."""
    cfg.SSL.SAM_REFINE = CN()
    # Refine each unlabeled image's pseudo-label with its cached SAM masks, before CutMix.
    cfg.SSL.SAM_REFINE.ENABLED = False
    # Candidate choice per segment: "iom" (best-IoU SAM mask), "cpi" (union of SAM parts / guarded
    # supersets) or "best" (of the two, the one closer in IoU to the teacher mask).
    cfg.SSL.SAM_REFINE.MODE = "best"
    # IOM accepts the best SAM mask only if its IoU with the teacher mask is strictly above this.
    cfg.SSL.SAM_REFINE.IOM_IOU = 0.5
    # CPI: a SAM mask is a part of a segment if more than this share of it lies in the segment
    # (and a superset candidate if it covers more than this share of the segment).
    cfg.SSL.SAM_REFINE.CPI_COVER = 0.7
    # CPI superset guard: the SAM mask may be at most this many times the segment's area (inf: off).
    cfg.SSL.SAM_REFINE.CPI_MAX_GROWTH = 2.0
    # CPI superset guard: at most this share of the SAM mask may lie in other segments (1: off).
    cfg.SSL.SAM_REFINE.CPI_MAX_SPILL = 0.2
    # Refine stuff segments too (off: SAM parts of stuff regions tend to shrink them).
    cfg.SSL.SAM_REFINE.APPLY_TO_STUFF = False
    # A pixel claimed by a refined segment's SAM region goes to a refined segment even if an
    # unrefined segment's teacher mask held it (False: all regions rank equally, teacher first).
    cfg.SSL.SAM_REFINE.REFINED_FIRST = True
    # Pre-filter: drop SAM masks smaller than this share of the valid (unpadded) crop ...
    cfg.SSL.SAM_REFINE.MIN_AREA_FRAC = 5e-4
    # ... and larger than this share (whole-image masks).
    cfg.SSL.SAM_REFINE.MAX_AREA_FRAC = 0.9
    # Stride of the SAM masks the unlabeled mapper emits; matching runs at that resolution.
    cfg.SSL.SAM_REFINE.MATCH_STRIDE = 4
    # An unlabeled image without cached SAM masks: "error" (names image and cache) or "skip"
    # (train on its unrefined pseudo-label; skips are counted and logged).
    cfg.SSL.SAM_REFINE.MISSING_MASKS = "error"
    cfg.SSL.SAM_REFINE.PWA = CN()
    # Pixel-wise adjustment: weight the mask losses of unmatched segments per pixel by
    # OFFSET - N(P; MU, VAR), N the normal density and P the teacher's mask probability.
    cfg.SSL.SAM_REFINE.PWA.ENABLED = False
    # Mean of the Gaussian (the least trusted probability).
    cfg.SSL.SAM_REFINE.PWA.MU = 0.5
    # Variance of the Gaussian (SemiRES's code calls it "sigma").
    cfg.SSL.SAM_REFINE.PWA.VAR = 0.1
    # Offset the density is subtracted from: w(0.5) = 1.3 - 1.2616 = 0.0384 with the defaults.
    cfg.SSL.SAM_REFINE.PWA.OFFSET = 1.3


def _add_image_tags_config(cfg):
    """Image-level tags of the unlabeled images (DecoupledNet, extensions.md §4; README "Image-level
    tags (DecoupledNet)"): a tag-constrained teacher and a multi-label tag loss on the student."""
    cfg.SSL.IMAGE_TAGS = CN()
    # Use image tags on the unlabeled images (needs SSL.ENABLED). Off: no tag is read, the mapper's
    # samples, the teacher's pseudo-labels and the losses are those of the reference method.
    cfg.SSL.IMAGE_TAGS.ENABLED = False
    # User tag file (JSON {file_name: [class names]} or text lines "file_name<TAB or :>class, class").
    # Empty = the tags that a "*_unlabeled_tagged" dataset derives from its ground truth.
    cfg.SSL.IMAGE_TAGS.FILE = ""
    # Fraction of the tagged unlabeled images that keep their tags (a seeded subset, the same in
    # every run with the same SUBSET_SEED); the others train as plain unlabeled images.
    cfg.SSL.IMAGE_TAGS.FRACTION = 1.0
    # Seed of that subset (fixed like a split list, independent of SEED).
    cfg.SSL.IMAGE_TAGS.SUBSET_SEED = 0
    # Derived tags only: a class is a tag when it covers >= max(1 pixel, MIN_AREA_FRACTION x image).
    cfg.SSL.IMAGE_TAGS.MIN_AREA_FRACTION = 0.0
    # Teacher on tagged images: "restrict" (each query's class distribution limited to
    # tags + void and renormalised before panoptic inference), "drop" (inference unchanged, then
    # segments of untagged classes removed) or "none".
    cfg.SSL.IMAGE_TAGS.TEACHER_MODE = "restrict"
    # Weight of the student's multi-label tag loss loss_tag (BCE on max-over-queries class
    # probabilities); 0 = no tag loss.
    cfg.SSL.IMAGE_TAGS.LOSS_WEIGHT = 1.0


def _add_class_definitions_config(cfg):
    """SemiVL's class definitions (extensions.md §3.4a); read by
    ``dearli.modeling.class_definitions.class_text_from_config``. Needs cfg.MODEL.CLIP_HEAD."""
    # A definitions file in dearli/data/definitions (ade20k_150, coco_panoptic, camvid, shapes) or a
    # .txt path: per class a list of concepts appended to its synonyms. Empty = off (the reference
    # classifier). Needs CLASS_EMBEDDING "text".
    cfg.MODEL.CLIP_HEAD.CLASS_DEFINITIONS = ""
    # Reduction over a class's synonym/concept rows: "max" (the reference's max over synonyms) or
    # "mean" (SemiVL's conceptavg: one row per class, the normalised mean of its rows).
    cfg.MODEL.CLIP_HEAD.CONCEPT_AGGREGATION = "max"
    # Void concepts of the definitions file's "void:" line: the void logit becomes
    # max(learned void logit, s * max_k cos(embedding, void concept k)). Off by default.
    cfg.MODEL.CLIP_HEAD.VOID_CONCEPTS = False


def _add_dense_guidance_config(cfg):
    """SemiVL's dense CLIP guidance (extensions.md §3.4b): a per-pixel loss on the unlabeled images
    against the zero-shot labels of the teacher's own dense CLIP features; read by
    ``dearli.modeling.dense_guidance.DenseCLIPGuidance.from_config``. Needs cfg.SSL."""
    cfg.SSL.DENSE_CLIP_GUIDANCE = CN()
    # Off by default (and ignored with SSL.ENABLED off): nothing is computed, the reference's losses.
    cfg.SSL.DENSE_CLIP_GUIDANCE.ENABLED = False
    # Pixels whose CLIP softmax maximum (over the C classes) is below this are ignored (SemiVL: 0.9).
    cfg.SSL.DENSE_CLIP_GUIDANCE.THRESHOLD = 0.9
    # Loss weight lambda0 at iteration 0 (extensions.md suggests 0.1 or 0.2; ablate it).
    cfg.SSL.DENSE_CLIP_GUIDANCE.WEIGHT = 0.1
    # True: lambda(t) = WEIGHT * (1 - t / SOLVER.MAX_ITER) (SemiVL's linear decay); False: constant.
    cfg.SSL.DENSE_CLIP_GUIDANCE.DECAY = True


def _add_sam_refine_data_config(cfg):
    """Where the SAM-guided refinement (SSL.SAM_REFINE, see _add_sam_refine_config) finds the
    unlabeled images' SAM masks (read by ``dearli.data.sam_masks.refine_mask_cache``)."""
    # SAM label folder (the one holding meta.json, written by tools/generate_sam_pseudolabels.py)
    # with the masks of the DATASETS.TRAIN_UNLABELED images. Empty = SAM.LABEL_DIR (one cache serves
    # the warm-up and the refinement), else the folder each dataset dict names (sam_label_dir).
    cfg.SSL.SAM_REFINE.LABEL_DIR = ""
    # The unlabeled mapper also emits each view's SAM masks at the crop's full resolution
    # (bit-packed, K/8 bytes per pixel), and the refinement pastes the chosen ones from them instead
    # of upsampling the MATCH_STRIDE masks (blocky edges: ~0.1 IoU on the toy benchmark).
    cfg.SSL.SAM_REFINE.PASTE_FULL_RESOLUTION = True
