"""Dataset preparation scripts on small fixture trees built from the real samples.

Expected outputs are recomputed here independently (per-segment loops over the inputs), not with
the scripts' vectorised helpers.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from helpers.dataset_trees import (
    REPO_ROOT, build_ade_tree, build_coco_tree, load_script, read_json, synthesize_ade_instances,
    write_json,
)
from dearli.data.datasets.ade20k import register_ade20k_panoptic
from dearli.data.datasets.metadata import ADE20K_THING_IDS, coco_panoptic_categories
from dearli.data.datasets.validate import DatasetFileError

ade_sem = load_script("prepare_ade20k_sem_seg")
ade_pan = load_script("prepare_ade20k_pan_seg")
coco_sem = load_script("prepare_coco_semantic_from_panoptic")
coco_obj = load_script("prepare_coco_objects")


def png(path, dtype=np.int64):
    return np.asarray(Image.open(path)).astype(dtype)


def panoptic_png(path):
    return rgb2id(np.asarray(Image.open(path), dtype=np.uint32))


# ---- ADE20K semantic -----------------------------------------------------------------------------

def test_ade20k_sem_seg_subtracts_one_and_maps_other_to_ignore(tmp_path, shared_data, capsys):
    ade = build_ade_tree(tmp_path, shared_data)
    ade_sem.main(["--root", str(ade), "--subsets", "validation", "--workers", "1"])
    outputs = sorted((ade / "annotations_detectron2" / "validation").glob("*.png"))
    assert len(outputs) == 3
    for output in outputs:
        raw = png(ade / "annotations" / "validation" / output.name)
        assert np.array_equal(png(output), (raw - 1) % 256)  # 0 wraps to 255
        assert set(np.unique(png(output))) <= set(range(150)) | {255}
    mtimes = [o.stat().st_mtime_ns for o in outputs]
    ade_sem.main(["--root", str(ade), "--subsets", "validation", "--workers", "1"])
    assert "wrote 0 label PNGs, 3 already existed" in capsys.readouterr().out
    assert [o.stat().st_mtime_ns for o in outputs] == mtimes


def test_ade20k_sem_seg_rejects_values_above_150(tmp_path, shared_data):
    ade = build_ade_tree(tmp_path, shared_data)
    bad = ade / "annotations" / "validation" / "ADE_val_00000002.png"
    labels = png(bad, np.uint8).copy()
    labels[0, 0] = 151
    Image.fromarray(labels).save(bad)
    with pytest.raises(DatasetFileError, match=r"ADE_val_00000002\.png.*\[151\]"):
        ade_sem.main(["--root", str(ade), "--subsets", "validation", "--workers", "1"])


# ---- ADE20K panoptic -----------------------------------------------------------------------------

def expected_ade_segments(ade, stem, mapping):
    """{(category, frozenset of pixel indices)} from the inputs, one class / instance at a time."""
    category = png(ade / "annotations" / "validation" / f"{stem}.png") - 1
    instance = png(ade / "annotations_instance" / "validation" / f"{stem}.png")
    in_instance = instance[..., 1] > 0
    segments = set()
    for c in np.unique(category):
        if c >= 0 and c not in ADE20K_THING_IDS:
            mask = (category == c) & ~in_instance  # instances are painted over stuff
            if mask.any():
                segments.add((int(c), frozenset(np.flatnonzero(mask).tolist())))
    for g in np.unique(instance[..., 1]):
        if g > 0:
            mask = instance[..., 1] == g
            r = int(np.unique(instance[..., 0][mask])[0])
            segments.add((mapping[r], frozenset(np.flatnonzero(mask).tolist())))
    return segments


def test_ade20k_pan_seg_builds_panoptic_gt_from_semantic_and_instances(tmp_path, shared_data):
    ade = build_ade_tree(tmp_path, shared_data)
    mapping = synthesize_ade_instances(ade)
    ade_pan.main(["--root", str(ade), "--subsets", "val", "--workers", "1"])
    gt = read_json(ade / "ade20k_panoptic_val.json")
    assert len(gt["categories"]) == 150 and sum(c["isthing"] for c in gt["categories"]) == 100
    assert [a["image_id"] for a in gt["annotations"]] == [i["id"] for i in gt["images"]]
    for ann in gt["annotations"]:
        ids = panoptic_png(ade / "ade20k_panoptic_val" / ann["file_name"])
        produced = set()
        for segment in ann["segments_info"]:
            mask = ids == segment["id"]
            assert segment["area"] == mask.sum() > 0
            x, y, w, h = segment["bbox"]
            rows, cols = np.nonzero(mask)
            assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
            produced.add((segment["category_id"], frozenset(np.flatnonzero(mask).tolist())))
        assert set(np.unique(ids)) - {0} == {s["id"] for s in ann["segments_info"]}
        assert produced == expected_ade_segments(ade, ann["image_id"], mapping)
    # The result loads through the registered ADE20K code path.
    ade_sem.main(["--root", str(ade), "--subsets", "validation", "--workers", "1"])
    register_ade20k_panoptic(str(tmp_path))
    records = DatasetCatalog.get("ade20k_panoptic_val")
    assert len(records) == 3 and all(os.path.isfile(r["sem_seg_file_name"]) for r in records)
    things = [s for r in records for s in r["segments_info"] if s["isthing"] is True]
    assert things and all(s["category_id"] in ADE20K_THING_IDS for s in things)


def test_ade20k_pan_seg_resumes_after_an_interruption(tmp_path, shared_data, capsys):
    ade = build_ade_tree(tmp_path, shared_data)
    synthesize_ade_instances(ade)
    last = ade / "annotations_instance" / "validation" / "ADE_val_00000003.png"
    last.rename(tmp_path / "held_back.png")
    args = ["--root", str(ade), "--subsets", "val", "--workers", "1"]
    with pytest.raises(DatasetFileError,
                       match="ADE_val_00000003.png: instance annotation not found"):
        ade_pan.main(args)
    assert not (ade / "ade20k_panoptic_val.json").exists()
    done = sorted((ade / "ade20k_panoptic_val").glob("*.png"))
    assert [p.name for p in done] == ["ADE_val_00000001.png", "ADE_val_00000002.png"]
    mtimes = [p.stat().st_mtime_ns for p in done]
    (tmp_path / "held_back.png").rename(last)
    ade_pan.main(args)
    assert "1 images converted, 2 resumed" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    assert len(read_json(ade / "ade20k_panoptic_val.json")["annotations"]) == 3
    assert not (ade / ".ade20k_panoptic_val.progress.jsonl").exists()


def test_ade20k_instance_mapping_errors_name_file_and_line(tmp_path, shared_data):
    mapping_file = tmp_path / "categoryMapping.txt"
    mapping_file.write_text(
        "Instacne100\tSceneParse150\tFullADE20K\n1\t\t8\t\t165\n1\t\t9\t\t3055\n")
    with pytest.raises(ValueError, match=r"categoryMapping.txt:3: instance class 1 mapped to 9"):
        ade_pan.read_instance_mapping(mapping_file)
    mapping_file.write_text("Instacne100\tSceneParse150\n1\t\t8\nfoo bar\n")
    with pytest.raises(ValueError, match=r"categoryMapping.txt:3: expected"):
        ade_pan.read_instance_mapping(mapping_file)
    # A mapping giving objectInfo150's thing set (or any other) is refused: PQ_th would change.
    mapping_file.write_text("Instance100 SceneParse150\n1 8\n2 9\n")
    with pytest.raises(ValueError, match="thing classes differ"):
        ade_pan.check_mapping_against_table(ade_pan.read_instance_mapping(mapping_file),
                                            mapping_file)


def test_ade20k_pan_seg_rejects_an_unmapped_instance_class(tmp_path, shared_data):
    ade = build_ade_tree(tmp_path, shared_data)
    synthesize_ade_instances(ade)
    path = ade / "annotations_instance" / "validation" / "ADE_val_00000003.png"
    pixels = np.asarray(Image.open(path)).copy()
    pixels[0, 0] = (101, 200, 0)  # instance class 101 does not exist
    Image.fromarray(pixels).save(path)
    with pytest.raises(DatasetFileError, match=r"ADE_val_00000003.png: instance class R = 101"):
        ade_pan.main(["--root", str(ade), "--subsets", "val", "--workers", "1"])


# ---- COCO ----------------------------------------------------------------------------------------

def test_coco_semantic_from_panoptic_matches_a_per_segment_loop(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data)  # runs the script
    contiguous = {c["id"]: i for i, c in enumerate(coco_panoptic_categories())}
    for ann in read_json(coco / "annotations" / "panoptic_val2017.json")["annotations"]:
        ids = panoptic_png(coco / "panoptic_val2017" / ann["file_name"])
        expected = np.full(ids.shape, 255)
        for segment in ann["segments_info"]:  # crowd segments included
            expected[ids == segment["id"]] = contiguous[segment["category_id"]]
        produced = png(coco / "panoptic_semseg_val2017" / ann["file_name"])
        assert np.array_equal(produced, expected)
        assert (produced == 255).any() and (produced < 133).any()


def test_coco_semantic_refuses_png_ids_missing_from_the_json(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data, with_semantic=False)
    json_file = coco / "annotations" / "panoptic_val2017.json"
    gt = read_json(json_file)
    dropped = gt["annotations"][1]["segments_info"].pop(3)["id"]
    write_json(json_file, gt)
    with pytest.raises(DatasetFileError, match=rf"000000439180.png: segment ids \[{dropped}\]"):
        coco_sem.main(["--root", str(coco), "--subsets", "val2017", "--workers", "1"])


def test_coco_objects_merges_stuff_and_void_into_background(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data, with_semantic=False)
    coco_obj.main(["--root", str(coco), "--subsets", "val2017", "--workers", "1"])
    source = read_json(coco / "annotations" / "panoptic_val2017.json")
    objects = read_json(coco / "annotations" / "panoptic_val2017_objects.json")
    categories = {c["id"]: c for c in objects["categories"]}
    assert len(categories) == 81 and categories[0] == {
        "id": 0, "name": "background", "isthing": 0, "color": [0, 0, 0]}
    assert sum(c["isthing"] for c in categories.values()) == 80
    thing_rank = {cid: i + 1 for i, cid in enumerate(sorted(k for k in categories if k))}
    for src, obj in zip(source["annotations"], objects["annotations"]):
        src_ids = panoptic_png(coco / "panoptic_val2017" / src["file_name"])
        obj_ids = panoptic_png(coco / "panoptic_val2017_objects" / obj["file_name"])
        mask = png(coco / "masks" / obj["file_name"])
        things = {s["id"]: s for s in src["segments_info"] if s["category_id"] in thing_rank}
        background = [s for s in obj["segments_info"] if s["category_id"] == 0]
        assert len(background) == 1 and background[0]["id"] not in things
        assert (obj_ids != 0).all(), "no void pixel is left"
        expected_mask = np.zeros(src_ids.shape, dtype=np.int64)
        for segment_id, segment in things.items():
            assert np.array_equal(obj_ids == segment_id, src_ids == segment_id)
            expected_mask[src_ids == segment_id] = thing_rank[segment["category_id"]]
        assert np.array_equal(obj_ids == background[0]["id"], ~np.isin(src_ids, list(things)))
        assert np.array_equal(mask, expected_mask)
        crowd = {s["id"] for s in obj["segments_info"] if s["iscrowd"]}
        assert crowd == {s["id"] for s in things.values() if s["iscrowd"]} and crowd
        assert sum(s["area"] for s in obj["segments_info"]) == src_ids.size


def test_coco_objects_cli_runs_with_a_process_pool(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data, with_semantic=False)
    mask_dir = coco / "masks"
    shutil.rmtree(mask_dir, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "datasets" / "prepare_coco_objects.py"),
         "--root", str(coco), "--subsets", "val2017", "--workers", "2"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 images converted, 0 resumed" in result.stdout
    assert len(list(mask_dir.glob("*.png"))) == 2
