"""The evaluation loader (DEARLiTrainer.build_test_loader): images go through dearli's one reader
(a 16-bit PNG is scaled, Detectron2's DatasetMapper clipped it to white), and split names read
the config's DATASETS.SPLITS_ROOT."""
import numpy as np
import pytest

from dearli.data.datasets import register_builtin_datasets
from dearli.data.datasets.metadata import register_dataset
from dearli.engine.trainer import DEARLiTrainer
from helpers.deep_images import write_gray16_png
from helpers.split_trees import UNLABELED_SPLIT, build_two_split_roots
from helpers.tiny import tiny_cfg


@pytest.fixture(scope="module", autouse=True)
def restore_default_registrations():
    yield
    register_builtin_datasets()


def first_sample(cfg, dataset_name):
    return next(iter(DEARLiTrainer.build_test_loader(cfg, dataset_name)))[0]


def test_16bit_png_is_scaled_by_the_evaluation_loader(tmp_path):
    path = write_gray16_png(tmp_path / "gray16.png", np.full((8, 8), 40000, np.uint16))
    register_dataset("t_loader_gray16", lambda: [{"file_name": path, "image_id": "gray16"}], {})
    sample = first_sample(tiny_cfg(), "t_loader_gray16")
    assert (sample["height"], sample["width"]) == (8, 8)
    assert tuple(sample["image"].shape) == (3, 64, 64)  # INPUT.MIN_SIZE_TEST 64
    assert sample["image"].unique().tolist() == [40000 >> 8]  # 156, not 255


def test_evaluation_loader_reads_split_lists_of_datasets_splits_root(tmp_path, monkeypatch):
    root = build_two_split_roots(tmp_path, monkeypatch)
    sample = first_sample(tiny_cfg(**{"DATASETS.SPLITS_ROOT": str(root / "my_splits")}), UNLABELED_SPLIT)
    assert sample["image_id"] == "from_cfg"
