"""tools/pretrain_tiny_clip.py: deterministic, resumable, and its output loads as OpenCLIP weights."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers.tools import load_tool

from dearli.modeling.backbone.open_clip_backbone import OpenCLIPBackbone
from dearli.modeling.backbone.weight_manifest import manifest_path
from dearli.utils.hashing import file_sha256

pretrain_tool = load_tool("pretrain_tiny_clip")
FEW_STEPS = pretrain_tool.Settings(steps=4, scenes_per_step=2, warmup_steps=2, input_size=96)


def _assert_same_weights(model_a, model_b):
    state_b = model_b.state_dict()
    for name, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, state_b[name]), name


def test_two_runs_give_the_same_losses_and_weights(tmp_path):
    model_a, losses_a = pretrain_tool.pretrain(FEW_STEPS, tmp_path / "a", progress=False)
    model_b, losses_b = pretrain_tool.pretrain(FEW_STEPS, tmp_path / "b", progress=False)
    assert len(losses_a) == 4 and losses_a == losses_b
    _assert_same_weights(model_a, model_b)
    # training moved the weights away from the seeded initialisation
    initial = pretrain_tool.build_model(FEW_STEPS)
    assert not torch.equal(initial.text_projection, model_a.text_projection)


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    uninterrupted, losses = pretrain_tool.pretrain(FEW_STEPS, tmp_path / "full", progress=False)
    pretrain_tool.pretrain(FEW_STEPS, tmp_path / "cut", checkpoint_period=2, stop_after=2, progress=False)
    assert torch.load(tmp_path / "cut" / "last_checkpoint.pth", weights_only=True)["step"] == 2
    resumed, resumed_losses = pretrain_tool.pretrain(FEW_STEPS, tmp_path / "cut", resume=True, progress=False)
    assert resumed_losses == losses
    _assert_same_weights(uninterrupted, resumed)


def test_resume_with_other_settings_is_refused(tmp_path):
    pretrain_tool.pretrain(FEW_STEPS, tmp_path, stop_after=1, progress=False)
    changed = dataclasses.replace(FEW_STEPS, lr=1e-4)
    with pytest.raises(ValueError, match=r"other settings \{'lr': 0.002\}; this run has \{'lr': 0.0001\}"):
        pretrain_tool.pretrain(changed, tmp_path, resume=True, progress=False)


def test_the_learning_rate_warms_up_then_decays_to_zero():
    settings = pretrain_tool.Settings(steps=10, warmup_steps=2, lr=1.0)
    assert [pretrain_tool.learning_rate(settings, s) for s in (0, 1)] == [0.5, 1.0]
    assert pretrain_tool.learning_rate(settings, 2) == pytest.approx(1.0)
    assert pretrain_tool.learning_rate(settings, 6) == pytest.approx(0.5)
    assert pretrain_tool.learning_rate(settings, 10) == pytest.approx(0.0)


def test_main_writes_weights_and_manifest_that_load_as_pretrained(tmp_path):
    output = tmp_path / "w" / "tiny.safetensors"
    args = ["--steps", "2", "--scenes-per-step", "1", "--warmup-steps", "1", "--input-size", "64",
            "--output", str(output),
            "--work-dir", str(tmp_path / "work")]
    assert pretrain_tool.main(args) == output
    manifest = json.loads(manifest_path(output).read_text())
    assert manifest["sha256"] == file_sha256(output)
    assert manifest["settings"]["steps"] == 2 and manifest["settings"]["scenes_per_step"] == 1
    trained = torch.load(tmp_path / "work" / "last_checkpoint.pth", weights_only=True)["model"]
    backbone = OpenCLIPBackbone(model_name=manifest["model_name"], pretrained=str(output))
    loaded = backbone.clip_model.state_dict()
    for name, tensor in trained.items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert torch.equal(loaded[name].float(), expected.float()), name


def test_a_full_image_region_embeds_like_the_whole_scene():
    model = pretrain_tool.build_model(FEW_STEPS).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    images = pretrain_tool.to_input(pixels, 96)
    masks = [np.ones((1, 96, 96), bool), np.stack([np.ones((96, 96), bool), np.zeros((96, 96), bool)])]
    logits = pretrain_tool.region_mask_logits(masks, 96)
    assert logits.shape == (2, 2, 96, 96) and bool((logits[0, 1] == -1).all())  # padding row
    with torch.no_grad():
        scenes, regions, non_empty = pretrain_tool.embed_scenes_and_regions(model, images, logits)
        expected = model.encode_image(images, normalize=True)
    assert non_empty.tolist() == [[True, False], [True, False]]
    torch.testing.assert_close(scenes, expected)
    # mask pooling over every cell is the global average pooling of CLIP's own image embedding
    torch.testing.assert_close(regions[:, 0], expected, rtol=1e-4, atol=1e-5)
