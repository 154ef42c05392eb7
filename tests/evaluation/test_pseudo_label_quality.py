"""score_pseudo_labels against hand-computed PQ / SQ / RQ, IoU and coverage."""
import math

import pytest
import torch

from dearli.evaluation.pseudo_labels import score_pseudo_labels

# Three classes: things "a" (dataset id 1) and "b" (2), stuff "s" (11); contiguous 0, 1, 2.
METADATA = {
    "stuff_classes": ["a", "b", "s"],
    "stuff_dataset_id_to_contiguous_id": {1: 0, 2: 1, 11: 2},
    "thing_dataset_id_to_contiguous_id": {1: 0, 2: 1},
}
A, B, S = 0, 1, 2


def box(rows, cols, shape=(4, 8)):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def segments(*pairs):
    classes = torch.tensor([c for c, _ in pairs], dtype=torch.int64)
    return classes, torch.stack([m for _, m in pairs])


# A 4x8 canvas whose valid area is the left 4x6 (24 pixels); the last two columns are padding.
VALID = box((0, 4), (0, 6))
GT_A, GT_B = box((0, 2), (0, 2)), box((0, 2), (3, 5))
GT_S = VALID & ~GT_A & ~GT_B  # 16 pixels
GROUND_TRUTH = segments((A, GT_A), (B, GT_B), (S, GT_S))


def test_perfect_pseudo_label_scores_100_everywhere():
    # The pseudo-label also spills into the padding: those pixels are dropped, not scored.
    spilled_s = GT_S | ~VALID
    result = score_pseudo_labels([segments((A, GT_A), (B, GT_B), (S, spilled_s))], [GROUND_TRUTH],
                                 [VALID], METADATA)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "coverage", "IoU-a", "IoU-b", "IoU-s", "PQ-b"):
        assert result[key] == pytest.approx(100.0), key


def test_mislabeled_and_missing_segments_hand_computed():
    # a's pixels labeled "b"; b not labeled at all; s labeled on 15 of its 16 pixels.
    s_pred = GT_S.clone()
    s_pred[3, 5] = False
    pseudo = segments((B, GT_A), (S, s_pred))
    result = score_pseudo_labels([pseudo], [GROUND_TRUTH], [VALID], METADATA)
    # PQ: s is a TP with IoU 15/16; a is a FN; b has a FN (its ground truth) and a FP (on a's pixels).
    assert result["PQ-s"] == pytest.approx(100 * 15 / 16)
    assert result["SQ-s"] == pytest.approx(100 * 15 / 16)
    assert result["RQ-s"] == pytest.approx(100.0)
    assert (result["PQ-a"], result["SQ-a"], result["RQ-a"]) == (0.0, 0.0, 0.0)
    assert (result["PQ-b"], result["RQ-b"]) == (0.0, 0.0)
    assert result["PQ"] == pytest.approx(100 * (15 / 16) / 3)
    assert result["SQ"] == pytest.approx(100 * (15 / 16) / 3)
    assert result["RQ"] == pytest.approx(100 / 3)
    assert result["PQ_th"] == 0.0
    assert result["PQ_st"] == pytest.approx(100 * 15 / 16)
    # IoU over covered pixels (SemSegEvaluator): s 15/15; a 0/4 (its 4 pixels predicted as b);
    # b has no ground-truth pixel that got a prediction: NaN, but it counts (as 0) in the mean.
    assert result["IoU-s"] == pytest.approx(100.0)
    assert result["IoU-a"] == 0.0
    assert math.isnan(result["IoU-b"])
    assert result["mIoU"] == pytest.approx(100 / 3)
    # Covered: 4 + 15 of the 24 valid pixels.
    assert result["coverage"] == pytest.approx(100 * 19 / 24)


def test_scores_accumulate_over_images():
    # Image 1 perfect; image 2 with nothing labeled: s (2 images, 1 TP + 1 FN) has RQ 2/3.
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros((0, 4, 8), dtype=torch.bool))
    result = score_pseudo_labels([GROUND_TRUTH, empty], [GROUND_TRUTH, GROUND_TRUTH], [VALID, VALID], METADATA)
    assert result["RQ-s"] == pytest.approx(100 * 1 / 1.5)
    assert result["SQ-s"] == pytest.approx(100.0)
    assert result["coverage"] == pytest.approx(50.0)
    assert result["mIoU"] == pytest.approx(100.0)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match=r"as many pseudo-labels \(1\), ground truths \(2\)"):
        score_pseudo_labels([GROUND_TRUTH], [GROUND_TRUTH, GROUND_TRUTH], [VALID], METADATA)
    with pytest.raises(ValueError, match=r"do not fit the valid mask \(4, 6\)"):
        score_pseudo_labels([GROUND_TRUTH], [GROUND_TRUTH], [VALID[:, :6]], METADATA)
