#!/usr/bin/env python
"""Benchmark: semi-supervised vs supervised-only training at a fixed budget, several seeds.

    python tools/ssl_benchmark.py [--datasets shapes camvid] [--seeds 1 2 3] [--output-dir DIR]
                                  [--device cpu|cuda] [--smoke]

Protocol, per dataset and seed (the same for both methods, so only the unlabeled data differs):

1. supervised burn-in for BURN_IN iterations on the labeled images (the stand-in for the SAM
   warm-up: no pretrained CLIP or SAM exists offline);
2. from that checkpoint, two branches of BRANCH iterations each: supervised-only (labeled data
   only) and semi-supervised (labeled + EMA-teacher pseudo-labels with CutMix on the unlabeled
   images). Both report student and teacher; evaluation also every BRANCH/4 iterations, so
   metrics.json shows whether the supervised baseline has levelled off.

Data: ``shapes`` = dearli_shapes (24 labeled, 200 unlabeled, 24 val images); ``camvid`` = CamVid
1/8 labeled split (46 labeled, 321 unlabeled train images; 101 val images at 180x240), all classes
as stuff (PQ all-stuff and mIoU with per-class IoU). Model: the tiny config (random tiny CLIP,
orthogonal class embedding), so this measures the semi-supervised machinery, not CLIP.

The run is resumable: every stage checkpoints periodically and is resumed from its last
checkpoint, finished stages (result.json) are skipped. summary.json / summary.md (mean +- sample
std over seeds, and the semi-supervised minus supervised difference) are rewritten after every
stage, so partial results are readable while it runs.
"""
import argparse
import json
import logging
import os
import statistics
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CamVid location for the registration (read when dearli.data is imported).
os.environ.setdefault("DEARLI_CAMVID", os.path.join(os.path.dirname(REPO), "shared", "data", "camvid"))

import torch  # noqa: E402

import dearli  # noqa: E402,F401  (registers datasets, including camvid_* and dearli_shapes_*)
from dearli.config import load_config  # noqa: E402
from dearli.engine.trainer import DEARLiTrainer  # noqa: E402
from dearli.utils.atomic_io import atomic_write, atomic_write_json  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "shapes", "tiny_dearli.yaml")
DATASETS = {
    "shapes": {},
    "camvid": {
        "DATASETS.TRAIN": ["camvid_train_1_8_labeled"],
        "DATASETS.TRAIN_UNLABELED": ["camvid_train_1_8_unlabeled"],
        "DATASETS.TEST": ["camvid_val"],
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 11,
        # 360x480 frames resized to a short side of 144..216, 128-px crops; evaluated at 180x240.
        "INPUT.MIN_SIZE_TRAIN": [144, 160, 176, 192, 208],
        "INPUT.MAX_SIZE_TRAIN": 400,
        "INPUT.CROP.SIZE": [128, 128],
        "INPUT.SIZE_DIVISIBILITY": 128,
        "INPUT.MIN_SIZE_TEST": 180,
        "INPUT.MAX_SIZE_TEST": 240,
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 1024,  # 32x32 mask logits at stride 4
    },
}
METHODS = ("supervised_only", "semi_supervised")
METRICS = ("PQ", "SQ", "RQ", "mIoU")
logger = logging.getLogger("dearli.ssl_benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--burn-in-iters", type=int, default=2000)
    parser.add_argument("--branch-iters", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=4, help="labeled images per iteration (+ as many unlabeled)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "ssl_benchmark"))
    parser.add_argument("--smoke", action="store_true", help="a few iterations and one seed: checks the script runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.burn_in_iters, args.branch_iters = args.seeds[:1], 4, 4
    return args


def stage_cfg(args, dataset, stage_dir, seed, iterations, **overrides):
    settings = dict(DATASETS[dataset])
    settings.update({
        "OUTPUT_DIR": stage_dir, "SEED": seed, "MODEL.DEVICE": args.device,
        "SOLVER.MAX_ITER": iterations, "SOLVER.IMS_PER_BATCH": args.batch, "SOLVER.BASE_LR": args.lr,
        "SOLVER.CHECKPOINT_PERIOD": 500,
        # Learning curve: 4 evaluations per stage (short smoke stages: only the final one).
        "TEST.EVAL_PERIOD": iterations // 4 if iterations >= 100 else 0,
        "DATALOADER.NUM_WORKERS": args.workers, "MODEL.TEACHER.EMA_DECAY": args.ema_decay,
    })
    settings.update(overrides)
    cfg = load_config(CONFIG, [item for pair in settings.items() for item in pair])
    cfg.freeze()
    return cfg


def run_stage(cfg):
    """Train (resuming if a checkpoint exists) and return the final results; cached in result.json."""
    result_file = os.path.join(cfg.OUTPUT_DIR, "result.json")
    if os.path.isfile(result_file):
        with open(result_file) as f:
            return json.load(f)
    start = time.perf_counter()
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    result = {"metrics": trainer._last_eval_results, "seconds": time.perf_counter() - start,
              "iterations": cfg.SOLVER.MAX_ITER}
    atomic_write_json(result_file, result, indent=1)
    return result


def scores(metrics):
    """Student and teacher PQ/SQ/RQ/mIoU and per-class IoU from one evaluation result."""
    def pick(r):
        out = {m: r["panoptic_seg"][m] for m in METRICS[:3]}
        out["mIoU"] = r["sem_seg"]["mIoU"]
        out["IoU"] = {k[4:]: v for k, v in r["sem_seg"].items() if k.startswith("IoU-")}
        return out
    return {"student": pick(metrics), "teacher": pick(metrics["teacher"])}


def mean_std(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs):
    """runs[dataset][method][seed] = scores -> mean +- std per dataset, method, model and metric."""
    summary = {}
    for dataset, methods in runs.items():
        summary[dataset] = {}
        for method, by_seed in methods.items():
            if not by_seed:
                continue
            entry = {}
            for who in ("student", "teacher"):
                entry[who] = {m: mean_std([s[who][m] for s in by_seed.values()]) for m in METRICS}
                classes = next(iter(by_seed.values()))[who]["IoU"]
                entry[who]["IoU"] = {c: mean_std([s[who]["IoU"][c] for s in by_seed.values()]) for c in classes}
            summary[dataset][method] = entry
        common = sorted(set(methods.get("supervised_only", {})) & set(methods.get("semi_supervised", {})))
        if common:  # paired over seeds: semi-supervised minus supervised-only
            summary[dataset]["difference"] = {
                who: {m: mean_std([methods["semi_supervised"][s][who][m] - methods["supervised_only"][s][who][m]
                                   for s in common]) for m in METRICS}
                for who in ("student", "teacher")
            }
    return summary


def markdown(summary, args):
    lines = [f"Budget per seed: {args.burn_in_iters} supervised burn-in iterations, then {args.branch_iters} "
             f"iterations per branch; batch {args.batch} labeled (+{args.batch} unlabeled for SSL); seeds "
             f"{args.seeds}; mean +- sample std.", ""]
    for dataset, entry in summary.items():
        lines += [f"### {dataset}", "", "| method | model | " + " | ".join(METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for method in (*METHODS, "difference"):
            for who in ("student", "teacher"):
                if method in entry and who in entry[method]:
                    cells = [f"{entry[method][who][m]['mean']:.1f} +- {entry[method][who][m]['std']:.1f}" for m in METRICS]
                    lines.append(f"| {method} | {who} | " + " | ".join(cells) + " |")
        if dataset == "camvid" and METHODS[0] in entry:
            lines += ["", "Per-class IoU (student, mean over seeds):", "",
                      "| method | " + " | ".join(entry[METHODS[0]]["student"]["IoU"]) + " |",
                      "|---|" + "---|" * len(entry[METHODS[0]]["student"]["IoU"])]
            for method in METHODS:
                if method in entry:
                    iou = entry[method]["student"]["IoU"]
                    lines.append(f"| {method} | " + " | ".join(f"{v['mean']:.1f}" for v in iou.values()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO)
    runs = {}
    for dataset in args.datasets:
        runs[dataset] = {m: {} for m in METHODS}
        for seed in args.seeds:
            root = os.path.join(args.output_dir, dataset, f"seed{seed}")
            supervised = {"SSL.ENABLED": False, "DATASETS.TRAIN_UNLABELED": []}
            run_stage(stage_cfg(args, dataset, os.path.join(root, "burn_in"), seed, args.burn_in_iters, **supervised))
            start = os.path.join(root, "burn_in", "model_final.pth")
            branch = {"MODEL.WEIGHTS": start, "MODEL.TEACHER.WEIGHTS": start}
            for method, overrides in (("supervised_only", supervised), ("semi_supervised", {"SSL.ENABLED": True})):
                cfg = stage_cfg(args, dataset, os.path.join(root, method), seed, args.branch_iters, **branch, **overrides)
                runs[dataset][method][seed] = scores(run_stage(cfg)["metrics"])
                summary = summarize(runs)
                atomic_write_json(os.path.join(args.output_dir, "summary.json"),
                                  {"settings": vars(args), "summary": summary}, indent=1)
                with atomic_write(os.path.join(args.output_dir, "summary.md"), "w") as f:
                    f.write(markdown(summary, args))
                logger.info("%s seed %d %s done", dataset, seed, method)
    print(markdown(summarize(runs), args))


if __name__ == "__main__":
    main()
