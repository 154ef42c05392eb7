"""A hand-made panoptic case where the two overlap rules disagree (method §1.6 step 4).

On a 4x4 grid, over classes (thing, stuff, void):

* query 0 (thing, score 0.9): mask probability ~1 on the left half (8 px), exactly 0.4 on the right;
* query 1 (stuff, score 0.95): probability ~1 on the top row of the left half (2 px), ~0 elsewhere.

Query 1 wins its 2 px. Query 0 wins the other 6 px of the left half AND the whole right half
(0.9 * 0.4 = 0.36 beats 0.95 * 0.00005), where its own probability is below 0.5. So:

* reference rule: |owned| / |sigmoid >= 0.5| = (6 + 8) / 8 = 1.75 >= 0.8: query 0 is kept, with the
  segment = owned AND sigmoid >= 0.5 = its 6 px;
* intersected rule: |owned AND sigmoid >= 0.5| / |sigmoid >= 0.5| = 6 / 8 = 0.75 < 0.8: dropped.
"""
import math

import torch

THING, STUFF = 0, 1
GRID = 4
OWNED_BY_QUERY_0 = 14  # 6 px with sigmoid ~1 + 8 px with sigmoid 0.4
FULL_AREA_QUERY_0 = 8

_LEFT = torch.zeros(GRID, GRID, dtype=torch.bool)
_LEFT[:, :2] = True
_TOP_LEFT = torch.zeros(GRID, GRID, dtype=torch.bool)
_TOP_LEFT[0, :2] = True

# Expected panoptic map of the reference: ids in query order, 0 where the owner's sigmoid < 0.5.
EXPECTED_PAN = torch.zeros(GRID, GRID, dtype=torch.int32)
EXPECTED_PAN[_LEFT & ~_TOP_LEFT] = 1
EXPECTED_PAN[_TOP_LEFT] = 2


def expected_segments(stuff: int = STUFF):
    """(id, category_id, isthing) of the reference's segments."""
    return [(1, THING, True), (2, stuff, False)]


def class_log_probs(num_classes: int = 2, stuff: int = STUFF) -> torch.Tensor:
    """[2, num_classes + 1] log-probabilities: query 0 -> class THING 0.9, query 1 -> ``stuff`` 0.95;
    the rest of the mass is spread evenly over the other columns (void last)."""
    rows = []
    for label, score in ((THING, 0.9), (stuff, 0.95)):
        row = torch.full((num_classes + 1,), (1 - score) / num_classes, dtype=torch.float64)
        row[label] = score
        rows.append(row)
    return torch.stack(rows).log().float()


def mask_logits(scale: int = 1) -> torch.Tensor:
    """[2, 4 * scale, 4 * scale] mask logits of the two queries (each grid cell scale x scale px)."""
    logit_of_0_4 = math.log(0.4 / 0.6)
    query_0 = torch.where(_LEFT, 10.0, logit_of_0_4)
    query_1 = torch.where(_TOP_LEFT, 10.0, -10.0)
    masks = torch.stack([query_0, query_1])
    return masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def expected_pan(scale: int = 1) -> torch.Tensor:
    return EXPECTED_PAN.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
