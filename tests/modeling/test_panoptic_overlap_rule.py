"""The overlap rule of the reference (method §1.6 step 4) on a case where the intersected rule
differs: in panoptic_inference itself and in the model's evaluation output (tests/helpers/overlap_case.py)."""
import pytest
import torch
from detectron2.modeling import build_model
from helpers import overlap_case as case
from helpers.tiny import tiny_cfg

from dearli.modeling.inference import panoptic_inference

SCALE = 8  # 4x4 grid -> a 32x32 image, one SIZE_DIVISIBILITY block: no resize anywhere
SHAPES_STUFF = 5  # the tiny model's shapes classes: 0-4 things, 5-8 stuff


def _segments(info):
    return [(s["id"], s["category_id"], s["isthing"]) for s in info]


def test_query_winning_pixels_below_half_probability_keeps_its_segment():
    pan, info = panoptic_inference(case.class_log_probs(), case.mask_logits(), {case.THING}, 0.0, 0.8)
    assert torch.equal(pan, case.EXPECTED_PAN)
    assert _segments(info) == case.expected_segments()
    assert [s["score"] for s in info] == pytest.approx([0.9, 0.95])


def test_overlap_ratio_counts_every_owned_pixel():
    # Query 0's ratio is 14 / 8 = 1.75 exactly (query 1's is 2 / 2 = 1): at that threshold only
    # query 0 is kept, just above it nothing is.
    ratio = case.OWNED_BY_QUERY_0 / case.FULL_AREA_QUERY_0
    _, kept = panoptic_inference(case.class_log_probs(), case.mask_logits(), {case.THING}, 0.0, ratio)
    _, dropped = panoptic_inference(case.class_log_probs(), case.mask_logits(), {case.THING}, 0.0, ratio + 1e-3)
    assert [s["category_id"] for s in kept] == [case.THING]
    assert dropped == []


def test_query_owning_only_pixels_below_half_probability_is_dropped():
    # Query 1 takes all of query 0's sigmoid >= 0.5 area; query 0 still owns the right half
    # (ratio 8 / 8 = 1) but its segment is empty, so it is dropped.
    masks = case.mask_logits()
    masks[1] = torch.where(masks[0] > 0, 10.0, -10.0)
    pan, info = panoptic_inference(case.class_log_probs(), masks, {case.THING}, 0.0, 0.8)
    assert _segments(info) == [(1, case.STUFF, False)]
    assert torch.equal(pan, (masks[0] > 0).int())


def test_query_with_no_pixel_at_half_probability_is_dropped():
    masks = torch.full((1, 4, 4), -0.1)  # owns everything, sigmoid >= 0.5 nowhere
    pan, info = panoptic_inference(case.class_log_probs()[:1], masks, {case.THING}, 0.0, 0.8)
    assert info == [] and torch.count_nonzero(pan) == 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    scores = case.class_log_probs(tiny_cfg().MODEL.SEM_SEG_HEAD.NUM_CLASSES, stuff=SHAPES_STUFF)
    masks = case.mask_logits(SCALE)

    def hand_made_outputs(images, zero_shot):
        batch = len(images.image_sizes)
        return scores.expand(batch, -1, -1), masks.expand(batch, -1, -1, -1)

    model._scores_and_masks = hand_made_outputs
    return model.eval()


def test_evaluation_output_keeps_the_segment_the_reference_keeps(model):
    assert model.overlap_threshold == 0.8 and model.object_threshold == 0.0
    with torch.no_grad():
        [out] = model([{"image": torch.zeros(3, 4 * SCALE, 4 * SCALE, dtype=torch.uint8)}])
    pan, info = out["panoptic_seg"]
    assert torch.equal(pan, case.expected_pan(SCALE))
    assert _segments(info) == case.expected_segments(SHAPES_STUFF)


def test_teacher_prediction_keeps_the_segment_the_reference_keeps(model):
    image = torch.zeros(3, 4 * SCALE, 4 * SCALE, dtype=torch.uint8)
    [(pan, info)] = model.predict_panoptic([image], zero_shot=False, object_threshold=0.0, overlap_threshold=0.8)
    assert torch.equal(pan, case.expected_pan(SCALE))
    assert _segments(info) == case.expected_segments(SHAPES_STUFF)
