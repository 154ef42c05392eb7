"""The criterion's optional per-pixel mask weights (SemiRES's PWA, extensions.md §2.3 step 7)."""
import math

import pytest
import torch
from torch.nn import functional as F

from dearli.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from dearli.modeling.matcher import HungarianMatcher


def _criterion(num_points=16, **kwargs):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points)
    return SetCriterion(
        num_classes=3, matcher=matcher, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
        no_object_weight=0.1, num_points=num_points, oversample_ratio=3.0, importance_sample_ratio=0.75, **kwargs,
    )


def _scene(seed=0, images=2, queries=4, size=16):
    g = torch.Generator().manual_seed(seed)
    outputs = {"pred_logits": torch.randn(images, queries, 4, generator=g),
               "pred_masks": torch.randn(images, queries, size // 4, size // 4, generator=g),
               "aux_outputs": [{"pred_logits": torch.randn(images, queries, 4, generator=g),
                                "pred_masks": torch.randn(images, queries, size // 4, size // 4, generator=g)}]}
    targets = []
    for b in range(images):
        n = 2 + b
        valid = torch.ones(size, size, dtype=torch.bool)
        valid[:, size - 3:] = False
        targets.append({"labels": torch.randint(0, 3, (n,), generator=g), "seed": 10 + b, "valid_mask": valid,
                        "masks": torch.rand(n, size, size, generator=g) > 0.6,
                        "weights": torch.rand(n, generator=g)})
    return outputs, targets


@pytest.mark.parametrize("options", [dict(), dict(ignore_padding=True, use_segment_weights=True)])
def test_unit_pixel_weights_give_todays_losses_bitwise(options):
    outputs, targets = _scene()
    plain = _criterion(**options)(outputs, targets)
    weighted_targets = [dict(t) for t in targets]
    weighted_targets[1]["mask_weights"] = torch.ones(len(targets[1]["labels"]), 4, 4)  # image 0: missing = ones
    weighted = _criterion(**options)(outputs, weighted_targets)
    assert plain.keys() == weighted.keys()
    for key in plain:
        assert torch.equal(plain[key], weighted[key]), key


def test_zero_weights_zero_the_mask_losses_and_keep_the_class_loss():
    outputs, targets = _scene(seed=1, images=1)
    targets[0]["labels"] = targets[0]["labels"][:1]
    targets[0]["masks"] = targets[0]["masks"][:1]
    plain = _criterion(deep_supervision=False)(outputs, targets)
    targets[0]["mask_weights"] = torch.zeros(1, 8, 8)
    zeroed = _criterion(deep_supervision=False)(outputs, targets)
    assert torch.equal(zeroed["loss_ce"], plain["loss_ce"])
    assert plain["loss_mask"] > 0.1 and plain["loss_dice"] > 0.1
    assert abs(float(zeroed["loss_mask"])) < 1e-6 and abs(float(zeroed["loss_dice"])) < 1e-6


def test_a_constant_weight_scales_the_bce_of_zero_logits():
    outputs = {"pred_logits": torch.zeros(1, 2, 4), "pred_masks": torch.zeros(1, 2, 4, 4)}
    target = {"labels": torch.tensor([0]), "masks": torch.zeros(1, 8, 8, dtype=torch.bool),
              "mask_weights": torch.full((1, 2, 2), 0.25)}
    losses = _criterion(deep_supervision=False)(outputs, [target])
    # Every point: BCE(0 logit) = log 2, weight 0.25, mean not renormalised, 1 mask, MASK_WEIGHT 5.
    assert float(losses["loss_mask"]) == pytest.approx(5 * 0.25 * math.log(2), abs=1e-6)
    # Dice with t = 0: 1 - 1 / (sum w p + 1), p = 0.5, 16 points of weight 0.25.
    assert float(losses["loss_dice"]) == pytest.approx(5 * (1 - 1 / (16 * 0.25 * 0.5 + 1)), abs=1e-5)


def test_weighted_loss_functions_match_the_formulas():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    w = torch.tensor([[0.5, 1.0, 0.0, 2.0]])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(sigmoid_ce_loss(logits, targets, pixel_weights=w), (w * bce).mean(-1))
    p = logits.sigmoid()
    expected = 1 - (2 * (0.5 * p[0, 0] + 2 * p[0, 3]) + 1) / ((w * p).sum() + 2.5 + 1)
    assert torch.allclose(dice_loss(logits, targets, pixel_weights=w), expected[None])


def test_mask_weights_must_match_the_targets():
    outputs, targets = _scene(images=1)
    targets[0]["mask_weights"] = torch.ones(5, 4, 4)
    with pytest.raises(ValueError, match=r"^targets\[0\]\['mask_weights'\] must be \[N=2, h, w\], got shape \(5, 4, 4\)$"):
        _criterion()(outputs, targets)
