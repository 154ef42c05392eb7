"""tools/demo.py on an input over OVERLAY_MAX_PIXELS: the overlays are drawn on a scaled-down copy
(Detectron2's Visualizer took minutes and gigabytes at full size), the json keeps the areas of the
full-size prediction."""
import json

import numpy as np
import torch
from PIL import Image

from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

demo = load_tool("demo")


class _HalvesModel:
    """Stands in for DEARLiPredictor: left half segment 1 (class 0), right half segment 2 (class 1)."""

    def __init__(self, cfg):
        from detectron2.data import MetadataCatalog
        self.metadata = MetadataCatalog.get("dearli_shapes_train_labeled")

    def __call__(self, image):
        height, width = image.shape[:2]
        pan_seg = torch.ones((height, width), dtype=torch.int32)
        pan_seg[:, width // 2:] = 2
        sem_seg = torch.zeros((2, height, width))
        sem_seg[1, :, width // 2:] = 1.0
        info = [{"id": 1, "category_id": 0, "isthing": False, "score": 1.0},
                {"id": 2, "category_id": 1, "isthing": False, "score": 1.0}]
        return {"panoptic_seg": (pan_seg, info), "sem_seg": sem_seg}


def test_overlay_size_keeps_small_inputs_and_bounds_large_ones(monkeypatch):
    monkeypatch.setattr(demo, "OVERLAY_MAX_PIXELS", 100)
    assert demo.overlay_size(10, 10) == (10, 10)
    assert demo.overlay_size(20, 40) == (7, 14)  # scale sqrt(100 / 800) = 0.354


def test_large_input_gets_bounded_overlays_and_full_size_areas(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "OVERLAY_MAX_PIXELS", 40 * 60)
    monkeypatch.setattr(demo, "DEARLiPredictor", _HalvesModel)
    path = tmp_path / "large.png"
    Image.fromarray(np.full((80, 120, 3), 90, np.uint8)).save(path)
    code = demo.main(["--config-file", str(CONFIG_DIR / "tiny_dearli.yaml"), "--input", str(path),
                      "--output", str(tmp_path / "out"), "--json"])
    assert code == 0
    for kind in ("panoptic", "semantic"):
        assert Image.open(tmp_path / "out" / f"large_{kind}.png").size == (60, 40)  # (W, H)
    segments = json.loads((tmp_path / "out" / "large_segments.json").read_text())["segments"]
    assert [(s["id"], s["area"]) for s in segments] == [(1, 80 * 60), (2, 80 * 60)]
