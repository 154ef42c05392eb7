"""Dense CLIP guidance (extensions.md §3.4b, §3.6) with mocked dense features: labels, threshold,
CutMix with the pseudo-labels' box, the student's NLL by hand, the weight schedule."""
import math

import pytest
import torch
import torch.nn.functional as F

from dearli.modeling import dense_guidance as dg
from dearli.modeling.text_classifier import classifier_with_void

IGNORE = 255
NUM_CLASSES, DIM = 3, 8


class IdentityHead:
    """A mocked CLIP image side: the head is the identity, logit scale exp(theta) = 100."""

    clip_logit_scale = torch.tensor(math.log(100.0))

    @staticmethod
    def visual_prediction_forward(x):
        return x


def text_rows():
    """Orthonormal class embeddings [C, D] and the classifier [C+1, D] (void row last)."""
    rows = torch.eye(DIM)[:NUM_CLASSES]
    return rows, classifier_with_void(rows, torch.eye(DIM)[-1:])


def guidance(threshold=0.9, weight=0.1, decay=True, max_iter=100):
    return dg.DenseCLIPGuidance(threshold=threshold, weight=weight, decay=decay, max_iter=max_iter)


def dense_features(cell_vectors):
    """[1, D, h, w] features from a list of rows of D-vectors, one per stride-32 cell."""
    return torch.tensor(cell_vectors, dtype=torch.float32).permute(2, 0, 1)[None]


def semantic_by_loops(pred_logits, pred_masks):
    """Oracle of P(c, x): explicit sums over queries, normalised over classes."""
    batch, queries, _ = pred_logits.shape
    height, width = pred_masks.shape[-2:]
    out = torch.zeros(batch, NUM_CLASSES, height, width, dtype=torch.float64)
    for b in range(batch):
        probs = pred_logits[b].double().softmax(-1)
        for q in range(queries):
            for c in range(NUM_CLASSES):
                out[b, c] += probs[q, c] * pred_masks[b, q].double().sigmoid()
    return out / out.sum(1, keepdim=True)


def nll_by_loops(semantic, labels):
    total = 0.0
    for b, y, x in zip(*torch.nonzero(labels != IGNORE, as_tuple=True)):
        total -= math.log(float(semantic[b, labels[b, y, x], y, x]))
    return total / labels.numel()


def student_outputs(grid, queries=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(1, queries, NUM_CLASSES + 1, generator=generator) * 2,
            "pred_masks": torch.randn(1, queries, *grid, generator=generator) * 3}


def test_features_equal_to_the_gt_text_embedding_give_the_downsampled_gt_and_its_nll():
    rows, classifier = text_rows()
    # Stride-32 cells of a 64 x 96 canvas, in vertical stripes: the argmax of bilinearly interpolated
    # one-hot logits is the nearest cell's class unless two neighbours of another class outvote it,
    # which stripes rule out; so the stride-4 labels are the GT cells repeated 8 x 8.
    gt_cells = torch.tensor([[0, 1, 2], [0, 1, 2]])
    features = dense_features([[rows[c].tolist() for c in row] for row in gt_cells.tolist()])
    labels = guidance().labels(IdentityHead(), features, classifier, [1] * NUM_CLASSES, (16, 24))
    gt_at_stride4 = gt_cells.repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert labels.dtype == torch.int64 and torch.equal(labels[0], gt_at_stride4)

    outputs = student_outputs((16, 24))
    samples = [{"dense_clip_label": labels[0], "dense_clip_weight": 1.0}]
    loss = dg.dense_guidance_losses(outputs, samples)[dg.LOSS_NAME]
    semantic = semantic_by_loops(outputs["pred_logits"], outputs["pred_masks"])
    assert loss.item() == pytest.approx(nll_by_loops(semantic, labels), rel=1e-5)
    torch.testing.assert_close(dg.semantic_probabilities(outputs["pred_logits"], outputs["pred_masks"]),
                               semantic.float(), atol=1e-6, rtol=1e-5)


def test_hand_computed_loss_counts_ignored_pixels_in_the_denominator():
    # Query 0: class probs softmax(0, 0, 0) -> (1/3, 1/3) without void; query 1: softmax(ln 2, 0, 0)
    # -> (1/2, 1/4). Mask logits 0 -> sigmoid 1/2 at both pixels. S0 = 1/6 + 1/4, S1 = 1/6 + 1/8,
    # P(1) = 7/17. Labels: pixel 0 -> class 1, pixel 1 ignored: loss = -ln(7/17) / 2.
    pred_logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]]])
    pred_masks = torch.zeros(1, 2, 1, 2)
    semantic = dg.semantic_probabilities(pred_logits, pred_masks)
    torch.testing.assert_close(semantic[0, :, 0, 0], torch.tensor([10 / 17, 7 / 17]))
    loss = dg.dense_guidance_loss(semantic, torch.tensor([[[1, IGNORE]]]))
    assert loss.item() == pytest.approx(-math.log(7 / 17) / 2, rel=1e-6)
    assert dg.dense_guidance_loss(semantic, torch.full((1, 1, 2), IGNORE)).item() == 0.0


def test_low_confidence_cells_are_ignored_and_add_no_loss():
    """Features halfway between two classes: softmax maximum 1/2 < 0.9 -> ignore. (Lowering only the
    features' norm cannot lower the confidence: the CLIP head's LayerNorm and the cosine are both
    scale-invariant, so the test lowers it by mixing class embeddings.)"""
    rows, classifier = text_rows()
    ambiguous = F.normalize(rows[1] + rows[2], dim=0).tolist()
    features = dense_features([[rows[0].tolist(), ambiguous, ambiguous]])
    labels = guidance().labels(IdentityHead(), features, classifier, [1] * NUM_CLASSES, (8, 24))[0]
    assert (labels[:, :4] == 0).all() and (labels[:, 12:] == IGNORE).all()
    assert guidance(threshold=0.4).labels(IdentityHead(), features, classifier, [1] * 3, (8, 24))[0, 0, 20] != IGNORE

    outputs = student_outputs((8, 24), seed=3)
    semantic = semantic_by_loops(outputs["pred_logits"], outputs["pred_masks"])
    loss = dg.dense_guidance_loss(semantic.float(), labels[None])
    assert loss.item() == pytest.approx(nll_by_loops(semantic, labels[None]), rel=1e-5)
    all_ambiguous = dense_features([[ambiguous] * 3])
    ignored = guidance().labels(IdentityHead(), all_ambiguous, classifier, [1] * 3, (8, 24))
    assert (ignored == IGNORE).all() and dg.dense_guidance_loss(semantic.float(), ignored).item() == 0.0


def test_max_over_synonyms_decides_the_dense_label():
    """Class 0 has two synonym rows; a feature equal to its second synonym is labelled 0."""
    rows = torch.eye(DIM)[:4]  # class 0: rows 0 and 3; class 1: row 1; class 2: row 2
    classifier = classifier_with_void(rows[[0, 3, 1, 2]], torch.eye(DIM)[-1:])
    features = dense_features([[rows[3].tolist(), rows[1].tolist()]])
    labels = guidance().labels(IdentityHead(), features, classifier, [2, 1, 1], (1, 2))
    assert labels.tolist() == [[[0, 1]]]


def test_weight_schedule():
    schedule = guidance(weight=0.2, max_iter=100)
    assert schedule.weight_at(0) == 0.2 and schedule.weight_at(100) == 0.0
    assert schedule.weight_at(50) == pytest.approx(0.1) and schedule.weight_at(150) == 0.0
    assert guidance(weight=0.2, decay=False).weight_at(100) == 0.2
    assert schedule.weight_at(None) is None  # outside training
    with pytest.raises(ValueError, match=r"THRESHOLD must lie in \[0, 1\], got 1.5"):
        guidance(threshold=1.5)
    with pytest.raises(ValueError, match="WEIGHT must be >= 0, got -0.1"):
        guidance(weight=-0.1)


def test_from_config():
    from helpers.tiny import tiny_cfg

    schedule = dg.DenseCLIPGuidance(tiny_cfg(**{"SSL.DENSE_CLIP_GUIDANCE.ENABLED": True, "SOLVER.MAX_ITER": 40,
                                                "SSL.DENSE_CLIP_GUIDANCE.WEIGHT": 0.2}))
    assert (schedule.threshold, schedule.weight, schedule.decay, schedule.max_iter) == (0.9, 0.2, True, 40)


def test_to_grid_samples_cell_centres_and_pads():
    mask = torch.zeros(7, 8, dtype=torch.bool)
    mask[2, 6] = True  # centre of cell (0, 1)
    mask[6, 1] = True  # not a centre
    assert dg.to_grid(mask, (2, 2)).tolist() == [[False, True], [False, False]]
    with pytest.raises(ValueError, match=r"a \(9, 8\) mask does not fit the stride-4 grid \(2, 2\)"):
        dg.to_grid(torch.zeros(9, 8, dtype=torch.bool), (2, 2))


def test_attach_cutmixes_with_the_pseudo_labels_box_and_ignores_padding():
    main = torch.zeros(4, 4, dtype=torch.int64)
    partner = torch.ones(4, 4, dtype=torch.int64)
    labels = torch.stack([main, main + 2, partner])  # weak views of samples 0, 1, then sample 0's partner
    box = torch.zeros(16, 16, dtype=torch.bool)
    box[:, 8:] = True  # right half
    main_valid = torch.ones(16, 16, dtype=torch.bool)
    main_valid[12:] = False  # bottom row of cells is padding in the main image
    partner_valid = torch.ones(16, 16, dtype=torch.bool)
    partner_valid[:, 12:] = False  # right column of cells is padding in the partner
    unlabeled = [{"valid_mask": main_valid, "cutmix": {"box_mask": box, "valid_mask": partner_valid}},
                 {"valid_mask": torch.ones(16, 16, dtype=torch.bool), "cutmix": None}]
    samples = [{}, {}]
    guidance(weight=0.2, max_iter=10).attach(samples, unlabeled, labels, [0], iteration=5)
    expected = torch.tensor([[0, 0, 1, IGNORE], [0, 0, 1, IGNORE], [0, 0, 1, IGNORE], [IGNORE, IGNORE, 1, IGNORE]])
    assert torch.equal(samples[0]["dense_clip_label"], expected)
    assert torch.equal(samples[1]["dense_clip_label"], main + 2)
    assert samples[0]["dense_clip_weight"] == samples[1]["dense_clip_weight"] == pytest.approx(0.1)


def test_student_losses_need_labels_on_every_sample_and_matching_grids():
    outputs = student_outputs((4, 4))
    assert dg.dense_guidance_losses(outputs, [{}, {}]) == {}
    label = torch.zeros(4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="some pseudo-labeled samples carry 'dense_clip_label'"):
        dg.dense_guidance_losses(outputs, [{"dense_clip_label": label, "dense_clip_weight": 1.0}, {}])
    with pytest.raises(ValueError, match=r"dense CLIP labels \(1, 2, 2\) do not match .* \(1, 3, 4, 4\)"):
        dg.dense_guidance_losses(outputs, [{"dense_clip_label": label[:2, :2], "dense_clip_weight": 1.0}])


def test_gradient_reaches_the_student_outputs_only():
    rows, classifier = text_rows()
    features = dense_features([[rows[0].tolist(), rows[2].tolist()]]).requires_grad_(True)
    labels = guidance().labels(IdentityHead(), features, classifier, [1] * 3, (8, 16))
    assert not labels.requires_grad and labels.grad_fn is None  # made under no_grad: a constant
    outputs = {key: value.requires_grad_(True) for key, value in student_outputs((8, 16)).items()}
    loss = dg.dense_guidance_losses(outputs, [{"dense_clip_label": labels[0], "dense_clip_weight": 0.5}])
    loss[dg.LOSS_NAME].backward()
    assert features.grad is None
    assert outputs["pred_logits"].grad.abs().sum() > 0 and outputs["pred_masks"].grad.abs().sum() > 0


def test_labels_and_loss_are_float32_under_bf16_autocast():
    rows, classifier = text_rows()
    features = dense_features([[rows[0].tolist(), rows[2].tolist()]])
    outputs = student_outputs((8, 16), seed=5)
    labels = guidance().labels(IdentityHead(), features, classifier, [1] * 3, (8, 16))
    samples = [{"dense_clip_label": labels[0], "dense_clip_weight": 1.0}]
    plain = dg.dense_guidance_losses(outputs, samples)[dg.LOSS_NAME]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.equal(guidance().labels(IdentityHead(), features, classifier, [1] * 3, (8, 16)), labels)
        mixed = dg.dense_guidance_losses(outputs, samples)[dg.LOSS_NAME]
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
