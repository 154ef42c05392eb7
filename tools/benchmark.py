#!/usr/bin/env python
"""Measure DEARLi's speed and memory: training iterations, single-image inference, pseudo-labelling.

    python tools/benchmark.py --config-file configs/shapes/tiny_dearli.yaml --task train \
        --iters 20 --warmup 3 --device cpu --threads 1 --json out/bench_train.json [KEY VALUE ...]

Tasks (each reuses the code it measures, nothing is re-implemented here):

* ``train``: full iterations of ``DEARLiTrainer`` (its step and its semi-supervised hook, with
  the EMA update), timed per phase from the step's own timers: ``data`` (loader), ``teacher``
  (pseudo-labels and CutMix), ``student`` (forward, backward, optimizer step) and ``iteration``
  (all of it, EMA and LR schedule included). Images = labeled + unlabeled crops per iteration.
* ``infer``: ``DEARLiPredictor`` on the images of DATASETS.TEST[0]: ``data`` (read and decode
  the file) and ``model`` (resize, forward, panoptic and semantic post-processing).
* ``teacher``: the semi-supervised hook's pseudo-labelling on unlabeled batches of the train
  loader: ``data`` and ``teacher``. Images = weak views + CutMix partners labelled.

Reported: median / min / max seconds per phase, images per second (images per iteration over the
median iteration time), and peak memory: ``torch.cuda.max_memory_allocated`` over the timed
iterations on GPU, the process's peak resident set size (since start, model build included) on CPU.
Warm-up iterations are run first and not timed. GPU variants are chosen by config overrides, e.g.
trailing ``SOLVER.AMP.ENABLED True SOLVER.AMP.PRECISION bf16 MODEL.OPEN_CLIP.CHANNELS_LAST True
MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT True`` (KEY VALUE pairs after the options, as in
train_net.py; ``--opts KEY VALUE ...`` is accepted as an alias).
"""
import argparse
import collections
import contextlib
import json
import os
import statistics
import tempfile
import time
import warnings
from typing import Callable, Dict, List

import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase, hooks
from tabulate import tabulate

import dearli  # noqa: F401  (registers datasets, mappers and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.data.datasets.from_config import register_config_datasets
from dearli.data.datasets.validate import read_rgb_image
from dearli.data.sampling import build_train_loader
from dearli.engine.hooks import PseudoLabelTelemetry, peak_memory_mb
from dearli.engine.precision import build_precision
from dearli.engine.predictor import DEARLiPredictor
from dearli.engine.teacher import MeanTeacher
from dearli.engine.trainer import DEARLiTrainer
from dearli.modeling.checkpoint import DEARLiCheckpointer
from dearli.modeling.fingerprint import config_for_checkpoint
from dearli.modeling.weight_files import CheckpointError
from dearli.utils.atomic_io import atomic_write_json
from dearli.utils.sync_counter import SyncCounter
from dearli.utils.threads import setup_threads

TASKS = ("train", "infer", "teacher")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                     epilog="\n".join(__doc__.split("\n")[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config (YAML) of the model to time")
    parser.add_argument("--task", required=True, choices=TASKS,
                        help="train: full training iterations; infer: the predictor on DATASETS.TEST[0] "
                             "images; teacher: pseudo-labelling of unlabeled batches")
    parser.add_argument("--iters", type=int, required=True, metavar="N", help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed iterations first (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="overrides MODEL.DEVICE")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    parser.add_argument("--count-syncs", action="store_true",
                        help="train only: count would-be GPU syncs and aten ops per timed iteration, by call "
                             "site (dearli/utils/sync_counter.py); timings are then not meaningful")
    add_tool_arguments(parser)
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    if args.device:
        cfg.MODEL.DEVICE = args.device
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but CUDA is not available; use --device cpu")
    cfg.SSL.VIS_PERIOD = 0  # periodic TensorBoard images are telemetry, not an iteration's cost
    cfg.freeze()
    check_task_inputs(cfg, args.task)
    return cfg


def check_task_inputs(cfg, task: str) -> None:
    """ValueError naming the config key a task lacks."""
    if task == "infer" and not cfg.DATASETS.TEST:
        raise ValueError("--task infer reads the images of DATASETS.TEST[0], which is empty")
    if task == "teacher" and not (cfg.SSL.ENABLED and cfg.DATASETS.TRAIN_UNLABELED):
        raise ValueError("--task teacher times pseudo-labelling: it needs SSL.ENABLED True and "
                         "DATASETS.TRAIN_UNLABELED")


class PhaseTimer:
    """Wall-clock seconds of named phases per iteration (CUDA synchronised at every boundary)."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.samples: Dict[str, List[float]] = {}
        self.images: List[int] = []

    def now(self) -> float:
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, phase: str, seconds: float) -> None:
        self.samples.setdefault(phase, []).append(float(seconds))

    def measure(self, function: Callable, *args):
        """(function(*args), seconds it took)."""
        start = self.now()
        result = function(*args)
        return result, self.now() - start


def reset_peak_memory(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# ---- train ----------------------------------------------------------------------------------------

class _IterationRecorder(HookBase):
    """Registered last: times whole iterations and copies the step's phase timers after warm-up."""

    def __init__(self, timer: PhaseTimer, warmup: int, images_per_iter: int):
        self.timer, self.warmup, self.images_per_iter = timer, warmup, images_per_iter

    def before_step(self):
        if self.trainer.iter == self.warmup:
            reset_peak_memory(self.timer.device_type)
        self._start = self.timer.now()

    def after_step(self):
        elapsed = self.timer.now() - self._start
        if self.trainer.iter < self.warmup:
            return
        storage = self.trainer.storage
        for phase, key in (("data", "data_time"), ("teacher", "teacher_time"), ("student", "student_time")):
            self.timer.add(phase, storage.history(key).latest())
        self.timer.add("iteration", elapsed)
        self.timer.images.append(self.images_per_iter)


class _BenchmarkTrainer(DEARLiTrainer):
    """DEARLiTrainer with only the hooks that are part of an iteration (no checkpoints, evaluation
    or log writers), plus the recorder."""

    def __init__(self, cfg, recorder: _IterationRecorder, counter: SyncCounter = None):
        self.recorder = recorder  # read by build_hooks, which DEARLiTrainer.__init__ calls
        self.counter = counter
        super().__init__(cfg)
        if counter is not None:
            self._trainer._next_batch = self._host_batch(self._trainer._next_batch)

    def build_hooks(self):
        return [PseudoLabelTelemetry(self.cfg, self.teacher), hooks.LRScheduler(), self.recorder]

    # With a counter, the window of a timed iteration is every hook and the step, without the loader.
    def _counting(self) -> bool:
        return self.counter is not None and self.iter >= self.recorder.warmup

    def before_step(self):
        if self._counting():
            # Optimizer step counters live on the host on a GPU too (PyTorch keeps them on the CPU).
            self.counter.mark_host([s["step"] for s in self.optimizer.state.values() if "step" in s])
            self.counter.__enter__()
        super().before_step()

    def after_step(self):
        super().after_step()
        if self._counting():
            self.counter.__exit__(None, None, None)

    def _host_batch(self, next_batch):
        def fetch():
            with self.counter.paused():
                batch = next_batch()
            self.counter.mark_host(batch)  # the loader's tensors live on the host
            return batch
        return fetch


def images_per_train_iteration(cfg) -> int:
    """Labeled + unlabeled crops of one iteration on one process (the contract's batch rule)."""
    labeled = cfg.SOLVER.IMS_PER_BATCH
    return labeled + (round(labeled * cfg.DATALOADER.UNLABELED_RATIO) if cfg.SSL.ENABLED else 0)


def benchmark_train(cfg, warmup: int, iters: int, timer: PhaseTimer, counter: SyncCounter = None) -> None:
    with tempfile.TemporaryDirectory(prefix="dearli_benchmark_") as output_dir:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.MAX_ITER = warmup + iters
        cfg.OUTPUT_DIR = output_dir  # the hook writes its end-of-run statistics there
        recorder = _IterationRecorder(timer, warmup, images_per_train_iteration(cfg))
        trainer = _BenchmarkTrainer(cfg, recorder, counter)
        trainer.resume_or_load(resume=False)
        with cuda_sync_warnings(timer.device_type, counter):
            trainer.train()


@contextlib.contextmanager
def cuda_sync_warnings(device_type: str, counter: SyncCounter = None):
    """On CUDA with a counter: torch.cuda.set_sync_debug_mode("warn") and its warnings counted by
    source line into ``counter.cuda_sync_warnings`` (an independent check of the counter)."""
    if counter is None or device_type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sites = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    counter.cuda_sync_warnings = dict(sites.most_common())


def sync_report(counter: SyncCounter, iterations: int, top: int = 40) -> Dict:
    """Per-iteration sync and op counts, with the busiest call sites (counts over all iterations)."""
    kinds = collections.Counter()
    for (kind, _), count in counter.syncs.items():
        kinds[kind] += count
    report = {
        "iterations": iterations,
        "syncs_per_iter": counter.num_syncs / iterations,
        "ops_per_iter": counter.num_ops / iterations,
        "sync_kinds": dict(kinds.most_common()),
        "syncs_by_site": dict(list(counter.by_site("syncs").items())[:top]),
        "ops_by_site": dict(list(counter.by_site("ops").items())[:top]),
    }
    if hasattr(counter, "cuda_sync_warnings"):
        report["cuda_sync_warnings_per_iter"] = sum(counter.cuda_sync_warnings.values()) / iterations
        report["cuda_sync_warnings_by_site"] = dict(list(counter.cuda_sync_warnings.items())[:top])
    return report


# ---- infer and teacher ----------------------------------------------------------------------------

def benchmark_infer(cfg, warmup: int, iters: int, timer: PhaseTimer) -> None:
    register_config_datasets(cfg)
    files = [record["file_name"] for record in DatasetCatalog.get(cfg.DATASETS.TEST[0])]
    predictor = DEARLiPredictor(cfg)
    precision = build_precision(cfg)
    for iteration in range(warmup + iters):
        if iteration == warmup:
            reset_peak_memory(timer.device_type)
        image, data_seconds = timer.measure(read_rgb_image, files[iteration % len(files)])
        with precision.autocast():
            _, model_seconds = timer.measure(predictor, image)
        if iteration >= warmup:
            timer.add("data", data_seconds)
            timer.add("model", model_seconds)
            timer.add("iteration", data_seconds + model_seconds)
            timer.images.append(1)


def benchmark_teacher(cfg, warmup: int, iters: int, timer: PhaseTimer) -> None:
    # Seeded as in training, with the seed of the checkpoint's random CLIP (if it has one).
    model = DEARLiTrainer.build_model(config_for_checkpoint(cfg, cfg.MODEL.WEIGHTS, cfg.MODEL.ALLOW_UNSAFE_PICKLE))
    DEARLiCheckpointer(model, save_to_disk=False, allow_unsafe_pickle=cfg.MODEL.ALLOW_UNSAFE_PICKLE).load(
        cfg.MODEL.WEIGHTS)
    teacher = MeanTeacher(cfg, model)
    teacher.initialize()
    precision = build_precision(cfg)
    batches = iter(build_train_loader(cfg))
    for iteration in range(warmup + iters):
        if iteration == warmup:
            reset_peak_memory(timer.device_type)
        batch, data_seconds = timer.measure(next, batches)
        with precision.autocast():
            _, teacher_seconds = timer.measure(teacher.pseudo_label, batch["unlabeled"])
        if iteration >= warmup:
            timer.add("data", data_seconds)
            timer.add("teacher", teacher_seconds)
            timer.add("iteration", data_seconds + teacher_seconds)
            timer.images.append(teacher_images(batch["unlabeled"]))


def teacher_images(unlabeled: List[Dict]) -> int:
    """Images the teacher labels for a batch: every weak view and every CutMix partner."""
    return len(unlabeled) + sum(sample.get("cutmix") is not None for sample in unlabeled)


# ---- report ---------------------------------------------------------------------------------------

def summarise(args, cfg, timer: PhaseTimer) -> Dict:
    device_type = torch.device(cfg.MODEL.DEVICE).type
    phases = {
        phase: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "count": len(v)}
        for phase, v in timer.samples.items()
    }
    median_iteration = phases["iteration"]["median_s"]
    images_per_iter = statistics.median(timer.images)
    return {
        "task": args.task,
        "config_file": args.config_file,
        "opts": list(args.opts),
        "device": cfg.MODEL.DEVICE,
        "device_name": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "precision": build_precision(cfg).name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "iters": args.iters,
        "warmup": args.warmup,
        "images_per_iter": images_per_iter,
        "median_s_per_iter": median_iteration,
        "images_per_s": images_per_iter / median_iteration if median_iteration > 0 else float("inf"),
        "peak_memory_mb": peak_memory_mb(device_type),
        "peak_memory_kind": "cuda_max_memory_allocated" if device_type == "cuda" else "cpu_peak_rss",
        "phases": phases,
    }


def format_table(result: Dict) -> str:
    if "sync_count" in result:
        counts = result["sync_count"]
        sites = tabulate(list(counts["syncs_by_site"].items()), headers=["call site", "syncs"], tablefmt="pipe")
        return (f"per training iteration ({counts['iterations']} counted): {counts['syncs_per_iter']:.1f} syncs, "
                f"{counts['ops_per_iter']:.0f} aten ops\n{sites}")
    rows = [[phase, f"{p['median_s']:.4f}", f"{p['min_s']:.4f}", f"{p['max_s']:.4f}"]
            for phase, p in result["phases"].items()]
    table = tabulate(rows, headers=["phase", "median s", "min s", "max s"], tablefmt="pipe")
    return (f"{result['task']} on {result['device_name']} ({result['precision']}, "
            f"{result['torch_threads']} threads), {result['iters']} timed iterations:\n{table}\n"
            f"median s/iter {result['median_s_per_iter']:.4f} | images/s {result['images_per_s']:.2f} "
            f"({result['images_per_iter']:g} per iteration) | peak memory {result['peak_memory_mb']:.0f} MiB "
            f"({result['peak_memory_kind']})")


def main(argv=None) -> Dict:
    parser = get_parser()
    args = parse_tool_args(parser, argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error(f"--iters must be >= 1 and --warmup >= 0, got {args.iters} and {args.warmup}")
    setup_threads(args.threads)
    try:
        cfg = setup_cfg(args)
    except ValueError as e:
        parser.error(str(e))
    if args.count_syncs and args.task != "train":
        parser.error(f"--count-syncs counts training iterations; it needs --task train, not {args.task}")
    timer = PhaseTimer(torch.device(cfg.MODEL.DEVICE).type)
    counter = SyncCounter() if args.count_syncs else None
    try:
        if counter is not None:
            benchmark_train(cfg, args.warmup, args.iters, timer, counter)
        else:
            run_task = {"train": benchmark_train, "infer": benchmark_infer, "teacher": benchmark_teacher}[args.task]
            run_task(cfg, args.warmup, args.iters, timer)
    except CheckpointError as e:  # unsafe, truncated, or trained on another backbone: named, no traceback
        raise SystemExit(f"error: {e}") from e
    result = summarise(args, cfg, timer)
    if counter is not None:
        result["sync_count"] = sync_report(counter, args.iters)
    print(format_table(result))
    print(json.dumps(result))
    if args.json:
        atomic_write_json(args.json, result, indent=1, separators=(",", ": "))
    return result


if __name__ == "__main__":
    main()
