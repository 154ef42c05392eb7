#!/usr/bin/env python
"""Train or evaluate DEARLi (semi-supervised, DEAR, or the supervised-only baseline).

    python tools/train_net.py --config-file CFG [--num-gpus N] [--resume] [--eval-only] [--eval-teacher] \
        [--threads T] [KEY VALUE ...]

With MODEL.DEVICE cpu, ``--num-gpus N`` starts N CPU processes joined by gloo; otherwise N GPU
processes with NCCL (Detectron2's launcher). ``--eval-only`` evaluates the student of
MODEL.WEIGHTS (or of the last checkpoint with ``--resume``); ``--eval-teacher`` also evaluates the
EMA teacher stored in that training checkpoint (checked before anything is evaluated). Results are
logged under "student" / "teacher" and written to OUTPUT_DIR/eval_results.json. ``--threads`` sets
the CPU threads of each process (default: the free cores divided among the ``--num-gpus``
processes; dearli/utils/threads.py).

One run per OUTPUT_DIR: the main process holds an exclusive lock on it for the whole run (training
and ``--eval-only`` alike: both write config.yaml, the log and results there); a second run on the
same folder is refused with the holder's pid and host. A lock left by a killed run is taken over,
and ``.tmp-*`` leftovers of its interrupted writes are removed.
"""
import contextlib
import logging
import os

from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

import dearli  # noqa: F401  (registers datasets and models)
from dearli.cli import add_tool_arguments, parse_tool_args
from dearli.config import load_config
from dearli.engine.teacher import MeanTeacher, read_teacher_state
from dearli.engine.launch import launch
from dearli.engine.state import TrainingCheckpointer
from dearli.engine.trainer import DEARLiTrainer
from dearli.modeling.fingerprint import config_for_checkpoint
from dearli.utils.atomic_io import atomic_write, atomic_write_json, remove_temp_leftovers
from dearli.utils.run_lock import FolderLock
from dearli.utils.threads import apply_threads, setup_threads

logger = logging.getLogger("dearli.train_net")
# Written by --eval-only into OUTPUT_DIR.
RESULTS_FILE = "eval_results.json"


def config_of(args):
    """The config of ``args`` (file + KEY VALUE overrides), frozen, without side effects."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    return cfg


def setup(cfg, args) -> None:
    """Detectron2's default_setup without collect_env_info (it needs detectron2's compiled ops):
    output folder, loggers, the full config saved next to the results, per-process seeds."""
    rank = comm.get_rank()
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    for name in ("fvcore", "detectron2", "dearli"):
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name=name, abbrev_name="d2" if name == "detectron2" else name)
    logger.info("Rank %d of %d; command line arguments: %s", rank, comm.get_world_size(), args)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        with atomic_write(path, "w") as f:
            f.write(cfg.dump())
        logger.info("Full config saved to %s", path)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)


@contextlib.contextmanager
def output_dir_lock(cfg):
    """The main process's exclusive lock on OUTPUT_DIR (only the main process writes checkpoints,
    the config and results there), with the leftovers of dead writers removed once it is held."""
    if not (comm.is_main_process() and cfg.OUTPUT_DIR):
        yield
        return
    with FolderLock(cfg.OUTPUT_DIR, what="OUTPUT_DIR"):
        remove_temp_leftovers(cfg.OUTPUT_DIR)
        yield


def evaluated_checkpoint(cfg, args) -> str:
    """The file --eval-only loads: the one OUTPUT_DIR/last_checkpoint names with --resume (if any),
    else MODEL.WEIGHTS. Known before the model is built, which must match its backbone."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if args.resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    return cfg.MODEL.WEIGHTS


def teacher_state_of(path: str):
    """The EMA teacher stored in ``path``, or SystemExit saying why there is none to evaluate."""
    if not path:
        raise SystemExit("--eval-teacher: no checkpoint to read the teacher from (MODEL.WEIGHTS is empty "
                         "and there is no last checkpoint to --resume)")
    if not os.path.isfile(path):
        raise SystemExit(f"--eval-teacher: checkpoint {path} does not exist")
    try:
        return read_teacher_state(path)
    except KeyError as error:
        raise SystemExit(f"--eval-teacher: {error.args[0]}. An exported teacher (tools/export_teacher.py) "
                         "is evaluated as MODEL.WEIGHTS without --eval-teacher.") from error


def write_results(cfg, checkpoint: str, results) -> str:
    """OUTPUT_DIR/eval_results.json: {"checkpoint", "datasets", "results": {model: {dataset: metrics}}}."""
    datasets = list(cfg.DATASETS.TEST)
    by_model = {}
    for model_name in ("student", "teacher"):
        model_results = results if model_name == "student" else results.get("teacher")
        if model_results is None:
            continue
        model_results = {k: v for k, v in model_results.items() if k != "teacher"}
        by_model[model_name] = {datasets[0]: model_results} if len(datasets) == 1 else model_results
    path = os.path.join(cfg.OUTPUT_DIR, RESULTS_FILE)
    payload = {"checkpoint": os.path.abspath(checkpoint) if checkpoint else "", "datasets": datasets,
               "results": by_model}
    atomic_write_json(path, payload, indent=1, default=float)
    logger.info("Evaluation results written to %s", path)
    return path


def evaluate(cfg, args):
    """Student (and, on request, teacher) results of a checkpoint, on the backbone it was trained
    with (a random CLIP is rebuilt from the checkpoint's seed); the teacher's presence is checked
    before the (slow) student evaluation."""
    path = evaluated_checkpoint(cfg, args)
    cfg = config_for_checkpoint(cfg, path, cfg.MODEL.ALLOW_UNSAFE_PICKLE)
    teacher_state = teacher_state_of(path) if args.eval_teacher else None
    model = DEARLiTrainer.build_model(cfg)
    checkpointer = TrainingCheckpointer(model, save_dir=cfg.OUTPUT_DIR,
                                        allow_unsafe_pickle=cfg.MODEL.ALLOW_UNSAFE_PICKLE)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    results = DEARLiTrainer.test(cfg, model, model_name="student")
    if teacher_state is not None:
        teacher = MeanTeacher(cfg, model)
        teacher.load_state_dict(teacher_state)
        results = dict(results, teacher=DEARLiTrainer.test(cfg, teacher.model, model_name="teacher"))
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        write_results(cfg, path, results)
    return results


def main(args):
    if args.threads is not None:  # resolved by cli() in the launching process; each worker applies it
        apply_threads(args.threads)
    cfg = config_of(args)
    with output_dir_lock(cfg):
        setup(cfg, args)
        if args.eval_only:
            return evaluate(cfg, args)
        trainer = DEARLiTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--eval-teacher", action="store_true",
                        help="with --eval-only: also evaluate the EMA teacher of the training checkpoint")
    add_tool_arguments(parser)  # --threads, and --opts as an alias of the trailing KEY VALUE pairs
    args = parse_tool_args(parser, argv)
    if args.eval_teacher and not args.eval_only:
        parser.error("--eval-teacher needs --eval-only (training evaluates the teacher by MODEL.TEACHER.EVALUATE)")
    return args


def cli(argv=None):
    args = parse_args(argv)
    device = config_of(args).MODEL.DEVICE
    args.threads = setup_threads(args.threads, processes=args.num_gpus)
    logger.info("Command line arguments: %s", args)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,), device=device)


if __name__ == "__main__":
    results = cli()
    if comm.is_main_process() and results:
        logger.info("results: %s", results)
