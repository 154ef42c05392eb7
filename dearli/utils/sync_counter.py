"""Count what would synchronise a GPU, and the aten ops dispatched, by Python call site.

A GPU training step is slow when the host waits for the device (a *sync*) or launches many small
kernels. Both can be counted without a GPU:

* every aten op reaching the dispatcher is one kernel launch (``ops``);
* a *sync* is an operation whose result the host needs before it can go on: reading a value
  (``item``, ``bool``/``int``/``float`` of a tensor, ``tolist``, ``numpy``), a blocking copy
  between host and device (``cpu()``; ``to(device)`` / ``torch.tensor(data, device=...)`` without
  ``non_blocking``), and ops whose output shape depends on the data (``nonzero``, boolean-mask
  indexing, ``unique``, ``masked_select``, ``repeat_interleave`` without ``output_size``).

On CPU everything lives in one memory, so where a tensor *would* live is simulated: tensors
handed to :meth:`SyncCounter.mark_host` (the loader's batch), tensors made from Python or numpy
data, factory calls without ``device=``, ``cpu()`` results and whatever is computed from host
tensors only are *host* tensors; everything else (parameters, results of device ops) is *device*.
Ops and syncs on host tensors are not counted: on a GPU they are plain CPU work. The simulation
follows the Python API (``__torch_function__``); on a GPU the placement is real and the same rules
give the same counts (``torch.cuda.set_sync_debug_mode`` is an independent check there).

A call site is the innermost frame of the project (``dearli/`` or ``tools/``) outside this module;
ops run by autograd's backward are attributed to the line that called ``backward``.
"""
import collections
import os
import sys
import threading
from typing import Dict, Iterable, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

_THIS_FILE = os.path.abspath(__file__)
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_THIS_FILE)))
_PROJECT_DIRS = tuple(os.path.join(_REPO_ROOT, d) + os.sep for d in ("dearli", "tools", "tests"))

# aten ops whose output shape or value the host must read back.
DATA_DEPENDENT_OPS = frozenset({
    "aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero",
    "aten.masked_select", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.equal",
    "dearli.hungarian_match",  # copies the cost tables to the host (dearli/modeling/matcher.py)
})
# Python methods that hand device data to the host (their aten ops, if any, are not syncs).
_TO_HOST_METHODS = {"cpu", "numpy", "tolist"}
# Factories that copy Python/numpy data: a blocking host-to-device copy when given a device.
_DATA_FACTORIES = {"tensor", "as_tensor", "from_numpy", "asarray"}


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif hasattr(value, "get_fields"):  # detectron2 Instances
        yield from _tensors(value.get_fields())
    elif hasattr(value, "tensor") and isinstance(value.tensor, torch.Tensor):  # BitMasks, Boxes
        yield value.tensor


def _call_site() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(_PROJECT_DIRS) and path != _THIS_FILE:
            return f"{os.path.relpath(path, _REPO_ROOT)}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "<outside the project>"


def _target_device(args, kwargs) -> Optional[object]:
    """The device a ``Tensor.to`` call asks for (None when it only changes dtype)."""
    if "device" in kwargs:
        return kwargs["device"]
    for arg in args[1:]:
        if isinstance(arg, (str, torch.device)):
            return arg
        if isinstance(arg, torch.Tensor):
            return arg.device
    return None


class _PlacementMode(TorchFunctionMode):
    """Tracks host tensors through the Python API and counts host<->device transfers."""

    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        counter = self.counter
        name = getattr(func, "__name__", "")
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        inputs_on_host = bool(inputs) and all(counter.is_host(t) for t in inputs)
        if name in _TO_HOST_METHODS or (name == "to" and _target_device(args, kwargs) == "cpu"):
            if not inputs_on_host:
                counter.record_sync(f"{name} (to host)")
            return self._host_result(func, args, kwargs, copy=True)
        moves = name == "cuda" or (name == "to" and _target_device(args, kwargs) is not None)
        if moves and counter.is_host(args[0]):
            if not kwargs.get("non_blocking", False):
                counter.record_sync(f"{name} (host to device, blocking)")
            with counter.device_call():
                result = func(*args, **kwargs)
                return result.clone() if result is args[0] else result  # a new device tensor
        if name in _DATA_FACTORIES and not any(counter.is_device(t) for t in inputs):
            if kwargs.get("device") is None:
                return self._host_result(func, args, kwargs)
            counter.record_sync(f"torch.{name}(..., device=) (host to device)")
            with counter.device_call():
                return func(*args, **kwargs)
        is_factory = not inputs and "device" in _factory_kwargs(kwargs)
        if inputs_on_host or (not inputs and not is_factory and kwargs.get("device") is None):
            return self._host_result(func, args, kwargs)
        with counter.device_call():
            return func(*args, **kwargs)

    def _host_result(self, func, args, kwargs, copy: bool = False):
        with self.counter.host_call():
            result = func(*args, **kwargs)
            if copy and isinstance(result, torch.Tensor) and args and result is args[0]:
                result = result.detach().clone()  # cpu() of a CPU tensor is itself: keep the copy apart
        for tensor in _tensors(result):
            self.counter.mark_host(tensor)
        return result


def _factory_kwargs(kwargs) -> Dict:
    return {k: v for k, v in kwargs.items() if k == "device" and v is not None}


class _DispatchCounter(TorchDispatchMode):
    """Counts every aten op on device tensors, and data-dependent ones as syncs."""

    def __init__(self, counter: "SyncCounter"):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        counter = self.counter
        kwargs = kwargs or {}
        inputs = list(_tensors(args))
        on_host_inputs = bool(inputs) and all(counter.is_host(t) for t in inputs)  # e.g. a host shape tensor
        if not counter.on_host() and not on_host_inputs:
            name = f"{func.namespace}.{func.overloadpacket.__name__}"
            counter.record_op(name)
            if _is_data_dependent(name, f"{name}.{func._overloadname}", args, kwargs):
                counter.record_sync(name)
        return func(*args, **kwargs)


def _is_data_dependent(name: str, overload: str, args, kwargs) -> bool:
    if overload == "aten.repeat_interleave.Tensor":
        return kwargs.get("output_size") is None
    return name in DATA_DEPENDENT_OPS or _is_mask_index(name, args)


def _is_mask_index(name: str, args) -> bool:
    """Indexing with a bool mask (``x[mask]``): the result's length depends on the data."""
    if name not in ("aten.index", "aten.index_put", "aten.index_put_"):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class SyncCounter:
    """Context manager counting syncs and device ops (see the module docstring).

    ``with counter: ...`` counts; :meth:`paused` suspends counting (e.g. around the data loader);
    :meth:`mark_host` declares tensors that live on the host. Counts accumulate over uses.
    """

    def __init__(self):
        self.syncs = collections.Counter()  # (kind, call site) -> count
        self.ops = collections.Counter()  # (aten op, call site) -> count
        self._host = WeakIdKeyDictionary()
        self._local = threading.local()
        self._modes = None

    # ---- placement --------------------------------------------------------------------------------
    def mark_host(self, *values) -> None:
        for tensor in _tensors(list(values)):
            self._host[tensor] = True

    def is_host(self, tensor: torch.Tensor) -> bool:
        return tensor in self._host

    def is_device(self, tensor: torch.Tensor) -> bool:
        return tensor not in self._host

    def on_host(self) -> bool:
        return getattr(self._local, "host_depth", 0) > 0 or getattr(self._local, "paused", False)

    def host_call(self):
        return _Depth(self._local, "host_depth", +1)

    def device_call(self):
        return _Depth(self._local, "host_depth", None)  # a device call inside a host call is device work

    # ---- recording --------------------------------------------------------------------------------
    def record_sync(self, kind: str) -> None:
        if not self.on_host():
            self.syncs[(kind, _call_site())] += 1

    def record_op(self, name: str) -> None:
        self.ops[(name, _call_site())] += 1

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())

    @property
    def num_ops(self) -> int:
        return sum(self.ops.values())

    def by_site(self, which: str = "syncs") -> Dict[str, int]:
        """Counts per call site, largest first."""
        totals = collections.Counter()
        for (_, site), count in getattr(self, which).items():
            totals[site] += count
        return dict(totals.most_common())

    # ---- context ----------------------------------------------------------------------------------
    def __enter__(self):
        if self._modes is not None:
            raise RuntimeError("SyncCounter is already counting")
        self._modes = (_PlacementMode(self), _DispatchCounter(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = None
        return False

    def paused(self):
        return _Paused(self._local)


class _Depth:
    """Enter/leave a host call (``delta`` +1) or a device call (``delta`` None: depth 0 inside)."""

    def __init__(self, local, attribute: str, delta):
        self.local, self.attribute, self.delta = local, attribute, delta

    def __enter__(self):
        self.saved = getattr(self.local, self.attribute, 0)
        setattr(self.local, self.attribute, self.saved + 1 if self.delta else 0)

    def __exit__(self, *exc):
        setattr(self.local, self.attribute, self.saved)
        return False


class _Paused:
    def __init__(self, local):
        self.local = local

    def __enter__(self):
        self.saved = getattr(self.local, "paused", False)
        self.local.paused = True

    def __exit__(self, *exc):
        self.local.paused = self.saved
        return False
