"""Pretraining of the tiny SAM on the class-agnostic segments of synthetic shapes scenes.

What ``tools/pretrain_tiny_sam.py`` runs, with SAM's own training recipe at a tiny scale:

- data: scenes of the shapes generator (``render_sample``) drawn from a random stream of their
  own: image seeds are ``[seed, PRETRAIN_STREAM, step, index, GENERATOR_VERSION]`` (five numbers;
  every ``dearli_shapes_*`` split seeds its images with four and a split index in ``SPLITS``), so
  no image of any split is ever seen. Every segment (things and the two stuff regions) is a
  class-agnostic target.
- prompts: single points drawn uniformly inside a segment, decoded with multimask output, and
  boxes (the segment's box, each side jittered by up to 10 % of its length, at most 20 px as in
  SAM), decoded with the single-mask output, as SAM does for unambiguous prompts.
- losses: focal + dice on the masks upsampled to the image, as in SAM, but weighted 1:1 (SAM:
  20:1): a model trained from scratch for minutes cannot localise yet, and at 20:1 the focal term
  (alpha 0.25) made it collapse to empty masks within ~100 steps, twice; for a point only the best
  of the 3 masks (lowest loss) gets mask gradients; the IoU head is trained with MSE against the
  actual IoU of every decoded mask (all 3: the automatic mask generator ranks and filters all of
  them by this prediction).
  Not done here: SAM's iterative re-prompting with mask inputs (the generator never uses it).
- a localisation warm-up (not in SAM, which starts from an MAE-pretrained encoder and trains for
  days): the first ``localization_steps`` steps show a featureless noise image and ask, for each
  click, for the disk of radius ``LOCALIZATION_RADIUS`` around it. Without it the decoder trained
  from scratch never learns to use the prompt: on the scenes, prompt-independent outputs (the two
  stuff halves, "all the shapes") lower the loss first, and after 600-1,500 steps the clicks of
  an image still decoded to (nearly) the same three masks (0-8 % of held-out shapes at IoU 0.5).
  The warm-up has no such shortcut, so the decoder first learns to match the point's position
  encoding to the image's; on the scenes it then separates the shapes within 200 steps (43 % of
  held-out shapes at IoU 0.5, README "Tiny SAM").

Deterministic: the initial weights come from ``seed`` (``build_tiny_sam``) and step ``s`` draws
everything from numpy Generators seeded by (seed, s), so a run resumed from a checkpoint of step
``k`` continues exactly as the uninterrupted run (same machine and thread count).
"""
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm import tqdm

from dearli.data.datasets.shapes import GENERATOR_VERSION, render_sample
from dearli.utils.atomic_io import atomic_write

from .tiny import TINY_MODEL_TYPE, build_tiny_sam

logger = logging.getLogger(__name__)

# Random stream of the pretraining scenes (outside shapes.SPLITS.values(); tinyclip uses 7).
PRETRAIN_STREAM = 8
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
BOX_NOISE_FRACTION, BOX_NOISE_MAX_PX = 0.1, 20
# Localisation warm-up: disks about as large as the shapes (~10 px across) on grey noise, clicks kept
# a radius away from the border so every disk is whole.
LOCALIZATION_RADIUS = 6
LOCALIZATION_GREY, LOCALIZATION_NOISE = 128, 20


@dataclass(frozen=True)
class PretrainSettings:
    """Everything the weights depend on (recorded in checkpoints and the weight manifest)."""

    model_type: str = TINY_MODEL_TYPE
    seed: int = 0
    steps: int = 1900  # all steps, the localisation warm-up's included
    localization_steps: int = 400  # the first steps: clicks on noise images (see the module docstring)
    images_per_step: int = 4
    points_per_image: int = 12  # the decoder is cheap next to the encoder: many prompts per image
    boxes_per_image: int = 2
    image_size: int = 96  # rendered scene side (the dearli_shapes_* splits' size)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    focal_weight: float = 1.0  # SAM: 20 (see the module docstring)
    dice_weight: float = 1.0
    iou_weight: float = 1.0

    def to_dict(self):
        return asdict(self)


def scene_rng(seed, step, index):
    """The Generator of pretraining scene ``index`` of ``step`` (disjoint from every split's)."""
    return np.random.default_rng(np.random.SeedSequence([seed, PRETRAIN_STREAM, step, index, GENERATOR_VERSION]))


def render_scene(seed, step, index, image_size):
    """(RGB uint8 HxWx3, bool[S, H, W] class-agnostic segment masks) of one pretraining scene."""
    rng = scene_rng(seed, step, index)
    image, ids, segments = render_sample(rng, (image_size, image_size))
    masks = np.stack([ids == segment_id for segment_id, _ in segments])
    return image, masks, rng


# ----------------------------------------------------------------------------- prompts
def sample_points(rng, masks, count):
    """(xy float[count, 2] pixel centres, segment index int[count]): a uniform pixel of a uniform segment."""
    segment = rng.integers(len(masks), size=count)
    points = np.zeros((count, 2), dtype=np.float64)
    for i, s in enumerate(segment):
        ys, xs = np.nonzero(masks[s])
        pick = rng.integers(len(xs))
        points[i] = (xs[pick] + 0.5, ys[pick] + 0.5)
    return points, segment


def sample_boxes(rng, masks, count):
    """(xyxy float[count, 4], segment index int[count]): a segment's box with SAM's jitter."""
    segment = rng.integers(len(masks), size=count)
    height, width = masks.shape[1:]
    boxes = np.zeros((count, 4), dtype=np.float64)
    for i, s in enumerate(segment):
        ys, xs = np.nonzero(masks[s])
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        noise = np.minimum(BOX_NOISE_FRACTION * side, BOX_NOISE_MAX_PX) * rng.uniform(-1, 1, 4)
        boxes[i] = np.clip(box + noise, 0, [width, height, width, height])
    return boxes, segment


# ----------------------------------------------------------------------------- losses
def focal_loss(logits, targets):
    """Per-mask mean sigmoid focal loss (RetinaNet's, alpha 0.25, gamma 2) of [N, H, W] logits."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).flatten(1).mean(1)


def dice_loss(logits, targets):
    """Per-mask soft dice loss of [N, H, W] logits (1 - 2|P∩T| / (|P| + |T|), smoothed by 1)."""
    prob = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    return 1 - (2 * (prob * targets).sum(1) + 1) / (prob.sum(1) + targets.sum(1) + 1)


def mask_iou(logits, targets):
    """IoU of the binarised masks (logit > 0, SAM's threshold) with the targets, per mask."""
    pred = (logits > 0).flatten(1).float()
    targets = targets.flatten(1)
    intersection = (pred * targets).sum(1)
    union = pred.sum(1) + targets.sum(1) - intersection
    return intersection / union.clamp(min=1)


def prompt_losses(logits, iou_pred, targets, settings):
    """(mask loss, IoU loss, mean IoU of the best output) of prompts with K outputs each: logits
    [N, K, H, W], iou_pred [N, K], targets [N, H, W]. Mask loss: the best of the K outputs per
    prompt; IoU MSE: all outputs."""
    n, k = logits.shape[:2]
    flat_logits = logits.flatten(0, 1)
    flat_targets = targets[:, None].expand(n, k, *targets.shape[1:]).flatten(0, 1)
    per_output = settings.focal_weight * focal_loss(flat_logits, flat_targets) + settings.dice_weight * dice_loss(
        flat_logits, flat_targets
    )
    best = per_output.view(n, k).min(dim=1).values
    actual_iou = mask_iou(flat_logits.detach(), flat_targets).view(n, k)
    return best.mean(), F.mse_loss(iou_pred, actual_iou), actual_iou.max(dim=1).values.mean()


# ----------------------------------------------------------------------------- one step
def _decode(model, embedding, transform, image_hw, points=None, boxes=None):
    """(logits [N, K, H, W] at image size, predicted IoU [N, K]) of N point or box prompts (pixel
    coordinates) on one image's embedding [1, C, h, w] (K = 3 for points, multimask; 1 for boxes)."""
    if points is not None:
        coords = torch.as_tensor(transform.apply_coords(points, image_hw), dtype=torch.float32)[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int)
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    else:
        box_input = torch.as_tensor(transform.apply_boxes(boxes, image_hw), dtype=torch.float32)
        sparse, dense = model.prompt_encoder(points=None, boxes=box_input, masks=None)
    low_res, iou_pred = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=points is not None,
    )
    return model.postprocess_masks(low_res, transform.get_preprocess_shape(*image_hw, transform.target_length),
                                   image_hw), iou_pred


def preprocess(model, transform, image):
    """SAM's input of an RGB uint8 image, made as ``SamPredictor.set_image`` makes it (resize of the
    longest side, normalisation, padding), so training sees the pixels inference sees."""
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).float()
    return model.preprocess(resized)


def localization_target(image_size, clicks):
    """bool[N, H, W]: the disk of radius LOCALIZATION_RADIUS around each click (pixel centres inside)."""
    ys, xs = np.mgrid[:image_size, :image_size] + 0.5
    return np.stack([(xs - x) ** 2 + (ys - y) ** 2 < LOCALIZATION_RADIUS ** 2 for x, y in clicks])


def localization_loss(model, settings, step):
    """(total loss, {name: float}) of a localisation warm-up step: ``points_per_image`` clicks on one
    grey noise image, each asking for the disk around it (multimask, best of 3, as scene points)."""
    rng = scene_rng(settings.seed, step, 0)
    size = settings.image_size
    noise = rng.integers(0, LOCALIZATION_NOISE, (size, size, 3))
    image = (LOCALIZATION_GREY + noise).astype(np.uint8)
    clicks = rng.uniform(LOCALIZATION_RADIUS, size - LOCALIZATION_RADIUS, (settings.points_per_image, 2))
    transform = ResizeLongestSide(model.image_encoder.img_size)
    embedding = model.image_encoder(preprocess(model, transform, image)[None])
    logits, iou_pred = _decode(model, embedding, transform, image.shape[:2], points=clicks)
    targets = torch.as_tensor(localization_target(size, clicks), dtype=torch.float32)
    mask_loss, iou_loss, best_iou = prompt_losses(logits, iou_pred, targets, settings)
    return _total_and_values(mask_loss, iou_loss, best_iou.item(), settings)


def _total_and_values(mask_loss, iou_loss, mean_best_iou, settings):
    """(total loss, {name: float}) of a step's mask and IoU losses; the last value says how good the masks are."""
    total = mask_loss + settings.iou_weight * iou_loss
    return total, {"loss": total.item(), "mask": mask_loss.item(), "iou": iou_loss.item(), "mask_iou": mean_best_iou}


def step_loss(model, settings, step):
    """(total loss, {name: float}) of training step ``step`` (its scenes and prompts from (seed, step))."""
    if step < settings.localization_steps:
        return localization_loss(model, settings, step)
    scenes = [render_scene(settings.seed, step, i, settings.image_size) for i in range(settings.images_per_step)]
    transform = ResizeLongestSide(model.image_encoder.img_size)
    embeddings = model.image_encoder(torch.stack([preprocess(model, transform, image) for image, _, _ in scenes]))
    mask_losses, iou_losses, best_ious = [], [], []  # one per decoded prompt kind and image (sums)
    for (image, masks, rng), embedding in zip(scenes, embeddings):
        points, point_segments = sample_points(rng, masks, settings.points_per_image)
        boxes, box_segments = sample_boxes(rng, masks, settings.boxes_per_image)
        for prompt, segments in (({"points": points}, point_segments), ({"boxes": boxes}, box_segments)):
            if len(segments) == 0:
                continue
            logits, iou_pred = _decode(model, embedding[None], transform, image.shape[:2], **prompt)
            targets = torch.as_tensor(masks[segments], dtype=torch.float32)
            mask_loss, iou_loss, best_iou = prompt_losses(logits, iou_pred, targets, settings)
            mask_losses.append(mask_loss * len(segments))
            iou_losses.append(iou_loss * len(segments))
            best_ious.append(best_iou * len(segments))
    prompt_count = settings.images_per_step * (settings.points_per_image + settings.boxes_per_image)
    mask_loss, iou_loss = torch.stack(mask_losses).sum() / prompt_count, torch.stack(iou_losses).sum() / prompt_count
    return _total_and_values(mask_loss, iou_loss, float(sum(best_ious)) / prompt_count, settings)


def learning_rate(settings, step):
    """Linear warm-up, then cosine decay to 0 over the remaining steps."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(settings.steps - settings.warmup_steps, 1)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def build_training(settings):
    """(model in train mode, AdamW optimizer) at step 0."""
    if settings.model_type != TINY_MODEL_TYPE:
        raise ValueError(f"pretraining builds the tiny SAM only (model type {TINY_MODEL_TYPE!r}), not {settings.model_type!r}")
    model = build_tiny_sam(seed=settings.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return model, optimizer


def train_step(model, optimizer, settings, step):
    """One optimisation step; returns its loss values."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(settings, step)
    total, values = step_loss(model, settings, step)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return values


# ----------------------------------------------------------------------------- resumable run
CHECKPOINT_NAME = "last_checkpoint.pth"


def save_checkpoint(path, settings, step, model, optimizer, history):
    """Everything needed to continue after ``step`` steps, written atomically."""
    state = {"settings": settings.to_dict(), "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "history": history}
    with atomic_write(path) as f:
        torch.save(state, f)


def load_checkpoint(path, settings, model, optimizer):
    """(steps done, loss history) of the checkpoint at ``path``, loaded into ``model`` and ``optimizer``.

    A checkpoint of other settings is an error naming the file and the settings that differ.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read pretraining checkpoint {path}: {e}") from e
    differing = {k: (v, state["settings"].get(k)) for k, v in settings.to_dict().items() if state["settings"].get(k) != v}
    if differing:
        details = ", ".join(f"{k}: run {run!r} vs checkpoint {saved!r}" for k, (run, saved) in sorted(differing.items()))
        raise ValueError(f"pretraining checkpoint {path} was made with other settings ({details}); "
                         f"use the same settings or another work folder")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state["history"]


def pretrain(settings, work_dir, resume=False, checkpoint_period=50, stop_after=None, progress=True):
    """Train for ``settings.steps`` steps (continuing ``work_dir``'s checkpoint when ``resume``);
    returns (model in eval mode, loss history: one {name: value} per step).

    ``stop_after=k`` returns after k steps of this call without a final checkpoint, like a crash
    right after the last periodic one (tests of resumption).
    """
    model, optimizer = build_training(settings)
    checkpoint = Path(work_dir) / CHECKPOINT_NAME
    start, history = 0, []
    if resume and checkpoint.is_file():
        start, history = load_checkpoint(checkpoint, settings, model, optimizer)
        logger.info("resuming %s at step %d of %d", checkpoint, start, settings.steps)
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc="tiny SAM pretraining",
               disable=not progress)
    for step in bar:
        history.append(train_step(model, optimizer, settings, step))
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", mask_iou=f"{history[-1]['mask_iou']:.2f}")
        if stop_after is not None and step + 1 - start >= stop_after:
            return model.eval(), history
        if (step + 1) % checkpoint_period == 0 or step + 1 == settings.steps:
            save_checkpoint(checkpoint, settings, step + 1, model, optimizer, history)
    return model.eval(), history
