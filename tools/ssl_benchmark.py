#!/usr/bin/env python
"""Semi-supervised vs supervised-only training from a shared start: the benchmark and `make demo`.

    python tools/ssl_benchmark.py [--preset benchmark|demo] [--datasets shapes camvid] [--seeds 1 2 3]
                                  [--burn-in-iters N] [--branch-iters N] [--threads N] [--workers N]
                                  [--output-dir DIR] [--overwrite] [KEY VALUE ...]

KEY VALUE pairs come after the options (dearli/cli.py: the same rules as every tool).

The protocol (dearli/engine/protocol.py), per dataset and seed: a supervised burn-in on the
labeled images (the shared start; it stands in for the SAM warm-up, which needs pretrained SAM),
then from its final checkpoint two branches of equal iterations, supervised-only and
semi-supervised (EMA-teacher pseudo-labels on the unlabeled images, CutMix, strong views). The
summary (summary.json / summary.md) gives student and teacher PQ/SQ/RQ/mIoU and per-class IoU,
mean +- sample std over every seed finished in the output folder (also those of earlier
invocations), and the paired difference semi-supervised minus supervised-only.

Presets (options given on the command line win over them):
  benchmark  shapes and CamVid 1/8, seeds 1 2 3, 2000 + 4000 iterations, 4 evaluations per stage;
  demo       `make demo`: shapes, seed 1, 1500 + 800 iterations, and pictures in visuals/.
Training recipe of both (override with trailing KEY VALUE pairs, as for train_net.py): batch 4
labeled (+4 unlabeled), AdamW LR 1e-3 (the paper's 1e-4 is for a pretrained CLIP), teacher EMA
decay 0.99 (short runs), pseudo-label quality on 16 unlabeled images at every evaluation
(SSL.PSEUDO_QUALITY_IMAGES; each stage's quality_curves.png plots it with val PQ / mIoU); `MODEL.DEVICE cuda` runs it on a GPU. Model: the tiny config (a random tiny CLIP with a fixed orthogonal class
embedding), so this measures the semi-supervised machinery, not CLIP recognition.

Resumable: rerun the same command after an interruption; finished stages are read back, an
unfinished one resumes from its last checkpoint. Adding seeds to a finished folder trains only the
new ones. A non-empty folder that this tool did not write (or wrote with other settings) is
refused unless --overwrite is given; nothing is ever deleted.

Each stage folder <output>/<dataset>/seed<N>/<stage>/ holds its complete config.yaml, so
  python tools/train_net.py --eval-only --config-file <stage>/config.yaml MODEL.WEIGHTS <stage>/model_final.pth
reproduces its numbers.
"""
import argparse
import contextlib
import logging
import os
import sys
import time

import dearli  # noqa: F401  (registers datasets and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.data.datasets.builtin import get_datasets_root
from dearli.data.datasets.semantic import camvid_root, dataset_cache_root
from dearli.data.datasets.shapes import shapes_cache_root
from dearli.engine import protocol
from dearli.engine.protocol_visuals import save_pseudo_label_panels, save_stage_predictions
from dearli.engine.quality_curves import plot_quality_curves
from dearli.utils.atomic_io import atomic_write, atomic_write_json
from dearli.utils.output_dir import OutputDirError, claim_output_dir
from dearli.utils.threads import setup_threads

TOOL = "tools/ssl_benchmark.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_CONFIGS = {
    "shapes": os.path.join(REPO, "configs", "shapes", "tiny_dearli.yaml"),
    "camvid": os.path.join(REPO, "configs", "camvid", "tiny_dearli.yaml"),
}
RECIPE = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.001", "MODEL.TEACHER.EMA_DECAY", "0.99",
          "SSL.PSEUDO_QUALITY_IMAGES", "16"]
QUALITY_CURVES_FILE = "quality_curves.png"  # per stage: val and pseudo-label quality over iterations
PRESETS = {
    "benchmark": {"datasets": ["shapes", "camvid"], "seeds": [1, 2, 3], "burn_in_iters": 2000,
                  "branch_iters": 4000, "evals_per_stage": 4, "visuals": 0,
                  "output_dir": os.path.join(REPO, "output", "ssl_benchmark")},
    "demo": {"datasets": ["shapes"], "seeds": [1], "burn_in_iters": 1500, "branch_iters": 800,
             "evals_per_stage": 1, "visuals": 3, "output_dir": os.path.join(REPO, "output", "demo")},
}
# What `make demo` exercises and what it cannot (printed before the demo runs).
DEMO_SCOPE = """\
Exercised: data loading with resumable per-sample seeds, weak/strong views, the EMA teacher's
panoptic pseudo-labels, CutMix, one set criterion for labeled and pseudo-labeled targets, gradient
clipping, poly LR, atomic checkpoints, PQ/SQ/RQ and mIoU of student and teacher.
Not exercised: pretrained CLIP (the tiny CLIP is random, classes use a fixed orthogonal embedding,
the zero-shot weight is 0), real SAM (a supervised burn-in replaces the warm-up), GPUs, mixed
precision, paper-scale models and data. The numbers show the pipeline working, not the paper's gains."""


def data_locations() -> str:
    """The --help paragraph naming every data location read, with the value the environment gives now."""
    return f"""data locations (environment variables, read when the tool starts):
  shapes          generated on first use into $DEARLI_CACHE/shapes (default ~/.cache/dearli/shapes);
                  now {shapes_cache_root()}
  camvid          $DEARLI_CAMVID, else $DETECTRON2_DATASETS/camvid (layout {{train,val}}/images/*.jpg,
                  {{train,val}}/labels/*.png; see datasets/README.md); now {camvid_root(get_datasets_root())}
  camvid (cache)  panoptic/semantic ground truth generated from its labels into $DEARLI_DATASET_CACHE
                  (default ~/.cache/dearli/datasets); now {dataset_cache_root()}"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=data_locations(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="benchmark", help="defaults (see above)")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASET_CONFIGS), help="datasets to train")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to train (SEED of every stage)")
    parser.add_argument("--burn-in-iters", type=int, help="iterations of the shared supervised start")
    parser.add_argument("--branch-iters", type=int, help="iterations of each branch")
    parser.add_argument("--evals-per-stage", type=int, help="evaluations per stage, evenly spaced, the last at its end")
    parser.add_argument("--checkpoint-period", type=int, default=500, help="iterations between resumable checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="data-loader worker processes (default 1)")
    parser.add_argument("--visuals", type=int, help="val images drawn per stage into visuals/ (0: none)")
    parser.add_argument("--output-dir", help="output folder (default: output/ssl_benchmark, or output/demo for the demo preset)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder this tool did not write, or wrote with other "
                             "settings, retraining every stage requested (nothing is deleted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on the console")
    add_tool_arguments(parser)  # --threads and the trailing KEY VALUE overrides of every stage
    # Not the load-dependent default of the other tools: the thread count is part of the pinned
    # settings (float sums depend on it), so results must not depend on the machine's load.
    parser.set_defaults(threads=1)
    for action in parser._actions:
        if action.dest == "threads":
            action.help = ("torch CPU threads (default 1, pinned: the fastest for the tiny model on a shared "
                           "2-core machine, and part of the settings that decide the results)")
        if action.dest == "opts":
            action.help = ("config overrides of every stage, after the recipe (the protocol's own keys "
                           "OUTPUT_DIR, SEED, SOLVER.MAX_ITER, ... win over them)")
    args = parse_tool_args(parser, argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("burn_in_iters", "branch_iters", "evals_per_stage", "checkpoint_period"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if "camvid" in args.datasets and not os.path.isdir(os.path.join(camvid_root(get_datasets_root()), "train")):
        parser.error(f"CamVid not found at {camvid_root(get_datasets_root())}: set DEARLI_CAMVID to the CamVid "
                     "folder (with train/ and val/, see datasets/README.md), or put it at $DETECTRON2_DATASETS/camvid")
    return args


def pinned_settings(args) -> dict:
    """The settings that decide the results; a folder is resumed only with the same ones."""
    return {"burn_in_iters": args.burn_in_iters, "branch_iters": args.branch_iters,
            "evals_per_stage": args.evals_per_stage, "checkpoint_period": args.checkpoint_period,
            "threads": args.threads, "workers": args.workers, "opts": list(args.opts)}


def stage_config_factory(args):
    """(dataset, seed, stage) -> the stage's frozen config."""
    budget = protocol.Budget(args.burn_in_iters, args.branch_iters, args.evals_per_stage, args.checkpoint_period)
    opts = RECIPE + ["DATALOADER.NUM_WORKERS", str(args.workers)] + list(args.opts)
    return lambda dataset, seed, stage: protocol.stage_config(
        DATASET_CONFIGS[dataset], opts, args.output_dir, dataset, seed, stage, budget)


@contextlib.contextmanager
def logs_to_file(path):
    """Send Detectron2's and dearli's log lines to ``path`` (the console keeps the tool's own lines
    and the progress bars); restores the loggers afterwards."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    loggers = [logging.getLogger(name) for name in ("detectron2", "d2", "dearli", "fvcore")] + [logging.getLogger()]
    saved = [(lg.level, lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (level, propagate, handlers) in zip(loggers, saved):
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate
        handler.close()


def write_summary(args, config_of) -> str:
    """summary.json / summary.md over every finished stage in the output folder; the markdown."""
    datasets = [d for d in DATASET_CONFIGS if os.path.isdir(os.path.join(args.output_dir, d))]
    summary = protocol.summarize(protocol.finished_runs(args.output_dir, datasets, config_of))
    budget = (f"Per seed: {args.burn_in_iters} burn-in iterations, then {args.branch_iters} per branch; "
              f"{args.threads} thread(s); mean +- sample std over the seeds listed.")
    text = budget + "\n\n" + protocol.markdown(summary)
    atomic_write_json(os.path.join(args.output_dir, "summary.json"),
                      {"settings": pinned_settings(args), "summary": summary}, indent=1)
    with atomic_write(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def run_seed(args, config_of, dataset, seed, number, total):
    """The three stages of one dataset and seed, then its pictures if asked."""
    for stage in protocol.STAGES:
        cfg = config_of(dataset, seed, stage)
        description = f"[{number}/{total}] {dataset} seed {seed} {protocol.STAGE_TITLES[stage]}"
        was_finished = protocol.finished_result(cfg) is not None and not args.overwrite
        result = protocol.run_stage(cfg, description, fresh=args.overwrite)
        seconds = "already finished" if was_finished else f"{result['seconds_of_last_run']:.0f} s"
        print(f"{description}: {seconds}; student PQ {result['metrics']['panoptic_seg']['PQ']:.1f}", flush=True)
        plot_quality_curves(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), os.path.join(cfg.OUTPUT_DIR, QUALITY_CURVES_FILE),
                            f"{dataset}, seed {seed}: {protocol.STAGE_TITLES[stage]}")
        number += 1
    if args.visuals:
        visuals = os.path.join(args.output_dir, dataset, f"seed{seed}", "visuals")
        for stage in protocol.STAGES:
            save_stage_predictions(config_of(dataset, seed, stage), stage, visuals, args.visuals)
        save_pseudo_label_panels(config_of(dataset, seed, protocol.SEMI_SUPERVISED), visuals, args.visuals)
        print(f"pictures in {visuals}", flush=True)
    return number


def main(argv=None):
    args = parse_args(argv)
    setup_threads(args.threads)
    try:
        claim_output_dir(args.output_dir, TOOL, pinned_settings(args), overwrite=args.overwrite)
    except OutputDirError as error:
        print(f"{TOOL}: error: {error}", file=sys.stderr)
        return 2
    showing_progress = protocol.ProtocolTrainer.progress
    protocol.ProtocolTrainer.progress = not args.no_progress
    try:
        return run(args)
    finally:
        protocol.ProtocolTrainer.progress = showing_progress


def run(args):
    """Every requested stage, then the summary over the whole output folder."""
    log = os.path.join(args.output_dir, "log.txt")
    print(f"Preset {args.preset}: {', '.join(args.datasets)}, seeds {args.seeds}, {args.burn_in_iters} burn-in + "
          f"{args.branch_iters} iterations per branch, {args.threads} thread(s).\nLogs: {log}; per stage "
          f"config.yaml, metrics.json and TensorBoard events under {args.output_dir}/<dataset>/seed<N>/<stage>/ "
          f"(tensorboard --logdir {args.output_dir}).", flush=True)
    if args.preset == "demo":
        print(DEMO_SCOPE + "\n", flush=True)
    config_of = stage_config_factory(args)
    start = time.perf_counter()
    with logs_to_file(log):
        number, total = 1, len(args.datasets) * len(args.seeds) * len(protocol.STAGES)
        for dataset in args.datasets:
            for seed in args.seeds:
                number = run_seed(args, config_of, dataset, seed, number, total)
                write_summary(args, config_of)  # partial results readable while the rest runs
    text = write_summary(args, config_of)
    print("\n" + text)
    print(f"Total time {time.perf_counter() - start:.0f} s. Summary: {args.output_dir}/summary.{{md,json}}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
