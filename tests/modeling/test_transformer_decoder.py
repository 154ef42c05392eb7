"""MaskedAttentionDecoder: attention, masks, CLIP-space logits, shapes, gradients, reference names."""
import csv
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch.nn import functional as F

from dearli.config import add_dearli_config
from dearli.modeling.pixel_decoder.pixel_decoder import MSDeformAttnPixelDecoder
from dearli.modeling.text_classifier import max_over_synonyms, synonym_class_index, text_classifier_logits
from dearli.modeling.transformer_decoder import (
    FFNLayer,
    FusedMultiheadAttention,
    MaskedAttentionDecoder,
    attention_block_mask,
)

NUM_SYNONYMS = [1, 3, 2]  # 3 classes, 6 synonym rows (+ void)


def tiny_cfg(dec_layers=3):
    cfg = get_cfg()
    add_dearli_config(cfg)
    mask_former = cfg.MODEL.MASK_FORMER
    mask_former.HIDDEN_DIM, mask_former.NHEADS, mask_former.DIM_FEEDFORWARD = 32, 4, 64
    mask_former.NUM_OBJECT_QUERIES, mask_former.DEC_LAYERS = 8, dec_layers
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 16
    cfg.MODEL.CLIP_HEAD.EMBED_DIM = 24
    return cfg


def tiny_inputs(batch=2, seed=0):
    """Pixel-decoder outputs of a 64x64 image (strides 32, 16, 8 and 4) and a text classifier."""
    generator = torch.Generator().manual_seed(seed)
    multi_scale = [torch.randn(batch, 32, size, size, generator=generator) for size in (2, 4, 8)]
    mask_features = torch.randn(batch, 16, 16, 16, generator=generator)
    text_classifier = F.normalize(torch.randn(sum(NUM_SYNONYMS) + 1, 24, generator=generator), dim=-1)
    return multi_scale, mask_features, text_classifier


def test_fused_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    fused = FusedMultiheadAttention(16, 4)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    reference.load_state_dict(fused.state_dict())  # same names, so the state dict transfers
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    blocked = torch.rand(2, 5, 7) < 0.5
    blocked[..., 0] = False  # every query keeps at least one key
    expected, _ = reference(query, memory, memory, attn_mask=blocked.repeat_interleave(4, dim=0))
    torch.testing.assert_close(fused(query, memory, memory, blocked), expected, rtol=1e-5, atol=1e-6)


def test_block_mask_follows_the_previous_masks_and_unblocks_empty_rows():
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 1, :2, :2] = 5.0  # query 1: top-left 2x2 block is foreground
    logits[0, 2] = 5.0  # query 2: foreground everywhere
    # At 2x2, bilinear (align_corners=False) averages each 2x2 block exactly.
    blocked = attention_block_mask(logits, (2, 2))
    assert blocked.dtype == torch.bool and blocked.shape == (1, 3, 4)
    assert blocked[0, 0].tolist() == [False] * 4, "an all-background query is un-blocked, not starved"
    assert blocked[0, 1].tolist() == [False, True, True, True]
    assert blocked[0, 2].tolist() == [False] * 4
    half = torch.zeros(1, 1, 2, 2)
    half[0, 0, 0, 0] = -1e-3  # probability just below 0.5 is blocked, exactly 0.5 is not
    assert attention_block_mask(half, (2, 2))[0, 0].tolist() == [True, False, False, False]


def test_segment_max_equals_a_naive_per_class_max():
    torch.manual_seed(1)
    num_synonyms = [1, 3, 2, 4]
    row_logits = torch.randn(2, 5, sum(num_synonyms) + 1)
    naive, start = [], 0
    for count in num_synonyms:
        naive.append(row_logits[..., start:start + count].max(dim=-1).values)
        start += count
    naive.append(row_logits[..., -1])
    classes = synonym_class_index(num_synonyms, "cpu")
    assert torch.equal(max_over_synonyms(row_logits, classes, len(num_synonyms)), torch.stack(naive, dim=-1))


def test_logits_are_clamped_scaled_cosines():
    torch.manual_seed(2)
    embeddings = torch.randn(2, 3, 8) * 7.0
    classifier = F.normalize(torch.randn(4, 8), dim=-1)
    cosine = F.normalize(embeddings, dim=-1) @ classifier.t()
    # One class with rows 0-2, void row 3: class logit = scale * max cosine over rows 0-2.
    for theta, scale in [(math.log(5.0), 5.0), (math.log(1000.0), 100.0)]:
        logits = text_classifier_logits(embeddings, classifier, [3], torch.tensor(theta), 100.0)
        expected = scale * torch.stack([cosine[..., :3].max(-1).values, cosine[..., 3]], dim=-1)
        torch.testing.assert_close(logits, expected)


def test_text_classifier_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"text_classifier has shape \[5, 8\]; expected \[7, 8\]"):
        text_classifier_logits(torch.randn(1, 8), torch.randn(5, 8), [4, 2], torch.tensor(0.0), 100.0)
    with pytest.raises(ValueError, match="at least one synonym per class"):
        synonym_class_index([2, 0], "cpu")


@pytest.mark.parametrize("pre_norm", [False, True])
def test_norm_placement(pre_norm):
    # With the FFN's last layer zeroed the sub-layer adds nothing: post-norm then returns
    # LayerNorm(x), pre-norm returns x untouched (its norm only feeds the sub-layer).
    layer = FFNLayer(8, 16, normalize_before=pre_norm)
    torch.nn.init.zeros_(layer.linear2.weight)
    torch.nn.init.zeros_(layer.linear2.bias)
    x = torch.randn(2, 3, 8) * 4 + 1
    expected = x if pre_norm else F.layer_norm(x, (8,))
    torch.testing.assert_close(layer(x), expected)


def test_output_shapes_and_deep_supervision():
    decoder = MaskedAttentionDecoder(tiny_cfg(dec_layers=3), in_channels=32)
    assert len(decoder.transformer_cross_attention_layers) == 2
    torch.testing.assert_close(decoder.logit_scale.exp(), torch.tensor(1 / 0.07))
    outputs = decoder(*tiny_inputs(), NUM_SYNONYMS)
    assert outputs["pred_logits"].shape == (2, 8, 4)
    assert outputs["pred_masks"].shape == (2, 8, 16, 16)
    assert len(outputs["aux_outputs"]) == 2
    for aux in outputs["aux_outputs"]:
        assert aux.keys() == {"pred_logits", "pred_masks"}
        assert aux["pred_logits"].shape == (2, 8, 4) and aux["pred_masks"].shape == (2, 8, 16, 16)


def test_layers_read_scales_round_robin_with_masks_from_the_previous_prediction():
    decoder = MaskedAttentionDecoder(tiny_cfg(dec_layers=5), in_channels=32)
    seen = []
    for layer in decoder.transformer_cross_attention_layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append((args[1].shape[1], args[2])))
    outputs = decoder(*tiny_inputs(), NUM_SYNONYMS)
    predictions = outputs["aux_outputs"]
    assert [length for length, _ in seen] == [4, 16, 64, 4]  # strides 32, 16, 8, 32
    for layer, (length, blocked) in enumerate(seen):
        side = int(math.isqrt(length))
        assert torch.equal(blocked, attention_block_mask(predictions[layer]["pred_masks"], (side, side)))


def test_gradients_reach_every_parameter():
    decoder = MaskedAttentionDecoder(tiny_cfg(dec_layers=4), in_channels=32)  # 3 layers: all scales
    outputs = decoder(*tiny_inputs(), NUM_SYNONYMS)
    loss = sum(o["pred_logits"].sin().sum() + o["pred_masks"].cos().mean() for o in [outputs, *outputs["aux_outputs"]])
    loss.backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_input_projection_only_when_channels_differ():
    assert not any("input_proj" in name for name in MaskedAttentionDecoder(tiny_cfg(), in_channels=32).state_dict())
    decoder = MaskedAttentionDecoder(tiny_cfg(), in_channels=48)
    assert decoder.input_proj[0].weight.shape == (32, 48, 1, 1)
    multi_scale, mask_features, classifier = tiny_inputs()
    wide = [torch.randn(2, 48, *f.shape[-2:]) for f in multi_scale]
    assert decoder(wide, mask_features, classifier, NUM_SYNONYMS)["pred_logits"].shape == (2, 8, 4)


def read_manifest(reference_manifests, prefix):
    """{name without prefix: shape tuple} of the reference student's keys under ``prefix``."""
    with open(reference_manifests / "dearli_student_ade20k_state_dict.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return {
        row["name"][len(prefix):]: () if row["shape"] == "scalar" else tuple(int(d) for d in row["shape"].split("x"))
        for row in rows
        if row["name"].startswith(prefix)
    }


def paper_block(name):
    """Build the paper-config pixel decoder or predictor from the default config (no CLIP needed)."""
    cfg = get_cfg()
    add_dearli_config(cfg)
    if name == "pixel_decoder":
        channels = {"res2": 128, "res3": 256, "res4": 512, "res5": 1024}  # ConvNeXt-B CLIP
        convnext_base = {name: ShapeSpec(channels=c, stride=2 ** int(name[-1])) for name, c in channels.items()}
        return MSDeformAttnPixelDecoder(cfg, convnext_base)
    return MaskedAttentionDecoder(cfg, in_channels=cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM)


@pytest.mark.parametrize("name, parameters", [("pixel_decoder", 5_544_384), ("predictor", 14_805_889)])
def test_paper_config_matches_the_reference_manifest(name, parameters, reference_manifests):
    block = paper_block(name)
    assert sum(p.numel() for p in block.parameters()) == parameters
    ours = {key: tuple(value.shape) for key, value in block.state_dict().items()}
    reference = read_manifest(reference_manifests, f"sem_seg_head.{name}.")
    assert sorted(set(ours) - set(reference)) == [] and sorted(set(reference) - set(ours)) == []
    assert list(ours.items()) == list(reference.items()), "same shapes, in the reference state-dict order"
