"""MSDeformAttnPixelDecoder on tiny features: shapes, config, gradients, checkpointing, fp32, errors."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from dearli.config import add_dearli_config
from dearli.modeling.pixel_decoder.pixel_decoder import MSDeformAttnPixelDecoder, pixel_centre_reference_points
from dearli.modeling.position_encoding import PositionEmbeddingSine

TINY_SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=16, stride=8),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=40, stride=32),
}


def tiny_cfg(**head_overrides):
    cfg = get_cfg()
    add_dearli_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    head.CONVS_DIM, head.MASK_DIM = 32, 16
    head.TRANSFORMER_ENC_LAYERS, head.DEFORMABLE_N_HEADS, head.DEFORMABLE_N_POINTS = 2, 4, 2
    head.DEFORMABLE_DIM_FEEDFORWARD = 48
    for key, value in head_overrides.items():
        setattr(head, key, value)
    return cfg


def tiny_features(batch=2, height=64, width=64, seed=0):
    """Backbone features of a height x width image."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride, generator=generator)
        for name, spec in TINY_SHAPES.items()
    }


def test_sine_encoding_matches_the_formula():
    height, width, feats = 2, 3, 4
    pos = PositionEmbeddingSine(feats)(torch.zeros(2, 5, height, width))
    assert pos.shape == (2, 2 * feats, height, width)
    for row in range(height):
        for col in range(width):
            y = (row + 1) / height * 2 * math.pi  # 1-based count / size, scaled to 2*pi
            x = (col + 1) / width * 2 * math.pi
            # channel pairs (2k, 2k+1) share the wavelength 10000^(2k/feats): 1, then 100.
            expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                        math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
            torch.testing.assert_close(pos[1, :, row, col], torch.tensor(expected), rtol=0, atol=1e-5)


def test_reference_points_are_pixel_centres_on_every_level():
    points = pixel_centre_reference_points([(1, 2), (2, 1)], "cpu")
    expected_xy = torch.tensor([[0.25, 0.5], [0.75, 0.5], [0.5, 0.25], [0.5, 0.75]])
    assert points.shape == (1, 4, 2, 2)
    torch.testing.assert_close(points[0], expected_xy[:, None, :].expand(4, 2, 2))


def test_built_from_config_gives_documented_shapes():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    assert len(decoder.transformer.encoder.layers) == 2
    # heads * levels * points * 2 offsets: the config's 4 heads and 2 points are used.
    assert decoder.transformer.encoder.layers[0].self_attn.sampling_offsets.out_features == 4 * 3 * 2 * 2
    assert decoder.transformer.encoder.layers[0].linear1.out_features == 48
    mask_features, multi_scale = decoder.forward_features(tiny_features(height=64, width=96))
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]


def test_gradients_reach_every_parameter():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    # Non-zero offset weights so that the offset and attention-weight layers see query-dependent input.
    for layer in decoder.transformer.encoder.layers:
        torch.nn.init.normal_(layer.self_attn.sampling_offsets.weight, std=0.05)
        torch.nn.init.normal_(layer.self_attn.attention_weights.weight, std=0.05)
    mask_features, multi_scale = decoder.forward_features(tiny_features())
    loss = mask_features.square().mean() + sum(f.square().mean() for f in multi_scale)
    loss.backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def clone_pair(**overrides):
    plain = MSDeformAttnPixelDecoder(tiny_cfg(**overrides), TINY_SHAPES)
    checkpointed = MSDeformAttnPixelDecoder(tiny_cfg(DEFORMABLE_CHECKPOINT=True, **overrides), TINY_SHAPES)
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


def test_activation_checkpointing_gives_identical_outputs_and_gradients():
    plain, checkpointed = clone_pair()
    calls = []
    checkpointed.transformer.encoder.layers[0].register_forward_pre_hook(lambda *args: calls.append(1))
    results = []
    for decoder in (plain, checkpointed):
        decoder.train()
        mask_features, multi_scale = decoder.forward_features(tiny_features())
        (mask_features.sin().sum() + sum(f.cos().sum() for f in multi_scale)).backward()
        grads = {name: p.grad for name, p in decoder.named_parameters()}
        results.append((mask_features, multi_scale, grads))
    assert len(calls) == 2, "a checkpointed layer starts once in forward and once more in backward"
    (mask_a, scales_a, grads_a), (mask_b, scales_b, grads_b) = results
    torch.testing.assert_close(mask_b, mask_a, rtol=0, atol=0)
    for a, b in zip(scales_a, scales_b):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-7, msg=name)


def test_follows_bf16_autocast_unless_fp32_is_asked():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES).eval()
    features = tiny_features(batch=1)
    with torch.no_grad():
        reference_mask, _ = decoder.forward_features(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask_features, multi_scale = decoder.forward_features(features)
    assert mask_features.dtype == torch.bfloat16 and all(f.dtype == torch.bfloat16 for f in multi_scale)
    torch.testing.assert_close(mask_features.float(), reference_mask, rtol=0.1, atol=0.1)


def test_runs_in_float32_under_bf16_autocast_with_fp32_pixel_decoder():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(FP32_PIXEL_DECODER=True), TINY_SHAPES).eval()
    features = tiny_features(batch=1)
    with torch.no_grad():
        reference_mask, reference_scales = decoder.forward_features(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mask_features, multi_scale = decoder.forward_features({k: v.bfloat16() for k, v in features.items()})
    assert mask_features.dtype == torch.float32 and all(f.dtype == torch.float32 for f in multi_scale)
    # Only the bf16 rounding of the inputs differs; no layer ran in bf16.
    torch.testing.assert_close(mask_features, reference_mask, rtol=0.05, atol=0.05)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        same_inputs_mask, _ = decoder.forward_features(features)
    assert torch.equal(same_inputs_mask, reference_mask)


def test_unknown_in_feature_is_named():
    cfg = tiny_cfg(IN_FEATURES=["res2", "res3", "res4", "res6"])
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.IN_FEATURES lists \['res6'\]"):
        MSDeformAttnPixelDecoder(cfg, TINY_SHAPES)


def test_encoder_feature_outside_the_inputs_is_named():
    cfg = tiny_cfg(IN_FEATURES=["res2", "res3", "res4"])
    with pytest.raises(ValueError, match=r"encoder features \['res5'\]"):
        MSDeformAttnPixelDecoder(cfg, TINY_SHAPES)


def test_empty_feature_map_is_reported():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    features = tiny_features(height=16, width=16)  # res5 of a 16-px image is 0 x 0
    with pytest.raises(ValueError, match=r"feature 'res5' is empty .*SIZE_DIVISIBILITY"):
        decoder.forward_features(features)
