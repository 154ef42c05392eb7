"""tools/generate_sam_pseudolabels.py end to end on CPU with the tiny SAM: crash + resume, shards,
per-"GPU" processes, unreadable images, benchmark, checkpoint and settings errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dearli.data import sam_format as fmt
from dearli.sam.generator import GeneratorSettings
from dearli.sam.pipeline import SIMULATED_CRASH_EXIT_CODE
from dearli.sam.tiny import TINY_MODEL_TYPE, build_tiny_sam

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "generate_sam_pseudolabels.py"
sys.path.insert(0, str(REPO / "tools"))
import generate_sam_pseudolabels as tool  # noqa: E402

# Random weights: lowered thresholds (see test_generator.py); 4x4 points keep it fast.
SETTINGS = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256)
FLAGS = ["--model-type", TINY_MODEL_TYPE, "--points-per-side", "4", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def image_sources(shared_data, tmp_path_factory):
    """5 real images (ADE20K + COCO samples), 1 small synthetic PNG and 1 unreadable 'jpg'."""
    extra = tmp_path_factory.mktemp("extra_images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(extra / "synthetic_0.png")
    (extra / "broken_0.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    return [str(shared_data / "ade20k_semantic_sample" / "images"), str(shared_data / "coco_panoptic_sample" / "images"),
            str(extra)]


READABLE_KEYS = {"ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003", "000000142238", "000000439180",
                 "synthetic_0"}


def _run_tool(args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, env=env, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"tool failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _all_records(label_dir):
    """{key: record} of every finished record, each validated and decoded."""
    out = {}
    for key in fmt.finished_keys(label_dir):
        record, masks = fmt.load_image_masks(label_dir, key)
        assert len(masks) == len(record["annotations"])
        out[key] = record
    return out


@pytest.fixture(scope="module")
def uninterrupted(image_sources, tmp_path_factory):
    """Records of one uninterrupted in-process run: what every other run must reproduce."""
    root = tmp_path_factory.mktemp("uninterrupted")
    tool.main(["--images", *image_sources, "--output", str(root), *FLAGS])
    return _all_records(root / SETTINGS.label_subdir(TINY_MODEL_TYPE))


def test_uninterrupted_run_covers_every_readable_image(uninterrupted):
    assert set(uninterrupted) == READABLE_KEYS
    assert sum(len(r["annotations"]) for r in uninterrupted.values()) > 0
    sizes = {k: (r["image"]["height"], r["image"]["width"]) for k, r in uninterrupted.items()}
    assert sizes["synthetic_0"] == (40, 56) and sizes["ADE_val_00000001"] == (512, 683)


def test_crash_midway_then_resume_gives_exactly_the_full_set(image_sources, uninterrupted, tmp_path, capsys):
    label_dir = tmp_path / SETTINGS.label_subdir(TINY_MODEL_TYPE)
    crashed = _run_tool(["--images", *image_sources, "--output", str(tmp_path), *FLAGS, "--stop-after", "2"], check=False)
    assert crashed.returncode == SIMULATED_CRASH_EXIT_CODE, crashed.stderr
    assert len(fmt.finished_keys(label_dir)) == 2
    # A writer killed mid-file leaves only a temp file; plant one for an unfinished image.
    unfinished = sorted(READABLE_KEYS - fmt.finished_keys(label_dir))[0]
    partial = fmt.record_path(label_dir, unfinished).parent / f"{fmt.TMP_PREFIX}{unfinished}.json"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text('{"format": "dearli-sam-masks", "annotations": [{"segm')

    resumed = _run_tool(["--images", *image_sources, "--output", str(tmp_path), *FLAGS])
    assert "images 7 | already done 2 | generated 4 |" in resumed.stdout
    assert "failed 1" in resumed.stdout and "broken_0.jpg" in resumed.stdout + resumed.stderr
    assert not partial.exists()
    assert _all_records(label_dir) == uninterrupted  # same masks, same scores, nothing missing or extra
    assert fmt.read_index(label_dir) == {k: len(r["annotations"]) for k, r in uninterrupted.items()}

    tool.main(["--images", *image_sources, "--output", str(tmp_path), *FLAGS])
    assert "already done 6 | generated 0 |" in capsys.readouterr().out  # the broken image is retried, not recorded


def test_shards_are_disjoint_and_complete(image_sources, uninterrupted, tmp_path):
    label_dir = tmp_path / SETTINGS.label_subdir(TINY_MODEL_TYPE)
    tool.main(["--images", *image_sources, "--output", str(tmp_path), *FLAGS, "--shard", "0/2"])
    first = fmt.finished_keys(label_dir)
    tool.main(["--images", *image_sources, "--output", str(tmp_path), *FLAGS, "--shard", "1/2"])
    assert 0 < len(first) < len(READABLE_KEYS)
    assert _all_records(label_dir) == uninterrupted
    summaries = [fmt.json.loads((label_dir / "summaries" / f"shard_{i}_of_2.json").read_text()) for i in (0, 1)]
    assert [s["images"] for s in summaries] == [4, 3] and sum(s["generated"] for s in summaries) == 6


def test_one_process_per_device(image_sources, uninterrupted, tmp_path):
    result = _run_tool(["--images", *image_sources, "--output", str(tmp_path), *FLAGS, "--num-gpus", "2"])
    assert "images 7 | already done 0 | generated 6 |" in result.stdout
    assert _all_records(tmp_path / SETTINGS.label_subdir(TINY_MODEL_TYPE)) == uninterrupted


def test_output_folder_encodes_settings(image_sources, tmp_path, capsys):
    tool.main(["--images", image_sources[-1], "--output", str(tmp_path), *FLAGS, "--points-per-side", "2"])
    folder = tmp_path / TINY_MODEL_TYPE / "points_per_side_2_pred_iou_thresh_0_stability_score_thresh_0"
    assert fmt.finished_keys(folder) == {"synthetic_0"}
    assert f"label folder (SAM.LABEL_DIR): {folder}" in capsys.readouterr().out
    meta = fmt.read_meta(folder)
    assert meta["source"] == "sam" and meta["generator"]["points_per_side"] == 2


def test_same_settings_but_other_weights_are_refused(image_sources, tmp_path):
    tool.main(["--images", image_sources[-1], "--output", str(tmp_path), *FLAGS])
    checkpoint = tmp_path / "tiny_seed1.pth"
    torch.save(build_tiny_sam(seed=1).state_dict(), checkpoint)
    with pytest.raises(SystemExit, match="different settings.*checkpoint_sha256"):
        tool.main(["--images", image_sources[-1], "--output", str(tmp_path), *FLAGS, "--checkpoint", str(checkpoint)])


def test_wrong_checkpoint_for_model_type_is_a_clear_error(image_sources, tmp_path):
    checkpoint = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    with pytest.raises(SystemExit, match=f"{checkpoint} does not fit model type 'vit_b'.*'dearli_tiny'"):
        tool.main(["--images", image_sources[-1], "--output", str(tmp_path), *FLAGS, "--model-type", "vit_b",
                   "--checkpoint", str(checkpoint)])


def test_real_model_types_need_a_checkpoint(image_sources, tmp_path):
    with pytest.raises(SystemExit, match="vit_h needs --checkpoint"):
        tool.main(["--images", image_sources[-1], "--output", str(tmp_path), *FLAGS, "--model-type", "vit_h"])


def test_benchmark_reports_images_per_second_and_writes_nothing(image_sources, tmp_path, capsys):
    tool.main(["--images", image_sources[0], "--output", str(tmp_path), *FLAGS, "--benchmark",
               "--benchmark-images", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 2 and result["images_per_second"] > 0 and 0 < result["encoder_fraction"] < 1
    assert list(tmp_path.iterdir()) == []
