#!/usr/bin/env python
"""Generate class-agnostic pseudo-labels (SAM automatic masks) for the DEARLi warm-up stage.

Paper scale (ADE20K train, SAM ViT-H, one process per GPU; resumable: rerun the same command
after a crash or Ctrl-C and only the missing images are done)::

    python tools/generate_sam_pseudolabels.py --dataset ade20k_sam_train \
        --model-type vit_h --checkpoint sam_vit_h_4b8939.pth \
        --output datasets/ADEChallengeData2016/sam_labels --num-gpus 8

Labels land in ``<output>/<model_type>/points_per_side_32_pred_iou_thresh_0.88_stability_score_
thresh_0.95/`` (printed at the end; that is the folder for ``SAM.LABEL_DIR``). Other inputs:
``--images <folder or list file>``; ``--shard i/n`` splits the work across machines;
``--benchmark`` only measures images/second; ``--oracle`` writes a panoptic dataset's ground-truth
segments (without classes) instead of SAM masks: an ORACLE proposal source for the CPU demo.
Trailing KEY VALUE pairs override the config's SAM.* defaults (e.g. ``SAM.POINTS_PER_SIDE 16``);
``--threads`` sets the CPU threads of each process (default: free cores / processes).

One writer per shard: a run locks its shard of the label folder (a second run of the same shard is
refused with the holder's pid and host; the lock of a killed run is taken over). A whole-folder run
also removes ``.tmp-*`` leftovers of killed writers. Runs of different partitions of one folder
(e.g. ``--shard 0/2`` next to ``--shard 0/3``) are not detected.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch
from detectron2.utils.logger import setup_logger

import dearli  # noqa: F401  (registers the datasets)
from dearli.cli import add_tool_arguments, parse_tool_args, split_overrides
from dearli.config import load_config
from dearli.data.datasets.from_config import register_config_datasets
from dearli.data import sam_oracle
from dearli.data.sam_format import SamLabelError, ensure_meta
from dearli.sam.generator import GeneratorSettings, SamCheckpointError, SamMaskGenerator, build_sam, file_sha256
from dearli.sam.pipeline import (
    RunSummary,
    benchmark,
    collect_images,
    generate_labels,
    label_dir_lock,
    parse_shard,
    shard,
    summary_path,
)
from dearli.utils.run_lock import FolderLockedError
from dearli.utils.threads import setup_threads

logger = logging.getLogger("dearli.generate_sam_pseudolabels")
# segment_anything model types that must not run with random weights unless asked to.
_REAL_SAM_TYPES = ("vit_b", "vit_l", "vit_h")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("images")
    src.add_argument("--dataset", nargs="+", default=[], help="registered dataset name(s)")
    src.add_argument("--images", nargs="+", default=[], help="image folder(s) or list file(s) (first token per line)")
    src.add_argument("--image-root", help="root for relative paths in list files (default: the list's folder)")
    p.add_argument("--output", help="label root; labels go to <output>/<model_type>/<settings>/")
    p.add_argument("--config-file", help="take SAM.* defaults from this dearli config")
    sam = p.add_argument_group("SAM (defaults: SAM.* of the config)")
    sam.add_argument("--model-type", help="vit_b | vit_l | vit_h | dearli_tiny")
    sam.add_argument("--checkpoint", help="SAM checkpoint (.pth state dict)")
    sam.add_argument("--random-weights", action="store_true", help="allow vit_* without checkpoint (benchmarks only)")
    sam.add_argument("--points-per-side", type=int)
    sam.add_argument("--pred-iou-thresh", type=float)
    sam.add_argument("--stability-score-thresh", type=float)
    sam.add_argument("--points-per-batch", type=int)
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--shard", default="0/1", help="do only part i of n (i/n), e.g. one per machine")
    run.add_argument("--num-gpus", type=int, default=1, help="spawn one process per GPU (splits --shard further)")
    run.add_argument("--oracle", action="store_true", help="ORACLE: ground-truth segments of --dataset, no SAM")
    run.add_argument("--benchmark", action="store_true", help="only measure images/s (writes nothing)")
    run.add_argument("--benchmark-images", type=int, default=8)
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--progress-position", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("--stop-after", type=int, help="debug: exit like a crash after k new records")
    add_tool_arguments(p)
    return parse_tool_args(p, argv)


def resolve_sam_options(args):
    """(model_type, checkpoint, GeneratorSettings): CLI values over the config's SAM.* values."""
    cfg = load_config(args.config_file, args.opts)
    defaults = GeneratorSettings.from_config(cfg)
    settings = GeneratorSettings(
        points_per_side=args.points_per_side or defaults.points_per_side,
        pred_iou_thresh=defaults.pred_iou_thresh if args.pred_iou_thresh is None else args.pred_iou_thresh,
        stability_score_thresh=(
            defaults.stability_score_thresh if args.stability_score_thresh is None else args.stability_score_thresh
        ),
        points_per_batch=args.points_per_batch or defaults.points_per_batch,
    )
    model_type = args.model_type or cfg.SAM.MODEL_TYPE
    checkpoint = args.checkpoint or cfg.SAM.CHECKPOINT or None
    if model_type in _REAL_SAM_TYPES and not checkpoint and not args.random_weights:
        raise SystemExit(f"--model-type {model_type} needs --checkpoint (random SAM weights give no usable masks)")
    return model_type, checkpoint, settings


def sam_meta(model_type, checkpoint, settings):
    """meta.json content: everything that determines the masks."""
    return {
        "source": "sam",
        "model_type": model_type,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else "random-weights",
        "generator": settings.mask_defining(),
    }


def run_sam(args, items, shard_index, shard_count):
    model_type, checkpoint, settings = resolve_sam_options(args)
    model = build_sam(model_type, checkpoint, args.device)
    generator = SamMaskGenerator(model, settings)
    if args.benchmark:
        result = benchmark(generator, model, items[: args.benchmark_images])
        result.update(model_type=model_type, device=args.device, **settings.mask_defining())
        print(json.dumps(result))
        return None
    label_dir = Path(args.output) / settings.label_subdir(model_type)
    with label_dir_lock(label_dir, shard_index, shard_count):
        ensure_meta(label_dir, sam_meta(model_type, checkpoint, settings))
        summary = generate_labels(
            items, label_dir, generator.generate, args.stop_after, not args.no_progress, args.progress_position
        )
        summary.save(summary_path(label_dir, shard_index, shard_count))
    return label_dir, summary


def run_oracle(args):
    if not args.dataset or args.images:
        raise SystemExit("--oracle needs --dataset (panoptic datasets with ground truth) and no --images")
    dicts = [d for name in args.dataset for d in sam_oracle.with_panoptic_ground_truth(name)]
    label_dir = Path(args.output) / sam_oracle.ORACLE_SUBDIR
    with label_dir_lock(label_dir):
        written = sam_oracle.write_oracle_labels(dicts, label_dir)
    summary = RunSummary(images=len(dicts), already_done=len(dicts) - len(written), generated=len(written),
                         masks=sum(written.values()))
    return label_dir, summary


def spawn_per_gpu(args, argv, shard_index, shard_count):
    """One child per GPU on sub-shard (shard_index * N + k) / (shard_count * N); returns their label dir."""
    n = args.num_gpus
    model_type, _, settings = resolve_sam_options(args)
    label_dir = Path(args.output) / settings.label_subdir(model_type)
    with label_dir_lock(label_dir, shard_index, shard_count):  # the children lock their sub-shards
        children = []
        options, overrides = split_overrides(argv)  # the children's options go before the KEY VALUE pairs
        for k in range(n):
            child_argv = _without_options(options, {"--num-gpus", "--shard", "--progress-position"})
            child_argv += ["--shard", f"{shard_index * n + k}/{shard_count * n}", "--progress-position", str(k)]
            child_argv += overrides
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(k))
            children.append(subprocess.Popen([sys.executable, __file__, *child_argv], env=env))
        codes = [child.wait() for child in children]
    if any(codes):
        raise SystemExit(f"GPU processes exited with {codes}; rerun the same command to resume")
    parts = [RunSummary.load(summary_path(label_dir, shard_index * n + k, shard_count * n)) for k in range(n)]
    return label_dir, RunSummary.merged(parts)


def _without_options(argv, names):
    """``argv`` minus the given options and their values."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in names:
            skip = True
        elif not any(token.startswith(name + "=") for name in names):
            out.append(token)
    return out


def report(label_dir, summary, oracle):
    kind = "ORACLE proposals (ground-truth segments, not SAM)" if oracle else "SAM pseudo-labels"
    print(f"[{kind}] {summary.format()}")
    for file_name, error in summary.failures:
        print(f"  failed: {file_name}: {error}")
    for path, reason in summary.damaged:
        print(f"  regenerated damaged record: {path}: {reason}")
    print(f"label folder (SAM.LABEL_DIR): {label_dir}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logger(name="dearli")
    setup_threads(args.threads, processes=args.num_gpus if args.num_gpus > 1 and not args.benchmark else 1)
    try:
        _run(args, argv)
    except (SamCheckpointError, SamLabelError, FolderLockedError, FileNotFoundError, KeyError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e


def _run(args, argv):
    if not args.output and not args.benchmark:
        raise SystemExit("--output is required (root folder of the pseudo-labels)")
    # --dataset names resolve as in training: split lists under DATASETS.SPLITS_ROOT, config-declared sets.
    register_config_datasets(load_config(args.config_file, args.opts))
    if args.oracle:
        report(*run_oracle(args), oracle=True)
        return
    shard_index, shard_count = parse_shard(args.shard)
    if args.num_gpus > 1 and not args.benchmark:
        report(*spawn_per_gpu(args, argv, shard_index, shard_count), oracle=False)
        return
    items = shard(collect_images(args.dataset, args.images, args.image_root), shard_index, shard_count)
    result = run_sam(args, items, shard_index, shard_count)
    if result is not None:
        report(*result, oracle=False)
        if result[1].failures:
            logger.warning("%d unreadable images were skipped (listed above)", len(result[1].failures))


if __name__ == "__main__":
    main()
