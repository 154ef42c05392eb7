"""Pretraining of the tiny SAM (dearli/sam/pretrain.py, tools/pretrain_tiny_sam.py): disjoint data,
prompts, SAM's losses against hand computation, determinism, resume == uninterrupted, bad resumes."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dearli.data.datasets.shapes import GENERATOR_VERSION, SPLITS, render_sample
from dearli.sam import pretrain
from dearli.sam.pretrain import PretrainSettings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import pretrain_tiny_sam as tool  # noqa: E402

# A few cheap steps: one localisation step, then one image, two points and one box per step.
TINY = PretrainSettings(steps=4, localization_steps=1, images_per_step=1, points_per_image=2, boxes_per_image=1,
                        warmup_steps=2)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretraining_scenes_are_none_of_the_splits_images():
    assert pretrain.PRETRAIN_STREAM not in SPLITS.values()
    split_images = [render_sample(np.random.default_rng(np.random.SeedSequence([0, index, i, GENERATOR_VERSION])),
                                  (96, 96))[0] for index in SPLITS.values() for i in range(8)]
    for step in range(3):
        for i in range(2):
            image, masks, _ = pretrain.render_scene(0, step, i, 96)
            assert not any(np.array_equal(image, other) for other in split_images)
            # every pixel belongs to exactly one class-agnostic segment
            assert masks.dtype == bool and np.array_equal(masks.sum(0), np.ones((96, 96)))


def test_prompts_come_from_their_segments():
    _, masks, rng = pretrain.render_scene(0, 0, 0, 96)
    points, segments = pretrain.sample_points(rng, masks, 50)
    for (x, y), s in zip(points, segments):
        assert masks[s, int(y), int(x)]
    boxes, segments = pretrain.sample_boxes(rng, masks, 50)
    for box, s in zip(boxes, segments):
        ys, xs = np.nonzero(masks[s])
        true = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
        side = np.array([true[2] - true[0], true[3] - true[1]] * 2)
        assert np.all(np.abs(box - true) <= np.minimum(0.1 * side, 20) + 1e-9)
        assert np.all(box >= 0) and np.all(box <= 96)


def test_focal_and_dice_losses_match_hand_computation():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    targets = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.sigmoid(logits)
    expected_focal = []
    for pi, ti in zip(p.flatten().tolist(), targets.flatten().tolist()):
        p_t = pi if ti else 1 - pi
        alpha = 0.25 if ti else 0.75
        expected_focal.append(-alpha * (1 - p_t) ** 2 * np.log(p_t))
    assert pretrain.focal_loss(logits, targets).item() == pytest.approx(np.mean(expected_focal), rel=1e-5)
    inter = float((p * targets).sum())
    expected_dice = 1 - (2 * inter + 1) / (float(p.sum()) + 2 + 1)
    assert pretrain.dice_loss(logits, targets).item() == pytest.approx(expected_dice, rel=1e-6)
    # IoU of the binarised mask (logit > 0): {(0,1), (1,1)} vs {(0,0), (1,1)} -> 1 / 3
    assert pretrain.mask_iou(logits, targets).item() == pytest.approx(1 / 3)


def test_only_the_best_of_three_masks_gets_mask_loss_and_the_iou_head_learns_every_iou():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    perfect = torch.where(target[0] > 0, 10.0, -10.0)
    logits = torch.stack([-perfect, perfect, torch.full((4, 4), 10.0)])[None]  # inverted, exact, everything
    iou_pred = torch.tensor([[0.5, 0.5, 0.5]])
    settings = PretrainSettings(focal_weight=20.0)  # SAM's weights, so both terms count
    mask_loss, iou_loss, best_iou = pretrain.prompt_losses(logits, iou_pred, target, settings)
    assert best_iou.item() == 1.0
    exact = settings.focal_weight * pretrain.focal_loss(perfect[None], target) + pretrain.dice_loss(perfect[None], target)
    assert mask_loss.item() == pytest.approx(exact.item(), rel=1e-6)
    # actual IoUs 0, 1, 0.5 -> MSE against 0.5 each
    assert iou_loss.item() == pytest.approx(((0.5 - 0) ** 2 + (0.5 - 1) ** 2 + 0) / 3)


def test_localization_target_is_the_disk_around_each_click():
    r = pretrain.LOCALIZATION_RADIUS
    disks = pretrain.localization_target(32, np.array([[10.5, 12.5], [20.0, 20.0]]))
    assert disks.shape == (2, 32, 32) and disks.dtype == bool
    # a click on a pixel centre: the pixels whose centres lie strictly within r of it (109 at r = 6)
    expected = sum(dx * dx + dy * dy < r * r for dx in range(-r, r + 1) for dy in range(-r, r + 1))
    assert disks[0].sum() == expected == 109
    assert disks[0, 12, 10] and disks[0, 12, 10 + r - 1] and not disks[0, 12, 10 + r]
    # a click on a pixel corner: centres at half-integer offsets, and the disk is point-symmetric about it
    expected = sum((dx + 0.5) ** 2 + (dy + 0.5) ** 2 < r * r for dx in range(-r - 1, r + 1) for dy in range(-r - 1, r + 1))
    assert disks[1].sum() == expected
    around = disks[1][8:32, 8:32]  # pixels 8..31 mirror onto 31..8 about the corner at 20
    assert np.array_equal(around, around[::-1, ::-1])


def test_localization_steps_come_first_and_show_noise_not_scenes(monkeypatch):
    def no_scene(*args):
        raise AssertionError("scene rendered")

    monkeypatch.setattr(pretrain, "render_scene", no_scene)
    model, _ = pretrain.build_training(TINY)
    total, values = pretrain.step_loss(model, TINY, 0)  # step 0 < localization_steps: a noise image
    assert total.requires_grad and 0.0 <= values["mask_iou"] <= 1.0
    with pytest.raises(AssertionError, match="scene rendered"):
        pretrain.step_loss(model, TINY, 1)  # the first scene step


def test_learning_rate_warms_up_then_decays_to_zero():
    s = replace(TINY, steps=10, warmup_steps=2, lr=1.0)
    assert [pretrain.learning_rate(s, k) for k in (0, 1)] == [0.5, 1.0]
    assert pretrain.learning_rate(s, 2) == pytest.approx(1.0)
    assert pretrain.learning_rate(s, 10) == pytest.approx(0.0, abs=1e-12)


def test_pretraining_is_deterministic_and_depends_on_the_seed(tmp_path):
    model_a, history_a = pretrain.pretrain(replace(TINY, steps=2), tmp_path / "a", progress=False)
    model_b, history_b = pretrain.pretrain(replace(TINY, steps=2), tmp_path / "b", progress=False)
    model_c, _ = pretrain.pretrain(replace(TINY, steps=2, seed=1), tmp_path / "c", progress=False)
    assert history_a == history_b
    _assert_same_state(_state(model_a), _state(model_b))
    assert any(not torch.equal(a, c) for a, c in zip(model_a.state_dict().values(), model_c.state_dict().values()))
    assert history_a[0]["loss"] != history_a[1]["loss"]  # it trains: parameters move between steps


def test_resumed_run_ends_like_the_uninterrupted_one(tmp_path):
    uninterrupted, full_history = pretrain.pretrain(TINY, tmp_path / "full", checkpoint_period=2, progress=False)
    # "crash" after 3 steps: the last checkpoint is the one of step 2
    _, partial = pretrain.pretrain(TINY, tmp_path / "crash", checkpoint_period=2, stop_after=3, progress=False)
    assert len(partial) == 3
    resumed, history = pretrain.pretrain(TINY, tmp_path / "crash", resume=True, checkpoint_period=2, progress=False)
    assert history == full_history
    _assert_same_state(_state(resumed), _state(uninterrupted))


def test_resume_with_other_settings_names_the_checkpoint_and_the_settings(tmp_path):
    pretrain.pretrain(replace(TINY, steps=2), tmp_path, checkpoint_period=2, progress=False)
    checkpoint = tmp_path / pretrain.CHECKPOINT_NAME
    with pytest.raises(ValueError, match=rf"checkpoint {checkpoint} was made with other settings \(lr: run 0.5 vs "
                                         r"checkpoint 0.001, steps: run 3 vs checkpoint 2\)"):
        pretrain.pretrain(replace(TINY, steps=3, lr=0.5), tmp_path, resume=True, progress=False)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read pretraining checkpoint {checkpoint}"):
        pretrain.pretrain(replace(TINY, steps=2), tmp_path, resume=True, progress=False)


def test_tool_writes_weights_and_manifest_and_resumes(tmp_path):
    flags = ["--steps", "2", "--images-per-step", "1", "--points-per-image", "2", "--boxes-per-image", "1",
             "--warmup-steps", "1", "--checkpoint-period", "1", "--work-dir", str(tmp_path / "work"), "--no-progress"]
    tool.main([*flags, "--output", str(tmp_path / "stopped.safetensors"), "--stop-after", "1"])
    assert not (tmp_path / "stopped.safetensors").exists()  # stopped before the end: no weights
    tool.main([*flags, "--output", str(tmp_path / "w.safetensors"), "--resume"])
    tool.main([*flags, "--output", str(tmp_path / "fresh.safetensors"), "--work-dir", str(tmp_path / "fresh")])
    assert (tmp_path / "w.safetensors").read_bytes() == (tmp_path / "fresh.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="must end in .safetensors"):
        tool.main([*flags, "--output", str(tmp_path / "w.pth")])
