#!/usr/bin/env python
"""Convert a reference DEARLi checkpoint (student, teacher or warm-up; helen1c/DEARLi) for dearli.

dearli keeps the reference state-dict names, so conversion only drops what dearli does not store
(the criterion's constant class-weight buffers and, unless --keep-clip, the frozen CLIP, which
comes from MODEL.OPEN_CLIP.PRETRAINED) and checks that every remaining key has a place::

    python tools/convert_reference_checkpoint.py decoder_warmup_on_ade20k.pth \
        checkpoints/warmup_sam_ade20k.pth \
        --config-file configs/ade20k/dearli_convnext_base_1_128.yaml

With --config-file the converted weights are also loaded into the model that config builds (random
CLIP weights unless MODEL.OPEN_CLIP.PRETRAINED is reachable), printing the per-module load report,
and the command fails when a trainable parameter is missing. Trailing KEY VALUE pairs override
that config, as in train_net.py.
"""
import argparse
import logging
import sys

import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

import dearli  # noqa: F401  (registers datasets and model components)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.modeling.checkpoint import (
    DEARLiCheckpointer,
    atomic_write,
    convert_reference_state_dict,
    trainable_keys_missing_from,
)
from dearli.modeling.weight_files import CheckpointError, UnsafeCheckpointError, read_weight_file
from dearli.utils.threads import setup_threads

logger = logging.getLogger("dearli.convert_reference_checkpoint")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="reference checkpoint (.pth; Detectron2 format or a bare state dict)")
    parser.add_argument("output", help="converted checkpoint to write (.pth)")
    parser.add_argument("--keep-clip", action="store_true", help="keep the backbone.clip_model.* tensors")
    parser.add_argument("--config-file", default="", help="also load the result into this config's model")
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="unpickle arbitrary objects (only for files you trust; default: tensors and containers only)",
    )
    add_tool_arguments(parser)
    return parse_tool_args(parser, argv)


def load_reference_state_dict(path: str, allow_pickle: bool = False):
    """The model state dict inside a reference checkpoint file."""
    try:
        checkpoint = read_weight_file(path, allow_unsafe_pickle=allow_pickle)
    except FileNotFoundError:
        raise FileNotFoundError(f"reference checkpoint {path!r} does not exist") from None
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{e} (this tool: re-run with --allow-pickle)") from None
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path!r} holds no state dict (expected {{'model': {{name: tensor}}}} or {{name: tensor}})")
    return state_dict


def check_against_config(config_file: str, checkpoint_path: str, opts=()) -> None:
    """Load ``checkpoint_path`` into the model of ``config_file`` (+ KEY VALUE ``opts``); fail on
    missing trainable keys."""
    cfg = load_config(config_file, list(opts) + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    checkpointer = DEARLiCheckpointer(model)
    checkpointer.load(checkpoint_path)
    missing = trainable_keys_missing_from(model, checkpointer.last_load_report.matched)
    if missing:
        raise SystemExit(f"{len(missing)} trainable parameters of {config_file} are not in the converted file: {missing[:10]}")


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logger(name="dearli")
    setup_logger(name="dearli.convert_reference_checkpoint")
    setup_threads(args.threads)
    if args.opts and not args.config_file:
        raise SystemExit(f"config overrides {' '.join(args.opts)} need --config-file")
    try:
        state_dict = load_reference_state_dict(args.input, args.allow_pickle)
    except CheckpointError as e:  # unsafe or unreadable: one line naming the file
        raise SystemExit(f"error: {e}") from e
    converted, dropped = convert_reference_state_dict(state_dict, keep_clip=args.keep_clip)
    with atomic_write(args.output) as f:
        torch.save({"model": converted, "__author__": f"converted from {args.input}"}, f)
    logger.info(f"wrote {len(converted)} tensors to {args.output}; dropped {len(dropped)} ({sorted(set(k.split('.')[0] for k in dropped))})")
    if args.config_file:
        check_against_config(args.config_file, args.output, args.opts)


if __name__ == "__main__":
    sys.exit(main())
