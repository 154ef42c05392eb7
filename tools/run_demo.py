#!/usr/bin/env python
"""`make demo`: DEARLi's semi-supervised training on CPU, against the supervised-only baseline.

On the synthetic ``dearli_shapes_*`` dataset (24 labeled, 200 unlabeled, 24 val images of 96x96)
with the tiny config (configs/shapes/tiny_dearli.yaml):

1. burn-in: supervised training on the labeled images only (it stands in for the SAM warm-up,
   which needs pretrained SAM weights);
2. from that shared checkpoint, two branches of equal length:
   a. supervised-only: labeled images only (the student still has an EMA teacher);
   b. semi-supervised: labeled images + the EMA teacher's pseudo-labels on unlabeled images,
      CutMix of images and pseudo-labels, strong photometric augmentation for the student;
3. a table of PQ / SQ / RQ / mIoU of student and teacher, and pictures.

Output folder (default output/demo): per stage metrics.json, TensorBoard events, checkpoints,
log.txt; demo_results.json / .md; visuals/*.png (predictions and pseudo-labels).
"""
import argparse
import logging
import os
import shutil
import time

import numpy as np
import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from dearli.config import load_config
from dearli.data import sampling, shapes  # noqa: F401  (shapes registers dearli_shapes_*)
from dearli.engine.hooks import pseudo_label_panels
from dearli.engine.panels import panel_row
from dearli.engine.trainer import DEARLiTrainer
from dearli.engine.visualization import draw_panoptic
from dearli.modeling import meta_arch  # noqa: F401  (registers DEARLi)
from dearli.utils.atomic_io import atomic_write, atomic_write_json, save_png_atomic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join(REPO, "configs", "shapes", "tiny_dearli.yaml")
EXERCISED = """\
Exercised: the whole DEARLi training machinery on CPU: data loading with resumable per-sample
seeds, weak/strong views, the EMA teacher's panoptic pseudo-labels, CutMix of images and
pseudo-labels, one set criterion for labeled and pseudo-labeled targets, full-model gradient
clipping, poly LR, atomic checkpoints, COCO panoptic PQ/SQ/RQ and mIoU of student and teacher.
Not exercised: pretrained CLIP (the tiny OpenCLIP ConvNeXt is randomly initialised and classes use
a fixed orthogonal embedding, so there is no text/CLIP recognition and the zero-shot ensemble
weight is 0), real SAM (a supervised burn-in replaces the SAM warm-up), GPUs, mixed precision,
paper-scale models and data. Numbers are from a tiny model trained for minutes: they show that
the pipeline runs end to end, not the paper's gains."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--burn-in-iters", type=int, default=1500)
    parser.add_argument("--branch-iters", type=int, default=800)
    parser.add_argument("--batch", type=int, default=4, help="labeled images per iteration (and unlabeled in SSL)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW LR (the paper's 1e-4 is for a pretrained CLIP)")
    parser.add_argument("--ema-decay", type=float, default=0.99, help="teacher EMA decay (short runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    parser.add_argument("--workers", type=int, default=1, help="data-loader worker processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--num-visuals", type=int, default=3)
    parser.add_argument("--visual-scale", type=int, default=4, help="enlarge the small images in visuals/*.png")
    return parser.parse_args(argv)


def stage_cfg(args, stage, **overrides):
    settings = {
        "OUTPUT_DIR": os.path.join(args.output_dir, stage),
        "SEED": args.seed,
        "SOLVER.IMS_PER_BATCH": args.batch,
        "SOLVER.BASE_LR": args.lr,
        "SOLVER.CHECKPOINT_PERIOD": 100000,  # only the final checkpoint
        "TEST.EVAL_PERIOD": 0,  # evaluate student and teacher at the end of each stage
        "DATALOADER.NUM_WORKERS": args.workers,
        "MODEL.TEACHER.EMA_DECAY": args.ema_decay,
        "SSL.VIS_PERIOD": 100,
    }
    settings.update(overrides)
    cfg = load_config(CONFIG, [item for pair in settings.items() for item in pair])
    cfg.freeze()
    return cfg


def configure_logging(output_dir):
    """Detectron2 / dearli logs go to log.txt; the console shows the demo's own lines only."""
    os.makedirs(output_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(output_dir, "log.txt"))
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s"))
    for name in ("detectron2", "d2", "dearli", "fvcore", "root"):
        logger = logging.getLogger(None if name == "root" else name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def run_stage(cfg, title):
    start = time.perf_counter()
    print(f"  {title}: {cfg.SOLVER.MAX_ITER} iterations ...", flush=True)
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    seconds = time.perf_counter() - start
    print(f"  {title}: done in {seconds:.0f} s", flush=True)
    return trainer, seconds


def summary(results):
    """{"student"|"teacher": {"PQ","SQ","RQ","mIoU"}} from the trainer's evaluation results."""
    def pick(r):
        return {**{k: r["panoptic_seg"][k] for k in ("PQ", "SQ", "RQ")}, "mIoU": r["sem_seg"]["mIoU"]}
    return {"student": pick(results), "teacher": pick(results["teacher"])}


def enlarge(image, seg, scale):
    """Nearest-neighbour enlargement of an HxWx3 image and its [H, W] segment map."""
    seg = torch.as_tensor(seg).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return np.repeat(np.repeat(image, scale, 0), scale, 1), seg


def save_predictions(trainer, name, visuals_dir, count, scale):
    """Original val image | student prediction | teacher prediction, for the first ``count`` images."""
    cfg = trainer.cfg
    dataset = cfg.DATASETS.TEST[0]
    metadata = MetadataCatalog.get(dataset)
    loader = build_detection_test_loader(cfg, dataset)
    models = (trainer.model, trainer.teacher.model)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    with torch.no_grad():
        for k, inputs in enumerate(loader):
            if k >= count:
                break
            image = read_image(inputs[0]["file_name"], format="RGB")
            drawn = []
            for model in models:
                seg, segments = model(inputs)[0]["panoptic_seg"]
                large_image, large_seg = enlarge(image, seg, scale)
                drawn.append(draw_panoptic(large_image, large_seg, segments, metadata))
            original = enlarge(image, np.zeros(image.shape[:2]), scale)[0]
            titles = ("val image", f"student ({name})", f"teacher ({name})")
            save_png_atomic(panel_row([original] + drawn, titles), os.path.join(visuals_dir, f"{name}_val{k}.png"))
    for m, mode in zip(models, was_training):
        m.train(mode)


def save_pseudo_labels(trainer, visuals_dir, count, scale):
    """Weak view + teacher pseudo-label | CutMix strong view + student target, for a few images."""
    batch = sampling.build_train_batches(trainer.cfg, start_iter=0).batch_at(0)
    with EventStorage(0), torch.no_grad():
        trainer.teacher.pseudo_label(batch["unlabeled"])
    samples, labels, unlabeled, teacher_labels = trainer.teacher.last_pseudo_labels
    metadata = MetadataCatalog.get(trainer.cfg.DATASETS.TRAIN[0])
    for k, panel in enumerate(pseudo_label_panels(samples, labels, unlabeled, teacher_labels, metadata, count, scale)):
        save_png_atomic(panel, os.path.join(visuals_dir, f"pseudo_labels_{k}.png"))


def results_table(rows):
    header = ["run", "iterations"] + [f"{who} {m}" for who in ("student", "teacher") for m in ("PQ", "SQ", "RQ", "mIoU")]
    body = [[name, iters] + [f"{scores[who][m]:.1f}" for who in ("student", "teacher") for m in ("PQ", "SQ", "RQ", "mIoU")]
            for name, iters, scores in rows]
    return tabulate(body, headers=header, tablefmt="github")


def main(argv=None, log_to_file=True):
    """Run the demo; ``log_to_file`` False leaves the logging set-up alone (tests)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    if log_to_file:
        configure_logging(args.output_dir)
    visuals = os.path.join(args.output_dir, "visuals")
    print("DEARLi CPU demo: a supervised burn-in, then supervised-only vs semi-supervised branches of "
          f"equal length ({args.burn_in_iters} + {args.branch_iters} iterations, batch {args.batch}).")
    print(EXERCISED + "\n", flush=True)
    start = time.perf_counter()

    supervised = {"SSL.ENABLED": False, "DATASETS.TRAIN_UNLABELED": []}
    burn_in, burn_in_s = run_stage(stage_cfg(args, "burn_in", **supervised, **{"SOLVER.MAX_ITER": args.burn_in_iters}),
                                   "1/3 supervised burn-in (shared start)")
    shared = os.path.join(args.output_dir, "burn_in", "model_final.pth")
    branch = {"SOLVER.MAX_ITER": args.branch_iters, "MODEL.WEIGHTS": shared, "MODEL.TEACHER.WEIGHTS": shared}
    sup, sup_s = run_stage(stage_cfg(args, "supervised_only", **supervised, **branch), "2/3 branch: supervised-only")
    ssl, ssl_s = run_stage(stage_cfg(args, "semi_supervised", **{"SSL.ENABLED": True}, **branch),
                           "3/3 branch: semi-supervised (pseudo-labels + CutMix)")

    for name, trainer in (("burn_in", burn_in), ("supervised_only", sup), ("semi_supervised", ssl)):
        save_predictions(trainer, name, visuals, args.num_visuals, args.visual_scale)
    save_pseudo_labels(ssl, visuals, args.num_visuals, args.visual_scale)

    rows = [
        ("burn-in (shared start)", args.burn_in_iters, summary(burn_in._last_eval_results)),
        ("supervised-only", f"+{args.branch_iters}", summary(sup._last_eval_results)),
        ("semi-supervised", f"+{args.branch_iters}", summary(ssl._last_eval_results)),
    ]
    total = time.perf_counter() - start
    table = results_table(rows)
    report = {
        "results": {name: scores for name, _, scores in rows},
        "iterations": {"burn_in": args.burn_in_iters, "branch": args.branch_iters},
        "seconds": {"burn_in": burn_in_s, "supervised_only": sup_s, "semi_supervised": ssl_s, "total": total},
        "settings": vars(args),
    }
    atomic_write_json(os.path.join(args.output_dir, "demo_results.json"), report, indent=1)
    with atomic_write(os.path.join(args.output_dir, "demo_results.md"), "w") as f:
        f.write(table + "\n")
    print("\nPanoptic quality (PQ/SQ/RQ, COCO panoptic API) and mIoU on dearli_shapes_val (24 images):\n")
    print(table)
    print(f"\nTotal time {total:.0f} s. Output in {args.output_dir}: demo_results.{{json,md}}, per-stage "
          "metrics.json, TensorBoard events and log.txt, visuals/*.png (val predictions: image | student | "
          "teacher; pseudo_labels_*: weak view + teacher pseudo-label | CutMix view + student target).")
    return report


if __name__ == "__main__":
    main()
