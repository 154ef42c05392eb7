"""CPU thread count of a dearli process: one rule for every tool.

PyTorch (and its OpenMP/MKL pools) start one thread per core in every process. On a machine where
other work already runs, or with several processes per machine (``--num-gpus N`` on CPU, one SAM
process per GPU), those threads compete for the same cores and a training iteration became 20x
slower (6.64 s instead of 0.33 s, measured on a busy 2-core machine). So each tool resolves its
thread count once, in this order:

1. ``--threads N`` on the command line;
2. ``$OMP_NUM_THREADS``, when the user (or a parent dearli process) set it;
3. otherwise the cores left free by other work, divided among this machine's processes:
   ``max(1, (cores - round(1-minute load average)) // processes)``, at most ``cores // processes``.

The chosen count is applied to torch and exported as ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, so
processes that a tool starts (spawned workers, per-GPU children) inherit it. A count that asks for
more threads than there are cores (threads x processes > cores) is logged as a warning.
"""
import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def other_load() -> float:
    """1-minute load average: runnable processes that compete for the cores (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(processes: int = 1, cores: Optional[int] = None, load: Optional[float] = None) -> int:
    """Threads per process when nothing was requested: the free cores shared by ``processes``."""
    cores = available_cores() if cores is None else cores
    load = other_load() if load is None else load
    per_process = max(1, cores // processes)
    free = max(1, (cores - int(round(load))) // processes)
    return min(per_process, free)


def threads_from_env() -> Optional[int]:
    """``$OMP_NUM_THREADS`` as a positive int, or None when unset; a bad value is an error."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"OMP_NUM_THREADS={value!r} is not a positive integer; unset it or pass --threads N")
    return int(value)


def oversubscription_warning(threads: int, processes: int, cores: int) -> Optional[str]:
    """The warning for ``threads`` x ``processes`` above ``cores``, or None when they fit."""
    if threads * processes <= cores:
        return None
    return (f"{threads} threads x {processes} process(es) = {threads * processes} threads on "
            f"{cores} core(s): the machine is oversubscribed and every process slows down; "
            f"use --threads {max(1, cores // processes)} or fewer")


def resolve_threads(requested: Optional[int], processes: int = 1) -> int:
    """The thread count per process (see the module docstring for the order of the rules)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if requested is not None and requested < 1:
        raise ValueError(f"--threads must be >= 1, got {requested}")
    if requested is not None:
        return requested
    from_env = threads_from_env()
    return from_env if from_env is not None else default_threads(processes)


def apply_threads(threads: int) -> None:
    """Use ``threads`` in torch and export it for child processes (OpenMP reads it at their start)."""
    torch.set_num_threads(threads)
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)


def setup_threads(requested: Optional[int], processes: int = 1) -> int:
    """Resolve, apply and log the thread count of a tool; warn when the machine is oversubscribed.
    Returns the count (pass it to worker processes, which call :func:`apply_threads`)."""
    threads = resolve_threads(requested, processes)
    apply_threads(threads)
    cores = available_cores()
    warning = oversubscription_warning(threads, processes, cores)
    if warning:
        logger.warning(warning)
    logger.info("Using %d CPU thread(s) per process (%d process(es), %d core(s); --threads N to change)",
                threads, processes, cores)
    return threads
