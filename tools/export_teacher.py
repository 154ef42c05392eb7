#!/usr/bin/env python
"""Export the EMA teacher of a training checkpoint as a standalone checkpoint.

    python tools/export_teacher.py OUTPUT_DIR/model_final.pth teacher.pth

The output holds ``{"model": <teacher state dict>}``, loadable as MODEL.WEIGHTS by train_net.py
(``--eval-only``), the demo and any Detectron2 tool. Like every dearli checkpoint it leaves out a
frozen CLIP, which comes from MODEL.OPEN_CLIP.PRETRAINED, and keeps the training checkpoint's
backbone fingerprint. The input is read tensors-only; an unreadable one is reported by name.
The file is written atomically.
"""
import argparse
import os
import sys

import torch

from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.engine.teacher import teacher_state_of
from dearli.modeling.fingerprint import FINGERPRINT_KEY
from dearli.modeling.weight_files import CheckpointError, read_weight_file
from dearli.utils.atomic_io import atomic_write
from dearli.utils.threads import setup_threads


def export_teacher(checkpoint: str, output: str) -> int:
    """Write the teacher of ``checkpoint`` to ``output``; returns the number of tensors."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"training checkpoint {checkpoint} does not exist")
    stored = read_weight_file(checkpoint)
    teacher = teacher_state_of(stored, checkpoint)
    exported = {"model": teacher, "__source__": f"teacher of {os.path.abspath(checkpoint)}"}
    if FINGERPRINT_KEY in stored:
        exported[FINGERPRINT_KEY] = stored[FINGERPRINT_KEY]
    with atomic_write(output) as f:
        torch.save(exported, f)
    return len(teacher)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint written by DEARLiTrainer (model_*.pth)")
    parser.add_argument("output", help="where to write the teacher checkpoint (.pth)")
    add_tool_arguments(parser, overrides=False)  # no config here: --threads only
    args = parse_tool_args(parser, argv)
    setup_threads(args.threads)
    try:
        count = export_teacher(args.checkpoint, args.output)
    except (CheckpointError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote the teacher ({count} tensors) of {args.checkpoint} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
