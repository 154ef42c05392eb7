"""SetCriterion: loss values against hand computation, normalisation, empty targets, modes."""
import math

import pytest
import torch
from detectron2.structures import BitMasks
from torch.nn import functional as F

from dearli.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from dearli.modeling.matcher import HungarianMatcher
from dearli.modeling.point_sampling import MATCHER_PURPOSE, point_sample, stream_keys, uncertain_points
from dearli.modeling.target_batch import as_mask_tensor

NUM_POINTS = 8


def _criterion(num_classes=2, class_weight=2.0, num_points=NUM_POINTS, **kwargs):
    matcher = HungarianMatcher(cost_class=class_weight, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return SetCriterion(
        num_classes=num_classes, matcher=matcher, class_weight=class_weight, mask_weight=5.0,
        dice_weight=5.0, no_object_weight=0.1, num_points=num_points, oversample_ratio=3.0,
        importance_sample_ratio=0.75, **kwargs,
    )


def _target(labels, size=8, seed=None):
    target = {"labels": torch.tensor(labels, dtype=torch.int64), "masks": torch.zeros(len(labels), size, size, dtype=torch.bool)}
    if seed is not None:
        target["seed"] = seed
    return target


def test_point_sample_reads_pixel_centres_and_zero_outside():
    image = torch.arange(12.0).view(1, 1, 3, 4)
    centres = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [1.5 / 4, 1.5 / 3]]])
    assert point_sample(image, centres)[0, 0].tolist() == pytest.approx([0.0, 11.0, 5.0], abs=1e-5)
    assert point_sample(image, torch.tensor([[[1.5, 0.5], [-0.7, 0.5]]]))[0, 0].tolist() == [0.0, 0.0]


def test_loss_functions_match_hand_computed_numbers():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    # BCE: [ln 2, ln(1 + e^-2), ln(1 + e^-1)] = [0.693147, 0.126928, 0.313262], mean 0.377779
    assert sigmoid_ce_loss(logits, targets).item() == pytest.approx(0.377779, abs=1e-6)
    # Dice: p = [0.5, 0.880797, 0.268941]; 2*sum(p t) = 2.761594; sum p + sum t = 1.649738 + 2
    # 1 - (2.761594 + 1) / (3.649738 + 1) = 0.191010
    assert dice_loss(logits, targets).item() == pytest.approx(0.191010, abs=1e-6)
    # Weighted: only the first two points count.
    weights = torch.tensor([[1.0, 1.0, 0.0]])
    assert sigmoid_ce_loss(logits, targets, weights).item() == pytest.approx((0.693147 + 0.126928) / 2, abs=1e-6)


def test_single_image_losses_equal_hand_computation():
    # Zero mask logits read 0 at every point (zero padding included): BCE = ln 2 per point for
    # any target; an empty target mask gives Dice = 1 - 1 / (0.5 * P + 1) = 1 - 1/5 = 0.8.
    # One class-1 target; query 1 ([0, 3, 0]) wins the class cost and is matched, query 0
    # ([2, 0, 0]) goes to void (weight 0.1):
    #   CE(q1 -> 1) = log(e^3 + 2) - 3 = 0.094923,  CE(q0 -> void) = log(e^2 + 2) = 2.239545
    #   weighted mean = (0.094923 + 0.1 * 2.239545) / 1.1 = 0.289889
    outputs = {"pred_logits": torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]]), "pred_masks": torch.zeros(1, 2, 4, 4)}
    losses = _criterion(deep_supervision=False)(outputs, [_target([1])])
    assert losses["loss_ce"].item() == pytest.approx(2 * 0.289889, abs=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(5 * math.log(2), abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(5 * 0.8, abs=1e-6)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}


def test_ce_equals_torch_weighted_cross_entropy():
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 5, 4, generator=g), "pred_masks": torch.randn(2, 5, 4, 4, generator=g)}
    targets = [_target([0, 2], seed=1), _target([1], seed=2)]
    criterion = _criterion(num_classes=3, deep_supervision=False)
    losses = criterion(outputs, targets)
    # The final set of a criterion without aux outputs is layer 0 of seed stream 0.
    indices = criterion.matcher(outputs["pred_logits"], outputs["pred_masks"], targets,
                                stream_keys([1, 2], (0, 0, MATCHER_PURPOSE)))
    classes = torch.full((2, 5), 3)
    for b, (q, t) in enumerate(indices):
        classes[b, q] = targets[b]["labels"][t]
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    expected = F.cross_entropy(outputs["pred_logits"].transpose(1, 2), classes, weight=weight)
    assert losses["loss_ce"].item() == pytest.approx(2 * expected.item(), rel=1e-6)


def test_mask_losses_are_divided_by_the_number_of_targets():
    outputs = {"pred_logits": torch.zeros(2, 2, 3), "pred_masks": torch.zeros(2, 2, 4, 4)}
    # 3 targets, but image 1 has only 2 queries for its 3 targets: 1 + 2 matched pairs.
    losses = _criterion(deep_supervision=False)(outputs, [_target([0]), _target([0, 1, 1])])
    assert losses["loss_mask"].item() == pytest.approx(5 * math.log(2) * 3 / 4, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(5 * 0.8 * 3 / 4, abs=1e-6)


def test_empty_targets_send_every_query_to_void_and_zero_mask_losses():
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], requires_grad=True)
    masks = torch.randn(1, 2, 4, 4, requires_grad=True)
    losses = _criterion(deep_supervision=False)({"pred_logits": logits, "pred_masks": masks}, [_target([])])
    # Both queries -> void with equal weights: mean of -log p_void.
    expected = (math.log(math.e + 2) + (math.log(2 + math.e ** 2) - 2)) / 2
    assert losses["loss_ce"].item() == pytest.approx(2 * expected, abs=1e-6)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    sum(losses.values()).backward()
    assert masks.grad is not None and torch.count_nonzero(masks.grad) == 0


def test_deep_supervision_keys_and_class_agnostic_mode_ignores_logits():
    g = torch.Generator().manual_seed(3)
    def prediction(scale):
        return {"pred_logits": scale * torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(4)),
                "pred_masks": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))}
    targets = [{"labels": torch.tensor([7, 3]), "masks": torch.rand(2, 16, 16, generator=g) > 0.5, "seed": 11}]
    criterion = _criterion(num_classes=1, class_weight=0.0)
    first = criterion({**prediction(1.0), "aux_outputs": [prediction(1.0), prediction(1.0)]}, targets)
    second = criterion({**prediction(-9.0), "aux_outputs": [prediction(-9.0), prediction(-9.0)]}, targets)
    assert set(first) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    for key in first:
        if key.startswith("loss_ce"):
            assert first[key].item() == 0.0
        else:
            assert first[key].item() == pytest.approx(second[key].item(), rel=1e-6)


def test_losses_of_a_batch_combine_the_losses_of_its_images():
    """Per-image seeded points: losses do not depend on which images share the batch."""
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 4, 3, generator=g), "pred_masks": torch.randn(2, 4, 8, 8, generator=g)}
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.rand(2, 32, 32, generator=g) > 0.5, "seed": 5},
        {"labels": torch.tensor([1]), "masks": torch.rand(1, 32, 32, generator=g) > 0.5, "seed": 6},
    ]
    criterion = _criterion(deep_supervision=False, num_points=64)
    both = criterion(outputs, targets)
    alone = [criterion({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]]) for i in range(2)]
    for key, num in (("loss_mask", (2, 1)), ("loss_dice", (2, 1)), ("loss_ce", (2 + 0.2, 1 + 0.3))):
        combined = (alone[0][key] * num[0] + alone[1][key] * num[1]) / sum(num)
        assert both[key].item() == pytest.approx(combined.item(), rel=1e-5)
    assert criterion(outputs, targets)["loss_mask"].item() == both["loss_mask"].item()


def test_losses_are_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(1, 3, 3, generator=g).bfloat16(), "pred_masks": torch.randn(1, 3, 8, 8, generator=g).bfloat16()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _criterion(deep_supervision=False)(outputs, [_target([1], seed=0)])
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_segment_weights_scale_mask_terms_and_padding_is_ignored_when_asked():
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}
    weighted = _target([0, 1])
    weighted["weights"] = torch.tensor([0.5, 0.25])
    losses = _criterion(deep_supervision=False, use_segment_weights=True)(outputs, [weighted])
    assert losses["loss_mask"].item() == pytest.approx(5 * math.log(2) * 0.75 / 2, abs=1e-6)
    padded = _target([0])
    padded["valid_mask"] = torch.zeros(8, 8, dtype=torch.bool)
    padded["valid_mask"][:, :4] = True
    padded["masks"][0, :, 4:] = True  # the target lies only on padding
    ignoring = _criterion(deep_supervision=False, ignore_padding=True, num_points=256)(outputs, [padded])
    # Weighted Dice: target weights vanish except at the boundary column; nearly 1 - 1/(0.5*valid+1).
    assert ignoring["loss_mask"].item() == pytest.approx(5 * math.log(2), abs=1e-5)
    plain = _criterion(deep_supervision=False, num_points=256)(outputs, [padded])
    assert ignoring["loss_dice"].item() > plain["loss_dice"].item()


def test_uncertain_points_prefer_small_logits():
    logits = torch.full((1, 1, 8, 8), 10.0)
    logits[..., :, :2] = 0.0  # an uncertain band at x < 0.25
    points = uncertain_points(logits, stream_keys([0], (0,)), 40, 3.0, 0.75)
    assert points.shape == (1, 40, 2)
    assert (points[0, :30, 0] < 0.3).float().mean() > 0.9


def test_gt_masks_types():
    bool_masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert as_mask_tensor(BitMasks(bool_masks)) is not None
    assert as_mask_tensor(bool_masks) is bool_masks
    with pytest.raises(TypeError, match="float32"):
        as_mask_tensor(bool_masks.float())
    with pytest.raises(TypeError, match="list"):
        as_mask_tensor([bool_masks])
    with pytest.raises(TypeError, match=r"targets\[0\]\['masks'\]"):
        _criterion()({"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)},
                     [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}])


def test_out_of_range_class_names_num_classes():
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        _criterion()({"pred_logits": torch.zeros(1, 2, 3), "pred_masks": torch.zeros(1, 2, 4, 4)}, [_target([5])])
