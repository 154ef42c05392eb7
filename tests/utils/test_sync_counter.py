"""SyncCounter on tiny cases whose syncs and aten ops are known by hand."""
import numpy as np
import pytest
import torch

from dearli.utils.sync_counter import SyncCounter

THIS_FILE = "tests/utils/test_sync_counter.py"


def _count(function, *host):
    counter = SyncCounter()
    counter.mark_host(*host)
    with counter:
        function()
    return counter


def _kinds(counter):
    return sorted(kind for (kind, _), n in counter.syncs.items() for _ in range(n))


def test_reading_device_values_are_syncs_and_every_aten_op_is_counted():
    weights = torch.randn(4)
    counter = _count(lambda: ((weights * 2).sum().item(), bool((weights > 0).any())))
    # mul, sum, item -> _local_scalar_dense; gt, any, bool -> _local_scalar_dense
    assert _kinds(counter) == ["aten._local_scalar_dense"] * 2
    assert counter.num_ops == 6
    assert {name for name, _ in counter.ops} == {"aten.mul", "aten.sum", "aten._local_scalar_dense", "aten.gt", "aten.any"}


def test_data_dependent_shapes_are_syncs():
    weights = torch.randn(5)
    counter = _count(lambda: (weights[weights > 0], torch.nonzero(weights), torch.unique(weights),
                              torch.repeat_interleave(torch.arange(3, device="cpu"), 2)))
    assert _kinds(counter) == ["aten._unique2", "aten.index", "aten.nonzero"]  # a fixed repeat count is not one


def test_copies_to_the_host_and_blocking_copies_to_the_device():
    weights, host = torch.randn(3), torch.arange(3)
    counter = _count(lambda: (weights.cpu(), weights.tolist(), weights.numpy(), host.to(weights.device),
                              host.to(weights.device, non_blocking=True), torch.tensor([1, 2], device="cpu")), host)
    assert _kinds(counter) == ["cpu (to host)", "numpy (to host)", "to (host to device, blocking)",
                               "tolist (to host)", "torch.tensor(..., device=) (host to device)"]


def test_host_work_is_neither_an_op_nor_a_sync():
    host = torch.arange(6)

    def host_work():
        made = torch.tensor([1.0, 2.0]) + torch.zeros(2) + torch.as_tensor(np.ones(2))
        return (host * 2).sum().item(), made.tolist(), host[host > 2], made.cpu()

    counter = _count(host_work, host)
    assert counter.num_syncs == 0 and counter.num_ops == 0


def test_backward_ops_are_counted_at_the_backward_call_site():
    weights = torch.randn(3, requires_grad=True)
    counter = _count(lambda: (weights * weights).sum().backward())
    sites = counter.by_site("ops")
    assert counter.num_syncs == 0 and counter.num_ops >= 4
    assert list(sites) == [f"{THIS_FILE}:{test_backward_ops_are_counted_at_the_backward_call_site.__code__.co_firstlineno + 2} (<lambda>)"]


def test_paused_counting_and_accumulation_over_uses():
    weights = torch.randn(3)
    counter = SyncCounter()
    for _ in range(2):
        with counter:
            weights.sum().item()
            with counter.paused():
                weights.sum().item()
    assert counter.num_syncs == 2 and counter.num_ops == 4
    with pytest.raises(RuntimeError, match="already counting"):
        with counter:
            counter.__enter__()
