"""Cached SAM masks in a view's frame (dearli/data/sam_masks.py) and the unlabeled mapper's
``sam_masks`` for SSL.SAM_REFINE: alignment with the weak view under resize, crop, flip and padding
(hand-drawn masks), stride reduction, missing-mask error and skip, feature off unchanged."""
import hashlib
import logging
import re

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, HFlipTransform
from PIL import Image

from dearli.config import add_dearli_config
from dearli.data import sam_format as fmt
from dearli.data.datasets import shapes
from dearli.data.mappers import UnlabeledWeakStrongMapper
from dearli.data.sam_masks import SamMaskCache, masks_on_canvas, transform_masks, unpack_masks
from dearli.engine.sam_refine import nearest_indices


def _cfg(**overrides):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list([
        "INPUT.MIN_SIZE_TRAIN", (40,), "INPUT.MAX_SIZE_TRAIN", 1000, "INPUT.CROP.SIZE", (24, 30),
        "INPUT.SIZE_DIVISIBILITY", 32, "INPUT.UNLABELED.CUTMIX_PROB", 1.0,
        "SSL.SAM_REFINE.MATCH_STRIDE", 1,
    ])
    cfg.merge_from_list([x for kv in overrides.items() for x in (kv[0].replace("__", "."), kv[1])])
    return cfg


def _drawn_image(tmp_path, name, rect, height=40, width=50):
    """A PNG whose green channel is 5 x the column and whose blue channel is 255 on a rectangle
    (y0, y1, x0, x1), 0 elsewhere, and its SAM record: mask 0 = the rectangle, mask 1 = the columns
    < 20 (a hand-made 'left part')."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, :, 1] = 5 * np.arange(width)[None, :]
    y0, y1, x0, x1 = rect
    image[y0:y1, x0:x1, 2] = 255
    path = tmp_path / f"{name}.png"
    Image.fromarray(image).save(path)
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, y0:y1, x0:x1] = True
    masks[1, :, :20] = True
    key = fmt.image_key(path)
    fmt.write_record(tmp_path / "sam", fmt.make_record(key, path, height, width, [fmt.mask_annotation(m) for m in masks]))
    return {"file_name": str(path), "image_id": name}


def _rectangle(view, valid):
    return (view[2] == 255) & valid  # the padding value is 128


def _left_part(view, valid):
    return (view[1] < 100) & valid  # green = 5 x the original column


def test_masks_land_on_the_drawn_rectangle_in_the_weak_view_and_the_partner_view(tmp_path):
    main = _drawn_image(tmp_path, "main", (5, 20, 8, 30))
    partner = _drawn_image(tmp_path, "partner", (22, 38, 30, 46))
    mapper = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=str(tmp_path / "sam")))
    flips, cut = set(), 0
    for seed in range(12):
        sample = mapper(main, np.random.default_rng(seed), lambda rng: partner)
        for view in (sample, sample["cutmix"]):
            masks, weak, valid = view["sam_masks"], view["weak_image"], view["valid_mask"]
            assert masks.dtype == torch.bool and masks.shape == (2, 32, 32) == (2, *weak.shape[-2:])
            assert torch.equal(masks[0], _rectangle(weak, valid))  # exactly the rectangle
            assert torch.equal(masks[1], _left_part(weak, valid))
            assert not masks[:, ~valid].any()  # nothing in the padding
            flips.add(bool(weak[1, 0, 0] > weak[1, 0, 1]))  # green falls to the right: flipped
            cut += int(_rectangle(weak, valid).sum() < 15 * 22)
    assert flips == {False, True} and cut > 0  # both flips and partly cropped rectangles were seen


def test_resize_moves_the_rectangle_by_exact_nearest_scaling(tmp_path):
    record = _drawn_image(tmp_path, "scaled", (5, 20, 8, 30))
    cache = SamMaskCache(str(tmp_path / "sam"))
    transforms = T.TransformList([T.ResizeTransform(40, 50, 80, 100), CropTransform(6, 4, 60, 50), HFlipTransform(60)])
    masks = cache.in_view(record, (40, 50), transforms, (64, 64))
    expected = torch.zeros(64, 64, dtype=torch.bool)
    # rows 10..40 and columns 16..60 after the 2x resize; crop at (x 6, y 4); flip of a 60-wide crop.
    expected[10 - 4 : 40 - 4, 60 - (60 - 6) : 60 - (16 - 6)] = True
    assert torch.equal(masks[0], expected)


def test_stride_keeps_the_centre_pixel_of_each_cell():
    masks = np.zeros((3, 10, 12), dtype=bool)
    masks[0, 4:8, 4:12] = True  # on the stride-4 grid: exactly cells (1, 1) and (1, 2)
    masks[1, 1:3, 3:7] = True  # holds the centre pixel (2, 6) of cell (0, 1) only: pixel (4i + 2, 4j + 2)
    masks[2, 0:2, 0:4] = True  # half of cell (0, 0), but not its centre pixel (2, 2): empty
    reduced = masks_on_canvas(masks, (10, 12), stride=4)  # canvas 10x12 -> 3x3 cells
    expected = torch.zeros(3, 3, 3, dtype=torch.bool)
    expected[0, 1, 1:3] = True
    expected[1, 0, 1] = True
    assert torch.equal(reduced, expected)
    # Cells are read where dearli.engine.sam_refine reads the teacher's masks (its nearest_indices).
    rows, cols = nearest_indices(3, 12, "cpu"), nearest_indices(3, 12, "cpu")
    padded = np.zeros((3, 12, 12), dtype=bool)
    padded[:, :10] = masks
    assert torch.equal(reduced, torch.from_numpy(padded)[:, rows[:, None], cols[None, :]])
    # The strided transform gives the same cells as transforming at full size, then sampling.
    transforms = T.TransformList([T.ResizeTransform(10, 12, 20, 24), CropTransform(3, 2, 17, 15), HFlipTransform(17)])
    assert torch.equal(masks_on_canvas(transform_masks(transforms, masks, 4), (16, 20), 4, strided=True),
                       masks_on_canvas(transform_masks(transforms, masks), (16, 20), 4))
    # An image without masks; of a 15x17 crop the cell centres 2, 6, 10, 14 lie inside on both axes.
    assert transform_masks(transforms, masks[:0], 4).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="MATCH_STRIDE must be >= 1, got 0"):
        masks_on_canvas(masks, (10, 12), stride=0)


def test_packed_full_resolution_masks_unpack_to_the_stride_1_masks(tmp_path):
    main = _drawn_image(tmp_path, "main", (5, 20, 8, 30))
    partner = _drawn_image(tmp_path, "partner", (22, 38, 30, 46))
    folder = str(tmp_path / "sam")
    full = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=folder))
    strided = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=folder,
                                             SSL__SAM_REFINE__MATCH_STRIDE=4))
    off = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=folder,
                                         SSL__SAM_REFINE__PASTE_FULL_RESOLUTION=False))
    for seed in range(4):
        reference = full(main, np.random.default_rng(seed), lambda rng: partner)
        sample = strided(main, np.random.default_rng(seed), lambda rng: partner)
        assert "sam_masks_packed" not in off(main, np.random.default_rng(seed), lambda rng: partner)
        for view, expected in ((sample, reference), (sample["cutmix"], reference["cutmix"])):
            packed = view["sam_masks_packed"]
            assert packed.dtype == torch.uint8 and packed.shape == (1, 32, 32)  # 2 masks in one byte
            assert torch.equal(unpack_masks(packed, torch.tensor([0, 1])), expected["sam_masks"])
            assert torch.equal(unpack_masks(packed, torch.tensor([1])), expected["sam_masks"][1:])


def test_unpack_masks_follows_numpy_bit_order():
    masks = np.random.default_rng(0).random((11, 5, 6)) < 0.5
    packed = torch.from_numpy(np.packbits(masks, axis=0))  # [2, 5, 6]
    indices = torch.tensor([0, 7, 8, 10])
    assert torch.equal(unpack_masks(packed, indices), torch.from_numpy(masks[[0, 7, 8, 10]]))


def test_emitted_stride_matches_the_canvas(tmp_path):
    main = _drawn_image(tmp_path, "main", (4, 20, 8, 28))
    mapper = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__MATCH_STRIDE=4,
                                            SSL__SAM_REFINE__LABEL_DIR=str(tmp_path / "sam")))
    full = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=str(tmp_path / "sam")))
    sample = mapper(main, np.random.default_rng(3))
    reference = full(main, np.random.default_rng(3))
    assert sample["sam_masks"].shape == (2, 8, 8)
    assert torch.equal(sample["sam_masks"], masks_on_canvas(reference["sam_masks"].numpy(), (32, 32), 4))


def test_missing_masks_name_the_image_and_the_folder_or_are_skipped_and_counted(tmp_path, caplog):
    main = _drawn_image(tmp_path, "main", (5, 20, 8, 30))
    other = dict(main, file_name=str(tmp_path / "unseen.png"))
    Image.open(main["file_name"]).save(other["file_name"])
    folder = str(tmp_path / "sam")
    mapper = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=folder))
    message = rf"no pseudo-label file {re.escape(folder)}/masks/../unseen.json for image 'unseen'"
    with pytest.raises(fmt.SamLabelError, match=message):
        mapper(other, np.random.default_rng(0))
    skipping = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__LABEL_DIR=folder,
                                              SSL__SAM_REFINE__MISSING_MASKS="skip"))
    with caplog.at_level(logging.WARNING, logger="dearli.data.sam_masks"):
        samples = [skipping(other, np.random.default_rng(seed), lambda rng: main) for seed in range(3)]
    assert all(s["sam_masks"] is None and s["cutmix"]["sam_masks"].shape == (2, 32, 32) for s in samples)
    assert skipping.sam_masks.skipped == 3
    warnings = [r.getMessage() for r in caplog.records if "unseen" in r.getMessage()]
    assert len(warnings) == 1 and "SSL.SAM_REFINE.MISSING_MASKS=skip (1 images skipped" in warnings[0]
    with pytest.raises(ValueError, match="SSL.SAM_REFINE.MISSING_MASKS='ignore' must be one of"):
        UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SSL__SAM_REFINE__MISSING_MASKS="ignore"))


def test_masks_fall_back_to_sam_label_dir(tmp_path):
    main = _drawn_image(tmp_path, "main", (5, 20, 8, 30))
    mapper = UnlabeledWeakStrongMapper(_cfg(SSL__SAM_REFINE__ENABLED=True, SAM__LABEL_DIR=str(tmp_path / "sam")))
    assert mapper(main, np.random.default_rng(0))["sam_masks"].shape == (2, 32, 32)


def _digest(sample):
    digest = hashlib.sha256()
    for key in sorted(sample):
        value = sample[key]
        if isinstance(value, dict):
            digest.update(_digest(value).encode())
        elif isinstance(value, torch.Tensor):
            digest.update(key.encode())
            digest.update(value.numpy().tobytes())
        elif key != "file_name":  # a temporary path
            digest.update(f"{key}={value!r}".encode())
    return digest.hexdigest()


# The samples and generator states of _samples_digest, computed with the unlabeled mapper as it was
# before SSL.SAM_REFINE existed (commit e8cb486).
DIGEST_BEFORE_SAM_REFINE = "9663cae6cfed6d46bcfe40a18d9d204469964c87f1d18ea7175d31cdeeb1e717"


def _samples_digest(mapper, dicts, pop=()):
    digest = hashlib.sha256()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        sample = mapper(dicts[seed], rng, lambda r: dicts[(seed + 1) % 4])
        for key in pop:
            sample.pop(key)
            sample["cutmix"].pop(key)
        digest.update(_digest(sample).encode())
        digest.update(str(rng.bit_generator.state).encode())
    return digest.hexdigest()


def test_feature_off_and_on_leave_views_and_draws_bitwise_unchanged(tmp_path):
    shapes.register_shapes("t_digest", num_labeled=1, num_unlabeled=4, num_val=1, image_size=(80, 96), seed=7,
                           cache_dir=tmp_path / "cache")
    dicts = DatasetCatalog.get("t_digest_train_unlabeled")
    settings = ["INPUT.MIN_SIZE_TRAIN", (48, 64, 96), "INPUT.MAX_SIZE_TRAIN", 400, "INPUT.CROP.SIZE", (56, 56),
                "INPUT.SIZE_DIVISIBILITY", 64, "INPUT.UNLABELED.CUTMIX_PROB", 1.0]
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list(settings)
    assert _samples_digest(UnlabeledWeakStrongMapper(cfg), dicts) == DIGEST_BEFORE_SAM_REFINE
    # On, with every image skipped: the same views and draws plus sam_masks (and packed) None.
    cfg.merge_from_list(["SSL.SAM_REFINE.ENABLED", True, "SSL.SAM_REFINE.MISSING_MASKS", "skip",
                         "SSL.SAM_REFINE.LABEL_DIR", str(tmp_path / "no_masks")])
    popped = ["sam_masks", "sam_masks_packed"]
    assert _samples_digest(UnlabeledWeakStrongMapper(cfg), dicts, pop=popped) == DIGEST_BEFORE_SAM_REFINE
