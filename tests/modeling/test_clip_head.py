"""CLIP classification head and the zero-shot branch: mask pooling, zero-shot logits, ensemble."""
import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_sem_seg_head

from dearli.modeling.backbone import OpenCLIPBackbone
from dearli.modeling.clip_head import CLIPClassificationHead
from dearli.modeling.text_classifier import (
    classifier_with_void,
    ensemble_class_scores,
    geometric_ensemble,
    mask_pool,
    zero_shot_logits,
)
from helpers.tiny import tiny_cfg


def direct_ensemble(z_in, z_out, alpha):
    """Spec §1.5 steps 5-7 written out with probabilities."""
    num_classes = z_in.shape[-1] - 1
    p_in = z_in[..., :num_classes].softmax(-1)
    p_out = z_out[..., :num_classes].softmax(-1)
    p_ens = p_in ** (1 - alpha) * p_out ** alpha
    p_ens = p_ens / p_ens.sum(-1, keepdim=True)
    p_void = z_in.softmax(-1)[..., -1:]
    return torch.log(torch.cat([(1 - p_void) * p_ens, p_void], -1) + 1e-8)


@pytest.fixture(scope="module")
def backbone():
    model = OpenCLIPBackbone(model_name="dearli_convnext_tiny_test")
    with torch.no_grad():
        model.clip_model.logit_scale.fill_(math.log(250.0))  # above the clamp of 100
    return model


# ---- geometric ensemble -------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.4, 0.0, 1.0])
@pytest.mark.parametrize("out_columns", ["C", "C+1"])
def test_geometric_ensemble_matches_the_direct_formula(alpha, out_columns):
    generator = torch.Generator().manual_seed(0)
    z_in = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64) * 4
    z_out = torch.randn(2, 3, 6 if out_columns == "C+1" else 5, generator=generator, dtype=torch.float64) * 4
    result = geometric_ensemble(z_in, z_out, alpha)
    assert result.shape == (2, 3, 6) and result.dtype == torch.float32
    torch.testing.assert_close(result, direct_ensemble(z_in, z_out, alpha).float())


def test_alpha_zero_is_the_in_vocabulary_softmax_with_void():
    z_in, z_out = torch.randn(4, 7, 11), torch.randn(4, 7, 11)
    torch.testing.assert_close(geometric_ensemble(z_in, z_out, 0.0), torch.log(z_in.softmax(-1) + 1e-8))


def test_void_probability_comes_from_the_in_vocabulary_branch():
    z_in = torch.tensor([[[1.0, 2.0, 0.5]]])
    z_out = torch.tensor([[[-3.0, 5.0, 100.0]]])  # its void column is ignored
    probs = geometric_ensemble(z_in, z_out, 0.4).exp()
    torch.testing.assert_close(probs[..., -1], z_in.softmax(-1)[..., -1], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 1), atol=1e-6, rtol=0)


def _reference_product_of_powers(z_in, z_out, alpha):
    """The reference's order of operations: (p_in^(1-a) * p_out^a).log(), re-softmaxed."""
    num_classes = z_in.shape[-1] - 1
    p_in, p_out = z_in[..., :num_classes].softmax(-1), z_out[..., :num_classes].softmax(-1)
    p_ens = (p_in ** (1 - alpha) * p_out ** alpha).log().softmax(-1)
    p_void = z_in.softmax(-1)[..., -1:]
    return torch.log(torch.cat([(1 - p_void) * p_ens, p_void], -1) + 1e-8)


def test_log_space_ensemble_is_the_product_of_powers_without_its_fp32_underflow():
    # Trained regime: both branches are cosines x 100 (clamped logit scale). Query 0: ordinary
    # cosines. Query 1: the decoder is sure of class 0 (cosine gap 1.2 -> p_in of the others
    # e^-120), CLIP of class 1 (gap 1.1 -> p_out of the others e^-110): below fp32's smallest
    # number (e^-103), so every fp32 product p_in^0.6 p_out^0.4 is 0 and its log-softmax is NaN.
    cos_in = torch.tensor([[[0.31, 0.22, 0.18, 0.0]], [[0.9, -0.3, -0.3, -0.5]]]).reshape(1, 2, 4)
    cos_out = torch.tensor([[[0.25, 0.28, 0.20]], [[-0.6, 0.5, -0.6]]]).reshape(1, 2, 3)
    z_in, z_out = 100 * cos_in, 100 * cos_out
    product_fp32 = _reference_product_of_powers(z_in, z_out, 0.4)
    product_fp64 = _reference_product_of_powers(z_in.double(), z_out.double(), 0.4).float()
    log_space = geometric_ensemble(z_in, z_out, 0.4)
    # Where fp32 represents the product, the two orders agree.
    torch.testing.assert_close(product_fp32[0, 0], log_space[0, 0])
    # Where it does not, the reference's order gives NaN; log space stays finite and equals the
    # same formula evaluated without underflow (float64).
    assert torch.isnan(product_fp32[0, 1, :3]).all()  # the class columns; void comes from z_in alone
    assert torch.isfinite(log_space).all()
    torch.testing.assert_close(log_space, product_fp64)


def test_geometric_ensemble_rejects_bad_shapes_and_alpha():
    with pytest.raises(ValueError, match="do not match"):
        geometric_ensemble(torch.randn(1, 2, 5), torch.randn(1, 2, 3), 0.4)
    with pytest.raises(ValueError, match="ENSEMBLE_ALPHA"):
        geometric_ensemble(torch.randn(1, 2, 5), torch.randn(1, 2, 5), 1.5)


# ---- mask pooling -------------------------------------------------------------------------------

def test_mask_pool_on_the_dense_grid_is_the_masked_mean():
    dense = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0 1 / 2 3, channel 1: 4 5 / 6 7
    logits = torch.tensor([[[[2.0, -1.0], [-1.0, 0.5]],   # top-left + bottom-right
                            [[-1.0, 3.0], [-2.0, -0.1]]]])  # top-right only
    pooled = mask_pool(dense, logits)
    torch.testing.assert_close(pooled, torch.tensor([[[1.5, 5.5], [1.0, 5.0]]]))


def test_mask_pool_resizes_logits_bilinearly_before_binarising():
    # Halving a 4x4 map bilinearly (align_corners=False) samples block centres: each output is
    # the mean of a 2x2 block, so the block means decide the binary mask.
    logits = torch.tensor([[[[1.0, 1.0, -5.0, -5.0],
                             [1.0, -2.5, -5.0, -5.0],     # block (0,0) mean 0.125 > 0
                             [-1.0, -1.0, 4.0, -1.0],
                             [-1.0, 0.5, -1.0, -1.0]]]])  # block (1,0) mean -0.625, (1,1) 0.25
    dense = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    torch.testing.assert_close(mask_pool(dense, logits), torch.tensor([[[25.0]]]))  # (10 + 40) / 2


def test_mask_pool_is_float32_under_autocast_and_detaches_masks():
    dense = torch.randn(1, 4, 3, 3).bfloat16()
    logits = torch.randn(1, 2, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = mask_pool(dense, logits)
    assert pooled.dtype == torch.float32 and pooled.grad_fn is None


def test_empty_mask_pools_to_zero_and_gives_a_uniform_zero_shot_distribution(backbone):
    head_norm = backbone.clip_model.visual.trunk.head.norm
    assert not head_norm.bias.any()  # random init: LayerNorm(0) = 0, so the CLIP embedding is 0
    dense = torch.randn(1, 320, 2, 2)
    empty = torch.full((1, 1, 8, 8), -1.0)
    assert not mask_pool(dense, empty).any()

    rows = F.normalize(torch.randn(4, 64), dim=-1)
    classifier = classifier_with_void(rows, torch.randn(1, 64))
    z_out = zero_shot_logits(backbone, dense, empty, classifier, [2, 1, 1])
    assert z_out.shape == (1, 1, 4)
    torch.testing.assert_close(z_out[..., :3].softmax(-1), torch.full((1, 1, 3), 1 / 3))
    z_in = torch.randn(1, 1, 4)
    expected = direct_ensemble(z_in, torch.zeros(1, 1, 3), 0.4)  # uniform p_out
    torch.testing.assert_close(geometric_ensemble(z_in, z_out, 0.4), expected)


# ---- zero-shot logits ---------------------------------------------------------------------------

def test_zero_shot_logits_match_a_hand_computation(backbone):
    generator = torch.Generator().manual_seed(1)
    dense = torch.randn(2, 320, 2, 3, generator=generator)
    mask_logits = torch.randn(2, 4, 8, 12, generator=generator)
    rows = F.normalize(torch.randn(5, 64, generator=generator), dim=-1)
    num_synonyms = [2, 1, 2]
    classifier = classifier_with_void(rows, torch.randn(1, 64, generator=generator))

    logits = zero_shot_logits(backbone, dense, mask_logits, classifier, num_synonyms)

    embeddings = F.normalize(backbone.visual_prediction_forward(mask_pool(dense, mask_logits)), dim=-1)
    cosine = embeddings @ classifier.T * 100.0  # exp(theta) = 250 is clamped to 100
    expected = torch.stack([cosine[..., 0:2].max(-1).values, cosine[..., 2],
                            cosine[..., 3:5].max(-1).values, cosine[..., 5]], dim=-1)
    torch.testing.assert_close(logits, expected)


# ---- the head -----------------------------------------------------------------------------------

def test_head_is_registered_and_returns_predictor_outputs(backbone):
    cfg = tiny_cfg()
    head = build_sem_seg_head(cfg, backbone.output_shape())
    assert isinstance(head, CLIPClassificationHead)
    assert {k.split(".")[0] for k in head.state_dict()} == {"pixel_decoder", "predictor"}

    features = backbone(torch.randn(2, 3, 64, 64))
    rows = F.normalize(torch.randn(9, 64), dim=-1)
    classifier = classifier_with_void(rows, torch.randn(1, 64))
    outputs = head(features, classifier, [1] * 9)
    assert outputs["pred_logits"].shape == (2, 16, 10)
    assert outputs["pred_masks"].shape == (2, 16, 16, 16)
    assert len(outputs["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1

    scores = ensemble_class_scores(backbone, features, outputs, classifier, [1] * 9, 0.4)
    z_out = zero_shot_logits(backbone, features["clip_vis_dense"], outputs["pred_masks"], classifier, [1] * 9)
    torch.testing.assert_close(scores, geometric_ensemble(outputs["pred_logits"], z_out, 0.4))


@pytest.mark.slow
def test_compiled_decoders_give_the_eager_outputs():
    """MODEL.COMPILE on the tiny model (aot_eager: traced graphs, no code generation)."""
    import copy

    from detectron2.modeling import build_model

    cfg = tiny_cfg(**{"MODEL.COMPILE.ENABLED": True, "MODEL.COMPILE.BACKEND": "aot_eager"})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    teacher_like = copy.deepcopy(model)  # compiled models stay deep-copyable (the teacher)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _, compiled_outputs = model.predict_raw(images)
        model.sem_seg_head.compile_backend = ""
        _, eager_outputs = model.predict_raw(images)
        _, copy_outputs = teacher_like.predict_raw(images)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(compiled_outputs[key], eager_outputs[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(copy_outputs[key], eager_outputs[key], rtol=1e-4, atol=1e-5)
    assert len(compiled_outputs["aux_outputs"]) == len(eager_outputs["aux_outputs"])
