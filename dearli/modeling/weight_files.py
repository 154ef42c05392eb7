"""Reading weight files without running code from them, and the errors that name the file.

A pickle runs code while it is read (``__reduce__``), so a weight file from elsewhere must never be
unpickled freely. Every weight file dearli reads (MODEL.WEIGHTS, MODEL.TEACHER.WEIGHTS, resumed
checkpoints, the tools' inputs) goes through :func:`read_weight_file`: ``torch.load`` with
``weights_only=True`` (tensors, numbers, strings and containers only). Detectron2 model-zoo ``.pkl``
files are plain pickles; they are refused unless the caller opts in (MODEL.ALLOW_UNSAFE_PICKLE).
dearli's own checkpoints hold only tensors, numbers, strings, lists and dicts, so they load safely.
"""
import os
import pickle
from typing import Any

import torch

PICKLE_SUFFIX = ".pkl"
OPT_IN_KEY = "MODEL.ALLOW_UNSAFE_PICKLE"
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


class CheckpointError(RuntimeError):
    """A weight file that cannot be used; the message names the file."""


class UnreadableCheckpointError(CheckpointError):
    """A weight file exists but cannot be read (truncated or corrupt)."""


class UnsafeCheckpointError(CheckpointError):
    """A weight file that holds (or is) a pickle of arbitrary objects, refused without the opt-in."""


def pickle_refusal(path: str) -> str:
    return (f"weight file {path} is a pickle (.pkl): reading it would unpickle arbitrary objects, which "
            f"can run code. dearli does not read .pkl files unless {OPT_IN_KEY} is True (set it only for a "
            "file you trust, e.g. a Detectron2 model-zoo download), or convert the file to a tensors-only .pth")


def _refused_object(error: Exception) -> str:
    """The line of torch's weights-only refusal that names the object (e.g. 'GLOBAL os.system')."""
    lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
    return lines[0] if lines else str(error).splitlines()[0]


def read_weight_file(path: str, allow_unsafe_pickle: bool = False) -> Any:
    """The object stored in ``path`` (loaded on the CPU), read with ``weights_only=True`` unless
    ``allow_unsafe_pickle``. Raises FileNotFoundError, :class:`UnsafeCheckpointError` (a ``.pkl``
    or a file holding other objects, without the opt-in) or :class:`UnreadableCheckpointError`
    (truncated or corrupt), each naming ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.endswith(PICKLE_SUFFIX) and not allow_unsafe_pickle:
        raise UnsafeCheckpointError(pickle_refusal(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle)
    except pickle.UnpicklingError as error:
        if _WEIGHTS_ONLY_REFUSAL in str(error):
            raise UnsafeCheckpointError(
                f"weight file {path} holds objects other than tensors and plain containers "
                f"({_refused_object(error)}); dearli does not unpickle them, because that can run code. "
                f"Set {OPT_IN_KEY} True only if you trust the file"
            ) from None
        raise UnreadableCheckpointError(_unreadable(path, error)) from error
    except Exception as error:  # torch raises several types for truncated / corrupt zip files
        raise UnreadableCheckpointError(_unreadable(path, error)) from error


def _unreadable(path: str, error: Exception) -> str:
    return f"checkpoint {path} cannot be read: it is probably truncated or corrupt ({type(error).__name__}: {error})"
