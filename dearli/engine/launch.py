"""Multi-process launch that also works without GPUs.

Detectron2 0.6's ``launch`` asserts CUDA and uses NCCL, and its ``create_ddp_model`` passes
``device_ids=[local_rank]``, which DistributedDataParallel rejects for CPU modules. On CPU this
module spawns the processes itself, joins them with gloo and wraps the model with
``device_ids=None``; on GPU it defers to Detectron2.
"""
import logging
import os
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import create_ddp_model as create_detectron2_ddp_model
from detectron2.engine import launch as launch_detectron2
from detectron2.utils import comm
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    main_func,
    num_processes_per_machine: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args=(),
    device: str = "cuda",
    timeout: timedelta = DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes per machine.

    Args:
        device: "cpu" = gloo process group, one CPU process per "GPU"; otherwise Detectron2's
            NCCL launcher (``num_processes_per_machine`` = GPUs per machine).
        dist_url: init method. "auto" on CPU = a ``file://`` rendezvous in a fresh temporary
            directory (no port to pick); on GPU Detectron2 picks a free localhost port.
    """
    if num_processes_per_machine < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {num_processes_per_machine}")
    if torch.device(device).type != "cpu":
        return launch_detectron2(
            main_func, num_processes_per_machine, num_machines, machine_rank, dist_url, args, timeout
        )
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    with tempfile.TemporaryDirectory(prefix="dearli_rendezvous_") as tmp:
        if dist_url == "auto":
            if num_machines > 1:
                raise ValueError("dist_url='auto' works on one machine only; pass tcp://HOST:PORT")
            dist_url = "file://" + os.path.join(tmp, "rendezvous")
        mp.spawn(
            _cpu_worker,
            nprocs=num_processes_per_machine,
            args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout),
            daemon=False,
        )


def _cpu_worker(local_rank, main_func, world_size, processes_per_machine, machine_rank, dist_url, args, timeout):
    rank = machine_rank * processes_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logger.error("gloo process group init failed; dist_url=%s", dist_url)
        raise
    # The local process group of this machine, as Detectron2's launcher builds it (comm uses it).
    num_machines = world_size // processes_per_machine
    for machine in range(num_machines):
        ranks = list(range(machine * processes_per_machine, (machine + 1) * processes_per_machine))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """DDP wrapper for >1 processes: ``device_ids=None`` for CPU modules, Detectron2's otherwise."""
    if comm.get_world_size() == 1:
        return model
    first_param = next(model.parameters(), None)
    if first_param is not None and first_param.device.type == "cpu":
        return nn.parallel.DistributedDataParallel(model, device_ids=None, **kwargs)
    return create_detectron2_ddp_model(model, **kwargs)
