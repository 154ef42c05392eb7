"""Mapper "sam_pseudo_label": same geometry for image and masks, B4 filtering, overlaps, padding,
class-agnostic targets, bad label files."""
import logging

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, HFlipTransform
from PIL import Image

from dearli.config import add_dearli_config
from dearli.data import sam_format as fmt
from dearli.data.mappers.augmentation import GeometrySpec, sample_geometry, sample_seed_of
from dearli.data.mappers.sam_mapper import SamPseudoLabelMapper, transform_masks
from dearli.data.registry import build_mapper


def _cfg(**overrides):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.INPUT.DATASET_MAPPER_NAME = "sam_pseudo_label"
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.SIZE = (32, 32)
    cfg.INPUT.SIZE_DIVISIBILITY = 48
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.merge_from_list([x for kv in overrides.items() for x in (kv[0].replace("__", "."), kv[1])])
    return cfg


def _write_labels(label_dir, image_path, masks):
    key = fmt.image_key(image_path)
    annotations = [fmt.mask_annotation(m) for m in masks]
    fmt.write_record(label_dir, fmt.make_record(key, image_path, *masks.shape[1:], annotations))
    return {"file_name": str(image_path), "image_id": key, "sam_key": key, "sam_label_dir": str(label_dir)}


def _synthetic_sample(tmp_path, height=64, width=64):
    """An image and 4 hand-made masks: two corner squares, the whole image (overlapping both), a 2x2 dot."""
    rng = np.random.default_rng(0)
    path = tmp_path / "synthetic.png"
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    masks = np.zeros((4, height, width), dtype=bool)
    masks[0, :10, :10] = True
    masks[1, -10:, -10:] = True
    masks[2] = True
    masks[3, 30:32, 30:32] = True
    return path, masks, _write_labels(tmp_path / "labels", path, masks)


def test_bitpacked_geometry_equals_detectron2_per_mask():
    rng = np.random.default_rng(1)
    masks = rng.random((19, 37, 53)) < 0.3  # 19 masks: 3 packed channels, the last one partial
    for transforms in (
        T.TransformList([T.ResizeTransform(37, 53, 80, 114), CropTransform(7, 5, 60, 41), HFlipTransform(60)]),
        T.TransformList([T.ResizeTransform(37, 53, 20, 29), CropTransform(0, 3, 29, 17)]),
    ):
        expected = np.stack([transforms.apply_segmentation(m.astype(np.uint8)) for m in masks]).astype(bool)
        np.testing.assert_array_equal(transform_masks(transforms, masks), expected)
    assert transform_masks(transforms, masks[:0]).shape == (0, 17, 29)


@pytest.mark.parametrize("seed", range(6))
def test_image_and_masks_follow_the_same_draws(tmp_path, seed):
    path, masks, record = _synthetic_sample(tmp_path)
    cfg = _cfg(INPUT__MIN_SIZE_TRAIN=(48, 80, 96))
    sample = SamPseudoLabelMapper(cfg)(record, np.random.default_rng(seed))
    # Replay the mapper's draws with an independent generator of the same seed.
    replay = np.random.default_rng(seed)
    transforms = sample_geometry(64, 64, GeometrySpec.from_config(cfg), replay)
    image = transforms.apply_image(np.asarray(Image.open(path).convert("RGB")))
    h, w = image.shape[:2]
    assert torch.equal(sample["image"][:, :h, :w], torch.from_numpy(image.copy()).permute(2, 0, 1))
    expected = [transforms.apply_segmentation(m.astype(np.uint8)).astype(bool) for m in masks]
    expected = [m for m in expected if m.sum() >= 1]
    got = sample["instances"].gt_masks
    assert got.shape == (len(expected), 48, 48)
    for g, e in zip(got, expected):
        assert torch.equal(g[:h, :w], torch.from_numpy(e.copy()))
    assert not got[:, h:, :].any() and not got[:, :, w:].any()  # padding belongs to no mask
    assert sample["sample_seed"] == sample_seed_of(np.random.default_rng(seed))


def _expected_kept_areas(masks, transforms, min_area):
    """Areas of the masks that survive the crop, by slicing the (unresized) masks directly."""
    crop = next(t for t in transforms.transforms if isinstance(t, CropTransform))
    areas = [int(m[crop.y0 : crop.y0 + crop.h, crop.x0 : crop.x0 + crop.w].sum()) for m in masks]
    return [a for a in areas if a >= max(1, min_area)]


@pytest.mark.parametrize("min_area", [0, 1, 5])
def test_masks_cropped_away_or_too_small_are_dropped(tmp_path, min_area):
    """B4: no target may be empty after the crop; SAM.MIN_MASK_AREA also drops small remnants."""
    _, masks, record = _synthetic_sample(tmp_path)
    cfg = _cfg(SAM__MIN_MASK_AREA=min_area)
    mapper = SamPseudoLabelMapper(cfg)
    counts = set()
    for seed in range(12):
        sample = mapper(record, np.random.default_rng(seed))
        transforms = sample_geometry(64, 64, GeometrySpec.from_config(cfg), np.random.default_rng(seed))
        expected = _expected_kept_areas(masks, transforms, min_area)
        areas = sample["instances"].gt_masks.flatten(1).sum(1).tolist()
        assert areas == expected
        counts.add(len(areas))
    assert len(counts) > 1  # some crops lost masks, others kept them: the filter was exercised


def test_overlapping_masks_stay_overlapping_class_agnostic_instances(tmp_path):
    _, masks, record = _synthetic_sample(tmp_path)
    cfg = _cfg(INPUT__CROP__ENABLED=False, INPUT__SIZE_DIVISIBILITY=-1)
    sample = SamPseudoLabelMapper(cfg)(record, np.random.default_rng(0))
    instances = sample["instances"]
    assert instances.gt_classes.dtype == torch.int64 and instances.gt_classes.tolist() == [0, 0, 0, 0]
    assert instances.gt_masks.dtype == torch.bool
    assert instances.gt_masks.sum(0).max() == 2  # corner/dot pixels are in their own mask and the full one
    assert sample["valid_mask"].all() and sample["height"] == 64 and sample["width"] == 64


def test_padding_and_valid_mask(tmp_path):
    _, _, record = _synthetic_sample(tmp_path)
    sample = SamPseudoLabelMapper(_cfg(INPUT__PAD_VALUE=77))(record, np.random.default_rng(3))
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.uint8
    assert sample["valid_mask"][:32, :32].all() and sample["valid_mask"].sum() == 32 * 32
    assert (sample["image"][:, 32:, :] == 77).all() and (sample["image"][:, :, 32:] == 77).all()


def test_real_image_with_many_masks(tmp_path, shared_data):
    """ADE20K sample, one mask per labeled class (30+ masks: several packed channels), paper-like geometry."""
    image_path = shared_data / "ade20k_semantic_sample" / "images" / "ADE_val_00000001.jpg"
    semantic = np.asarray(Image.open(shared_data / "ade20k_semantic_sample" / "annotations" / "ADE_val_00000001.png"))
    masks = np.stack([semantic == c for c in np.unique(semantic)])
    record = _write_labels(tmp_path / "labels", image_path, masks)
    cfg = _cfg(INPUT__MIN_SIZE_TRAIN=(256, 320), INPUT__CROP__SIZE=(200, 200), INPUT__SIZE_DIVISIBILITY=200,
               INPUT__COLOR_AUG_SSD=True)
    sample = SamPseudoLabelMapper(cfg)(record, np.random.default_rng(5))
    gt = sample["instances"].gt_masks
    assert sample["image"].shape == (3, 200, 200) and 0 < len(gt) <= len(masks)
    assert (gt.flatten(1).sum(1) > 0).all()
    # The classes partition the image, so the kept masks still partition the valid crop.
    assert torch.equal(gt.sum(0) == 1, sample["valid_mask"])


def test_registry_builds_it_and_label_dir_from_config_wins(tmp_path):
    _, masks, record = _synthetic_sample(tmp_path)
    cfg = _cfg(SAM__LABEL_DIR=str(tmp_path / "elsewhere"))
    mapper = build_mapper(cfg)
    assert isinstance(mapper, SamPseudoLabelMapper)
    with pytest.raises(fmt.SamLabelError, match="elsewhere"):
        mapper(record, np.random.default_rng(0))


def test_corrupt_label_file_is_named_or_skipped(tmp_path, caplog):
    _, _, record = _synthetic_sample(tmp_path)
    path = fmt.record_path(record["sam_label_dir"], record["sam_key"])
    path.write_text(path.read_text()[:100])
    with pytest.raises(fmt.SamLabelError, match=f"corrupt pseudo-label file {path}"):
        SamPseudoLabelMapper(_cfg())(record, np.random.default_rng(0))
    mapper = SamPseudoLabelMapper(_cfg(SAM__ON_CORRUPT_FILE="skip"))
    with caplog.at_level(logging.WARNING, logger="dearli.data.mappers.sam_mapper"):
        sample = mapper(record, np.random.default_rng(0))
        mapper(record, np.random.default_rng(1))
    assert len(sample["instances"]) == 0 and sample["image"].shape == (3, 48, 48)
    assert sum(str(path) in r.getMessage() for r in caplog.records) == 1  # warned once per file


def test_labels_of_another_image_size_are_refused(tmp_path):
    path, masks, record = _synthetic_sample(tmp_path)
    _write_labels(tmp_path / "labels", path, masks[:, :60, :])
    with pytest.raises(fmt.SamLabelError, match="are 60x64 but image .* is 64x64"):
        SamPseudoLabelMapper(_cfg())(record, np.random.default_rng(0))


def test_bad_settings_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="ON_CORRUPT_FILE='ignore'"):
        SamPseudoLabelMapper(_cfg(SAM__ON_CORRUPT_FILE="ignore"))
    with pytest.raises(ValueError, match="training only"):
        SamPseudoLabelMapper(_cfg(), is_train=False)
    _, _, record = _synthetic_sample(tmp_path)
    with pytest.raises(fmt.SamLabelError, match="set SAM.LABEL_DIR"):
        SamPseudoLabelMapper(_cfg())(dict(record, sam_label_dir=None), np.random.default_rng(0))
