"""The DEARLi meta-architecture: frozen OpenCLIP backbone + CLIP classification head.

Training: ``forward(list[dict])`` (labeled samples, Detectron2 style) or
``forward({"labeled": [...], "pseudo_labeled": [...]})`` returns the set losses; pseudo-label
losses carry the prefix ``pseudo_`` and the weight SSL.PSEUDO_LOSS_WEIGHT (with image tags, SSL.IMAGE_TAGS, also
``loss_tag``: :mod:`.tag_loss`). The two sets are told
apart by name, never by position in a list; when their padded canvases agree they share one
forward pass (the criterion still runs per set, normalised as before).

Evaluation: ``forward(list[dict])`` returns Detectron2's standard
``{"panoptic_seg": (int32 [h, w], segments_info), "sem_seg": float [C, h, w]}`` at each image's
original size, so ``COCOPanopticEvaluator`` and ``SemSegEvaluator`` work unchanged. Up to
``MODEL.MASK_FORMER.TEST.POSTPROCESS_MAX_PIXELS`` original pixels this is the reference's
(Mask2Former's) order: all Q mask logits are upsampled to the original size, then post-processed.
That costs Q x H x W floats (15 GB and 5 minutes for an 8000x6000 photo), so a larger image is
post-processed at the test resolution (the resized input, e.g. short side 640) and only the two
final maps are resized: the panoptic ids by nearest neighbour, the semantic scores bilinearly. The
README gives the measured difference between the two orders.

Teacher: ``predict_panoptic(images, zero_shot, object_threshold, overlap_threshold)`` returns
panoptic pseudo-labels at the input canvas resolution through the same rule as ``panoptic_inference``
(as tensors with ``as_segments=True``, the pseudo-label path).
"""
import itertools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from . import backbone as _backbone  # noqa: F401  (registers OpenCLIPBackbone)
from .criterion import SetCriterion
from .dense_guidance import dense_guidance_losses
from .inference import (
    PanopticSegments, as_detectron2_panoptic, panoptic_inference, panoptic_segments, semantic_inference,
    thing_table_of, trim_segments,
)
from .tag_loss import tag_losses
from .target_batch import as_mask_tensor
from .text_classifier import TextClassifier, classifier_with_void, ensemble_class_scores

TRAINING_SETS = ("labeled", "pseudo_labeled")


@META_ARCH_REGISTRY.register()
class DEARLi(nn.Module):
    """Normalise, pad, run backbone + ``sem_seg_head`` against the CLIP text classifier; losses
    in training, panoptic/semantic predictions in evaluation."""

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        text_classifier: TextClassifier,
        embed_dim: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
        thing_ids: Sequence[int],
        object_threshold: float,
        overlap_threshold: float,
        postprocess_max_pixels: int = 2_100_000,
        panoptic_on: bool = True,
        semantic_on: bool = True,
        zero_shot_enabled: bool = True,
        ensemble_alpha: float = 0.4,
        pseudo_loss_weight: float = 1.0,
        tag_loss_weight: float = 0.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        # Learned "no object" row of the classifier, appended (normalised) to the text embeddings.
        self.void_embedding = nn.Embedding(1, embed_dim)
        # Not a module: the text embeddings are computed lazily and never checkpointed.
        self.text_classifier = text_classifier
        self.size_divisibility = size_divisibility
        self.thing_ids = frozenset(int(i) for i in thing_ids)
        self.object_threshold = object_threshold
        self.overlap_threshold = overlap_threshold
        self.postprocess_max_pixels = postprocess_max_pixels
        self.panoptic_on = panoptic_on
        self.semantic_on = semantic_on
        self.zero_shot_enabled = zero_shot_enabled
        self.ensemble_alpha = ensemble_alpha
        self.pseudo_loss_weight = pseudo_loss_weight
        self.tag_loss_weight = tag_loss_weight  # 0 = no loss_tag
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        dataset_name = (cfg.DATASETS.TRAIN or cfg.DATASETS.TEST)[0]
        metadata = MetadataCatalog.get(dataset_name)
        mask_former = cfg.MODEL.MASK_FORMER
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            "criterion": SetCriterion(cfg),
            # Checks MODEL.SEM_SEG_HEAD.NUM_CLASSES against the dataset's classes.
            "text_classifier": TextClassifier(cfg, dataset_name=dataset_name),
            "embed_dim": cfg.MODEL.CLIP_HEAD.EMBED_DIM,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": mask_former.SIZE_DIVISIBILITY,
            "thing_ids": list(metadata.get("thing_dataset_id_to_contiguous_id", {}).values()),
            "object_threshold": mask_former.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mask_former.TEST.OVERLAP_THRESHOLD,
            "postprocess_max_pixels": mask_former.TEST.POSTPROCESS_MAX_PIXELS,
            "panoptic_on": mask_former.TEST.PANOPTIC_ON,
            "semantic_on": mask_former.TEST.SEMANTIC_ON,
            "zero_shot_enabled": cfg.MODEL.CLIP_HEAD.ZERO_SHOT_ENABLED,
            "ensemble_alpha": cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA,
            "pseudo_loss_weight": cfg.SSL.PSEUDO_LOSS_WEIGHT,
            "tag_loss_weight": cfg.SSL.IMAGE_TAGS.LOSS_WEIGHT if cfg.SSL.IMAGE_TAGS.ENABLED else 0.0,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, batched_inputs: Union[List[Dict], Dict[str, List[Dict]]]):
        if not self.training:
            return self.inference(batched_inputs)
        labeled, pseudo_labeled = _training_sets(batched_inputs)
        sets = [(samples, stream) for stream, samples in enumerate((labeled, pseudo_labeled)) if samples]
        images = [self.preprocess_images([s["image"] for s in samples]) for samples, _ in sets]
        outputs = self._student_outputs([image_list.tensor for image_list in images])
        losses = {}
        for (samples, stream), image_list, set_outputs in zip(sets, images, outputs):
            targets = self.prepare_targets(samples, image_list.tensor.shape[-2:])
            set_losses = self.criterion(set_outputs, targets, seed_stream=stream)
            if stream == 0:
                losses.update(set_losses)
            else:
                losses.update({"pseudo_" + name: self.pseudo_loss_weight * value for name, value in set_losses.items()})
                if self.tag_loss_weight:  # image tags (SSL.IMAGE_TAGS), tag_loss.py
                    losses.update(tag_losses(set_outputs["pred_logits"], samples, self.tag_loss_weight))
                losses.update(dense_guidance_losses(set_outputs, samples))  # {} unless the teacher labelled them
        return losses

    def _student_outputs(self, image_tensors: List[torch.Tensor]) -> List[Dict]:
        """Head outputs of each set of padded images: one forward over all sets when their canvases
        agree (half the launches; GroupNorm keeps images independent), else one per set."""
        if len(image_tensors) > 1 and len({tuple(t.shape[1:]) for t in image_tensors}) == 1:
            _, joint = self.predict_raw(torch.cat(image_tensors))
            bounds = list(itertools.accumulate([len(t) for t in image_tensors], initial=0))
            return [_slice_outputs(joint, start, stop) for start, stop in zip(bounds, bounds[1:])]
        return [self.predict_raw(t)[1] for t in image_tensors]

    def losses(self, samples: List[Dict], seed_stream: int = 0) -> Dict[str, torch.Tensor]:
        """Set losses of ``samples`` (each with "image", "instances", optional "valid_mask",
        "sample_seed", "segment_weights")."""
        images = self.preprocess_images([s["image"] for s in samples])
        _, outputs = self.predict_raw(images.tensor)
        targets = self.prepare_targets(samples, images.tensor.shape[-2:])
        return self.criterion(outputs, targets, seed_stream=seed_stream)

    def inference(self, batched_inputs: List[Dict]) -> List[Dict]:
        images = self.preprocess_images([x["image"] for x in batched_inputs])
        class_scores, mask_logits = self._scores_and_masks(images, self.zero_shot_enabled)
        padded_size = images.tensor.shape[-2:]
        results = []
        for scores, masks, (h, w), sample in zip(class_scores, mask_logits, images.image_sizes, batched_inputs):
            output_size = (int(sample.get("height", h)), int(sample.get("width", w)))
            masks = _upsample(masks, padded_size)
            if output_size[0] * output_size[1] <= self.postprocess_max_pixels:  # the reference's order
                masks = sem_seg_postprocess(masks, (h, w), *output_size)
            else:  # the test resolution, padding cut; the final maps are resized
                masks = masks[:, :h, :w]
            results.append(self._postprocess(scores, masks, output_size))
        return results

    def _postprocess(self, scores: torch.Tensor, masks: torch.Tensor, output_size) -> Dict:
        """Panoptic / semantic post-processing of one image at the resolution of ``masks``, then
        one resize of each final map to ``output_size`` (module docstring)."""
        result = {}
        if self.semantic_on:
            result["sem_seg"] = resize_scores(semantic_inference(scores, masks), output_size)
        if self.panoptic_on:
            pan_seg, segments_info = panoptic_inference(
                scores, masks, self.thing_ids, self.object_threshold, self.overlap_threshold
            )
            result["panoptic_seg"] = resize_panoptic(pan_seg, segments_info, output_size)
        return result

    @torch.no_grad()
    def predict_panoptic(
        self,
        images: Union[List[torch.Tensor], ImageList],
        zero_shot: bool,
        object_threshold: float,
        overlap_threshold: float,
        as_segments: bool = False,
        allowed_classes: Optional[Sequence[Optional[torch.Tensor]]] = None,
        dense_clip=None,
        with_prob_maps: bool = False,
    ) -> Union[List[Tuple[torch.Tensor, List[Dict]]], List[PanopticSegments]]:
        """Panoptic predictions of raw images (uint8 [3, H, W] each, or an ImageList of raw pixel
        values) at each image's own size, with no resize back: the teacher's pseudo-labels.

        Returns (pan_seg, segments_info) per image, or with ``as_segments`` the tensors
        (:class:`~dearli.modeling.inference.PanopticSegments`); either way the host waits for the
        device once per batch. Masks are upsampled in the compute dtype, one image at a time.
        ``allowed_classes``: per image None or bool [C], the classes its queries may take (image tags).

        With ``dense_clip`` (a :class:`~dearli.modeling.dense_guidance.DenseCLIPGuidance`), returns
        (predictions, its labels [B, H/4, W/4] from this forward's dense CLIP features).
        ``with_prob_maps`` (with ``as_segments``): each segment's probability map at the mask
        resolution (stride 4 of the image's top-left, ``PanopticSegments.prob_maps``)."""
        if isinstance(images, ImageList):  # re-pad: the padding must be 0 after normalisation
            images = [images.tensor[i, :, :h, :w] for i, (h, w) in enumerate(images.image_sizes)]
        images = self.preprocess_images(images)
        if dense_clip is None:
            class_scores, mask_logits = self._scores_and_masks(images, zero_shot)
        else:  # the same forward, whose dense CLIP features also give the guidance labels
            features, class_scores, mask_logits = self._features_scores_and_masks(images, zero_shot)
            dense_labels = dense_clip.labels(self.backbone, features["clip_vis_dense"], *self.classifier(),
                                             mask_logits.shape[-2:])
            del features
        padded_size = images.tensor.shape[-2:]
        things = thing_table_of(self.thing_ids, class_scores.shape[-1] - 1, self.device)
        allowed_classes = allowed_classes or [None] * len(class_scores)
        segments = trim_segments([
            panoptic_segments(scores, _upsample(masks, padded_size)[:, :h, :w], things, object_threshold, overlap_threshold,
                              allowed, _image_part(masks, padded_size, (h, w)) if with_prob_maps else None)
            for scores, masks, (h, w), allowed in zip(class_scores, mask_logits, images.image_sizes, allowed_classes)
        ])
        predictions = segments if as_segments else [as_detectron2_panoptic(s) for s in segments]
        return predictions if dense_clip is None else (predictions, dense_labels)

    # ---- pieces -------------------------------------------------------------------------------

    def preprocess_images(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Normalised images padded (right/bottom) to a multiple of MASK_FORMER.SIZE_DIVISIBILITY."""
        normalised = [self._normalise(image.to(self.device, non_blocking=True)) for image in images]
        return ImageList.from_tensors(normalised, self.size_divisibility)

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() - self.pixel_mean) / self.pixel_std

    def predict_raw(self, image_tensor: torch.Tensor):
        """(backbone features, head outputs) for a padded, normalised batch [B, 3, H, W]."""
        features = self.backbone(image_tensor)
        classifier, num_synonyms = self.classifier()
        return features, self.sem_seg_head(features, classifier, num_synonyms)

    def classifier(self) -> Tuple[torch.Tensor, List[int]]:
        """Text classifier rows [K+1, D] on the model's device (void row last, then any void concept
        rows) and synonyms per class."""
        rows, num_synonyms = self.text_classifier(self.backbone)
        void_concepts = self.text_classifier.void_concept_rows(self.backbone)
        return classifier_with_void(rows.to(self.device), self.void_embedding.weight, void_concepts), num_synonyms

    def _scores_and_masks(self, images: ImageList, zero_shot: bool):
        """Class scores [B, Q, C+1] (the zero-shot ensemble's log-probabilities when ``zero_shot``)
        and the stride-4 mask logits [B, Q, H/4, W/4]; masks are upsampled one image at a time
        (a batch of 200 full-size mask maps would take gigabytes)."""
        return self._features_scores_and_masks(images, zero_shot)[1:]

    def _features_scores_and_masks(self, images: ImageList, zero_shot: bool):
        """(backbone features, class scores, mask logits) of one forward (see _scores_and_masks)."""
        features, outputs = self.predict_raw(images.tensor)
        class_scores = outputs["pred_logits"]
        if zero_shot:
            class_scores = ensemble_class_scores(
                self.backbone, features, outputs, *self.classifier(), self.ensemble_alpha
            )
        return features, class_scores, outputs["pred_masks"]

    def prepare_targets(self, samples: List[Dict], padded_size) -> List[Dict]:
        """Criterion targets with masks (and valid areas) padded to the batch canvas. They stay where
        the sample holds them: the criterion moves a batch's targets to the device in one go."""
        return [self._target(sample, padded_size) for sample in samples]

    def _target(self, sample: Dict, padded_size) -> Dict:
        name = sample.get("file_name", sample.get("image_id", "?"))
        if "instances" not in sample:
            raise KeyError(f"training sample {name!r} has no 'instances' (gt_classes, gt_masks)")
        instances = sample["instances"]
        masks = as_mask_tensor(instances.gt_masks, name=f"instances.gt_masks of {name!r}")
        image_size = tuple(sample["image"].shape[-2:])
        if tuple(masks.shape[-2:]) != image_size:
            raise ValueError(f"{name!r}: gt_masks are {tuple(masks.shape[-2:])} but the image is {image_size}")
        target = {
            "labels": instances.gt_classes,
            "masks": _pad_to(masks, padded_size),
            "seed": sample.get("sample_seed"),
        }
        if sample.get("valid_mask") is not None:
            target["valid_mask"] = _pad_to(sample["valid_mask"], padded_size)
        if sample.get("segment_weights") is not None:
            target["weights"] = torch.as_tensor(sample["segment_weights"])
        if sample.get("mask_weights") is not None:  # SAM refinement's PWA maps, [N, H, W] like the masks
            target["mask_weights"] = _pad_to(sample["mask_weights"], padded_size, value=1.0)  # padding: unweighted
        return target


def _training_sets(batched_inputs) -> Tuple[List[Dict], List[Dict]]:
    """(labeled, pseudo_labeled) samples of a training batch, told apart by name."""
    if isinstance(batched_inputs, (list, tuple)):
        return list(batched_inputs), []
    if not isinstance(batched_inputs, dict):
        raise TypeError(f"DEARLi.forward expects a list of samples or a dict {TRAINING_SETS}, got {type(batched_inputs).__name__}")
    unknown = sorted(set(batched_inputs) - set(TRAINING_SETS))
    if unknown:
        hint = " (the engine turns 'unlabeled' samples into 'pseudo_labeled' ones with the teacher)" if "unlabeled" in unknown else ""
        raise KeyError(f"DEARLi.forward: unknown training sets {unknown}; expected {TRAINING_SETS}{hint}")
    labeled, pseudo_labeled = (list(batched_inputs.get(k) or []) for k in TRAINING_SETS)
    if not labeled and not pseudo_labeled:
        raise ValueError("DEARLi.forward: the training batch holds no samples")
    return labeled, pseudo_labeled


def _slice_outputs(outputs: Dict, start: int, stop: int) -> Dict:
    """The head outputs of images start..stop-1 of a batch (auxiliary sets included)."""
    sliced = {key: outputs[key][start:stop] for key in ("pred_logits", "pred_masks")}
    sliced["aux_outputs"] = [_slice_outputs(aux, start, stop) for aux in outputs.get("aux_outputs", [])]
    return sliced


def _image_part(mask_logits: torch.Tensor, padded_size, image_size) -> torch.Tensor:
    """The cells of low-resolution mask logits [Q, h, w] of a padded batch canvas that cover an
    image of ``image_size`` at its top-left (whole cells: rounded up)."""
    rows = -(-image_size[0] * mask_logits.shape[-2] // padded_size[0])
    cols = -(-image_size[1] * mask_logits.shape[-1] // padded_size[1])
    return mask_logits[:, :rows, :cols]


def _upsample(mask_logits: torch.Tensor, size) -> torch.Tensor:
    """One image's mask logits [Q, h, w] bilinearly resized to the padded input size."""
    return F.interpolate(mask_logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def resize_scores(scores: torch.Tensor, size) -> torch.Tensor:
    """Per-class scores [C, h, w] bilinearly resized to ``size`` (unchanged when already that size)."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


def nearest_indices(in_size: int, out_size: int, device) -> torch.Tensor:
    """Source index of each output pixel for a nearest-neighbour resize, by pixel centres (torch's
    ``nearest-exact``): symmetric, and every source pixel is used when enlarging."""
    centres = (torch.arange(out_size, device=device, dtype=torch.float64) + 0.5) * (in_size / out_size)
    return centres.floor().long().clamp_(max=in_size - 1)


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` of per-class scores [C, H, W] (first class on ties), computed one class
    at a time: contiguous passes, where torch's argmax over dim 0 of a large CPU map is ~50x slower."""
    best, labels = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.int64, device=scores.device)
    for index in range(1, scores.shape[0]):
        higher = scores[index] > best
        best = torch.where(higher, scores[index], best)
        labels.masked_fill_(higher, index)
    return labels


def resize_nearest(label_map: torch.Tensor, size) -> torch.Tensor:
    """An integer map [h, w] resized to ``size`` by nearest neighbour (no float copy of the map)."""
    rows = nearest_indices(label_map.shape[0], size[0], label_map.device)
    cols = nearest_indices(label_map.shape[1], size[1], label_map.device)
    return label_map[rows[:, None], cols[None, :]]


def resize_panoptic(pan_seg: torch.Tensor, segments_info: List[Dict], size):
    """(segment id map resized to ``size`` by nearest neighbour, segments_info without the segments
    that a reduction left with no pixel: the panoptic evaluator refuses ids absent from the PNG)."""
    if tuple(pan_seg.shape) == tuple(size):
        return pan_seg, segments_info
    resized = resize_nearest(pan_seg, size)
    largest_id = max((int(s["id"]) for s in segments_info), default=0)
    areas = torch.bincount(resized.flatten().long(), minlength=largest_id + 1)
    return resized, [s for s in segments_info if areas[s["id"]] > 0]


def _pad_to(mask: torch.Tensor, size, value=False) -> torch.Tensor:
    """Pad a [..., h, w] map (bool: with False) on the right/bottom to ``size``."""
    pad_h, pad_w = size[0] - mask.shape[-2], size[1] - mask.shape[-1]
    return F.pad(mask, (0, pad_w, 0, pad_h), value=value) if pad_h or pad_w else mask

