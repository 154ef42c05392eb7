"""Generated files get the permissions of a plain open()/mkdir() under the process umask
(0666 / 0777 minus the umask), not mkstemp's private 0600 / mkdtemp's 0700."""
import os
import stat

import numpy as np
import pytest
import torch

from dearli.data.datasets.shapes import ensure_split
from dearli.modeling.checkpoint import DEARLiCheckpointer
from dearli.utils.atomic_io import atomic_write, atomic_write_json, process_umask, save_png_atomic
from helpers.tools import load_tool


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_process_umask_reads_the_current_umask_without_changing_it(umask):
    assert process_umask() == umask
    assert process_umask() == umask  # reading it did not reset it


def test_atomic_writes_follow_the_umask(tmp_path, umask):
    expected = {0o022: 0o644, 0o027: 0o640}[umask]
    with atomic_write(tmp_path / "raw.bin") as f:
        f.write(b"x")
    atomic_write_json(tmp_path / "results.json", {"PQ": 1.0})
    save_png_atomic(np.zeros((2, 2), np.uint8), tmp_path / "labels.png")
    for name in ("raw.bin", "results.json", "labels.png"):
        assert oct(mode_of(tmp_path / name)) == oct(expected), name
    # A plain open() under the same umask is the oracle.
    (tmp_path / "plain.txt").write_text("x")
    assert mode_of(tmp_path / "plain.txt") == expected


def test_checkpoint_and_last_checkpoint_follow_the_umask(tmp_path, umask):
    checkpointer = DEARLiCheckpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    expected = 0o666 & ~umask
    assert mode_of(tmp_path / "model_0000001.pth") == expected
    assert mode_of(tmp_path / "last_checkpoint") == expected


def test_tool_outputs_follow_the_umask(tmp_path, umask):
    demo = load_tool("demo")
    demo.write_png(tmp_path / "a_panoptic.png", np.zeros((4, 4, 3), np.uint8))
    demo.write_json(tmp_path / "a_segments.json", {"segments": []})
    expected = 0o666 & ~umask
    assert mode_of(tmp_path / "a_panoptic.png") == expected
    assert mode_of(tmp_path / "a_segments.json") == expected


def test_generated_dataset_folder_follows_the_umask(tmp_path, umask):
    split_dir = ensure_split(tmp_path / "val", "val", num_images=1, image_hw=(32, 32), seed=0)
    assert mode_of(split_dir) == 0o777 & ~umask
    assert all(mode_of(p) == 0o666 & ~umask for p in split_dir.rglob("*") if p.is_file())
