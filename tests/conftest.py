"""Test-suite guards: no network, few threads, and the location of the shared real data."""
import os
import socket

import pytest
import torch

from helpers.shared_data import require_folder, shared_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tools called in-process resolve their thread count from OMP_NUM_THREADS (dearli/utils/threads.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)


class NetworkAccessInTests(RuntimeError):
    pass


def _refuse_message(address):
    return (
        f"tests must not use the network (connection to {address!r} attempted, e.g. a weight "
        "download); build models with random weights or load a checkpoint the test saved itself"
    )


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    # Unix-domain sockets are local IPC (DataLoader workers, multiprocessing) and stay allowed.
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise NetworkAccessInTests(_refuse_message(address))


def _guarded_connect_ex(self, address):
    if self.family == socket.AF_UNIX:
        return _real_connect_ex(self, address)
    raise NetworkAccessInTests(_refuse_message(address))


def _refuse_create_connection(address, *args, **kwargs):
    raise NetworkAccessInTests(_refuse_message(address))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Make any socket connection fail at once (some OpenCLIP tags download by plain URL)."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(socket, "create_connection", _refuse_create_connection)
    yield


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    """Tools set torch's thread count and OMP_NUM_THREADS/MKL_NUM_THREADS; undo it after each test."""
    threads = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_data():
    """Path to the real sample data ($DEARLI_SHARED_DATA, else ../shared/data); skips the test
    when absent, fails it when $DEARLI_REQUIRE_SHARED_DATA=1 (see helpers/shared_data.py)."""
    return require_folder(shared_data_dir(), "real sample data")


@pytest.fixture(scope="session")
def reference_manifests():
    """Folder of the reference checkpoints' state-dict manifests (``reference`` beside the data)."""
    return require_folder(shared_data_dir().parent / "reference", "reference state-dict manifests")
