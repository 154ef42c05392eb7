"""tools/toy_sam_refine.py: the toy pseudo-label benchmark of SAM refinement on a few images."""
import json

import numpy as np
import torch
from helpers.tools import load_tool

toy = load_tool("toy_sam_refine")


def test_teacher_is_disjoint_and_shifted_and_parts_tile_the_instance():
    rng = np.random.default_rng(3)
    masks, isthing = toy.gt_scene(rng, 96)
    assert bool(isthing.any()) and not bool(isthing.all())
    seg = toy.shifted_teacher(rng, masks)
    assert int(seg.max()) <= len(masks)
    thing = masks[isthing][0]
    parts = toy.split_into_parts(rng, thing)
    assert len(parts) in (2, 3)
    assert torch.equal(torch.stack(parts).sum(0), thing.long())  # disjoint and covering
    sam = toy.simulated_sam(rng, masks, isthing, "wholes+parts")
    assert any(torch.equal(m, thing) for m in sam) and bool(sam[-1].all())


def test_refinement_raises_mean_iou_on_a_few_images(tmp_path):
    out = tmp_path / "toy.json"
    results = toy.main(["--images", "4", "--size", "192", "--paste", "full", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text())["results"] == results
    for regime in toy.REGIMES:
        row = results[regime]
        assert row["segments"] > 0
        assert row["best"] > row["teacher"] + 0.05, (regime, row)
    assert results["wholes+parts"]["iom"] > results["wholes+parts"]["teacher"] + 0.1
