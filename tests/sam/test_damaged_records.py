"""A rerun of tools/generate_sam_pseudolabels.py verifies the records already on disk: damaged
ones (checksum mismatch, truncated JSON) are regenerated and named in the report; sound ones are
kept. Before, the rerun said "failed 0" and left them in place."""
import json

import numpy as np
import pytest
from PIL import Image

from dearli.data import sam_format as fmt
from dearli.sam.generator import GeneratorSettings
from dearli.sam.tiny import TINY_MODEL_TYPE
from helpers.tools import load_tool

tool = load_tool("generate_sam_pseudolabels")
SETTINGS = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256)
FLAGS = ["--model-type", TINY_MODEL_TYPE, "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--device", "cpu", "--no-progress"]
KEYS = ("img_a", "img_b", "img_c")


@pytest.fixture
def generated(tmp_path, capsys):
    """(argv, label folder, {key: record text}) after one complete run over three small images."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for key in KEYS:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{key}.png")
    argv = ["--images", str(images), "--output", str(tmp_path / "labels"), *FLAGS]
    tool.main(argv)
    capsys.readouterr()
    label_dir = tmp_path / "labels" / SETTINGS.label_subdir(TINY_MODEL_TYPE)
    return argv, label_dir, {key: fmt.record_path(label_dir, key).read_text() for key in KEYS}


def test_rerun_regenerates_damaged_records_and_names_them(generated, capsys):
    argv, label_dir, original = generated
    edited, truncated = fmt.record_path(label_dir, "img_a"), fmt.record_path(label_dir, "img_b")
    record = json.loads(original["img_a"])
    record["annotations"][0]["area"] += 1  # a hand edit: the checksum no longer matches
    edited.write_text(json.dumps(record))
    truncated.write_text(original["img_b"][: len(original["img_b"]) // 2])

    tool.main(argv)
    out = capsys.readouterr().out
    assert "images 3 | already done 1 | generated 2 |" in out
    assert "failed 0 | damaged records regenerated 2" in out
    assert f"  regenerated damaged record: {edited}: corrupt pseudo-label file {edited}: checksum mismatch" in out
    assert f"  regenerated damaged record: {truncated}: corrupt pseudo-label file {truncated}: " in out
    assert {key: fmt.record_path(label_dir, key).read_text() for key in KEYS} == original
    assert set(fmt.read_index(label_dir)) == set(KEYS)


def test_rerun_over_sound_records_regenerates_nothing(generated, capsys):
    argv, label_dir, original = generated
    tool.main(argv)
    assert "already done 3 | generated 0 |" in capsys.readouterr().out
    assert {key: fmt.record_path(label_dir, key).read_text() for key in KEYS} == original
