"""Atomic file writes: readers see either the previous file or the complete new one, never a part.

Every generated file in dearli (checkpoints, SAM pseudo-labels, prepared dataset files, text
classifier caches, tool outputs) is written through :func:`atomic_write`: the data goes to a
temporary file ``.tmp-*`` in the target's folder, is flushed and fsync'ed, then ``os.replace``'d
over the target. An interrupted write leaves only an ignorable ``.tmp-*`` file behind. The file
gets the permissions of a plain ``open()`` (0666 minus the process umask), not mkstemp's private
0600, so colleagues on a shared machine can read checkpoints and results when the umask allows.
"""
import contextlib
import json
import logging
import os
import tempfile

import numpy as np
from PIL import Image

TMP_PREFIX = ".tmp-"
NEW_FILE_MODE = 0o666  # what open() asks for; the umask then removes bits
NEW_DIR_MODE = 0o777  # what mkdir() asks for


def process_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding=None):
    """Open a temporary file next to ``path``; on success rename it over ``path``, on failure remove it."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            os.fchmod(f.fileno(), NEW_FILE_MODE & ~process_umask())  # mkstemp's 0600 would make outputs private
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_temp_leftovers(folder):
    """Delete the ``.tmp-*`` files of interrupted writes anywhere under ``folder``; returns their
    paths. Only for a folder no live process writes to (e.g. while holding its
    :class:`dearli.utils.run_lock.FolderLock`): a live writer's temp file would vanish under it."""
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TMP_PREFIX):
                path = os.path.join(root, name)
                os.remove(path)
                removed.append(path)
    if removed:
        logger.warning("removed %d leftover temporary files of interrupted writes in %s (e.g. %s)",
                       len(removed), folder, removed[0])
    return removed


def atomic_write_json(path, obj, **dump_kwargs):
    """Write ``obj`` as (compact, by default) JSON to ``path``, atomically."""
    dump_kwargs.setdefault("separators", (",", ":"))
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)


def save_png_atomic(array, path):
    """Write a uint8 HxW or HxWx3 array as a PNG at ``path``, atomically."""
    with atomic_write(path) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
