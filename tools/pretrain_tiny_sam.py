#!/usr/bin/env python
"""Pretrain the tiny SAM (model type ``dearli_tiny``) on class-agnostic segments of synthetic scenes.

segment_anything's own ``Sam`` (the ``dearli_tiny`` configuration of ``dearli/sam/tiny.py``) learns
from point and box prompts with SAM's losses on scenes drawn from a random stream disjoint from every
``dearli_shapes_*`` split (recipe: ``dearli/sam/pretrain.py``). The result is a half-precision
safetensors state dict plus its manifest (settings, sha256), loaded by
``tools/generate_sam_pseudolabels.py --model-type dearli_tiny --checkpoint <file>`` like any SAM
checkpoint. The committed weights were made by the default command::

    python tools/pretrain_tiny_sam.py            # -> dearli/weights/dearli_tiny_sam_shapes.safetensors

Deterministic from --seed; resumable: a checkpoint is written atomically to --work-dir every
--checkpoint-period steps, and rerunning the same command with --resume continues from it and ends
with the same weights as an uninterrupted run (same machine and thread count).
"""
import argparse
import dataclasses
import json
import logging
import sys
import time

import numpy as np
import torch
from detectron2.utils.logger import setup_logger

from dearli.sam.pretrain import PretrainSettings, pretrain
from dearli.sam.weights import TRAINED_TINY_SAM, save_sam_weights

logger = logging.getLogger("dearli.pretrain_tiny_sam")
DEFAULTS = PretrainSettings()
LOSS_WINDOW = 50  # steps averaged for the reported final loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(TRAINED_TINY_SAM), help="weights file (.safetensors); manifest beside it")
    p.add_argument("--work-dir", default="output/tiny_sam_pretrain", help="folder of the resumable checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from --work-dir's checkpoint if there is one")
    p.add_argument("--checkpoint-period", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # debug: stop like a crash after k steps
    for field in dataclasses.fields(PretrainSettings):
        if field.name != "model_type":
            p.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="dearli")
    settings = PretrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainSettings)
                                   if f.name != "model_type"})
    if not args.output.endswith(".safetensors"):
        raise SystemExit(f"--output {args.output}: the weights file must end in .safetensors")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        model, history = pretrain(settings, args.work_dir, args.resume, args.checkpoint_period, args.stop_after,
                                  progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if len(history) < settings.steps:
        logger.info("stopped after %d of %d steps (--stop-after); rerun with --resume", len(history), settings.steps)
        return
    final = {k: float(np.mean([h[k] for h in history[-LOSS_WINDOW:]])) for k in history[-1]}
    sha256 = save_sam_weights(model.state_dict(), args.output, settings.model_type, {
        **settings.to_dict(), "final_losses": final, "torch_threads": args.threads,
        "command": "python tools/pretrain_tiny_sam.py " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    logger.info("%d steps in %.0f s (this call); mean losses of the last %d steps: %s", settings.steps,
                time.perf_counter() - start, LOSS_WINDOW, json.dumps(final))
    print(f"weights: {args.output} (sha256 {sha256})")


if __name__ == "__main__":
    main()
