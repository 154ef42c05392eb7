"""The SAM layer: tiny random SAM, generator output (RLE, areas, scores), checkpoint loading and errors."""
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator

from dearli.config import load_config
from dearli.sam.generator import (
    GeneratorSettings,
    SamCheckpointError,
    SamMaskGenerator,
    build_sam,
    load_sam_state_dict,
)
from dearli.sam.tiny import TINY_MODEL_TYPE, build_tiny_sam

# A random SAM predicts low IoU / stability: the paper thresholds (0.88 / 0.95) keep nothing.
LOW = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=8)


@pytest.fixture(scope="module")
def ade_image(shared_data):
    path = shared_data / "ade20k_semantic_sample" / "images" / "ADE_val_00000001.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def _decode(segmentation):
    return mask_utils.decode(dict(segmentation, counts=segmentation["counts"].encode("ascii"))).astype(bool)


def test_paper_settings_are_the_defaults():
    settings = GeneratorSettings.from_config(load_config())
    assert (settings.points_per_side, settings.pred_iou_thresh, settings.stability_score_thresh) == (32, 0.88, 0.95)
    assert settings.label_subdir("vit_h") == "vit_h/points_per_side_32_pred_iou_thresh_0.88_stability_score_thresh_0.95"
    assert "points_per_batch" not in settings.mask_defining()  # memory only, does not change masks


def test_settings_reach_segment_anything():
    amg = SamMaskGenerator(build_tiny_sam(), GeneratorSettings.from_config(load_config(opts=["SAM.POINTS_PER_BATCH", 17])))._amg
    assert (amg.pred_iou_thresh, amg.stability_score_thresh, amg.points_per_batch) == (0.88, 0.95, 17)
    assert amg.point_grids[0].shape == (32 * 32, 2)


def test_tiny_sam_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_tiny_sam(seed=0), build_tiny_sam(seed=0), build_tiny_sam(seed=1)
    assert torch.rand(1) == before
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_generate_with_lowered_thresholds_gives_consistent_masks(ade_image):
    annotations = SamMaskGenerator(build_tiny_sam(), LOW).generate(ade_image)
    assert len(annotations) > 0
    height, width = ade_image.shape[:2]
    for ann in annotations:
        mask = _decode(ann["segmentation"])
        assert mask.shape == (height, width)
        assert ann["area"] == mask.sum() > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]  # SAM's xyxy-1 boxes
        assert isinstance(ann["predicted_iou"], float) and isinstance(ann["stability_score"], float)
        assert len(ann["point_coords"]) == 1


def test_rle_round_trip_matches_segment_anythings_binary_masks(ade_image):
    model = build_tiny_sam()
    ours = SamMaskGenerator(model, LOW).generate(ade_image)
    theirs = SamAutomaticMaskGenerator(
        model, points_per_side=4, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.0
    ).generate(ade_image)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(_decode(a["segmentation"]), b["segmentation"])
        assert a["area"] == b["segmentation"].sum()


def _confident_tiny_sam():
    """A tiny SAM whose IoU predictions (+1) and mask logits (x30) are shifted so thresholds > 0 bite."""
    model = build_tiny_sam()
    with torch.no_grad():  # random IoUs are ~0 and SAM disables thresholds <= 0
        model.mask_decoder.iou_prediction_head.layers[-1].bias += 1.0
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 30
            mlp.layers[-1].bias *= 30
    return model


# IoU cut at the median (the IoU filter bites), or just below the lowest IoU with a stability cut
# (the stability filter bites).
@pytest.mark.parametrize("iou_rule, stability_cut", [("median", 0.0), ("below_min", 0.01)])
def test_thresholds_filter_and_iou_first_equals_segment_anything(ade_image, iou_rule, stability_cut):
    """Filtering by predicted IoU before upsampling (our speed-up) gives segment_anything's exact output."""
    model = _confident_tiny_sam()
    unfiltered = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=64)
    everything = SamMaskGenerator(model, GeneratorSettings(**unfiltered)).generate(ade_image)
    ious = [a["predicted_iou"] for a in everything]
    iou_cut = float(np.median(ious)) if iou_rule == "median" else min(ious) - 1e-3
    params = dict(unfiltered, pred_iou_thresh=iou_cut, stability_score_thresh=stability_cut)
    kept = SamMaskGenerator(model, GeneratorSettings(**params)).generate(ade_image)
    reference = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params).generate(ade_image)
    assert iou_cut > 0 and 0 < len(kept) < len(everything)
    assert all(a["predicted_iou"] > iou_cut and a["stability_score"] >= stability_cut for a in kept)
    assert [a["segmentation"] for a in kept] == [r["segmentation"] for r in reference]
    assert [a["predicted_iou"] for a in kept] == [r["predicted_iou"] for r in reference]
    assert [a["stability_score"] for a in kept] == [r["stability_score"] for r in reference]


def test_generate_rejects_non_rgb_uint8():
    generator = SamMaskGenerator(build_tiny_sam(), LOW)
    with pytest.raises(ValueError, match="RGB uint8"):
        generator.generate(np.zeros((8, 8), dtype=np.uint8))


def test_checkpoint_round_trip_gives_identical_masks(tmp_path, ade_image):
    source = build_tiny_sam(seed=7)
    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(source.state_dict(), checkpoint)
    loaded = build_sam(TINY_MODEL_TYPE, checkpoint)  # builder seed 0 weights, replaced by seed 7's
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert SamMaskGenerator(loaded, LOW).generate(ade_image) == SamMaskGenerator(source, LOW).generate(ade_image)


def test_checkpoint_of_another_model_type_is_named(tmp_path):
    checkpoint = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), checkpoint)
    with pytest.raises(SamCheckpointError, match=r"does not fit model type 'vit_b'.*fits model type 'dearli_tiny'") as e:
        build_sam("vit_b", checkpoint)
    assert str(checkpoint) in str(e.value) and "shape mismatches" in str(e.value)


def test_checkpoint_fitting_no_model_type(tmp_path):
    state = build_tiny_sam().state_dict()
    state.pop("mask_decoder.iou_token.weight")
    checkpoint = tmp_path / "damaged.pth"
    torch.save(state, checkpoint)
    with pytest.raises(SamCheckpointError, match=r"1 missing keys \(e.g. mask_decoder.iou_token.weight\).*fits no known"):
        build_sam(TINY_MODEL_TYPE, checkpoint)


def test_unreadable_or_foreign_checkpoints(tmp_path):
    with pytest.raises(SamCheckpointError, match="does not exist"):
        load_sam_state_dict(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SamCheckpointError, match=f"cannot read SAM checkpoint {garbage}"):
        load_sam_state_dict(garbage)
    wrapped = tmp_path / "detectron2_style.pth"
    torch.save({"model": build_tiny_sam().state_dict(), "iteration": 3}, wrapped)
    with pytest.raises(SamCheckpointError, match="not a SAM state dict"):
        load_sam_state_dict(wrapped)


def test_unknown_model_type():
    with pytest.raises(KeyError, match="unknown SAM model type 'vit_x'.*dearli_tiny"):
        build_sam("vit_x")
