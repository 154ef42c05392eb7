"""The training loader: deterministic, resumable, rank-sharded labeled + unlabeled batches.

Batch composition
-----------------
``SOLVER.IMS_PER_BATCH`` is the *global labeled* batch (Detectron2's convention): each of the
``world_size`` ranks gets ``IMS_PER_BATCH // world_size`` labeled samples per iteration (it must
divide evenly). With ``SSL.ENABLED`` each rank also gets
``round(labeled_per_rank * DATALOADER.UNLABELED_RATIO)`` unlabeled samples, each with p =
``INPUT.UNLABELED.CUTMIX_PROB`` a CutMix partner on top (the reference: 8 labeled + 8 unlabeled on
one GPU, ratio 1.0). Every iteration yields, per rank::

    {"iteration": int, "labeled": list[dict], "unlabeled": list[dict]}   # "unlabeled" [] without SSL

Sampling
--------
Each stream (labeled, unlabeled) is an infinite sequence of per-epoch permutations of its dataset,
permutation e seeded by (SEED, stream, e). The item of rank r, slot s at iteration i sits at global
position ``p = i * global_batch + r * per_rank + s``, so ranks draw disjoint items within an epoch
and a loader started at ``start_iter = k`` continues the sequence of an uninterrupted run instead
of restarting it. Every sample's augmentation (and its CutMix partner choice) draws from
``numpy.random.Generator(SeedSequence([SEED, i, r, s, stream]))``; its ``sample_seed`` comes from
the same sequence. With ``DATALOADER.NUM_WORKERS = n`` worker w builds iterations
start_iter + w, start_iter + w + n, ... and the DataLoader's round-robin returns them in order,
so the output does not depend on the number of workers. ``SEED < 0`` (Detectron2's "random")
draws one random seed shared by all ranks: such a run cannot be replayed, so set ``SEED``.
"""
import difflib
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch.utils.data as torchdata
from detectron2.data import DatasetCatalog
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from . import mappers  # noqa: F401  (registers the training mappers)
from .datasets.from_config import register_config_datasets
from .image_tags import attach_image_tags_from_cfg
from .registry import MAPPER_REGISTRY, build_mapper

logger = logging.getLogger(__name__)

LABELED_STREAM = 0
UNLABELED_STREAM = 1
# Domain tag of the permutation seeds, so they never coincide with a sample's augmentation seed.
_PERMUTATION_TAG = 0x7065726D


def seed_of(cfg) -> int:
    """cfg.SEED; when negative (Detectron2's "random"), a random seed shared by all processes."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    seed = comm.all_gather(int.from_bytes(os.urandom(4), "little"))[0]
    logger.warning("SEED < 0: the data order uses random seed %d; set SEED for reproducible, resumable runs", seed)
    return seed


def sample_seed_sequence(seed, iteration, rank, slot, stream) -> np.random.SeedSequence:
    """The seed sequence of one sample: its augmentation Generator and its ``sample_seed``."""
    return np.random.SeedSequence([int(seed), int(iteration), int(rank), int(slot), int(stream)])


class EpochPermutationStream:
    """Infinite index stream: permutation 0 of range(n), then permutation 1, ... (each seeded)."""

    def __init__(self, num_items: int, seed: int, stream: int):
        if num_items < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.num_items = num_items
        self.seed = seed
        self.stream = stream
        self._epoch, self._permutation = None, None

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            entropy = [self.seed, _PERMUTATION_TAG, self.stream, int(epoch)]
            self._permutation = np.random.default_rng(np.random.SeedSequence(entropy)).permutation(self.num_items)
            self._epoch = epoch
        return self._permutation

    def index_at(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.num_items)
        return int(self.permutation(epoch)[offset])


@dataclass(frozen=True)
class BatchLayout:
    """Where one rank's samples sit in the global streams."""

    rank: int
    world_size: int
    labeled_per_rank: int
    unlabeled_per_rank: int

    @classmethod
    def from_config(cls, cfg, rank, world_size):
        global_batch = int(cfg.SOLVER.IMS_PER_BATCH)
        if global_batch < world_size or global_batch % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={global_batch} (the global labeled batch) must be a positive "
                f"multiple of the number of processes ({world_size})"
            )
        labeled = global_batch // world_size
        unlabeled = int(round(labeled * float(cfg.DATALOADER.UNLABELED_RATIO))) if cfg.SSL.ENABLED else 0
        return cls(rank, world_size, labeled, unlabeled)

    def positions(self, iteration, per_rank) -> range:
        """Global stream positions of this rank's slots 0..per_rank-1 at ``iteration``."""
        start = iteration * per_rank * self.world_size + self.rank * per_rank
        return range(start, start + per_rank)


def _identity(batch):
    return batch


class TrainBatches(torchdata.IterableDataset):
    """Iterations start_iter, start_iter+1, ... of one rank, split over DataLoader workers."""

    def __init__(self, labeled: DatasetFromList, unlabeled: Optional[DatasetFromList], labeled_mapper: Callable,
                 unlabeled_mapper: Optional[Callable], layout: BatchLayout, seed: int, start_iter: int = 0):
        self.labeled, self.unlabeled = labeled, unlabeled
        self.labeled_mapper, self.unlabeled_mapper = labeled_mapper, unlabeled_mapper
        self.layout, self.seed, self.start_iter = layout, seed, int(start_iter)
        self.labeled_stream = EpochPermutationStream(len(labeled), seed, LABELED_STREAM)
        self.unlabeled_stream = EpochPermutationStream(len(unlabeled), seed, UNLABELED_STREAM) if unlabeled is not None else None

    def _rng(self, iteration, slot, stream):
        return np.random.default_rng(sample_seed_sequence(self.seed, iteration, self.layout.rank, slot, stream))

    def labeled_samples(self, iteration) -> List[dict]:
        positions = self.layout.positions(iteration, self.layout.labeled_per_rank)
        return [
            self.labeled_mapper(self.labeled[self.labeled_stream.index_at(p)], self._rng(iteration, slot, LABELED_STREAM))
            for slot, p in enumerate(positions)
        ]

    def _partner_drawer(self, main_index):
        """draw_partner(rng) for the unlabeled mapper: a uniformly drawn *other* unlabeled image."""
        def draw_partner(rng):
            if len(self.unlabeled) == 1:
                return self.unlabeled[0]
            index = int(rng.integers(len(self.unlabeled) - 1))
            return self.unlabeled[index + (index >= main_index)]
        return draw_partner

    def unlabeled_samples(self, iteration) -> List[dict]:
        samples = []
        for slot, p in enumerate(self.layout.positions(iteration, self.layout.unlabeled_per_rank)):
            index = self.unlabeled_stream.index_at(p)
            rng = self._rng(iteration, slot, UNLABELED_STREAM)
            samples.append(self.unlabeled_mapper(self.unlabeled[index], rng, self._partner_drawer(index)))
        return samples

    def batch_at(self, iteration) -> dict:
        """The batch of ``iteration`` for this rank: a pure function of (config, iteration, rank, world size)."""
        unlabeled = self.unlabeled_samples(iteration) if self.layout.unlabeled_per_rank else []
        return {"iteration": iteration, "labeled": self.labeled_samples(iteration), "unlabeled": unlabeled}

    def __iter__(self):
        worker = torchdata.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for iteration in itertools.count(self.start_iter + worker_id, num_workers):
            yield self.batch_at(iteration)


def check_registered(cfg_key, names) -> None:
    """Raise a KeyError naming ``cfg_key``, the unknown name and close registered names."""
    registered = DatasetCatalog.list()
    for name in (names,) if isinstance(names, str) else names:
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
            raise KeyError(
                f"{cfg_key} names {name!r}, which is not a registered dataset (close names: {close or 'none'}); "
                "register it, or import the module that does (e.g. `import dearli`)"
            )


def check_unlabeled_data(cfg) -> None:
    """SSL.ENABLED needs unlabeled images: DATASETS.TRAIN_UNLABELED and DATALOADER.UNLABELED_RATIO > 0."""
    if cfg.SSL.ENABLED and not cfg.DATASETS.TRAIN_UNLABELED:
        raise ValueError(
            "SSL.ENABLED is True but DATASETS.TRAIN_UNLABELED is empty: semi-supervised training needs "
            "unlabeled data (or set SSL.ENABLED False for the supervised-only baseline)"
        )
    if cfg.SSL.ENABLED and cfg.DATALOADER.UNLABELED_RATIO <= 0:
        raise ValueError(f"SSL.ENABLED needs DATALOADER.UNLABELED_RATIO > 0, got {cfg.DATALOADER.UNLABELED_RATIO}")


def dataset_dicts(cfg_key, names) -> List[dict]:
    """Concatenated dicts of the datasets ``names``; errors name the config key they came from."""
    if isinstance(names, str):
        names = (names,)
    check_registered(cfg_key, names)
    dicts = []
    for name in names:
        dicts.extend(DatasetCatalog.get(name))
    if not dicts:
        raise ValueError(f"{cfg_key}={tuple(names)} gives no images")
    return dicts


def build_train_batches(cfg, start_iter=0, *, rank=None, world_size=None) -> TrainBatches:
    """The IterableDataset behind :func:`build_train_loader` (usable without a DataLoader)."""
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    layout = BatchLayout.from_config(cfg, rank, world_size)
    register_config_datasets(cfg)  # e.g. the split names must read the config's SPLITS_ROOT
    labeled = DatasetFromList(dataset_dicts("DATASETS.TRAIN", cfg.DATASETS.TRAIN), copy=True)
    unlabeled, unlabeled_mapper = None, None
    check_unlabeled_data(cfg)
    if cfg.SSL.ENABLED:
        unlabeled_dicts = dataset_dicts("DATASETS.TRAIN_UNLABELED", cfg.DATASETS.TRAIN_UNLABELED)
        unlabeled = DatasetFromList(attach_image_tags_from_cfg(cfg, unlabeled_dicts), copy=True)
        unlabeled_mapper = MAPPER_REGISTRY.get("unlabeled_weak_strong")(cfg, True)
    logger.info(
        "train loader: rank %d/%d, %d labeled + %d unlabeled samples per iteration, from iteration %d",
        rank, world_size, layout.labeled_per_rank, layout.unlabeled_per_rank, start_iter,
    )
    return TrainBatches(labeled, unlabeled, build_mapper(cfg, True), unlabeled_mapper, layout, seed_of(cfg), start_iter)


def build_train_loader(cfg, start_iter=0, *, rank=None, world_size=None) -> torchdata.DataLoader:
    """Infinite loader of this rank's batches from ``start_iter`` on (see the module docstring).

    ``rank`` / ``world_size`` default to Detectron2's ``comm``; tests pass them to simulate ranks.
    """
    batches = build_train_batches(cfg, start_iter, rank=rank, world_size=world_size)
    return torchdata.DataLoader(
        batches, batch_size=None, num_workers=int(cfg.DATALOADER.NUM_WORKERS), collate_fn=_identity
    )
