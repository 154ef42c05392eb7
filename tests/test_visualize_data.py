"""tools/visualize_data.py renders labeled, unlabeled and raw dataset samples of the shapes set."""
import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from dearli.data.datasets import shapes
from dearli.engine.panels import PANEL_GAP, title_strip_height

TOOL = Path(__file__).resolve().parents[1] / "tools" / "visualize_data.py"
SCALE = 2


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("visualize_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    shapes.register_shapes("t_vis", num_labeled=3, num_unlabeled=4, num_val=2, image_size=40, seed=3,
                           cache_dir=root / "cache")
    config = root / "cfg.yaml"
    config.write_text(
        "MODEL:\n  SEM_SEG_HEAD:\n    NUM_CLASSES: 9\n"
        "INPUT:\n  MIN_SIZE_TRAIN: [32, 40]\n  MAX_SIZE_TRAIN: 100\n  CROP:\n    SIZE: [32, 32]\n"
        "  SIZE_DIVISIBILITY: 32\n  UNLABELED:\n    CUTMIX_PROB: 1.0\n"
        "DATASETS:\n  TRAIN: ['t_vis_train_labeled']\n  TRAIN_UNLABELED: ['t_vis_train_unlabeled']\n"
        "  TEST: ['t_vis_val']\nSEED: 0\n"
    )
    return str(config)


def run(tool, config_file, output, source, num, *extra):
    return tool.main(["--config-file", config_file, "--num", str(num), "--output", str(output),
                      "--source", source, "--scale", str(SCALE), *extra])


def test_labeled_samples_are_drawn_as_crop_and_ground_truth(tool, config_file, tmp_path):
    assert run(tool, config_file, tmp_path, "labeled", 3) == ["labeled_000.png", "labeled_001.png", "labeled_002.png"]
    for name in ("labeled_000.png", "labeled_001.png", "labeled_002.png"):
        image = Image.open(tmp_path / name)
        # two 32x32 canvases side by side, scaled, with a gap, each under its title
        assert image.size == (2 * 32 * SCALE + PANEL_GAP, 32 * SCALE + title_strip_height(32 * SCALE))
        assert image.mode == "RGB"


def test_unlabeled_samples_show_weak_strong_partner_and_mix(tool, config_file, tmp_path):
    run(tool, config_file, tmp_path, "unlabeled", 2)
    for name in ("unlabeled_000.png", "unlabeled_001.png"):
        # CUTMIX_PROB 1: weak, strong, partner weak, partner strong, mixed student image
        assert Image.open(tmp_path / name).size == (5 * 32 * SCALE + 4 * PANEL_GAP,
                                                    32 * SCALE + title_strip_height(32 * SCALE))


def test_dataset_entries_are_drawn_at_their_original_size(tool, config_file, tmp_path):
    run(tool, config_file, tmp_path, "dataset", 5, "--dataset", "t_vis_val")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["dataset_000.png", "dataset_001.png"]  # only 2 images in the split
    assert Image.open(tmp_path / written[0]).size == (2 * 40 * SCALE + PANEL_GAP,
                                                      40 * SCALE + title_strip_height(40 * SCALE))
