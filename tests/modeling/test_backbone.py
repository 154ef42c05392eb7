"""OpenCLIPBackbone: features, freezing, checkpoint contents, weight loading, bad input."""
import csv
import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from safetensors.torch import save_file
from torch import nn

from dearli.config import add_dearli_config
from dearli.modeling.backbone import OpenCLIPBackbone
from dearli.modeling.backbone.open_clip_backbone import resolve_pretrained_file

TINY = "dearli_convnext_tiny_test"


def tiny_backbone(**kwargs):
    return OpenCLIPBackbone(model_name=TINY, **kwargs)


class Holder(nn.Module):
    """A stand-in parent model: the backbone plus one trainable layer, named as in DEARLi."""

    def __init__(self, **backbone_kwargs):
        super().__init__()
        self.backbone = tiny_backbone(**backbone_kwargs)
        self.head = nn.Linear(4, 2)


def clip_tensors(backbone):
    return {k: v.clone() for k, v in backbone.clip_model.state_dict().items()}


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_features_have_strides_4_to_32_and_dense_clip_feature_is_res5():
    backbone = tiny_backbone()
    x = torch.randn(2, 3, 64, 96)
    features = backbone(x)
    assert sorted(features) == ["clip_vis_dense", "res2", "res3", "res4", "res5"]
    for name, spec in backbone.output_shape().items():
        assert features[name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride)
    assert [s.stride for s in backbone.output_shape().values()] == [4, 8, 16, 32]
    # timm's norm_pre is an identity for ConvNeXt CLIP models, so the dense feature equals res5.
    assert torch.equal(features["clip_vis_dense"], features["res5"])
    assert backbone.size_divisibility == -1
    assert backbone.embed_dim == 64


def test_frozen_backbone_has_no_grad_and_stays_in_eval_mode():
    holder = Holder()
    assert not any(p.requires_grad for p in holder.backbone.parameters())
    holder.train()
    assert holder.training and holder.backbone.training
    assert not any(m.training for m in holder.backbone.clip_model.modules())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert all(f.grad_fn is None for f in holder.backbone(x).values())


def test_unfrozen_backbone_trains_the_image_trunk_only():
    backbone = tiny_backbone(freeze=False)
    trainable = {n for n, p in backbone.clip_model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("visual.trunk.stem.", "visual.trunk.stages.")) for n in trainable)
    backbone.train()
    assert backbone.clip_model.visual.trunk.training
    backbone(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    assert backbone.clip_model.visual.trunk.stem[0].weight.grad.abs().sum() > 0


def test_frozen_clip_is_left_out_of_checkpoints_and_kept_on_load(tmp_path):
    source, target = Holder(), Holder()
    saved = source.state_dict()
    assert sorted(saved) == ["head.bias", "head.weight"]
    clip_before = clip_tensors(target.backbone)

    target.load_state_dict(saved, strict=True)  # strict: nothing reported missing
    assert_same_tensors(clip_tensors(target.backbone), clip_before)
    assert torch.equal(target.head.weight, source.head.weight)

    # The real Detectron2 path: save with DetectionCheckpointer, load into a third model.
    DetectionCheckpointer(source, save_dir=str(tmp_path)).save("model_final")
    third = Holder()
    third_clip = clip_tensors(third.backbone)
    DetectionCheckpointer(third).load(str(tmp_path / "model_final.pth"))
    assert torch.equal(third.head.weight, source.head.weight)
    assert_same_tensors(clip_tensors(third.backbone), third_clip)
    stored = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert not any("clip_model" in k for k in stored)


def test_trainable_clip_is_stored_and_clip_entries_in_a_checkpoint_are_loaded():
    trainable = Holder(freeze=False)
    saved = trainable.state_dict()
    clip_keys = {k for k in saved if k.startswith("backbone.clip_model.")}
    assert {"backbone.clip_model." + k for k in trainable.backbone.clip_model.state_dict()} == clip_keys

    frozen = Holder()
    version = frozen.backbone.clip_weights_version
    frozen.load_state_dict(saved, strict=True)
    assert_same_tensors(clip_tensors(frozen.backbone), clip_tensors(trainable.backbone))
    assert frozen.backbone.clip_weights_version == version + 1

    missing = trainable.load_state_dict({"head.weight": saved["head.weight"]}, strict=False).missing_keys
    assert clip_keys <= set(missing)  # a trainable CLIP absent from a checkpoint is reported


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_weights_from_a_local_file(tmp_path, suffix):
    source = tiny_backbone()
    weights = clip_tensors(source)
    path = tmp_path / f"clip{suffix}"
    if suffix == ".pt":
        torch.save(weights, path)
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    loaded = tiny_backbone(pretrained=str(path))
    assert_same_tensors(clip_tensors(loaded), weights)
    assert loaded.clip_weights_version == 1


def test_pretrained_file_of_another_model_names_the_file(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"not_a_clip_key": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="MODEL.OPEN_CLIP.PRETRAINED.*wrong.pt"):
        tiny_backbone(pretrained=str(path))


def test_missing_weight_file_names_path_and_key(tmp_path):
    path = tmp_path / "missing" / "clip.safetensors"
    with pytest.raises(FileNotFoundError, match=r"MODEL\.OPEN_CLIP\.PRETRAINED.*missing/clip\.safetensors"):
        tiny_backbone(pretrained=str(path))


def test_unknown_tag_lists_the_model_tags():
    with pytest.raises(ValueError, match="laion_aesthetic_s13b_b82k_augreg"):
        resolve_pretrained_file("convnext_base_w_320", "laion_typo")


def test_known_tag_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # An empty hub cache makes the outcome independent of what this machine downloaded before.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"MODEL\.OPEN_CLIP\.PRETRAINED.*local .*file"):
        resolve_pretrained_file("convnext_base_w_320", "laion_aesthetic_s13b_b82k_augreg")


def test_unknown_model_name_lists_close_names():
    with pytest.raises(ValueError, match=r"MODEL_NAME='convnext_base_w_32'.*convnext_base_w_320"):
        OpenCLIPBackbone(model_name="convnext_base_w_32")


def test_non_convnext_model_is_refused(tmp_path):
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "dearli_vit_refusal_test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    with pytest.raises(ValueError, match="ConvNeXt"):
        OpenCLIPBackbone(model_name="dearli_vit_refusal_test")


def test_input_smaller_than_the_stride_is_refused():
    with pytest.raises(ValueError, match="SIZE_DIVISIBILITY"):
        tiny_backbone()(torch.randn(1, 3, 16, 64))


def test_visual_prediction_forward_is_layer_norm_then_projection():
    backbone = tiny_backbone()
    with torch.no_grad():  # non-trivial norm parameters, so the check is not vacuous
        backbone.clip_model.visual.trunk.head.norm.weight.uniform_(0.5, 1.5)
        backbone.clip_model.visual.trunk.head.norm.bias.uniform_(-0.5, 0.5)
    pooled = torch.randn(2, 3, 320)
    norm = backbone.clip_model.visual.trunk.head.norm
    expected = F.layer_norm(pooled, (320,), norm.weight, norm.bias, norm.eps)
    expected = expected @ backbone.clip_model.visual.head.proj.weight.T
    torch.testing.assert_close(backbone.visual_prediction_forward(pooled), expected)


def test_text_tower_and_tokenizer_work_offline():
    backbone = tiny_backbone()
    tokens = backbone.tokenize(["a photo of a cat.", "There is a dog in the scene"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    expected = backbone.clip_model.encode_text(tokens, normalize=False)
    encoded = backbone.encode_text(tokens)
    torch.testing.assert_close(encoded, expected)
    assert encoded.grad_fn is None and encoded.shape == (2, 64)
    assert backbone.clip_logit_scale is backbone.clip_model.logit_scale


def test_weight_fingerprint_tracks_text_and_head_weights_only():
    first, second = tiny_backbone(), tiny_backbone()
    assert first.weight_fingerprint() == first.weight_fingerprint()
    assert first.weight_fingerprint() != second.weight_fingerprint()  # different random weights
    second.clip_model.load_state_dict(first.clip_model.state_dict())
    assert first.weight_fingerprint() == second.weight_fingerprint()
    with torch.no_grad():
        second.clip_model.visual.trunk.stages[0].blocks[0].conv_dw.weight.add_(1.0)
    assert first.weight_fingerprint() == second.weight_fingerprint()  # image trunk: not a key
    with torch.no_grad():
        second.clip_model.token_embedding.weight[0, 0] += 1.0
    assert first.weight_fingerprint() != second.weight_fingerprint()


def test_built_from_config_through_the_registry():
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = TINY
    cfg.MODEL.OPEN_CLIP.PRETRAINED = ""
    cfg.MODEL.OPEN_CLIP.FREEZE = False
    backbone = build_backbone(cfg)
    assert isinstance(backbone, OpenCLIPBackbone) and not backbone.freeze


def test_paper_backbone_matches_the_reference_manifest(reference_manifests):
    """convnext_base_w_320 with random weights: every backbone.clip_model.* name and shape of the
    reference student checkpoint, in order, and the feature channels the pixel decoder expects."""
    with (reference_manifests / "dearli_student_ade20k_state_dict.tsv").open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["name"].startswith("backbone.clip_model.")]
    backbone = OpenCLIPBackbone(model_name="convnext_base_w_320")
    ours = [(f"backbone.clip_model.{k}", "x".join(map(str, v.shape)) or "scalar")
            for k, v in backbone.clip_model.state_dict().items()]
    assert ours == [(r["name"], r["shape"]) for r in rows]
    assert len(ours) == 493
    assert not any(p.requires_grad for p in backbone.parameters())
    assert [s.channels for s in backbone.output_shape().values()] == [128, 256, 512, 1024]
    assert backbone.embed_dim == 640
    assert backbone.tokenize(["a photo of a wall."]).shape == (1, 77)  # no download needed


def test_channels_last_changes_the_layout_not_the_features():
    from detectron2.modeling import build_model

    from helpers.tiny import tiny_cfg

    torch.manual_seed(0)
    plain = build_model(tiny_cfg()).eval()
    torch.manual_seed(0)
    nhwc = build_model(tiny_cfg(MODEL__OPEN_CLIP__CHANNELS_LAST=True)).eval()
    stem_weight = nhwc.backbone.clip_model.visual.trunk.stem[0].weight
    assert stem_weight.is_contiguous(memory_format=torch.channels_last) and not stem_weight.is_contiguous()
    assert plain.backbone.clip_model.visual.trunk.stem[0].weight.is_contiguous()
    images = torch.randn(1, 3, 64, 96)
    expected = plain.backbone(images)
    for name, feature in nhwc.backbone(images).items():
        assert feature.shape == expected[name].shape
        assert torch.allclose(feature, expected[name], atol=1e-5), name
