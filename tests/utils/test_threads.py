"""The thread-count rule of dearli/utils/threads.py: --threads, else $OMP_NUM_THREADS, else the
free cores divided among this machine's processes; oversubscription is warned about."""
import logging
import os

import pytest
import torch

from dearli.utils import threads
from dearli.utils.threads import (apply_threads, default_threads, oversubscription_warning, resolve_threads,
                                  setup_threads)


@pytest.mark.parametrize("processes, cores, load, expected", [
    (1, 2, 0.0, 2),   # idle 2-core machine, one process: both cores
    (2, 2, 0.0, 1),   # two processes share them
    (1, 2, 1.2, 1),   # one other busy process: one free core
    (1, 2, 6.0, 1),   # busier than the cores: still one thread
    (1, 8, 3.0, 5),   # 8 cores, 3 busy
    (3, 8, 0.0, 2),   # 8 // 3
    (2, 8, 4.4, 2),   # (8 - 4) // 2
    (4, 2, 0.0, 1),   # more processes than cores: at least one thread each
])
def test_default_is_free_cores_per_process(processes, cores, load, expected):
    assert default_threads(processes, cores=cores, load=load) == expected


def test_requested_count_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(5) == 5


def test_environment_is_used_when_nothing_is_requested(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None, processes=2) == 3


def test_default_when_nothing_is_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    monkeypatch.setattr(threads, "other_load", lambda: 2.0)
    assert resolve_threads(None, processes=2) == 3  # (8 - 2) // 2


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_environment_value_is_named(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ValueError, match=f"OMP_NUM_THREADS={value!r} is not a positive integer"):
        resolve_threads(None)


def test_bad_request_is_named():
    with pytest.raises(ValueError, match="--threads must be >= 1, got 0"):
        resolve_threads(0)


def test_oversubscription_message():
    assert oversubscription_warning(1, 2, cores=2) is None
    assert oversubscription_warning(2, 1, cores=2) is None
    assert oversubscription_warning(2, 2, cores=2) == (
        "2 threads x 2 process(es) = 4 threads on 2 core(s): the machine is oversubscribed and every "
        "process slows down; use --threads 1 or fewer")


def test_apply_sets_torch_and_exports_for_children():
    torch.set_num_threads(1)
    apply_threads(2)
    assert torch.get_num_threads() == 2
    assert (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]) == ("2", "2")


def test_setup_warns_only_when_oversubscribed(monkeypatch, caplog):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    with caplog.at_level(logging.INFO, logger="dearli.utils.threads"):
        assert setup_threads(1, processes=2) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert setup_threads(2, processes=2) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [oversubscription_warning(2, 2, cores=2)]
    assert torch.get_num_threads() == 2
