"""The batched criterion and matcher against the per-image oracle (tests/helpers/criterion_oracle.py)
on random batches: same matches, same losses; and the counter-based point streams."""
import pytest
import torch

from dearli.modeling.criterion import SetCriterion
from dearli.modeling.matcher import HungarianMatcher, hungarian_match
from dearli.modeling.point_sampling import (
    MATCHER_PURPOSE, counter_uniform, pair_keys, stream_key, stream_keys, uniform_points,
)
from helpers.criterion_oracle import match_image, oracle_losses


def _criterion(num_classes, num_points, class_weight=2.0, **kwargs):
    matcher = HungarianMatcher(cost_class=class_weight, cost_mask=5.0, cost_dice=5.0, num_points=num_points,
                               ignore_padding=kwargs.get("ignore_padding", False))
    return SetCriterion(num_classes=num_classes, matcher=matcher, class_weight=class_weight, mask_weight=5.0,
                        dice_weight=5.0, no_object_weight=0.1, num_points=num_points, oversample_ratio=3.0,
                        importance_sample_ratio=0.75, **kwargs)


def _random_batch(seed, counts, num_queries=6, num_classes=4, size=8, canvas=16, aux=2, seeded=True):
    g = torch.Generator().manual_seed(seed)

    def prediction():
        return {"pred_logits": 2 * torch.randn(len(counts), num_queries, num_classes + 1, generator=g),
                "pred_masks": 3 * torch.randn(len(counts), num_queries, size, size, generator=g)}

    outputs = {**prediction(), "aux_outputs": [prediction() for _ in range(aux)]}
    targets = []
    for b, n in enumerate(counts):
        valid = torch.zeros(canvas, canvas, dtype=torch.bool)
        valid[: canvas - b, : canvas - 2 * b] = True
        targets.append({
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "masks": torch.rand(n, canvas, canvas, generator=g) > 0.6,
            "seed": 1000 + seed * 10 + b if seeded else None,
            "valid_mask": valid,
            "weights": torch.rand(n, generator=g),
        })
    return outputs, targets


CASES = [
    # (seed, targets per image, criterion options)
    (0, [3, 1, 4], {}),
    (1, [2, 0, 5], {"ignore_padding": True}),
    (2, [8, 2], {"use_segment_weights": True}),  # 8 targets > 6 queries
    (3, [0, 0], {}),
    (4, [1, 3, 2], {"ignore_padding": True, "use_segment_weights": True, "deep_supervision": False}),
    (5, [2, 4], {"class_weight": 0.0}),  # class-agnostic
]


@pytest.mark.parametrize("seed,counts,options", CASES)
def test_batched_losses_equal_the_per_image_oracle(seed, counts, options):
    options = dict(options)
    num_classes = 4 if options.get("class_weight", 2.0) else 1
    criterion = _criterion(num_classes=num_classes, num_points=32, class_weight=options.pop("class_weight", 2.0), **options)
    outputs, targets = _random_batch(seed, counts, num_classes=num_classes)
    losses = criterion(outputs, targets, seed_stream=1)
    expected, _ = oracle_losses(criterion, outputs, targets, stream=1)
    assert set(losses) == set(expected)
    for key in expected:
        assert losses[key].item() == pytest.approx(expected[key].item(), rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("seed,counts", [(10, [3, 1, 4]), (11, [7, 0, 2]), (12, [5])])
def test_batched_matches_equal_the_per_image_oracle(seed, counts):
    criterion = _criterion(num_classes=4, num_points=48, ignore_padding=True)
    outputs, targets = _random_batch(seed, counts, aux=0)
    keys = stream_keys([t["seed"] for t in targets], (0, 0, MATCHER_PURPOSE))
    batched = criterion.matcher(outputs["pred_logits"], outputs["pred_masks"], targets, keys)
    for b, target in enumerate(targets):
        query_idx, target_idx = match_image(criterion, outputs["pred_logits"][b], outputs["pred_masks"][b], target,
                                            keys[b:b + 1])
        assert torch.equal(batched[b][0], query_idx) and torch.equal(batched[b][1], target_idx), b


def test_unseeded_images_draw_from_the_global_generator():
    criterion = _criterion(num_classes=4, num_points=32)
    outputs, targets = _random_batch(7, [3, 2], seeded=False)
    torch.manual_seed(3)
    first = criterion(outputs, targets)
    torch.manual_seed(3)
    assert criterion(outputs, targets)["loss_mask"].item() == first["loss_mask"].item()
    assert criterion(outputs, targets)["loss_mask"].item() != first["loss_mask"].item()


def test_hungarian_match_solves_every_set_and_image_in_query_order():
    # Set 0, image 0 (2 targets): the diagonal is cheap -> queries (0, 1) get targets (1, 0).
    costs = torch.tensor([[[[5.0, 0.0], [0.0, 5.0], [9.0, 9.0]],
                           [[1.0, 7.0], [0.0, 7.0], [2.0, 7.0]]]])  # image 1 has 1 target
    query_idx, target_idx = hungarian_match(costs, [2, 1])
    assert query_idx.tolist() == [[0, 1, 1]] and target_idx.tolist() == [[1, 0, 0]]
    with pytest.raises(FloatingPointError, match="not finite"):
        hungarian_match(torch.full((1, 1, 2, 1), float("nan")), [1])


def test_counter_streams_are_uniform_reproducible_and_independent():
    keys = stream_keys([1, 2, None], (0, 3, 1))
    assert keys.shape == (3, 2) and keys.dtype == torch.int64 and bool((keys >= 0).all() & (keys < 2**32).all())
    assert tuple(keys[0].tolist()) == stream_key(1, (0, 3, 1)) != stream_key(1, (0, 3, 0))
    values = counter_uniform(keys[:2], 20000)
    assert torch.equal(values, counter_uniform(keys[:2], 20000))
    assert torch.equal(values[:, :100], counter_uniform(keys[:2], 100))  # a prefix does not depend on the count
    assert bool((values >= 0).all() & (values < 1).all())
    assert values.mean().item() == pytest.approx(0.5, abs=0.01) and values.var().item() == pytest.approx(1 / 12, abs=0.005)
    assert abs(torch.corrcoef(values)[0, 1].item()) < 0.03
    histogram = torch.histc(values[0], bins=10, min=0, max=1)
    assert (histogram - 2000).abs().max().item() < 200
    points = uniform_points(keys[:1], 5)
    assert points.shape == (1, 5, 2) and torch.equal(points.flatten(), values[0, :10])
    ranked = pair_keys(keys[:1].expand(3, 2), torch.arange(3))
    assert len({tuple(k) for k in ranked.tolist()}) == 3 and torch.equal(ranked[:, 1], keys[:1, 1].expand(3))


@pytest.mark.slow
def test_the_criterion_traces_without_graph_breaks_and_compiles_to_the_same_losses():
    criterion = _criterion(num_classes=4, num_points=32, ignore_padding=True, use_segment_weights=True)
    outputs, targets = _random_batch(20, [3, 0, 4])
    explanation = torch._dynamo.explain(criterion)(outputs, targets, 1)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(criterion, backend="aot_eager")(outputs, targets, 1)
    eager = criterion(outputs, targets, 1)
    for key in eager:
        assert compiled[key].item() == pytest.approx(eager[key].item(), rel=1e-5, abs=1e-7), key
