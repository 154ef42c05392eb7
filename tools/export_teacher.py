#!/usr/bin/env python
"""Export the EMA teacher of a training checkpoint as a standalone checkpoint.

    python tools/export_teacher.py OUTPUT_DIR/model_final.pth teacher.pth

The output holds ``{"model": <teacher state dict>}``, loadable as MODEL.WEIGHTS by train_net.py
(``--eval-only``), the demo and any Detectron2 tool. Like every dearli checkpoint it leaves out a
frozen CLIP, which comes from MODEL.OPEN_CLIP.PRETRAINED. The file is written atomically.
"""
import argparse
import os
import sys

import torch

from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.engine.teacher import read_teacher_state
from dearli.utils.atomic_io import atomic_write
from dearli.utils.threads import setup_threads


def export_teacher(checkpoint: str, output: str) -> int:
    """Write the teacher of ``checkpoint`` to ``output``; returns the number of tensors."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"training checkpoint {checkpoint} does not exist")
    teacher = read_teacher_state(checkpoint)
    with atomic_write(output) as f:
        torch.save({"model": teacher, "__source__": f"teacher of {os.path.abspath(checkpoint)}"}, f)
    return len(teacher)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint written by DEARLiTrainer (model_*.pth)")
    parser.add_argument("output", help="where to write the teacher checkpoint (.pth)")
    add_tool_arguments(parser, overrides=False)  # no config here: --threads only
    args = parse_tool_args(parser, argv)
    setup_threads(args.threads)
    count = export_teacher(args.checkpoint, args.output)
    print(f"wrote the teacher ({count} tensors) of {args.checkpoint} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
