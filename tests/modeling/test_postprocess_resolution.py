"""Where inference post-processes: at the original size (the reference's order: Q mask logits
upsampled first) up to MODEL.MASK_FORMER.TEST.POSTPROCESS_MAX_PIXELS, at the test resolution above
it (memory bounded for large photos), with one resize of the final maps."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess
from torch.nn import functional as F

from dearli.modeling import meta_arch
from dearli.modeling.inference import panoptic_inference, semantic_inference
from dearli.modeling.meta_arch import resize_panoptic
from helpers.tiny import tiny_cfg

TEST_HW, ORIGINAL_HW = (64, 80), (96, 120)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # Overlap 0: a random model's overlapping masks still give several segments.
    net = build_model(tiny_cfg(**{"MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD": 0.0})).eval()
    assert net.postprocess_max_pixels == 2_100_000  # the config default
    return net


@pytest.fixture(scope="module")
def sample():
    image = torch.randint(0, 256, (3, *TEST_HW), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return {"image": image, "height": ORIGINAL_HW[0], "width": ORIGINAL_HW[1]}


def scores_and_test_masks(model, sample):
    """Class scores [Q, C+1] and mask logits at the padded input size, as the model computes them."""
    with torch.no_grad():
        images = model.preprocess_images([sample["image"]])
        scores, masks = model._scores_and_masks(images, model.zero_shot_enabled)
        return scores[0], meta_arch._upsample(masks[0], images.tensor.shape[-2:])


def reference_order(model, sample):
    """The reference's inference: mask logits resized to the original size, then post-processed."""
    scores, masks = scores_and_test_masks(model, sample)
    masks = sem_seg_postprocess(masks, TEST_HW, *ORIGINAL_HW)
    return semantic_inference(scores, masks), panoptic_inference(
        scores, masks, model.thing_ids, model.object_threshold, model.overlap_threshold)


def run(model, sample, max_pixels):
    model.postprocess_max_pixels = max_pixels
    try:
        with torch.no_grad():
            return model([sample])[0]
    finally:
        model.postprocess_max_pixels = 2_100_000


def test_images_up_to_the_limit_get_exactly_the_reference_outputs(model, sample):
    output = run(model, sample, ORIGINAL_HW[0] * ORIGINAL_HW[1])
    sem_seg, (pan_seg, segments_info) = reference_order(model, sample)
    assert len(segments_info) >= 2
    assert torch.equal(output["sem_seg"], sem_seg)
    assert torch.equal(output["panoptic_seg"][0], pan_seg) and output["panoptic_seg"][1] == segments_info


def test_larger_images_are_postprocessed_at_the_test_resolution(model, sample, monkeypatch):
    seen = []
    for name, function in (("panoptic_inference", panoptic_inference), ("semantic_inference", semantic_inference)):
        def recording(scores, masks, *rest, _function=function, _name=name):
            seen.append((_name, tuple(masks.shape[-2:])))
            return _function(scores, masks, *rest)
        monkeypatch.setattr(meta_arch, name, recording)
    output = run(model, sample, ORIGINAL_HW[0] * ORIGINAL_HW[1] - 1)
    assert sorted(seen) == [("panoptic_inference", TEST_HW), ("semantic_inference", TEST_HW)]
    assert tuple(output["sem_seg"].shape[-2:]) == ORIGINAL_HW and tuple(output["panoptic_seg"][0].shape) == ORIGINAL_HW

    # Final maps = test-resolution maps resized once (oracle: torch's own resizes).
    scores, masks = scores_and_test_masks(model, sample)
    masks = masks[:, :TEST_HW[0], :TEST_HW[1]]
    expected_sem = F.interpolate(semantic_inference(scores, masks)[None], ORIGINAL_HW, mode="bilinear",
                                 align_corners=False)[0]
    pan_seg, segments_info = panoptic_inference(scores, masks, model.thing_ids, model.object_threshold,
                                                model.overlap_threshold)
    expected_pan = F.interpolate(pan_seg[None, None].double(), ORIGINAL_HW, mode="nearest-exact")[0, 0].int()
    assert torch.allclose(output["sem_seg"], expected_sem, atol=1e-6)
    assert torch.equal(output["panoptic_seg"][0], expected_pan) and output["panoptic_seg"][1] == segments_info


def test_both_orders_agree_on_most_pixels_of_a_normal_image(model, sample):
    """The measured deviation of the test-resolution order (see the README): on this random model
    at 1.5x, over 95% of the pixels get the same class in both maps."""
    reference, bounded = run(model, sample, 10**12), run(model, sample, 0)
    same_semantic = (reference["sem_seg"].argmax(0) == bounded["sem_seg"].argmax(0)).double().mean()
    assert same_semantic > 0.95
    assert (reference["sem_seg"] - bounded["sem_seg"]).abs().max() < 0.1


def test_resize_panoptic_drops_segments_that_a_reduction_leaves_without_pixels():
    pan_seg = torch.tensor([[2, 1, 1, 1], [1, 1, 1, 1], [3, 3, 3, 3], [3, 3, 3, 3]], dtype=torch.int32)
    info = [{"id": i, "category_id": i, "isthing": True, "score": 1.0} for i in (1, 2, 3)]
    resized, kept = resize_panoptic(pan_seg, info, (2, 2))
    assert resized.tolist() == [[1, 1], [3, 3]]  # sources: rows and columns 1 and 3 (pixel centres)
    assert [s["id"] for s in kept] == [1, 3]


def test_class_argmax_equals_torch_argmax_including_ties():
    scores = torch.randint(0, 3, (5, 7, 9), generator=torch.Generator().manual_seed(2)).float()  # many ties
    assert torch.equal(meta_arch.class_argmax(scores), scores.argmax(0))
