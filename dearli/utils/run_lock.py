"""One writer per output folder: an exclusive lock that a killed holder cannot leave behind.

Two runs writing one folder (``OUTPUT_DIR`` of ``tools/train_net.py``, a SAM label folder) would
overwrite each other's checkpoints and interleave their logs. :class:`FolderLock` takes an
exclusive ``flock`` on ``<folder>/<name>`` and writes the holder (pid, host, start time, command)
into it. The kernel drops a ``flock`` when its process dies, even by ``kill -9``, so a lock file
left by a dead run is *stale*: the next run takes it over (and says whose it was). A second
live writer is refused with :class:`FolderLockedError` naming the folder and the holder.

While the lock is held, nobody else writes the folder, so ``.tmp-*`` files of interrupted atomic
writes there belong to dead writers: :func:`dearli.utils.atomic_io.remove_temp_leftovers`.
``flock`` is per host on most network file systems; the pid/host record makes a refusal legible.
"""
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Dict, Optional


logger = logging.getLogger(__name__)

LOCK_NAME = ".dearli-run.lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _holder_record() -> Dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)}


def _read_holder(fd: int) -> Dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace")
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: Dict) -> str:
    if not holder:
        return "an unknown process (empty lock file)"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('started', '?')}: "
            f"{holder.get('command', '?')})")


class FolderLock:
    """Exclusive lock of ``folder`` for one writer; a context manager, or ``acquire``/``release``.

    Args:
        folder: the output folder (created if missing).
        what: what the folder is, for messages (e.g. "OUTPUT_DIR").
        name: lock file name inside the folder (one folder may hold several independent locks).
    """

    def __init__(self, folder: str, what: str = "output folder", name: str = LOCK_NAME):
        self.folder = os.path.abspath(os.fspath(folder))
        self.what = what
        self.path = os.path.join(self.folder, name)
        self._fd: Optional[int] = None
        self.previous_holder: Optional[Dict] = None  # the stale holder taken over, if any

    def acquire(self) -> "FolderLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderLockedError(
                f"{self.what} {self.folder} is in use by another run: {describe_holder(holder)} holds {self.path}. "
                "Two runs writing one folder overwrite each other's files; wait for it to finish, stop it, or "
                "choose another folder"
            ) from None
        previous = _read_holder(fd)
        if previous:
            self.previous_holder = previous
            logger.warning("%s %s: taking over the stale lock of %s (that process is gone)",
                           self.what, self.folder, describe_holder(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_record()).encode("utf-8"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record (a clean exit leaves no stale holder) and drop the lock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
