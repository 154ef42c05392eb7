"""tools/demo.py --confidence-threshold: low-scoring panoptic segments are neither drawn nor listed."""
import json

import numpy as np
import pytest
import torch
from helpers.tiny import CONFIG_DIR, tiny_cfg
from helpers.tiny_weights import save_tiny_checkpoint
from helpers.tools import load_tool
from PIL import Image

demo = load_tool("demo")


def test_confident_segments_drop_low_scores_and_their_pixels():
    pan_seg = torch.tensor([[1, 1, 2], [3, 3, 0]], dtype=torch.int32)
    segments = [{"id": 1, "score": 0.9}, {"id": 2, "score": 0.4}, {"id": 3, "score": 0.5}]
    seg, kept = demo.confident_segments(pan_seg, segments, 0.5)
    assert kept == [segments[0], segments[2]]  # 0.5 >= 0.5 is kept
    assert seg.tolist() == [[1, 1, 0], [3, 3, 0]] and seg.dtype == torch.int32
    assert pan_seg[0, 2] == 2  # the input is not modified
    seg, kept = demo.confident_segments(pan_seg, [{"id": 1}], 0.99)  # no score (ground truth): kept
    assert kept == [{"id": 1}] and seg[0, 2] == 2


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    """A config file carrying tiny random weights (no command-line overrides needed) and one image."""
    root = tmp_path_factory.mktemp("confidence")
    weights = save_tiny_checkpoint(tiny_cfg(), root)
    config = root / "demo.yaml"
    # Overlap threshold 0: a random model's overlapping masks still give segments.
    config.write_text(f'_BASE_: "{CONFIG_DIR / "tiny_dearli.yaml"}"\nMODEL:\n  WEIGHTS: "{weights}"\n'
                      "  MASK_FORMER:\n    TEST:\n      OVERLAP_THRESHOLD: 0.0\n")
    image = np.zeros((96, 128, 3), np.uint8)  # a 4x4 grid of flat colours: several segments
    colours = np.random.default_rng(0).integers(0, 255, (4, 4, 3))
    for i, j in np.ndindex(4, 4):
        image[i * 24:(i + 1) * 24, j * 32:(j + 1) * 32] = colours[i, j]
    Image.fromarray(image).save(root / "scene.png")
    return str(config), root / "scene.png", image


def _run(demo_setup, output, threshold):
    config, image_path, _ = demo_setup
    assert demo.main(["--config-file", config, "--input", str(image_path), "--output", str(output), "--json",
                      "--confidence-threshold", str(threshold)]) == 0
    record = json.loads((output / "scene_segments.json").read_text())
    return record["segments"], np.asarray(Image.open(output / "scene_panoptic.png").convert("RGB"))


def test_threshold_keeps_exactly_the_segments_scoring_at_least_it(demo_setup, tmp_path):
    everything, _ = _run(demo_setup, tmp_path / "all", 0.0)
    scores = sorted(s["score"] for s in everything)
    assert len(scores) >= 2 and scores[0] < scores[-1], "the tiny model predicts segments of different scores"
    threshold = (scores[0] + scores[-1]) / 2
    kept, _ = _run(demo_setup, tmp_path / "some", threshold)
    expected = [s for s in everything if s["score"] >= threshold]
    assert kept == expected and 0 < len(kept) < len(everything)  # same ids, scores and areas


def test_threshold_above_every_score_draws_nothing(demo_setup, tmp_path):
    _, _, image = demo_setup
    segments, overlay = _run(demo_setup, tmp_path, 1.0)
    assert segments == [] and np.array_equal(overlay, image)


def test_threshold_outside_0_1_is_refused(demo_setup, tmp_path, capsys):
    config, image_path, _ = demo_setup
    with pytest.raises(SystemExit):
        demo.main(["--config-file", config, "--input", str(image_path), "--output", str(tmp_path),
                   "--confidence-threshold", "1.5"])
    assert "--confidence-threshold must be between 0 and 1, got 1.5" in capsys.readouterr().err
