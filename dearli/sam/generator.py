"""SAM automatic masks as class-agnostic pseudo-labels: a thin layer over segment_anything.

- ``build_sam(model_type, checkpoint)``: a ``segment_anything`` model (``vit_b``/``vit_l``/
  ``vit_h``) or the tiny model trained here (``dearli_tiny``), with a checkpoint loaded safely
  (``weights_only`` or safetensors, sha256-checked when it has a manifest: ``dearli.sam.weights``)
  and checked against the model type *before* the big model is built: a checkpoint of another
  type fails with an error that names the file, the mismatching keys and the type it fits.
- ``GeneratorSettings``: the AMG parameters the paper sets (32 points per side, predicted-IoU
  0.88, stability 0.95; everything else at SAM's defaults, as in the reference) plus
  ``points_per_batch`` (memory only: it does not change the masks).
- ``SamMaskGenerator.generate(image)``: one RGB image -> list of annotations in the schema of
  ``dearli.data.sam_format`` (COCO RLE, area, bbox, predicted IoU, stability score, point).

Speed: at 32x32 points SAM decodes 3072 low-res masks per image, and upsampling each of them to
the image size costs more than the image encoder. ``_IoUFirstMaskGenerator`` drops the masks
below the predicted-IoU threshold *before* upsampling (identical output, tested). The remaining
post-processing (stability score, binarisation, boxes, NMS, RLE change points) stays on the
model's device, as in segment_anything; only run lengths go to the host.
"""
import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    calculate_stability_score,
    is_box_near_crop_edge,
    mask_to_rle_pytorch,
    uncrop_masks,
)

from dearli.data.sam_format import settings_dirname
from dearli.utils.hashing import file_sha256  # noqa: F401  (re-exported for tools)

from .tiny import TINY_MODEL_TYPE, build_tiny_sam
from .weights import SamCheckpointError, load_sam_state_dict  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

# Model type -> builder called without arguments (weights are loaded by ``build_sam``).
SAM_BUILDERS = {
    "vit_b": sam_model_registry["vit_b"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_h": sam_model_registry["vit_h"],
    TINY_MODEL_TYPE: build_tiny_sam,
}


@dataclass(frozen=True)
class GeneratorSettings:
    """The ``SamAutomaticMaskGenerator`` parameters dearli exposes (SAM.*; the paper's values are
    the config's defaults)."""

    points_per_side: int
    pred_iou_thresh: float
    stability_score_thresh: float
    points_per_batch: int

    @classmethod
    def from_config(cls, cfg):
        return cls(
            points_per_side=cfg.SAM.POINTS_PER_SIDE,
            pred_iou_thresh=cfg.SAM.PRED_IOU_THRESH,
            stability_score_thresh=cfg.SAM.STABILITY_SCORE_THRESH,
            points_per_batch=cfg.SAM.POINTS_PER_BATCH,
        )

    def label_subdir(self, model_type):
        """Folder (relative to a label root) for masks of ``model_type`` made with these settings."""
        return settings_dirname(model_type, self.points_per_side, self.pred_iou_thresh, self.stability_score_thresh)

    def mask_defining(self):
        """The parameters that determine the masks (recorded in meta.json; batch size excluded)."""
        params = asdict(self)
        del params["points_per_batch"]
        return params


# ----------------------------------------------------------------------------- model + checkpoint
def _builder(model_type):
    if model_type not in SAM_BUILDERS:
        raise KeyError(f"unknown SAM model type {model_type!r}; known: {', '.join(sorted(SAM_BUILDERS))}")
    return SAM_BUILDERS[model_type]


def _expected_shapes(model_type):
    """{key: shape} of a model type's state dict, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = _builder(model_type)()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatches(expected, state_dict):
    """Human-readable differences between expected shapes and a loaded state dict."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[0]})")
    return problems


def check_checkpoint_fits(model_type, state_dict, checkpoint):
    """Raise ``SamCheckpointError`` if ``state_dict`` does not fit ``model_type`` (names the type it fits)."""
    problems = _mismatches(_expected_shapes(model_type), state_dict)
    if not problems:
        return
    fitting = [t for t in SAM_BUILDERS if t != model_type and not _mismatches(_expected_shapes(t), state_dict)]
    hint = f"it fits model type {fitting[0]!r}; pass that instead" if fitting else "it fits no known SAM model type"
    raise SamCheckpointError(
        f"SAM checkpoint {checkpoint} does not fit model type {model_type!r}: {'; '.join(problems)}; {hint}"
    )


def build_sam(model_type, checkpoint=None, device="cpu"):
    """A SAM model of ``model_type`` in eval mode on ``device``, with weights from ``checkpoint``.

    Without a checkpoint the weights are random (the tiny test model, or benchmarks of speed).
    """
    state_dict = None
    if checkpoint:
        state_dict = load_sam_state_dict(checkpoint, model_type)
        check_checkpoint_fits(model_type, state_dict, checkpoint)
    model = _builder(model_type)()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- generation
class _IoUFirstMaskGenerator(SamAutomaticMaskGenerator):
    """segment_anything's generator with the predicted-IoU filter moved before mask upsampling.

    The IoU head's predictions do not depend on the upsampled masks, so the output is identical
    (tested), but only the surviving masks are upsampled to the image size, which is where the
    time goes at 32x32 points (3 masks per point, each upsampled twice). Everything after the
    filter is segment_anything's own sequence: stability score, binarisation, boxes, crop-edge
    filter, RLE (all on the model's device).
    """

    def _decode_points(self, points, im_size):
        """Low-res mask logits [P*3, h, w] and predicted IoUs [P*3] of P point prompts."""
        predictor, model = self.predictor, self.predictor.model
        coords = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int, device=coords.device)
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        low_res, iou_preds = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return low_res.flatten(0, 1), iou_preds.flatten(0, 1)

    def _process_batch(self, points, im_size, crop_box, orig_size):
        low_res, iou_preds = self._decode_points(points, im_size)
        masks_per_point = low_res.shape[0] // len(points)
        data = MaskData(masks=low_res, iou_preds=iou_preds, points=torch.as_tensor(points.repeat(masks_per_point, axis=0)))
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        model = self.predictor.model
        data["masks"] = model.postprocess_masks(data["masks"][:, None], self.predictor.input_size, self.predictor.original_size)[:, 0]

        data["stability_score"] = calculate_stability_score(data["masks"], model.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        orig_h, orig_w = orig_size
        near_edge = is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if near_edge.any():
            data.filter(~near_edge)
        data["rles"] = mask_to_rle_pytorch(uncrop_masks(data["masks"], crop_box, orig_h, orig_w))
        del data["masks"]
        return data


def _to_annotation(raw):
    """One segment_anything output record -> dearli.data.sam_format annotation."""
    return {
        "segmentation": {"size": [int(s) for s in raw["segmentation"]["size"]], "counts": raw["segmentation"]["counts"]},
        "area": int(raw["area"]),
        "bbox": [float(v) for v in raw["bbox"]],
        "predicted_iou": float(raw["predicted_iou"]),
        "stability_score": float(raw["stability_score"]),
        "point_coords": [[float(x), float(y)] for x, y in raw["point_coords"]],
    }


class SamMaskGenerator:
    """Automatic masks of one image at a time, as annotations of the dearli pseudo-label format."""

    def __init__(self, model, settings: GeneratorSettings):
        self.settings = settings
        self._amg = _IoUFirstMaskGenerator(
            model,
            points_per_side=settings.points_per_side,
            points_per_batch=settings.points_per_batch,
            pred_iou_thresh=settings.pred_iou_thresh,
            stability_score_thresh=settings.stability_score_thresh,
            output_mode="coco_rle",
        )

    @classmethod
    def from_config(cls, cfg, device="cpu"):
        model = build_sam(cfg.SAM.MODEL_TYPE, cfg.SAM.CHECKPOINT or None, device)
        return cls(model, GeneratorSettings.from_config(cfg))

    def generate(self, image):
        """Annotations (COCO RLE + scores) of an RGB uint8 HxWx3 image, in SAM's output order."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        with torch.inference_mode():
            raw_masks = self._amg.generate(image)
        return [_to_annotation(raw) for raw in raw_masks]
