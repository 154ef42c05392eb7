"""Sync-free panoptic inference (dearli/modeling/inference.py) against the per-image oracle with
data-dependent shapes (tests/helpers/panoptic_oracle.py) on random cases."""
import pytest
import torch

from dearli.modeling.inference import panoptic_inference, panoptic_segments, thing_table_of, trim_segments
from helpers.panoptic_oracle import oracle_panoptic_inference


def _random_case(seed, num_queries=12, num_classes=4, size=(10, 14)):
    g = torch.Generator().manual_seed(seed)
    class_logits = 3 * torch.randn(num_queries, num_classes + 1, generator=g)
    # Coarse blobs with sharp edges, so queries overlap and compete for pixels.
    mask_logits = 6 * torch.randn(num_queries, 1, 3, 4, generator=g)
    mask_logits = torch.nn.functional.interpolate(mask_logits, size=size, mode="bilinear")[:, 0]
    return class_logits, mask_logits


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("object_threshold,overlap_threshold", [(0.0, 0.8), (0.3, 0.5), (0.0, 0.0)])
def test_equals_the_oracle_on_random_cases(seed, object_threshold, overlap_threshold):
    class_logits, mask_logits = _random_case(seed)
    things = {0, 2}
    pan, info = panoptic_inference(class_logits, mask_logits, things, object_threshold, overlap_threshold)
    expected_pan, expected_info = oracle_panoptic_inference(class_logits, mask_logits, things, object_threshold,
                                                            overlap_threshold)
    assert torch.equal(pan, expected_pan) and pan.dtype == torch.int32
    assert info == expected_info


def test_the_cases_cover_merges_and_drops():
    """The random cases above are not trivial: stuff queries of one class merge, queries drop."""
    merged = dropped = 0
    for seed in range(12):
        class_logits, mask_logits = _random_case(seed)
        labels = class_logits.softmax(-1).argmax(-1)
        kept_stuff = [int(c) for c in labels if int(c) in (1, 3)]
        _, info = oracle_panoptic_inference(class_logits, mask_logits, {0, 2}, 0.0, 0.0)
        merged += len(set(kept_stuff)) < len(kept_stuff)
        _, strict = oracle_panoptic_inference(class_logits, mask_logits, {0, 2}, 0.0, 0.8)
        dropped += len(strict) < len(info)
    assert merged >= 3 and dropped >= 3


def test_batch_counts_are_read_once_and_tables_trimmed():
    cases = [_random_case(seed) for seed in (1, 2, 3)]
    table = thing_table_of({0, 2}, 4, "cpu")
    segments = trim_segments([panoptic_segments(c, m, table, 0.0, 0.8) for c, m in cases])
    for (class_logits, mask_logits), result in zip(cases, segments):
        pan, info = oracle_panoptic_inference(class_logits, mask_logits, {0, 2}, 0.0, 0.8)
        assert torch.equal(result.seg, pan.long()) and result.seg.dtype == torch.int64
        assert result.classes.tolist() == [s["category_id"] for s in info]
        assert result.isthing.tolist() == [s["isthing"] for s in info]
        assert result.scores.tolist() == pytest.approx([s["score"] for s in info])
        assert int(result.count) == len(info)

