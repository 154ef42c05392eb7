"""The comparison protocol: a table of stages, each a named start or branch, run per dataset and seed.

A protocol table (:class:`Table`) is a list of :class:`Stage` rows. A row names its folder and
title, its config file (or the dataset's default) and ``KEY VALUE`` overrides, the stage it starts
from (student and teacher load that stage's ``model_final.pth``), whether it trains on the
unlabeled images, and its role, which decides its budget (:class:`Budget`):

- ``warm_up``: the class-agnostic warm-up (DEARLi's "Li": SAM or oracle masks), ``warmup_iters``;
- ``burn_in``: supervised training on the labeled images, a start, ``burn_in_iters``;
- ``branch``: a compared row, ``branch_iters``.

:data:`CLASSIC` is the semi- vs supervised-only comparison (``burn_in``, then the branches
``supervised_only`` and ``semi_supervised`` from it); the tool's ablation table adds rows the
same way. Over the seeds, :mod:`dearli.engine.protocol_summary` gives mean and sample std of
student and teacher PQ/SQ/RQ/mIoU and per-class IoU, wall time, pseudo-label quality at the end
of each stage, and the paired (same seed) difference of every other branch minus the baseline.

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
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from detectron2.data import DatasetCatalog

from ..config import load_config
from ..utils.atomic_io import atomic_write, atomic_write_json
from .progress import EvaluationProgress, TrainingProgress
from .quality_curves import read_metrics
from .trainer import DEARLiTrainer

WARM_UP, BURN_IN, BRANCH = "warm_up", "burn_in", "branch"  # roles: which budget a stage trains for
ROLES = (WARM_UP, BURN_IN, BRANCH)
SUPERVISED_ONLY, SEMI_SUPERVISED = "supervised_only", "semi_supervised"
METRICS = ("PQ", "SQ", "RQ", "mIoU")
MODELS = ("student", "teacher")
PSEUDO_QUALITY = ("PQ", "SQ", "RQ", "mIoU", "coverage")  # pseudo_quality/<key> of the quality hook
RESULT_FILE = "result.json"
WALL_TIME_FILE = "wall_seconds.json"  # training + evaluation seconds of every run of the stage's config
RESERVED_NAMES = ("visuals", "differences")  # folders / summary keys that are not stages


@dataclass(frozen=True)
class Stage:
    """One row of a protocol table.

    ``config_file`` None means the dataset's config; ``overrides`` (``KEY VALUE`` strings) come
    after it and after the tool's options for every stage, and before the protocol's own settings
    (output folder, seed, budget, start weights, SSL.ENABLED), which win. ``start`` names an
    earlier stage whose final checkpoint student and teacher load (None: the config's weights).
    ``short`` names the row in difference titles (default: the title).
    """

    name: str
    title: str
    role: str = BRANCH
    semi_supervised: bool = False
    start: Optional[str] = None
    config_file: Optional[str] = None
    overrides: Tuple[str, ...] = ()
    short: str = ""

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name) or self.name in RESERVED_NAMES:
            raise ValueError(f"stage name {self.name!r}: use letters, digits and '_', not {RESERVED_NAMES}")
        if self.role not in ROLES:
            raise ValueError(f"stage {self.name}: role {self.role!r} is not one of {ROLES}")
        if len(self.overrides) % 2:
            raise ValueError(f"stage {self.name}: overrides {list(self.overrides)} are not KEY VALUE pairs")
        if self.role == WARM_UP and self.semi_supervised:
            raise ValueError(f"stage {self.name}: a warm-up trains on class-agnostic masks only, not semi-supervised")

    @property
    def label(self) -> str:
        return self.short or self.title


@dataclass(frozen=True)
class Table:
    """The stages of one dataset, starts before the stages that start from them, and the branch
    every other branch is compared with (paired by seed)."""

    stages: Tuple[Stage, ...]
    baseline: str = SUPERVISED_ONLY

    def __post_init__(self):
        seen = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage {stage.name} appears twice in the table")
            if stage.start is not None and stage.start not in seen:
                raise ValueError(f"stage {stage.name} starts from {stage.start!r}, which is not an earlier stage")
            seen.add(stage.name)
        if self.baseline not in {s.name for s in self.branches}:
            raise ValueError(f"baseline {self.baseline!r} is not a branch of the table")

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in the table (stages: {[s.name for s in self.stages]})")

    @property
    def branches(self) -> Tuple[Stage, ...]:
        return tuple(s for s in self.stages if s.role == BRANCH)

    @property
    def compared(self) -> Tuple[Stage, ...]:
        """The branches reported as a paired difference against the baseline."""
        return tuple(s for s in self.branches if s.name != self.baseline)


# The semi- vs supervised-only comparison of the benchmark and the demo.
CLASSIC = Table((
    Stage(BURN_IN, "burn-in (shared start)", BURN_IN),
    Stage(SUPERVISED_ONLY, "supervised-only", start=BURN_IN, short="supervised"),
    Stage(SEMI_SUPERVISED, "semi-supervised", semi_supervised=True, start=BURN_IN, short="semi"),
))
STAGES = CLASSIC.stages


@dataclass(frozen=True)
class Budget:
    """Iterations per role, evaluations and checkpoints per stage."""

    burn_in_iters: int
    branch_iters: int
    evals_per_stage: int = 1  # evenly spaced; the last one at the end of the stage
    checkpoint_period: int = 500  # resumability of an interrupted stage
    warmup_iters: int = 0  # the class-agnostic warm-up of the tables that have one

    def iterations(self, role: str) -> int:
        return {WARM_UP: self.warmup_iters, BURN_IN: self.burn_in_iters, BRANCH: self.branch_iters}[role]

    def solver_settings(self, role: str) -> dict:
        iterations = self.iterations(role)
        # EVAL_PERIOD 0: Detectron2's EvalHook then evaluates once, after the last iteration
        # (a warm-up has no evaluation: its model has one class-agnostic class).
        period = iterations // self.evals_per_stage if self.evals_per_stage > 1 and role != WARM_UP else 0
        return {"SOLVER.MAX_ITER": iterations, "TEST.EVAL_PERIOD": period,
                "SOLVER.CHECKPOINT_PERIOD": self.checkpoint_period}


def stage_dir(root: str, dataset: str, seed: int, stage: str) -> str:
    return os.path.join(root, dataset, f"seed{seed}", stage)


def stage_config(config_file: str, opts, root: str, dataset: str, seed: int, stage: Stage, budget: Budget):
    """The frozen config of one stage: its config file (else ``config_file``), the ``KEY VALUE``
    ``opts``, the stage's overrides, then the protocol's own settings, which win."""
    settings = {"OUTPUT_DIR": os.path.abspath(stage_dir(root, dataset, seed, stage.name)), "SEED": seed,
                **budget.solver_settings(stage.role), "SSL.ENABLED": stage.semi_supervised}
    if stage.start is not None:
        start = os.path.join(os.path.abspath(stage_dir(root, dataset, seed, stage.start)), "model_final.pth")
        settings.update({"MODEL.WEIGHTS": start, "MODEL.TEACHER.WEIGHTS": start})
    if stage.role == WARM_UP:
        # One class-agnostic class: nothing to evaluate, no panoptic pseudo-labels to score.
        settings.update({"DATASETS.TEST": "()", "SSL.PSEUDO_QUALITY_IMAGES": 0})
    # Supervised stages load no unlabeled images (the loader reads DATASETS.TRAIN_UNLABELED only with
    # SSL.ENABLED); it stays set, so SSL.PSEUDO_QUALITY_IMAGES scores every stage's teacher on them.
    overrides = list(opts) + list(stage.overrides) + [item for pair in settings.items() for item in pair]
    cfg = load_config(stage.config_file or config_file, overrides)
    cfg.freeze()
    return cfg


def config_digest(cfg) -> str:
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def _read_json_for(cfg, name: str):
    """The dict in ``OUTPUT_DIR/name`` when it was written for exactly ``cfg``, else None."""
    path = os.path.join(cfg.OUTPUT_DIR, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        content = json.load(f)
    return content if content.get("config_sha256") == config_digest(cfg) else None


def finished_result(cfg):
    """The stage's result.json dict when it was written for exactly ``cfg``, else None."""
    return _read_json_for(cfg, RESULT_FILE)


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
    """Drop the resume pointer, result and wall time of a run with another config, so the stage
    restarts from MODEL.WEIGHTS (the files they name are overwritten as training proceeds)."""
    for name in ("last_checkpoint", RESULT_FILE, WALL_TIME_FILE):
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def final_pseudo_quality(metrics_path: str) -> dict:
    """{PQ, SQ, RQ, mIoU, coverage} of the last pseudo-label quality record in ``metrics_path``
    (the end of the stage); {} when the stage logged none."""
    if not os.path.isfile(metrics_path):
        return {}
    records = [r for r in read_metrics(metrics_path) if "pseudo_quality/PQ" in r]
    if not records:
        return {}
    return {key: records[-1][f"pseudo_quality/{key}"] for key in PSEUDO_QUALITY if f"pseudo_quality/{key}" in records[-1]}


def _train_timed(cfg, description: str, resume: bool) -> Tuple[dict, float, float]:
    """Train; (metrics, wall seconds of this run, of every run of this config so far). They are saved
    even when training stops with an exception (Ctrl-C), so a resumed stage counts them."""
    earlier = (_read_json_for(cfg, WALL_TIME_FILE) or {}).get("seconds", 0.0) if resume else 0.0
    start = time.perf_counter()
    try:
        trainer = ProtocolTrainer(cfg, description)
        trainer.resume_or_load(resume=resume)
        metrics = trainer.train()
    finally:
        this_run = time.perf_counter() - start
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, WALL_TIME_FILE),
                          {"seconds": earlier + this_run, "config_sha256": config_digest(cfg)})
    return metrics, this_run, earlier + this_run


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
    metrics, this_run, wall_seconds = _train_timed(cfg, description, resume)
    result = {"metrics": metrics, "iterations": cfg.SOLVER.MAX_ITER, "config_sha256": config_digest(cfg),
              "seconds_of_last_run": this_run, "wall_seconds": wall_seconds,
              "pseudo_quality": final_pseudo_quality(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))}
    atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RESULT_FILE), result, indent=1)
    return result


def stage_scores(metrics: dict) -> dict:
    """{model: {PQ, SQ, RQ, mIoU, IoU: {class: IoU}}} for the student and (if evaluated) the teacher;
    {} for a stage without evaluation (a warm-up)."""
    def pick(results):
        scores = {m: results["panoptic_seg"][m] for m in METRICS[:3]}
        scores["mIoU"] = results["sem_seg"]["mIoU"]
        scores["IoU"] = {k[len("IoU-"):]: v for k, v in results["sem_seg"].items() if k.startswith("IoU-")}
        return scores
    if "panoptic_seg" not in metrics:
        return {}
    return {"student": pick(metrics), **({"teacher": pick(metrics["teacher"])} if "teacher" in metrics else {})}


def seeds_in(root: str, dataset: str) -> list:
    """Seeds with a folder under ``<root>/<dataset>/``, ascending."""
    folder = os.path.join(root, dataset)
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"seed(\d+)", n) for n in os.listdir(folder)) if m)


def finished_runs(root: str, tables: dict, config_of) -> dict:
    """runs[dataset][stage][seed] = scores (:func:`stage_scores`), ``wall_seconds`` and, when
    measured, ``pseudo_quality`` of every finished stage of ``tables[dataset]`` in ``root``, whatever
    run finished it. ``config_of(dataset, seed, stage)`` is the stage's expected config: a stage
    finished under other settings does not count."""
    runs = {}
    for dataset, table in tables.items():
        by_stage = {stage.name: {} for stage in table.stages}
        for seed in seeds_in(root, dataset):
            for stage in table.stages:
                result = finished_result(config_of(dataset, seed, stage.name))
                if result is not None:
                    entry = stage_scores(result["metrics"])
                    # Results of versions before wall time was summed over runs: their last run.
                    entry["wall_seconds"] = result.get("wall_seconds", result.get("seconds_of_last_run"))
                    if result.get("pseudo_quality"):
                        entry["pseudo_quality"] = result["pseudo_quality"]
                    by_stage[stage.name][seed] = entry
        if any(by_stage.values()):
            runs[dataset] = by_stage
    return runs
