"""panoptic_inference / semantic_inference on hand-made masks (method §1.6)."""
import pytest
import torch

from dearli.modeling.inference import panoptic_inference, semantic_inference

THING, STUFF, VOID = 0, 1, 2  # two classes + void
H = W = 4


def _class_scores(rows):
    """Log-probabilities [Q, 3] from rows of probabilities over (thing, stuff, void)."""
    return torch.tensor(rows, dtype=torch.float32).log()


def _masks(*regions):
    """Mask logits [Q, H, W]: +10 on the given boolean region of each query, -10 elsewhere."""
    return torch.stack([torch.where(r, 10.0, -10.0) for r in regions])


LEFT = torch.zeros(H, W, dtype=torch.bool)
LEFT[:, :2] = True
RIGHT = ~LEFT
ALL = torch.ones(H, W, dtype=torch.bool)


def test_thing_segments_stay_separate_and_ids_are_contiguous():
    scores = _class_scores([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]])
    pan, info = panoptic_inference(scores, _masks(LEFT, RIGHT), {THING}, 0.0, 0.8)
    assert pan.dtype == torch.int32
    assert torch.equal(pan, torch.where(LEFT, 1, 2).int())
    assert info == [
        {"id": 1, "category_id": THING, "isthing": True, "score": pytest.approx(0.9)},
        {"id": 2, "category_id": THING, "isthing": True, "score": pytest.approx(0.8)},
    ]


def test_stuff_segments_of_one_class_merge_with_the_best_score():
    scores = _class_scores([[0.05, 0.7, 0.25], [0.1, 0.6, 0.3], [0.8, 0.1, 0.1]])
    top_left = torch.zeros(H, W, dtype=torch.bool)
    top_left[0, 0] = True
    left_rest = LEFT & ~top_left
    pan, info = panoptic_inference(scores, _masks(left_rest, RIGHT, top_left), {THING}, 0.0, 0.8)
    expected = torch.full((H, W), 1, dtype=torch.int32)
    expected[0, 0] = 2
    assert torch.equal(pan, expected)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in info] == [(1, STUFF, False), (2, THING, True)]
    assert info[0]["score"] == pytest.approx(0.7)


def test_void_queries_and_scores_at_or_below_the_threshold_are_dropped():
    scores = _class_scores([[0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])  # void wins in query 0
    pan, info = panoptic_inference(scores, _masks(LEFT, RIGHT), {THING}, 0.0, 0.8)
    assert torch.equal(pan, torch.where(RIGHT, 1, 0).int()) and [s["category_id"] for s in info] == [THING]
    pan, info = panoptic_inference(scores, _masks(LEFT, RIGHT), {THING}, 0.5, 0.8)  # 0.5 is not > 0.5
    assert info == [] and torch.count_nonzero(pan) == 0


def test_overlap_rule_drops_mostly_hidden_segments():
    # Query 0 covers the whole image with a low score; query 1 (higher score) takes the left half,
    # so query 0 keeps 8 of its 16 pixels: 0.5 < 0.8 -> dropped, but kept with threshold 0.5.
    scores = _class_scores([[0.6, 0.2, 0.2], [0.9, 0.05, 0.05]])
    pan, info = panoptic_inference(scores, _masks(ALL, LEFT), {THING}, 0.0, 0.8)
    assert torch.equal(pan, torch.where(LEFT, 1, 0).int()) and len(info) == 1
    assert info[0]["score"] == pytest.approx(0.9)
    pan, info = panoptic_inference(scores, _masks(ALL, LEFT), {THING}, 0.0, 0.5)
    assert torch.equal(pan, torch.where(LEFT, 2, 1).int()) and len(info) == 2


def test_pixels_below_half_probability_stay_unassigned():
    weak = torch.full((1, H, W), -0.5)  # sigmoid 0.38 < 0.5 everywhere except one pixel
    weak[0, 1, 1] = 0.5
    pan, info = panoptic_inference(_class_scores([[0.9, 0.05, 0.05]]), weak, {THING}, 0.0, 0.8)
    assert pan.sum() == 1 and pan[1, 1] == 1 and len(info) == 1


def test_empty_result_when_every_query_is_void_or_empty():
    pan, info = panoptic_inference(_class_scores([[0.1, 0.1, 0.8]]), _masks(ALL), {THING}, 0.0, 0.8)
    assert info == [] and pan.shape == (H, W) and torch.count_nonzero(pan) == 0
    nothing = torch.zeros(H, W, dtype=torch.bool)
    pan, info = panoptic_inference(_class_scores([[0.9, 0.05, 0.05]]), _masks(nothing), {THING}, 0.0, 0.8)
    assert info == [] and torch.count_nonzero(pan) == 0


def test_logits_and_log_probabilities_give_the_same_result():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.2]])
    masks = _masks(LEFT, RIGHT)
    assert panoptic_inference(logits, masks, {THING}, 0.0, 0.8)[1] == panoptic_inference(
        logits.log_softmax(-1), masks, {THING}, 0.0, 0.8)[1]


def test_semantic_inference_sums_class_probability_times_mask_probability():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.2]])
    masks = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    sem = semantic_inference(logits, masks)
    assert sem.shape == (2, 3, 5)
    probs = logits.softmax(-1)
    for c in range(2):
        expected = sum(probs[q, c] * masks[q].sigmoid() for q in range(2))
        assert torch.allclose(sem[c], expected, atol=1e-6)


def _loop_panoptic(class_logits, mask_logits, thing_ids, object_threshold, overlap_threshold):
    """The rules of method §1.6 written as a plain loop over queries."""
    scores, labels = class_logits.softmax(-1).max(-1)
    keep = (labels != class_logits.shape[1] - 1) & (scores > object_threshold)
    probs = mask_logits[keep].sigmoid()
    scores, labels = scores[keep], labels[keep]
    pan = torch.zeros(mask_logits.shape[1:], dtype=torch.int32)
    info, stuff_id = [], {}
    if len(scores) == 0:
        return pan, info
    owner = (scores[:, None, None] * probs).argmax(0)
    for k in range(len(scores)):
        owned, full = owner == k, probs[k] >= 0.5
        segment = owned & full
        if full.sum() == 0 or segment.sum() == 0 or owned.sum().item() / full.sum().item() < overlap_threshold:
            continue
        label, is_thing = int(labels[k]), int(labels[k]) in thing_ids
        if not is_thing and label in stuff_id:
            pan[segment] = stuff_id[label]
            continue
        info.append({"id": len(info) + 1, "category_id": label, "isthing": is_thing})
        pan[segment] = len(info)
        if not is_thing:
            stuff_id[label] = len(info)
    return pan, info


@pytest.mark.parametrize("overlap_threshold", [0.6, 0.8])
@pytest.mark.parametrize("seed", range(6))
def test_matches_a_plain_loop_over_queries_on_random_inputs(seed, overlap_threshold):
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(12, 6, generator=g) * 2
    # Mostly below sigmoid 0.5, as a trained model's masks are: queries then win many pixels under
    # 0.5, where the two overlap rules part (7 of these 12 cases differ under the intersected rule).
    mask_logits = torch.randn(12, 9, 11, generator=g) * 4 - 3
    thing_ids = {0, 2}
    pan, info = panoptic_inference(class_logits, mask_logits, thing_ids, 0.2, overlap_threshold)
    expected_pan, expected_info = _loop_panoptic(class_logits, mask_logits, thing_ids, 0.2, overlap_threshold)
    assert torch.equal(pan, expected_pan)
    assert [{k: s[k] for k in ("id", "category_id", "isthing")} for s in info] == expected_info
