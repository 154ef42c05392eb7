#!/usr/bin/env python
"""The comparison protocol: semi- vs supervised-only (the benchmark, `make demo`) and DEARLi's ablation.

    python tools/ssl_benchmark.py [--preset benchmark|demo|ablation] [--datasets shapes camvid] [--seeds 1 2 3]
                                  [--warmup-iters N] [--burn-in-iters N] [--branch-iters N] [--stages NAME ...]
                                  [--threads N] [--workers N] [--output-dir DIR] [--overwrite] [KEY VALUE ...]

KEY VALUE pairs come after the options (dearli/cli.py: the same rules as every tool).

The protocol (dearli/engine/protocol.py) runs a table of stages per dataset and seed
(dearli/engine/protocol_tables.py). benchmark: a supervised burn-in on the labeled images
(the shared start), then from its final checkpoint two branches of equal iterations,
supervised-only and semi-supervised (EMA-teacher pseudo-labels on the unlabeled images, CutMix,
strong views). demo: supervised-only and DEARLi from a burn-in after DEARLi's warm-up (on shapes).
The summary (summary.json / summary.md) gives student and teacher PQ/SQ/RQ/mIoU and per-class
IoU, the pseudo-label quality at the end of each stage and its wall time, mean +- sample std over
every seed finished in the output folder (also those of earlier invocations), and the paired
difference of every branch minus supervised-only.

Presets (options given on the command line win over them):
  benchmark  shapes and CamVid 1/8, seeds 1 2 3, 2000 + 4000 iterations, 4 evaluations per stage;
  demo       `make demo`: DEARLi's path on shapes, seed 1: the tiny SAM's labels, 200 warm-up + 400
             burn-in iterations, then supervised-only | DEARLi, 300 iterations each, pictures in visuals/;
  ablation   DEARLi's ablation in miniature, seeds 1 2 3, 300 warm-up + 600 burn-in + 600 branch
             iterations, 2 evaluations per stage. shapes (every row on the tiny CLIP trained here,
             configs/shapes/tiny_dear_clip.yaml): supervised-only | mean teacher (alpha 0: the
             zero-shot ensemble off) | DEAR (alpha 0.4) | DEARLi (+ the class-agnostic warm-up on the
             tiny SAM's masks) | DEARLi on oracle proposals (upper bound); the optional extensions:
             DEAR + class definitions | + dense CLIP guidance | + tags on half the unlabeled images
             (dear_definitions, dear_dense, dear_tags), DEARLi + SAM refinement (dearli_refined).
             camvid (--datasets camvid): supervised-only | mean teacher, on the tiny config with the
             tiny ConvNeXt trained from scratch (configs/camvid/tiny_capacity.yaml: the benchmark's
             frozen-trunk config underfits the 46 labeled images).
Equal iterations from the same start (ablation): every row gets the same supervised burn-in and the
same branch iterations; the Li rows first run the class-agnostic warm-up (--warmup-iters), then
that same burn-in from the warm-up's weights, then their branch. The warm-up is the component under
test, added on top of an equal schedule as in the paper, never taken from the labeled or
semi-supervised iterations; rows without it share one burn-in (alpha acts only at inference).
Files it needs: the tiny SAM's pseudo-labels of the shapes training images
(output/shapes/tiny_sam_labels/, dataset dearli_shapes_sam_train). The ablation and the demo
generate missing ones first (resumable: tools/generate_sam_pseudolabels.py, the command is printed;
about 3 min).
Budget: measured 0.13 s per supervised, 0.16 per warm-up and 0.57 per semi-supervised iteration
and 5 s per evaluation (1 thread, while two other trainings kept the 2 cores busy), so one shapes
seed takes about 31 min; 3 seeds about 95 min in one process, or about 55 min (labels included) in
two processes sharing the folder, one per group of rows:
  python tools/ssl_benchmark.py --preset ablation --stages supervised_only mean_teacher dear &
  python tools/ssl_benchmark.py --preset ablation --stages dearli dearli_oracle
(--stages runs the named stages and the starts they need; the summary covers every finished stage.)
Training recipe (override with trailing KEY VALUE pairs, as for train_net.py): batch 4
labeled (+4 unlabeled), AdamW LR 1e-3 (the paper's 1e-4 is for a pretrained CLIP), teacher EMA
decay 0.99 (short runs), pseudo-label quality on 16 unlabeled images at every evaluation
(SSL.PSEUDO_QUALITY_IMAGES; each stage's quality_curves.png plots it with val PQ / mIoU); `MODEL.DEVICE
cuda` runs it on a GPU. benchmark model (and the demo's on CamVid): the tiny config (a random tiny
CLIP with a fixed orthogonal class embedding), so it measures the semi-supervised machinery, not CLIP
recognition; the demo on shapes and the ablation run the tiny CLIP and tiny SAM trained here.
A row's own overrides win over trailing KEY VALUE pairs; the protocol's keys win over both.

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
import itertools
import logging
import os
import subprocess
import sys
import time

from detectron2.data import DatasetCatalog

import dearli  # noqa: F401  (registers datasets and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.data.datasets.builtin import get_datasets_root
from dearli.data.datasets.semantic import camvid_root, dataset_cache_root
from dearli.data.datasets.shapes import shapes_cache_root
from dearli.data.sam_format import finished_keys, image_key, settings_dirname
from dearli.engine import protocol, protocol_summary
from dearli.engine.protocol_tables import TABLES
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
    # Sized to fit 10 minutes of one core, the tiny SAM's labels of the 224 training images included.
    "demo": {"datasets": ["shapes"], "seeds": [1], "warmup_iters": 200, "burn_in_iters": 400, "branch_iters": 300,
             "evals_per_stage": 1, "visuals": 3, "output_dir": os.path.join(REPO, "output", "demo")},
    # Budget: 3 shapes seeds in about an hour on 2 cores (see the docstring's measurement).
    "ablation": {"datasets": ["shapes"], "seeds": [1, 2, 3], "warmup_iters": 300, "burn_in_iters": 600,
                 "branch_iters": 600, "evals_per_stage": 2, "visuals": 0,
                 "output_dir": os.path.join(REPO, "output", "ablation")},
}
GENERATOR = os.path.join(REPO, "tools", "generate_sam_pseudolabels.py")
# What `make demo` exercises and what it cannot (printed before the demo runs).
DEMO_SCOPE = """\
Exercised: DEARLi's path on the two models trained here (not CLIP or SAM: tiny models trained on the
synthetic world, README "Tiny foundation models"): the tiny SAM's automatic masks of every training
image (the unchanged generation tool), the class-agnostic warm-up on them, the tiny CLIP's text
classifier (synonyms x templates) with the zero-shot mask-pooling ensemble (alpha 0.4), the EMA
teacher's panoptic pseudo-labels, weak/strong views, CutMix, one set criterion for labeled and
pseudo-labeled targets, atomic resumable checkpoints, PQ/SQ/RQ and mIoU of student and teacher, the
pseudo-label quality against withheld labels.
Not exercised: real CLIP and SAM weights, GPUs, mixed precision, paper-scale models and data. One
seed at a tiny budget: the numbers show the path working end to end, not the paper's gains (the
ablation's 3 seeds are in the README)."""


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
    parser.add_argument("--warmup-iters", type=int,
                        help="iterations of the class-agnostic warm-up (the ablation's Li rows, the demo)")
    parser.add_argument("--burn-in-iters", type=int, help="iterations of each supervised start")
    parser.add_argument("--branch-iters", type=int, help="iterations of each branch")
    parser.add_argument("--stages", nargs="+", help="run only these stages of the preset's tables (and the "
                        "starts they need), e.g. to split the rows over two processes sharing --output-dir")
    parser.add_argument("--evals-per-stage", type=int, help="evaluations per stage, evenly spaced, the last at its end")
    parser.add_argument("--checkpoint-period", type=int, default=500, help="iterations between resumable checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="data-loader worker processes (default 1)")
    parser.add_argument("--visuals", type=int, help="val images drawn per stage into visuals/ (0: none)")
    parser.add_argument("--output-dir",
                        help="output folder (default by preset: output/ssl_benchmark, output/demo, output/ablation)")
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
    warmup_iters_given = args.warmup_iters is not None
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    check_stage_arguments(parser, args, warmup_iters_given)
    for name in ("burn_in_iters", "branch_iters", "evals_per_stage", "checkpoint_period"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if "camvid" in args.datasets and not os.path.isdir(os.path.join(camvid_root(get_datasets_root()), "train")):
        parser.error(f"CamVid not found at {camvid_root(get_datasets_root())}: set DEARLI_CAMVID to the CamVid "
                     "folder (with train/ and val/, see datasets/README.md), or put it at $DETECTRON2_DATASETS/camvid")
    return args


def check_stage_arguments(parser, args, warmup_iters_given: bool) -> None:
    """--warmup-iters only for tables with a warm-up (set to 0 for the others); --stages only names
    stages of the preset's tables."""
    tables = TABLES[args.preset]
    warm_ups = any(s.role == protocol.WARM_UP for d in args.datasets for s in tables[d].stages)
    if not warm_ups:
        if warmup_iters_given:
            parser.error(f"--warmup-iters: the {args.preset} preset has no warm-up on {', '.join(args.datasets)}")
        args.warmup_iters = 0  # not pinned: the folder's settings stay those of a table without warm-up
    elif args.warmup_iters < 1:
        parser.error(f"--warmup-iters must be >= 1, got {args.warmup_iters}")
    known = {s.name for d in args.datasets for s in tables[d].stages}
    unknown = sorted(set(args.stages or ()) - known)
    if unknown:
        parser.error(f"--stages {' '.join(unknown)}: no such stage in the {args.preset} preset "
                     f"(stages: {', '.join(sorted(known))})")


def pinned_settings(args) -> dict:
    """The settings that decide the results; a folder is resumed only with the same ones."""
    settings = {"burn_in_iters": args.burn_in_iters, "branch_iters": args.branch_iters,
                "evals_per_stage": args.evals_per_stage, "checkpoint_period": args.checkpoint_period,
                "threads": args.threads, "workers": args.workers, "opts": list(args.opts)}
    if args.warmup_iters:  # only tables with a warm-up: folders of the other presets keep their manifest
        settings["warmup_iters"] = args.warmup_iters
    return settings


def stage_config_factory(args):
    """(dataset, seed, stage name) -> the stage's frozen config."""
    budget = protocol.Budget(args.burn_in_iters, args.branch_iters, args.evals_per_stage, args.checkpoint_period,
                             args.warmup_iters)
    opts = RECIPE + ["DATALOADER.NUM_WORKERS", str(args.workers)] + list(args.opts)
    return lambda dataset, seed, stage: protocol.stage_config(
        DATASET_CONFIGS[dataset], opts, args.output_dir, dataset, seed, TABLES[args.preset][dataset].stage(stage), budget)


def stages_to_run(table, requested) -> list:
    """The table's stages that ``requested`` names (all when None) and the starts they need, in table order."""
    wanted = set(s.name for s in table.stages) if requested is None else set(requested) & {s.name for s in table.stages}
    for stage in reversed(table.stages):
        if stage.name in wanted and stage.start is not None:
            wanted.add(stage.start)
    return [s for s in table.stages if s.name in wanted]


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
    tables = {d: t for d, t in TABLES[args.preset].items() if os.path.isdir(os.path.join(args.output_dir, d))}
    summary = protocol_summary.summarize(protocol.finished_runs(args.output_dir, tables, config_of), tables)
    warm_up = f"{args.warmup_iters} warm-up iterations (rows with one), " if args.warmup_iters else ""
    budget = (f"Per seed: {warm_up}{args.burn_in_iters} burn-in iterations, then {args.branch_iters} per branch; "
              f"{args.threads} thread(s); mean +- sample std over the seeds listed.")
    text = budget + "\n\n" + protocol_summary.markdown(summary, tables)
    atomic_write_json(os.path.join(args.output_dir, "summary.json"),
                      {"settings": pinned_settings(args), "summary": summary}, indent=1)
    with atomic_write(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(text)
    return text


def prepare_sam_labels(cfg, threads: int) -> None:
    """Generate the pseudo-labels a warm-up stage reads from SAM.LABEL_DIR, when some are missing
    (resumable: the generator skips finished images); fails naming the folder and the command."""
    if cfg.INPUT.DATASET_MAPPER_NAME != "sam_pseudo_label" or not cfg.SAM.LABEL_DIR:
        return  # no SAM labels (e.g. oracle proposals, written with their dataset)
    label_dir = cfg.SAM.LABEL_DIR
    keys = {image_key(d["file_name"]) for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)}
    missing = len(keys - finished_keys(label_dir))
    if not missing:
        return
    settings = settings_dirname(cfg.SAM.MODEL_TYPE, cfg.SAM.POINTS_PER_SIDE, cfg.SAM.PRED_IOU_THRESH,
                                cfg.SAM.STABILITY_SCORE_THRESH)
    label_root = os.path.dirname(os.path.dirname(label_dir))
    if os.path.join(label_root, settings) != os.path.normpath(label_dir):
        raise SystemExit(f"{TOOL}: error: SAM.LABEL_DIR {label_dir} is not <root>/{settings}, the folder "
                         "tools/generate_sam_pseudolabels.py writes for the SAM.* settings of the stage")
    command = [sys.executable, GENERATOR, "--dataset", *cfg.DATASETS.TRAIN, "--output", label_root,
               "--model-type", cfg.SAM.MODEL_TYPE, "--checkpoint", cfg.SAM.CHECKPOINT,
               "--points-per-side", str(cfg.SAM.POINTS_PER_SIDE), "--pred-iou-thresh", str(cfg.SAM.PRED_IOU_THRESH),
               "--stability-score-thresh", str(cfg.SAM.STABILITY_SCORE_THRESH), "--threads", str(threads), "--no-progress"]
    print(f"{missing} of {len(keys)} images have no pseudo-label in {label_dir}; generating them (resumable):\n  "
          + " ".join(command), flush=True)
    code = subprocess.run(command, cwd=REPO).returncode
    still_missing = len(keys - finished_keys(label_dir))
    if code or still_missing:
        raise SystemExit(f"{TOOL}: error: {still_missing} of {len(keys)} images still have no pseudo-label in "
                         f"{label_dir} (generator exit code {code}); rerun the command above, then this one")


def run_seed(args, config_of, dataset, seed, counter):
    """The stages to run of one dataset and seed, then its pictures if asked."""
    table = TABLES[args.preset][dataset]
    stages = stages_to_run(table, args.stages)
    for stage in stages:
        cfg = config_of(dataset, seed, stage.name)
        description = f"[{next(counter)}] {dataset} seed {seed} {stage.title}"
        was_finished = protocol.finished_result(cfg) is not None and not args.overwrite
        if not was_finished and stage.role == protocol.WARM_UP:
            prepare_sam_labels(cfg, args.threads)
        result = protocol.run_stage(cfg, description, fresh=args.overwrite)
        seconds = "already finished" if was_finished else f"{result['seconds_of_last_run']:.0f} s"
        scores = protocol.stage_scores(result["metrics"])
        pq = f"; student PQ {scores['student']['PQ']:.1f}" if scores else ""
        print(f"{description}: {seconds}{pq}", flush=True)
        plot_quality_curves(os.path.join(cfg.OUTPUT_DIR, "metrics.json"), os.path.join(cfg.OUTPUT_DIR, QUALITY_CURVES_FILE),
                            f"{dataset}, seed {seed}: {stage.title}")
    if args.visuals:
        visuals = os.path.join(args.output_dir, dataset, f"seed{seed}", "visuals")
        for stage in (s for s in stages if s.role != protocol.WARM_UP):
            save_stage_predictions(config_of(dataset, seed, stage.name), stage.name, visuals, args.visuals)
        semi = [s for s in stages if s.semi_supervised]
        if semi:
            save_pseudo_label_panels(config_of(dataset, seed, semi[0].name), visuals, args.visuals)
        print(f"pictures in {visuals}", flush=True)


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
    warm_up = f"{args.warmup_iters} warm-up + " if args.warmup_iters else ""
    print(f"Preset {args.preset}: {', '.join(args.datasets)}, seeds {args.seeds}, {warm_up}{args.burn_in_iters} burn-in + "
          f"{args.branch_iters} iterations per branch, {args.threads} thread(s).\nLogs: {log}; per stage "
          f"config.yaml, metrics.json and TensorBoard events under {args.output_dir}/<dataset>/seed<N>/<stage>/ "
          f"(tensorboard --logdir {args.output_dir}).", flush=True)
    if args.preset == "demo":
        print(DEMO_SCOPE + "\n", flush=True)
    config_of = stage_config_factory(args)
    start = time.perf_counter()
    with logs_to_file(log):
        total = len(args.seeds) * sum(len(stages_to_run(TABLES[args.preset][d], args.stages)) for d in args.datasets)
        counter = (f"{number}/{total}" for number in itertools.count(1))
        for dataset in args.datasets:
            for seed in args.seeds:
                run_seed(args, config_of, dataset, seed, counter)
                write_summary(args, config_of)  # partial results readable while the rest runs
    text = write_summary(args, config_of)
    print("\n" + text)
    print(f"Total time {time.perf_counter() - start:.0f} s. Summary: {args.output_dir}/summary.{{md,json}}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
