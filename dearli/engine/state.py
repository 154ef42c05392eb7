"""Resumable state of a training run: random-number state and the training checkpointer.

RNG state is kept in a ``torch.load(weights_only=True)``-loadable form.

Where training randomness comes from (so that a resumed run replays an uninterrupted one):

* data: every sample derives its randomness from (seed, iteration, rank, slot) in the sampler, and
  the loader is rebuilt at the resumed iteration (its position *is* the trainer iteration);
* the model's point sampling: counter-based streams keyed by ``sample_seed`` (no generator state);
* anything else that draws from the global generators (e.g. dropout, if a config enables it):
  the global torch / NumPy / Python generators are reseeded from (seed, iteration, rank) before
  every step (:func:`reseed_global_rngs`).

The global generator states are also checkpointed (:class:`GlobalRNGState`) so that code running
between steps sees the same state after a resume. Torch states are uint8 tensors; NumPy's
bit-generator state and Python's ``random`` state are stored as plain ints and lists (never a
legacy ``RandomState`` pickle).
"""
import logging
import os
import random
import re
from typing import Dict, Optional

import numpy as np
import torch

from ..modeling.checkpoint import DEARLiCheckpointer
from ..modeling.weight_files import CheckpointError, UnreadableCheckpointError, read_weight_file  # noqa: F401

logger = logging.getLogger(__name__)

# Fixed salts: the global generators get streams unrelated to the data sampler's streams, and
# model initialisation a stream unrelated to the training steps'.
_STEP_STREAM = 0x6D6F64656C
_INIT_STREAM = 0x696E6974


def iteration_seed(seed: int, iteration: int, rank: int, stream: int = _STEP_STREAM) -> int:
    """A 63-bit seed mixed from (seed, iteration, rank, stream) by NumPy's SeedSequence."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(iteration), int(rank), int(stream)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


def _seed_all(value: int) -> None:
    torch.manual_seed(value)
    np.random.seed(value & 0xFFFFFFFF)
    random.seed(value)


def reseed_global_rngs(seed: int, iteration: int, rank: int) -> None:
    """Seed torch (CPU and CUDA), NumPy's global generator and Python's ``random`` for one step."""
    _seed_all(iteration_seed(seed, iteration, rank))


def seed_model_init(seed: int) -> None:
    """Seed the global generators before the model is built, so its initial weights depend on
    ``seed`` only (the same on every process; DDP broadcasts rank 0's weights anyway)."""
    _seed_all(iteration_seed(seed, 0, 0, _INIT_STREAM))


def capture_rng_state() -> Dict:
    """The global generator states as tensors, ints and lists."""
    numpy_state = np.random.get_state(legacy=False)
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": [int(k) for k in numpy_state["state"]["key"]],
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
    }


def restore_rng_state(state: Dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch_cpu"])
    cuda_states = state.get("torch_cuda", [])
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(
                f"checkpoint holds {len(cuda_states)} CUDA generator states but this machine has "
                f"{torch.cuda.device_count()} GPUs"
            )
        torch.cuda.set_rng_state_all(cuda_states)
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))


class GlobalRNGState:
    """Checkpointable view of the global generator states (register it with a checkpointer)."""

    def state_dict(self) -> Dict:
        return capture_rng_state()

    def load_state_dict(self, state: Dict) -> None:
        restore_rng_state(state)


class TrainingCheckpointer(DEARLiCheckpointer):
    """The trainer's checkpointer: atomic writes (from :class:`DEARLiCheckpointer`), and a clear
    error when the checkpoint to resume from (named by ``last_checkpoint``) cannot be read, naming
    the newest readable checkpoint next to it."""

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except UnreadableCheckpointError as error:
            raise UnreadableCheckpointError(self._unreadable_message(filename, error.__cause__)) from error.__cause__

    def _unreadable_message(self, filename: str, error: Exception) -> str:
        last_file = os.path.join(self.save_dir, "last_checkpoint") if self.save_dir else None
        named_by_last = bool(last_file) and os.path.abspath(self.get_checkpoint_file()) == os.path.abspath(filename)
        source = f"named by {last_file}" if named_by_last else "given as weights"
        message = (f"checkpoint {filename} ({source}) cannot be read: it is probably truncated or corrupt "
                   f"({type(error).__name__}: {error}).")
        if named_by_last:
            previous = self.newest_readable_checkpoint(exclude=filename)
            if previous:
                message += (f" The newest readable checkpoint there is {previous}; to resume from it, "
                            f"write {os.path.basename(previous)!r} into {last_file}.")
            else:
                message += f" No other readable checkpoint is in {self.save_dir}."
        return message

    def newest_readable_checkpoint(self, exclude: Optional[str] = None) -> Optional[str]:
        """The readable ``*.pth`` in the save directory with the highest iteration in its name."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return None
        candidates = [
            os.path.join(self.save_dir, name) for name in os.listdir(self.save_dir)
            if name.endswith(".pth") and not name.startswith(".")
        ]
        excluded = os.path.abspath(exclude) if exclude else None
        for path in sorted(candidates, key=_checkpoint_order, reverse=True):
            if os.path.abspath(path) == excluded:
                continue
            try:
                read_weight_file(path)
            except CheckpointError:
                logger.warning("checkpoint %s is unreadable too", path)
                continue
            return path
        return None


def _checkpoint_order(path: str):
    """Sort key: iteration number in the file name ("model_0000009.pth"), "final" last, then mtime."""
    name = os.path.basename(path)
    match = re.search(r"(\d+)\.pth$", name)
    iteration = int(match.group(1)) if match else (float("inf") if "final" in name else -1)
    return (iteration, os.path.getmtime(path))
