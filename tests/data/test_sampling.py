"""The train loader: determinism, resume, rank disjointness, worker order, batch sizes, errors."""
from itertools import islice

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from dearli.config import add_dearli_config
from dearli.data import sampling
from dearli.data.datasets import shapes

NUM_LABELED, NUM_UNLABELED = 8, 10


@pytest.fixture(scope="module", autouse=True)
def datasets(tmp_path_factory):
    shapes.register_shapes("t_sampling", num_labeled=NUM_LABELED, num_unlabeled=NUM_UNLABELED, num_val=1,
                           image_size=48, seed=9, cache_dir=tmp_path_factory.mktemp("cache"))


def make_cfg(**overrides):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list([
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9, "INPUT.MIN_SIZE_TRAIN", (32, 48), "INPUT.MAX_SIZE_TRAIN", 200,
        "INPUT.CROP.SIZE", (32, 32), "INPUT.SIZE_DIVISIBILITY", 32, "SEED", 5, "SSL.ENABLED", True,
        "DATASETS.TRAIN", ("t_sampling_train_labeled",), "DATASETS.TRAIN_UNLABELED", ("t_sampling_train_unlabeled",),
        "SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0,
    ])
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def fingerprint(batch):
    """Everything that identifies a batch: ids, seeds and a checksum of every image and target."""
    labeled = [(s["image_id"], s["sample_seed"], int(s["image"].long().sum()), int(s["instances"].gt_masks.sum()))
               for s in batch["labeled"]]
    unlabeled = [(s["image_id"], s["sample_seed"], int(s["strong_image"].long().sum()),
                  None if s["cutmix"] is None else (s["cutmix"]["file_name"], int(s["cutmix"]["box_mask"].sum())))
                 for s in batch["unlabeled"]]
    return batch["iteration"], labeled, unlabeled


def first_batches(cfg, count, start_iter=0, **rank):
    return [fingerprint(b) for b in islice(sampling.build_train_loader(cfg, start_iter, **rank), count)]


def test_loader_is_deterministic_and_seeded_by_cfg_seed():
    batches = first_batches(make_cfg(), 3)
    assert batches == first_batches(make_cfg(), 3)
    assert [b[0] for b in batches] == [0, 1, 2]
    assert batches != first_batches(make_cfg(SEED=6), 3)


def test_resumed_loader_continues_the_uninterrupted_sequence():
    uninterrupted = first_batches(make_cfg(), 6)
    assert first_batches(make_cfg(), 2, start_iter=4) == uninterrupted[4:6]


def test_samples_are_seeded_by_seed_iteration_rank_slot_and_stream():
    batch = sampling.build_train_batches(make_cfg(**{"SOLVER.IMS_PER_BATCH": 4}), rank=1, world_size=2).batch_at(3)
    for stream, key in ((sampling.LABELED_STREAM, "labeled"), (sampling.UNLABELED_STREAM, "unlabeled")):
        for slot, sample in enumerate(batch[key]):
            expected = np.random.SeedSequence([5, 3, 1, slot, stream]).generate_state(1, dtype=np.uint32)[0]
            assert sample["sample_seed"] == expected


def test_ranks_draw_disjoint_items_within_an_epoch():
    cfg = make_cfg(**{"SOLVER.IMS_PER_BATCH": 4, "DATALOADER.UNLABELED_RATIO": 1.5})
    ranks = [sampling.build_train_batches(cfg, rank=r, world_size=2) for r in (0, 1)]
    assert (ranks[0].layout.labeled_per_rank, ranks[0].layout.unlabeled_per_rank) == (2, 3)
    # one labeled epoch (8 images) = 2 iterations x 2 ranks x 2; the unlabeled global batch is 6
    labeled = [[s["image_id"] for it in (0, 1) for s in r.batch_at(it)["labeled"]] for r in ranks]
    assert not set(labeled[0]) & set(labeled[1])
    assert sorted(labeled[0] + labeled[1]) == sorted(set(labeled[0] + labeled[1])) and len(set(labeled[0] + labeled[1])) == 8
    unlabeled = [[s["image_id"] for s in r.batch_at(0)["unlabeled"]] for r in ranks]
    assert len(set(unlabeled[0] + unlabeled[1])) == 6  # 6 distinct of the first unlabeled epoch
    # the two ranks' epochs are the same permutation: rank r's slots are positions r*2 .. r*2+1
    stream = sampling.EpochPermutationStream(NUM_LABELED, sampling.seed_of(cfg), sampling.LABELED_STREAM)
    dicts = ranks[0].labeled
    assert labeled[1][:2] == [dicts[stream.index_at(p)]["image_id"] for p in (2, 3)]


def test_index_stream_is_a_sequence_of_seeded_permutations():
    stream = sampling.EpochPermutationStream(5, seed=1, stream=0)
    epochs = [[stream.index_at(p) for p in range(e * 5, e * 5 + 5)] for e in range(3)]
    assert all(sorted(e) == [0, 1, 2, 3, 4] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    assert epochs[1] == [sampling.EpochPermutationStream(5, seed=1, stream=0).index_at(p) for p in range(5, 10)]
    other_stream = sampling.EpochPermutationStream(5, seed=1, stream=1)
    assert [other_stream.index_at(p) for p in range(15)] != sum(epochs, [])


def test_worker_processes_keep_iteration_order():
    single = first_batches(make_cfg(), 5, start_iter=2)
    assert first_batches(make_cfg(**{"DATALOADER.NUM_WORKERS": 2}), 5, start_iter=2) == single
    assert [b[0] for b in single] == [2, 3, 4, 5, 6]


def test_batch_sizes_follow_ims_per_batch_and_unlabeled_ratio():
    batch = sampling.build_train_batches(make_cfg(**{"SOLVER.IMS_PER_BATCH": 6, "DATALOADER.UNLABELED_RATIO": 0.5}),
                                         rank=0, world_size=3).batch_at(0)
    assert (len(batch["labeled"]), len(batch["unlabeled"])) == (2, 1)
    supervised = sampling.build_train_batches(make_cfg(**{"SSL.ENABLED": False}), rank=0, world_size=1).batch_at(0)
    assert len(supervised["labeled"]) == 2 and supervised["unlabeled"] == []
    assert all(torch.is_tensor(s["image"]) for s in supervised["labeled"])


def test_cutmix_partner_is_another_unlabeled_image():
    cfg = make_cfg(**{"INPUT.UNLABELED.CUTMIX_PROB": 1.0, "DATALOADER.UNLABELED_RATIO": 2.0})
    batches = sampling.build_train_batches(cfg, rank=0, world_size=1)
    for iteration in range(4):
        for sample in batches.batch_at(iteration)["unlabeled"]:
            assert sample["cutmix"]["file_name"] != sample["file_name"]


def test_configuration_errors_name_the_key():
    with pytest.raises(ValueError, match="DATASETS.TRAIN_UNLABELED"):
        sampling.build_train_loader(make_cfg(**{"DATASETS.TRAIN_UNLABELED": ()}))
    with pytest.raises(KeyError, match="DATASETS.TRAIN names 'no_such_dataset'"):
        sampling.build_train_loader(make_cfg(**{"DATASETS.TRAIN": ("no_such_dataset",)}))
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH=3"):
        sampling.build_train_loader(make_cfg(**{"SOLVER.IMS_PER_BATCH": 3}), rank=0, world_size=2)


def test_ssl_loader_refuses_missing_unlabeled_data_naming_the_key():
    with pytest.raises(ValueError, match="SSL.ENABLED is True but DATASETS.TRAIN_UNLABELED is empty"):
        sampling.build_train_batches(make_cfg(**{"DATASETS.TRAIN_UNLABELED": ()}))
    with pytest.raises(ValueError, match=r"SSL.ENABLED needs DATALOADER.UNLABELED_RATIO > 0, got 0.0"):
        sampling.build_train_batches(make_cfg(**{"DATALOADER.UNLABELED_RATIO": 0.0}))
    supervised = sampling.build_train_batches(make_cfg(**{"SSL.ENABLED": False, "DATASETS.TRAIN_UNLABELED": ()}))
    assert supervised.batch_at(0)["unlabeled"] == []
