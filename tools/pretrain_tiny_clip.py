#!/usr/bin/env python
"""Contrastive image-text pretraining of the tiny OpenCLIP model on captioned synthetic scenes.

Both towers train from scratch with OpenCLIP's own tokenizer and ``ClipLoss`` on pairs from
``dearli.data.shapes_captions``, drawn from a random stream disjoint from every ``dearli_shapes_*``
split: whole scenes with composed captions (the image side is CLIP's usual global pooling) and
single segments with a caption naming them (the image side is the segment's mask pooling of the
dense features through the same head: what the zero-shot branch of DEARLi does at test time).
The result is an OpenCLIP state dict (safetensors, half precision) plus its manifest (settings, sha256) that loads
through ``MODEL.OPEN_CLIP.PRETRAINED <file>``, exactly like real CLIP weights.

Deterministic: the model is initialised from ``--seed`` and the pairs of step ``s`` depend only on
(seed, s), so a run resumed from its last checkpoint (``--resume``; model, optimizer, step and losses,
written atomically every ``--checkpoint-period`` steps) ends with the same weights as an
uninterrupted one on the same machine and thread count.

    python tools/pretrain_tiny_clip.py                      # writes dearli/weights/<model>.safetensors
    python tools/pretrain_tiny_clip.py --steps 20 --output /tmp/x.safetensors --work-dir /tmp/w
"""
import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.data.shapes_captions import pretraining_scenes
from dearli.modeling.backbone import open_clip_backbone  # noqa: F401  (registers the tiny model configs)
from dearli.modeling.backbone.weight_manifest import WEIGHTS_DIR, save_weights_with_manifest
from dearli.modeling.text_classifier import mask_pool
from dearli.utils.atomic_io import atomic_write
from dearli.utils.threads import setup_threads

logger = logging.getLogger("dearli.pretrain_tiny_clip")

DEFAULT_MODEL = "dearli_convnext_tiny_shapes"
CHECKPOINT_NAME = "last_checkpoint.pth"
# CLIP's input normalisation on 0..1 pixels (the dearli configs' PIXEL_MEAN/STD divided by 255).
PIXEL_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
PIXEL_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
LOGIT_SCALE_MAX = math.log(100.0)  # OpenCLIP's clamp of the learned temperature


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the resulting weights depend on (stored in the manifest and the checkpoints)."""
    model_name: str = DEFAULT_MODEL
    seed: int = 0
    steps: int = 1000
    scenes_per_step: int = 6  # each gives one scene pair and one pair per segment
    image_size: int = 96  # rendered scene side (the dearli_shapes_* splits' size)
    input_size: int = 288  # scenes are upscaled to this side, as tiny_dear_clip.yaml's test inputs
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50


def learning_rate(settings, step):
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(settings):
    torch.manual_seed(settings.seed)
    return open_clip.create_model(settings.model_name)


def build_optimizer(model, settings):
    # Decay matrices and convolutions only; norms, biases, embeddings and the temperature are free.
    decayed, free = [], []
    for name, param in model.named_parameters():
        no_decay = param.ndim < 2 or "embedding" in name or name == "logit_scale"
        (free if no_decay else decayed).append(param)
    return torch.optim.AdamW([{"params": decayed, "weight_decay": settings.weight_decay},
                              {"params": free, "weight_decay": 0.0}], lr=settings.lr)


def to_input(images_uint8, size):
    """[N,h,w,3] uint8 -> normalised float [N,3,size,size] (bilinear resize, as at test time)."""
    images = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images - PIXEL_MEAN) / PIXEL_STD


def region_mask_logits(region_masks, size):
    """Per-scene masks [R_i,h,w] -> mask logits [S,R_max,size,size] (+1 inside, -1 outside and for
    padding rows), resized with nearest neighbours like ground-truth masks at test time."""
    max_regions = max(len(masks) for masks in region_masks)
    logits = -torch.ones(len(region_masks), max_regions, size, size)
    for scene, masks in enumerate(region_masks):
        resized = F.interpolate(torch.from_numpy(masks).float()[None], size=(size, size), mode="nearest")[0]
        logits[scene, :len(masks)] = resized * 2 - 1
    return logits


def embed_scenes_and_regions(model, images, mask_logits):
    """One image-tower pass: normalised embeddings of the whole scenes [S,D] (global pooling) and of
    every region [S,R,D] (the zero-shot branch's mask pooling of the dense features, then the same
    head), with a flag [S,R] telling regions whose mask survives the resize to the feature grid."""
    trunk = model.visual.trunk
    dense = trunk.forward_features(images)  # stem, stages, norm_pre: the backbone's clip_vis_dense
    scenes = model.visual.head(trunk.head(dense))
    pooled = mask_pool(dense, mask_logits)
    num_scenes, num_regions, channels = pooled.shape
    regions = model.visual.head(trunk.head(pooled.reshape(-1, channels, 1, 1)))
    non_empty = mask_pool(torch.ones_like(dense[:, :1]), mask_logits)[..., 0] > 0.5
    return (F.normalize(scenes, dim=-1), F.normalize(regions, dim=-1).reshape(num_scenes, num_regions, -1),
            non_empty)


def training_step(model, optimizer, loss_fn, tokenizer, settings, step):
    """One contrastive step on the scenes of ``step`` (scene-caption and region-caption pairs)."""
    images, scene_texts, region_masks, region_texts = pretraining_scenes(
        settings.seed, step, settings.scenes_per_step, (settings.image_size, settings.image_size))
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(settings, step)
    scenes, regions, non_empty = embed_scenes_and_regions(
        model, to_input(images, settings.input_size), region_mask_logits(region_masks, settings.input_size))
    kept_texts = [text for scene, texts in enumerate(region_texts) for region, text in enumerate(texts)
                  if non_empty[scene, region]]
    image_features = torch.cat([scenes, regions[non_empty]])
    text_features = model.encode_text(tokenizer(scene_texts + kept_texts), normalize=True)
    loss = loss_fn(image_features, text_features, model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    return float(loss.detach())


def save_checkpoint(path, model, optimizer, settings, step, losses):
    with atomic_write(path) as f:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "settings": dataclasses.asdict(settings), "losses": losses}, f)


def load_checkpoint(path, model, optimizer, settings):
    """Restore a checkpoint written with the same settings; returns (next step, losses so far)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"--resume: cannot read checkpoint {str(path)!r}: {e}") from e
    stored = state.get("settings", {})
    differing = sorted(k for k, v in dataclasses.asdict(settings).items() if stored.get(k) != v)
    if differing:
        raise ValueError(f"--resume: checkpoint {str(path)!r} was written with other settings "
                         f"{ {k: stored.get(k) for k in differing} }; this run has "
                         f"{ {k: getattr(settings, k) for k in differing} }")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], list(state["losses"])


def pretrain(settings, work_dir, resume=False, checkpoint_period=50, stop_after=None, progress=True):
    """Train (or resume) up to ``settings.steps`` (or ``stop_after``) steps; returns (model, losses
    per step). Checkpoints go to ``work_dir/last_checkpoint.pth``."""
    model = build_model(settings)
    model.train()
    optimizer = build_optimizer(model, settings)
    checkpoint = Path(work_dir) / CHECKPOINT_NAME
    start, losses = 0, []
    if resume and checkpoint.is_file():
        start, losses = load_checkpoint(checkpoint, model, optimizer, settings)
        logger.info(f"Resumed from {checkpoint} at step {start}.")
    end = settings.steps if stop_after is None else min(settings.steps, stop_after)
    tokenizer = open_clip.get_tokenizer(settings.model_name)
    loss_fn = open_clip.ClipLoss()
    bar = tqdm(total=end, initial=start, desc="pretrain tiny CLIP", disable=not progress, file=sys.stderr)
    for step in range(start, end):
        losses.append(training_step(model, optimizer, loss_fn, tokenizer, settings, step))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        bar.update(1)
        if (step + 1) % checkpoint_period == 0 or step + 1 == end:
            save_checkpoint(checkpoint, model, optimizer, settings, step + 1, losses)
    bar.close()
    return model.eval(), losses


def get_parser():
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Settings):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name), help=f"default {getattr(defaults, field.name)}")
    parser.add_argument("--output", default="",
                        help="weight file (default dearli/weights/<model>.safetensors)")
    parser.add_argument("--work-dir", default="output/pretrain_tiny_clip", help="checkpoints of this run")
    parser.add_argument("--resume", action="store_true", help="continue from <work-dir>/last_checkpoint.pth")
    parser.add_argument("--checkpoint-period", type=int, default=50, help="steps between checkpoints")
    add_tool_arguments(parser, overrides=False)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_tool_args(get_parser(), argv)
    setup_threads(args.threads)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    output = Path(args.output or WEIGHTS_DIR / f"{settings.model_name}.safetensors")
    started = time.time()
    model, losses = pretrain(settings, args.work_dir, args.resume, args.checkpoint_period)
    sha256 = save_weights_with_manifest(model.state_dict(), output, settings.model_name,
                                        dict(dataclasses.asdict(settings), final_loss=round(losses[-1], 4)))
    logger.info(json.dumps({"output": str(output), "sha256": sha256, "steps": len(losses),
                            "first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4),
                            "seconds_this_invocation": round(time.time() - started, 1),
                            "torch_threads": torch.get_num_threads()}))
    return output


if __name__ == "__main__":
    main()
