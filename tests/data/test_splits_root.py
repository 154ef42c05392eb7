"""DATASETS.SPLITS_ROOT takes effect where the training loader reads split lists, and the
"not found" message states the real lookup order (config key, then $DEARLI_SPLITS, then
$DETECTRON2_DATASETS/splits)."""
import pytest
from detectron2.config import get_cfg

from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from dearli.config import add_dearli_config
from dearli.data import sampling, shapes
from helpers.split_trees import LOOKUP_ORDER, UNLABELED_SPLIT, build_two_split_roots


@pytest.fixture(scope="module", autouse=True)
def labeled_shapes(tmp_path_factory):
    shapes.register_shapes("t_splits_root", num_labeled=2, num_unlabeled=1, num_val=1, image_size=32,
                           seed=3, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def two_split_roots(tmp_path, monkeypatch):
    return build_two_split_roots(tmp_path, monkeypatch)


def ssl_cfg(splits_root):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list([
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9, "INPUT.MIN_SIZE_TRAIN", (32,), "INPUT.CROP.SIZE", (32, 32),
        "SSL.ENABLED", True, "SOLVER.IMS_PER_BATCH", 1, "DATALOADER.NUM_WORKERS", 0,
        "DATASETS.TRAIN", ("t_splits_root_train_labeled",), "DATASETS.TRAIN_UNLABELED", (UNLABELED_SPLIT,),
        "DATASETS.SPLITS_ROOT", splits_root, "SEED", 1,
    ])
    return cfg


def unlabeled_ids(cfg):
    batches = sampling.build_train_batches(cfg, rank=0, world_size=1)
    return [record["image_id"] for record in batches.unlabeled]


def test_train_loader_reads_the_split_lists_of_datasets_splits_root(two_split_roots):
    assert unlabeled_ids(ssl_cfg(str(two_split_roots / "my_splits"))) == ["from_cfg"]


def test_empty_splits_root_keeps_the_environment_root(two_split_roots):
    assert unlabeled_ids(ssl_cfg("")) == ["from_env"]


def test_missing_list_names_the_path_under_splits_root_and_the_lookup_order(two_split_roots):
    empty_root = two_split_roots / "empty_splits"
    with pytest.raises(FileNotFoundError) as error:
        unlabeled_ids(ssl_cfg(str(empty_root)))
    message = str(error.value)
    assert message.startswith(f"split list {empty_root}/ade_splits/1_64/unlabeled.txt not found. ")
    assert LOOKUP_ORDER in message
