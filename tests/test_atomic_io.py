"""Atomic writes: a failed write leaves the previous file intact and no temporary file behind."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from dearli.utils.atomic_io import TMP_PREFIX, atomic_write, atomic_write_json, save_png_atomic


def test_failed_write_keeps_previous_content_and_cleans_up(tmp_path):
    target = tmp_path / "ckpt.pth"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_successful_writes_replace_the_file(tmp_path):
    atomic_write_json(tmp_path / "sub" / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"x": [1, 2]}
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_png_atomic(labels, tmp_path / "l.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(TMP_PREFIX)]
