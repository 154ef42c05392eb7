"""The semi-supervised comparison protocol: a shared start, then branches of equal iterations.

Per dataset and seed:

1. ``burn_in``: supervised training on the labeled images, the shared start (it stands in for
   the SAM warm-up where no pretrained SAM exists);
2. from its final checkpoint (student and teacher), two branches of equal iterations:
   ``supervised_only`` (labeled images only) and ``semi_supervised`` (labeled images plus the EMA
   teacher's pseudo-labels on the unlabeled images, with CutMix and strong views);
3. over the seeds: mean and sample std of student and teacher PQ/SQ/RQ/mIoU and per-class IoU,
   and the paired (same seed) difference ``semi_supervised - supervised_only``.

Each stage lives in ``<root>/<dataset>/seed<N>/<stage>/`` with its complete ``config.yaml``
(so ``tools/train_net.py --eval-only --config-file <stage>/config.yaml MODEL.WEIGHTS
<stage>/model_final.pth`` reproduces its numbers), its checkpoints, metrics.json, TensorBoard
events, ``result.json`` once finished, and the tool's ``quality_curves.png``. A stage counts as
finished only when its result.json was written for the same config (a digest of config.yaml): a
changed setting retrains it, an interrupted stage resumes from its last checkpoint.
"""
import hashlib
import json
import os
import re
import statistics
import time
from dataclasses import dataclass

from detectron2.data import DatasetCatalog

from ..config import load_config
from ..utils.atomic_io import atomic_write, atomic_write_json
from .progress import EvaluationProgress, TrainingProgress
from .trainer import DEARLiTrainer

BURN_IN, SUPERVISED_ONLY, SEMI_SUPERVISED = "burn_in", "supervised_only", "semi_supervised"
STAGES = (BURN_IN, SUPERVISED_ONLY, SEMI_SUPERVISED)
STAGE_TITLES = {BURN_IN: "burn-in (shared start)", SUPERVISED_ONLY: "supervised-only",
                SEMI_SUPERVISED: "semi-supervised"}
DIFFERENCE = "difference"  # semi_supervised - supervised_only, paired by seed
METRICS = ("PQ", "SQ", "RQ", "mIoU")
MODELS = ("student", "teacher")
RESULT_FILE = "result.json"
# Supervised stages: no pseudo-labels, so no unlabeled images loaded (the loader reads
# DATASETS.TRAIN_UNLABELED only with SSL.ENABLED); it stays set, so that SSL.PSEUDO_QUALITY_IMAGES
# scores every stage's teacher on the same unlabeled images.
_SUPERVISED = {"SSL.ENABLED": False}


@dataclass(frozen=True)
class Budget:
    """Iterations of the shared start and of each branch, evaluations and checkpoints per stage."""

    burn_in_iters: int
    branch_iters: int
    evals_per_stage: int = 1  # evenly spaced; the last one at the end of the stage
    checkpoint_period: int = 500  # resumability of an interrupted stage

    def iterations(self, stage: str) -> int:
        return self.burn_in_iters if stage == BURN_IN else self.branch_iters

    def solver_settings(self, stage: str) -> dict:
        iterations = self.iterations(stage)
        # EVAL_PERIOD 0: Detectron2's EvalHook then evaluates once, after the last iteration.
        period = iterations // self.evals_per_stage if self.evals_per_stage > 1 else 0
        return {"SOLVER.MAX_ITER": iterations, "TEST.EVAL_PERIOD": period,
                "SOLVER.CHECKPOINT_PERIOD": self.checkpoint_period}


def stage_dir(root: str, dataset: str, seed: int, stage: str) -> str:
    return os.path.join(root, dataset, f"seed{seed}", stage)


def stage_config(config_file: str, opts, root: str, dataset: str, seed: int, stage: str, budget: Budget):
    """The frozen config of one stage: ``config_file``, then the ``KEY VALUE`` ``opts``, then the
    protocol's own settings (output folder, seed, budget, what the stage trains on), which win."""
    settings = {"OUTPUT_DIR": os.path.abspath(stage_dir(root, dataset, seed, stage)), "SEED": seed,
                **budget.solver_settings(stage)}
    if stage != BURN_IN:
        start = os.path.join(os.path.abspath(stage_dir(root, dataset, seed, BURN_IN)), "model_final.pth")
        settings.update({"MODEL.WEIGHTS": start, "MODEL.TEACHER.WEIGHTS": start})
    settings.update(_SUPERVISED if stage != SEMI_SUPERVISED else {"SSL.ENABLED": True})
    cfg = load_config(config_file, list(opts) + [item for pair in settings.items() for item in pair])
    cfg.freeze()
    return cfg


def config_digest(cfg) -> str:
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def finished_result(cfg):
    """The stage's result.json dict when it was written for exactly ``cfg``, else None."""
    path = os.path.join(cfg.OUTPUT_DIR, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if result.get("config_sha256") == config_digest(cfg) else None


class ProtocolTrainer(DEARLiTrainer):
    """:class:`DEARLiTrainer` with console progress bars (with ETA) for training and evaluation."""

    progress = True  # False: no bars (e.g. output captured into a file)

    def __init__(self, cfg, description: str):
        self.description = description  # read by build_hooks, which the parent's __init__ calls
        super().__init__(cfg)

    def build_hooks(self):
        # First, so the bar reaches the end before the final evaluation starts.
        return [TrainingProgress(self.description, self.progress)] + super().build_hooks()

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator = super().build_evaluator(cfg, dataset_name, output_folder)
        return EvaluationProgress(evaluator, len(DatasetCatalog.get(dataset_name)),
                                  f"  evaluating on {dataset_name}", cls.progress)


def _forget_stale_progress(output_dir: str) -> None:
    """Drop the resume pointer and result of a run with another config, so the stage restarts
    from MODEL.WEIGHTS (the files they name are overwritten as training proceeds)."""
    for name in ("last_checkpoint", RESULT_FILE):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def run_stage(cfg, description: str, fresh: bool = False) -> dict:
    """Train the stage of ``cfg`` unless already finished; its result dict.

    An unfinished stage whose config.yaml equals ``cfg`` resumes from its last checkpoint;
    ``fresh`` retrains it from MODEL.WEIGHTS whatever the folder holds.
    """
    if not fresh:
        done = finished_result(cfg)
        if done is not None:
            return done
    config_path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    resume = False
    if not fresh and os.path.isfile(config_path):
        with open(config_path) as f:
            resume = f.read() == cfg.dump()
    if not resume:
        _forget_stale_progress(cfg.OUTPUT_DIR)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with atomic_write(config_path, "w") as f:
        f.write(cfg.dump())
    start = time.perf_counter()
    trainer = ProtocolTrainer(cfg, description)
    trainer.resume_or_load(resume=resume)
    metrics = trainer.train()
    result = {"metrics": metrics, "iterations": cfg.SOLVER.MAX_ITER, "config_sha256": config_digest(cfg),
              "seconds_of_last_run": time.perf_counter() - start}
    atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RESULT_FILE), result, indent=1)
    return result


def stage_scores(metrics: dict) -> dict:
    """{model: {PQ, SQ, RQ, mIoU, IoU: {class: IoU}}} for the student and (if evaluated) the teacher."""
    def pick(results):
        scores = {m: results["panoptic_seg"][m] for m in METRICS[:3]}
        scores["mIoU"] = results["sem_seg"]["mIoU"]
        scores["IoU"] = {k[len("IoU-"):]: v for k, v in results["sem_seg"].items() if k.startswith("IoU-")}
        return scores
    return {"student": pick(metrics), **({"teacher": pick(metrics["teacher"])} if "teacher" in metrics else {})}


def seeds_in(root: str, dataset: str) -> list:
    """Seeds with a folder under ``<root>/<dataset>/``, ascending."""
    folder = os.path.join(root, dataset)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"seed(\d+)", n) for n in os.listdir(folder)) if m)


def finished_runs(root: str, datasets, config_of) -> dict:
    """runs[dataset][stage][seed] = scores of every finished stage in ``root``, whatever run
    finished it. ``config_of(dataset, seed, stage)`` is the stage's expected config: a stage
    finished under other settings does not count."""
    runs = {}
    for dataset in datasets:
        by_stage = {stage: {} for stage in STAGES}
        for seed in seeds_in(root, dataset):
            for stage in STAGES:
                result = finished_result(config_of(dataset, seed, stage))
                if result is not None:
                    by_stage[stage][seed] = stage_scores(result["metrics"])
        if any(by_stage.values()):
            runs[dataset] = by_stage
    return runs


def mean_std(values) -> dict:
    """Mean and sample standard deviation (0 for a single value) of ``values``."""
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def _summarize_stage(by_seed: dict) -> dict:
    entry = {"seeds": sorted(by_seed)}
    for model in MODELS:
        scores = [s[model] for s in by_seed.values() if model in s]
        if scores:
            entry[model] = {m: mean_std(s[m] for s in scores) for m in METRICS}
            entry[model]["IoU"] = {c: mean_std(s["IoU"][c] for s in scores) for c in scores[0]["IoU"]}
    return entry


def summarize(runs: dict) -> dict:
    """Mean +- sample std per dataset, stage, model and metric, and the paired difference of the
    branches over the seeds where both finished."""
    summary = {}
    for dataset, by_stage in runs.items():
        summary[dataset] = {stage: _summarize_stage(by_seed) for stage, by_seed in by_stage.items() if by_seed}
        semi, supervised = by_stage.get(SEMI_SUPERVISED, {}), by_stage.get(SUPERVISED_ONLY, {})
        paired = sorted(set(semi) & set(supervised))
        if paired:
            summary[dataset][DIFFERENCE] = {"seeds": paired, **{
                model: {m: mean_std(semi[s][model][m] - supervised[s][model][m] for s in paired) for m in METRICS}
                for model in MODELS if all(model in semi[s] and model in supervised[s] for s in paired)}}
    return summary


def _cell(stat: dict, signed: bool = False) -> str:
    mean = f"{stat['mean']:+.1f}" if signed else f"{stat['mean']:.1f}"
    return f"{mean} +- {stat['std']:.1f}" if stat["n"] > 1 else mean


def markdown(summary: dict) -> str:
    """Per dataset: a table of stage x model (mean +- sample std over seeds, the seeds counted), and
    the student's per-class IoU."""
    lines = []
    for dataset, entry in summary.items():
        lines += [f"### {dataset}", "", "| stage | model | seeds | " + " | ".join(METRICS) + " |",
                  "|---|---|---|" + "---|" * len(METRICS)]
        for stage in (*STAGES, DIFFERENCE):
            title = STAGE_TITLES.get(stage, "**difference** (semi - supervised, paired)")
            for model in MODELS:
                if model in entry.get(stage, {}):
                    cells = [_cell(entry[stage][model][m], stage == DIFFERENCE) for m in METRICS]
                    seeds = ", ".join(map(str, entry[stage]["seeds"]))
                    lines.append(f"| {title} | {model} | {seeds} | " + " | ".join(cells) + " |")
        stages = [s for s in STAGES if "student" in entry.get(s, {})]
        if stages:
            classes = list(entry[stages[0]]["student"]["IoU"])
            lines += ["", "Per-class IoU (student, mean over seeds):", "",
                      "| stage | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
            for stage in stages:
                iou = entry[stage]["student"]["IoU"]
                lines.append(f"| {STAGE_TITLES[stage]} | " + " | ".join(f"{iou[c]['mean']:.1f}" for c in classes) + " |")
        lines.append("")
    return "\n".join(lines)
