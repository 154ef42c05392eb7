"""The pseudo-label format: RLE round trip, atomic writes, validation errors, index, meta, keys."""
import json
import os

import numpy as np
import pytest

from dearli.data import sam_format as fmt


def _random_masks(rng, n=3, height=23, width=31):
    masks = np.zeros((n, height, width), dtype=bool)
    for i in range(n):
        y0, x0 = rng.integers(0, height - 5), rng.integers(0, width - 5)
        masks[i, y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
    masks[0, -1, -1] = True  # a run that ends exactly at the last pixel
    return masks


def _record(masks, key="img_0"):
    annotations = [fmt.mask_annotation(m, predicted_iou=0.9, stability_score=0.97) for m in masks]
    return fmt.make_record(key, f"/images/{key}.jpg", masks.shape[1], masks.shape[2], annotations)


def test_round_trip_masks_areas_and_boxes(tmp_path):
    rng = np.random.default_rng(0)
    masks = _random_masks(rng)
    path = fmt.write_record(tmp_path, _record(masks))
    assert path == fmt.record_path(tmp_path, "img_0")
    record, decoded = fmt.load_image_masks(tmp_path, "img_0")
    np.testing.assert_array_equal(decoded, masks)
    for ann, mask in zip(record["annotations"], masks):
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert [a["id"] for a in record["annotations"]] == [1, 2, 3]


def test_empty_record_gives_zero_masks_of_image_size(tmp_path):
    fmt.write_record(tmp_path, fmt.make_record("empty", "empty.jpg", 7, 9, []))
    _, masks = fmt.load_image_masks(tmp_path, "empty")
    assert masks.shape == (0, 7, 9) and masks.dtype == bool


def test_records_are_spread_over_hash_buckets(tmp_path):
    paths = {fmt.record_path(tmp_path, f"ADE_train_{i:08d}") for i in range(200)}
    buckets = {p.parent.name for p in paths}
    assert len(paths) == 200 and len(buckets) > 100
    assert all(len(b) == 2 and int(b, 16) >= 0 for b in buckets)


def test_settings_dirname_encodes_parameters():
    assert fmt.settings_dirname("vit_h", 32, 0.88, 0.95) == (
        "vit_h/points_per_side_32_pred_iou_thresh_0.88_stability_score_thresh_0.95"
    )
    assert fmt.settings_dirname("vit_b", 64, 0.5, 0.9) != fmt.settings_dirname("vit_b", 64, 0.5, 0.95)


def test_image_key_is_file_stem_and_rejects_unsafe_names():
    assert fmt.image_key("/data/coco/train2017/000000000009.jpg") == "000000000009"
    with pytest.raises(fmt.SamLabelError, match="cannot be used"):
        fmt.image_key("/data/.hidden.jpg")
    with pytest.raises(fmt.SamLabelError, match="cannot be used"):
        fmt.image_key("/data/a b.jpg")


def test_failed_atomic_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    fmt.atomic_write_json(path, {"a": 1})

    def broken_dump(obj, f, **kwargs):
        f.write('{"a": 2, "trunc')  # a partial write, then the writer dies
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt.json, "dump", broken_dump)
    with pytest.raises(KeyboardInterrupt):
        fmt.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_truncated_file_error_names_the_file(tmp_path):
    path = fmt.write_record(tmp_path, _record(_random_masks(np.random.default_rng(1))))
    path.write_text(path.read_text()[:-40])
    with pytest.raises(fmt.SamLabelError, match=str(path)):
        fmt.load_image_masks(tmp_path, "img_0")


def test_flipped_rle_character_is_caught_by_checksum(tmp_path):
    # pycocotools decodes inconsistent run lengths without complaint (writing past the mask),
    # so a damaged RLE must be rejected before decoding.
    path = fmt.write_record(tmp_path, _record(_random_masks(np.random.default_rng(2))))
    record = json.loads(path.read_text())
    counts = record["annotations"][1]["segmentation"]["counts"]
    record["annotations"][1]["segmentation"]["counts"] = counts[:-1] + ("1" if counts[-1] != "1" else "2")
    path.write_text(json.dumps(record))
    with pytest.raises(fmt.SamLabelError, match="checksum mismatch"):
        fmt.read_record(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: r.update(version=99), "format version 99"),
        (lambda r: r.pop("annotations"), "missing 'annotations'"),
        (lambda r: r["image"].update(height=0), "bad image size"),
        (lambda r: r.update(format="other"), "not a dearli-sam-masks record"),
    ],
)
def test_schema_violations_are_named(tmp_path, damage, message):
    path = fmt.write_record(tmp_path, _record(_random_masks(np.random.default_rng(3))))
    record = json.loads(path.read_text())
    damage(record)
    path.write_text(json.dumps(record))
    with pytest.raises(fmt.SamLabelError, match=message):
        fmt.read_record(path)


def test_rle_size_and_area_must_match_image(tmp_path):
    masks = _random_masks(np.random.default_rng(4))
    record = _record(masks)
    record["image"]["height"] += 1  # RLE sizes no longer match the image
    path = fmt.write_record(tmp_path, record)
    with pytest.raises(fmt.SamLabelError, match="RLE size"):
        fmt.read_record(path)
    annotations = [dict(a, area=a["area"] + 1) for a in _record(masks)["annotations"]]
    fmt.write_record(tmp_path, fmt.make_record("img_0", "x.jpg", *masks.shape[1:], annotations))
    with pytest.raises(fmt.SamLabelError, match="decodes to area"):
        fmt.load_image_masks(tmp_path, "img_0")


def test_missing_record_error_says_how_to_make_it(tmp_path):
    with pytest.raises(fmt.SamLabelError, match="generate_sam_pseudolabels"):
        fmt.load_image_masks(tmp_path, "nope")


def test_finished_keys_ignore_temp_files_and_index_counts(tmp_path):
    rng = np.random.default_rng(5)
    for key, n in (("a", 1), ("b", 3)):
        fmt.write_record(tmp_path, _record(_random_masks(rng, n=n), key=key))
    stale = fmt.record_path(tmp_path, "c").parent / f"{fmt.TMP_PREFIX}c.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"half')
    assert fmt.finished_keys(tmp_path) == {"a", "b"}
    assert fmt.update_index(tmp_path, {"a": 1}) == {"a": 1, "b": 3}  # "b" counted from its file
    assert fmt.read_index(tmp_path) == {"a": 1, "b": 3}
    assert fmt.remove_stale_temp_files(tmp_path) == 1 and not stale.exists()


def test_meta_mismatch_is_refused(tmp_path):
    meta = {"source": "sam", "model_type": "vit_h", "generator": {"points_per_side": 32}}
    fmt.ensure_meta(tmp_path, meta)
    assert fmt.ensure_meta(tmp_path, meta)["model_type"] == "vit_h"
    with pytest.raises(fmt.SamLabelError, match="different settings.*generator"):
        fmt.ensure_meta(tmp_path, dict(meta, generator={"points_per_side": 64}))


def test_folder_without_meta_is_not_a_label_folder(tmp_path):
    with pytest.raises(fmt.SamLabelError, match="not a pseudo-label folder"):
        fmt.read_meta(tmp_path)
