"""Image-level tags, model side: the tag-restricted class distribution of panoptic inference and the
student's multi-label tag loss (hand-computed; gradient only through the class path)."""
import math

import pytest
import torch
from detectron2.modeling import build_model

from dearli.modeling.inference import panoptic_inference, panoptic_segments, thing_table_of
from dearli.modeling.tag_constraint import restrict_class_scores
from dearli.modeling.tag_loss import image_class_scores, image_tag_loss, tag_losses
from helpers.tiny import tiny_cfg

NUM_CLASSES = 6
THINGS = thing_table_of({0, 1, 2}, NUM_CLASSES, "cpu")


def random_case(seed, queries=12, size=(10, 12)):
    g = torch.Generator().manual_seed(seed)
    scores = 3 * torch.randn(queries, NUM_CLASSES + 1, generator=g)
    # Each query: a random rectangle (logit +6) on a background of -6, with a little noise.
    masks = torch.full((queries, *size), -6.0) + 0.5 * torch.randn(queries, *size, generator=g)
    for q in range(queries):
        top, left = (int(torch.randint(0, n - 3, (1,), generator=g)) for n in size)
        height, width = (int(torch.randint(3, n + 1, (1,), generator=g)) for n in size)
        masks[q, top:top + height, left:left + width] += 12.0
    return scores, masks


def segments(scores, masks, allowed=None):
    return panoptic_segments(scores, masks, THINGS, 0.0, 0.8, allowed)


def assert_segments_equal(a, b):
    for field in ("seg", "classes", "isthing", "scores", "count"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# ----------------------------------------------------------------------------- restrict
def test_all_tags_leave_inference_bitwise_unchanged():
    for seed in range(5):
        scores, masks = random_case(seed)
        assert_segments_equal(segments(scores, masks), segments(scores, masks, torch.ones(NUM_CLASSES, dtype=torch.bool)))


def test_no_tags_leave_no_segment():
    for seed in range(5):
        scores, masks = random_case(seed)
        assert int(segments(scores, masks).count) > 0
        empty = segments(scores, masks, torch.zeros(NUM_CLASSES, dtype=torch.bool))
        assert int(empty.count) == 0 and not empty.seg.any()


def test_classes_outside_the_tags_never_appear_and_void_queries_stay_void():
    for seed in range(20):
        scores, masks = random_case(seed)
        allowed = torch.rand(NUM_CLASSES, generator=torch.Generator().manual_seed(100 + seed)) < 0.5
        restricted = segments(scores, masks, allowed)
        count = int(restricted.count)
        assert allowed[restricted.classes[:count]].all()
        # Void is kept: a query labelled void stays void (its probability only grows), and a query
        # whose every tagged class is less likely than void becomes void.
        labels = restrict_class_scores(scores, allowed).argmax(-1)
        assert (labels[scores.argmax(-1) == NUM_CLASSES] == NUM_CLASSES).all()
        best_tagged = scores[:, :-1].masked_fill(~allowed, float("-inf")).amax(-1)
        assert torch.equal(labels == NUM_CLASSES, best_tagged < scores[:, -1])


def test_restricted_distribution_is_the_renormalised_one():
    scores, _ = random_case(7)
    allowed = torch.tensor([True, False, True, False, False, True])
    probs = scores.softmax(-1)
    keep = torch.cat([allowed, torch.tensor([True])])
    expected = torch.where(keep, probs, 0.0) / (probs * keep).sum(-1, keepdim=True)
    torch.testing.assert_close(restrict_class_scores(scores, allowed).softmax(-1), expected)
    with pytest.raises(ValueError, match=r"allowed_classes must be bool \[6\].*got torch.int64 \(5,\)"):
        restrict_class_scores(scores, torch.ones(5, dtype=torch.int64))


def test_evaluation_panoptic_inference_takes_the_same_restriction():
    scores, masks = random_case(3)
    allowed = torch.tensor([False, True, False, False, True, False])
    pan_seg, info = panoptic_inference(scores, masks, {0, 1, 2}, 0.0, 0.8, allowed)
    restricted = segments(scores, masks, allowed)
    assert torch.equal(pan_seg, restricted.seg.to(torch.int32))
    assert [s["category_id"] for s in info] == restricted.classes[: int(restricted.count)].tolist()
    assert {s["category_id"] for s in info} <= {1, 4}


# ----------------------------------------------------------------------------- tag loss
def two_query_logits():
    # Probabilities over 3 classes + void; log-probabilities are valid logits for the softmax.
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.2], [0.1, 0.6, 0.1, 0.2]])
    return probs.log()[None]


def test_tag_loss_by_hand_on_two_queries_and_three_classes():
    logits = two_query_logits()
    torch.testing.assert_close(image_class_scores(logits), torch.tensor([[0.5, 0.6, 0.1]]))
    # y = (1, 0, 0): -(1/3) [log 0.5 + log(1 - 0.6) + log(1 - 0.1)]
    expected = (math.log(2) + math.log(2.5) + math.log(1 / 0.9)) / 3
    loss = image_tag_loss(logits, torch.tensor([[1.0, 0, 0]]), torch.ones(1, 3), torch.tensor([True]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5715995, rel=1e-6)
    # Negatives only on class 1 (the CutMix rule's weights): -(1/3) log(1 - 0.6).
    loss = image_tag_loss(logits, torch.zeros(1, 3), torch.tensor([[0.0, 1, 0]]), torch.tensor([True]))
    assert loss.item() == pytest.approx(math.log(2.5) / 3, rel=1e-6)


def test_scores_are_clamped_to_one_in_a_million():
    probs = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # s = (1, 0, 0) exactly
    loss = image_tag_loss(probs.log(), torch.tensor([[0.0, 1, 0]]), torch.ones(1, 3), torch.tensor([True]))
    # The bounds as float32 holds them: 1 - 1e-6 rounds to 1 - 1.0014e-6.
    low, high = float(torch.tensor(1e-6)), float(torch.tensor(1 - 1e-6))
    # class 0 (s = 1, y = 0): -log(1 - high); class 1 (s = 0, y = 1): -log(low); class 2 (s = 0, y = 0): -log(1 - low)
    expected = (-math.log(1 - high) - math.log(low) - math.log(1 - low)) / 3
    assert expected == pytest.approx(9.2059, abs=1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_samples_without_tags_contribute_nothing():
    logits = torch.cat([two_query_logits(), torch.randn(2, 2, 4)])
    tagged = {"tag_targets": torch.tensor([True, False, False]), "tag_weights": torch.ones(3)}
    alone = tag_losses(two_query_logits(), [tagged], 2.0)["loss_tag"]
    mixed = tag_losses(logits, [tagged, {}, {"tag_targets": None}], 2.0)["loss_tag"]
    assert mixed.item() == alone.item() == pytest.approx(2 * 0.5715995, rel=1e-6)
    none = tag_losses(logits.requires_grad_(), [{}, {}, {}], 1.0)["loss_tag"]
    assert none.item() == 0.0 and none.requires_grad  # stays in the graph (DDP needs every parameter)


def test_tag_loss_reaches_the_class_head_but_never_mask_embed():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    images = model.preprocess_images([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)])
    _, outputs = model.predict_raw(images.tensor)
    samples = [{"tag_targets": torch.arange(9) % 3 == 0, "tag_weights": torch.ones(9)}, {}]
    tag_losses(outputs["pred_logits"], samples, 1.0)["loss_tag"].backward()
    predictor = model.sem_seg_head.predictor
    assert all(p.grad is None or not p.grad.any() for p in predictor.mask_embed.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in predictor.class_embed.parameters())
    assert model.void_embedding.weight.grad.abs().sum() > 0
