"""Test-suite guards: no network, few threads, and the location of the shared real data."""
import os
import socket
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEARLI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


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


@pytest.fixture(scope="session")
def shared_data():
    """Path to the real sample data (../shared/data, or $DEARLI_SHARED_DATA)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set DEARLI_SHARED_DATA")
    return SHARED_DATA
