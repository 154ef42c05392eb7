"""merge_and_compact (fixed-shape ops, one read of the segment count) against the per-image oracle
with data-dependent shapes (tests/helpers/panoptic_oracle.py) on random labels."""
import pytest
import torch

from dearli.engine.pseudo_labels import PanopticLabel, merge_and_compact
from helpers.panoptic_oracle import oracle_merge_and_compact


@pytest.mark.parametrize("seed", range(8))
def test_merge_and_compact_equals_the_oracle_on_random_labels(seed):
    g = torch.Generator().manual_seed(seed)
    num = 9
    label = PanopticLabel(
        seg=torch.randint(0, num + 1, (12, 12), generator=g),
        classes=torch.randint(0, 3, (num,), generator=g),
        isthing=torch.rand(num, generator=g) > 0.6,
        scores=torch.rand(num, generator=g),
    )
    for min_area in (0, 3, 20):
        merged, expected = merge_and_compact(label, min_area), oracle_merge_and_compact(label, min_area)
        assert torch.equal(merged.seg, expected.seg)
        assert torch.equal(merged.classes, expected.classes) and torch.equal(merged.isthing, expected.isthing)
        assert torch.equal(merged.scores, expected.scores)
