"""Weight loading: round trips through Detectron2's checkpointers, the per-module report, wrong
prefixes, atomic writes, and reference checkpoints (manifests in ../shared/reference)."""
import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from dearli.config import add_dearli_config
from dearli.modeling.checkpoint import (
    DEARLiCheckpointer,
    convert_reference_state_dict,
    module_group,
    trainable_keys_missing_from,
    validate_dearli_keys,
)
from helpers.tiny import CONFIG_DIR as TINY_CONFIG_DIR
from helpers.tiny import tiny_cfg

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ("student", "teacher", "warmup")
PAPER_TRAINABLE = {"sem_seg_head.pixel_decoder": 5_544_384, "sem_seg_head.predictor": 14_805_889, "void_embedding": 640}
PAPER_DATASET = "dearli_test_paper_150_classes"


def _tiny_model(seed):
    torch.manual_seed(seed)
    return build_model(tiny_cfg())


@pytest.fixture(scope="module")
def tiny_models():
    return _tiny_model(0), _tiny_model(1)


def test_saved_checkpoint_loads_back_through_detectron2(tiny_models, tmp_path):
    source, target = tiny_models
    DEARLiCheckpointer(source, str(tmp_path)).save("model_final", iteration=7)
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
    assert any(not torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    extra = DetectionCheckpointer(target).load(str(tmp_path / "model_final.pth"))
    assert extra["iteration"] == 7
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
    assert not any(k.startswith("backbone.clip_model.") for k in source.state_dict())  # frozen: not stored


def test_report_groups_keys_by_module_and_skips_wrong_shapes(tiny_models, tmp_path):
    source, target = tiny_models
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("sem_seg_head.predictor.")}
    state["void_embedding.weight"] = torch.zeros(1, 32)
    state["criterion_labeled.empty_weight"] = torch.ones(10)
    torch.save({"model": state}, tmp_path / "partial.pth")
    checkpointer = DEARLiCheckpointer(target)
    checkpointer.load(str(tmp_path / "partial.pth"))
    report = checkpointer.last_load_report
    assert Counter(module_group(k) for k in report.missing) == {
        "sem_seg_head.predictor": sum(1 for k in source.state_dict() if k.startswith("sem_seg_head.predictor."))}
    assert [k for k, _, _ in report.wrong_shape] == ["void_embedding.weight"]
    assert report.unexpected == ["criterion_labeled.empty_weight"]
    assert {module_group(k) for k in report.matched} == {"sem_seg_head.pixel_decoder"}
    table = report.table()
    for group in ("sem_seg_head.pixel_decoder", "sem_seg_head.predictor", "void_embedding", "criterion_labeled"):
        assert group in table


def test_a_checkpoint_that_loads_no_trainable_parameter_fails(tiny_models, tmp_path):
    source, target = tiny_models
    path = tmp_path / "wrong_prefix.pth"
    torch.save({"model": {"student." + k: v for k, v in source.state_dict().items()}}, path)
    with pytest.raises(RuntimeError, match=r"wrong_prefix.pth.*loaded none of the model's .* trainable"):
        DEARLiCheckpointer(target).load(str(path))


def test_save_is_atomic(tiny_models, tmp_path, monkeypatch):
    source, _ = tiny_models
    checkpointer = DEARLiCheckpointer(source, str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def interrupted_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


# ---- reference checkpoints ---------------------------------------------------------------------

def _manifest(reference_manifests, kind):
    path = reference_manifests / f"dearli_{kind}_ade20k_state_dict.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    shape = lambda text: () if text == "scalar" else tuple(int(d) for d in text.split("x"))  # noqa: E731
    return [(name, shape(dims), grad == "True") for name, dims, _, grad, _ in rows]


def _random_state_dict(manifest):
    # Frozen CLIP entries as zero-stride views: the converter drops them, no need for 700 MB.
    return {
        name: torch.zeros(()).expand(shape) if name.startswith("backbone.clip_model.") else torch.randn(shape)
        for name, shape, _ in manifest
    }


@pytest.fixture(scope="module")
def paper_model():
    """The paper configuration (ConvNeXt-B CLIP, 200 queries, 150 classes) with random weights."""
    metadata = MetadataCatalog.get(PAPER_DATASET)
    if not metadata.get("stuff_classes", None):
        names = [f"class {i}" for i in range(150)]
        metadata.set(stuff_classes=names, thing_classes=names,
                     thing_dataset_id_to_contiguous_id={i: i for i in range(100)},
                     stuff_dataset_id_to_contiguous_id={i: i for i in range(150)})
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "ade20k" / "dearli_convnext_base_1_128.yaml"))
    cfg.merge_from_list(["MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "MODEL.CLIP_HEAD.CLASS_SYNONYMS", "",
                         "DATASETS.TRAIN", [PAPER_DATASET]])
    torch.manual_seed(0)
    return build_model(cfg)


def test_paper_model_names_shapes_and_trainable_counts_match_the_manifest(paper_model, reference_manifests):
    manifest = _manifest(reference_manifests, "student")
    clip = {"backbone.clip_model." + k: tuple(v.shape) for k, v in paper_model.backbone.clip_model.state_dict().items()}
    ours = {**clip, **{k: tuple(v.shape) for k, v in paper_model.state_dict().items()}}
    reference = {name: shape for name, shape, _ in manifest if not name.startswith("criterion")}
    assert ours == reference
    counts = Counter()
    for name, param in paper_model.named_parameters():
        if param.requires_grad:
            counts[module_group(name)] += param.numel()
    reference_counts = Counter()
    for name, shape, trainable in manifest:
        if trainable:
            reference_counts[module_group(name)] += torch.Size(shape).numel()
    assert counts == reference_counts == PAPER_TRAINABLE
    assert sum(p.numel() for p in paper_model.backbone.parameters()) == 179_385_345


@pytest.mark.parametrize("kind", MANIFESTS)
def test_converted_reference_state_dict_loads_with_no_missing_trainable_key(paper_model, reference_manifests, kind):
    state_dict = _random_state_dict(_manifest(reference_manifests, kind))
    converted, dropped = convert_reference_state_dict(state_dict)
    assert all(k.startswith(("backbone.clip_model.", "criterion")) for k in dropped)
    assert len(dropped) == len(state_dict) - 298
    incompatible = paper_model.load_state_dict(converted, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert trainable_keys_missing_from(paper_model, converted) == []
    assert torch.equal(paper_model.void_embedding.weight.detach(), converted["void_embedding.weight"])


def test_converter_rejects_foreign_keys_and_missing_modules():
    with pytest.raises(ValueError, match="no place.*sem_seg_head.classifier.weight"):
        validate_dearli_keys(["sem_seg_head.pixel_decoder.x", "sem_seg_head.predictor.y", "void_embedding.weight",
                              "sem_seg_head.classifier.weight"])
    with pytest.raises(ValueError, match="no tensors under.*predictor"):
        convert_reference_state_dict({"sem_seg_head.pixel_decoder.x": torch.zeros(1), "void_embedding.weight": torch.zeros(1)})


def test_conversion_tool_end_to_end_on_the_tiny_model(tiny_models, tmp_path):
    source, _ = tiny_models
    reference = {"module." + k: v for k, v in source.state_dict().items()}
    reference.update({"module.backbone.clip_model." + k: v for k, v in source.backbone.clip_model.state_dict().items()})
    reference["module.criterion_pseudolabeled.empty_weight"] = torch.ones(10)
    torch.save({"model": reference, "iteration": 3}, tmp_path / "reference.pth")
    spec = importlib.util.spec_from_file_location("convert_tool", REPO_ROOT / "tools" / "convert_reference_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([str(tmp_path / "reference.pth"), str(tmp_path / "converted.pth"),
               "--config-file", str(TINY_CONFIG_DIR / "tiny_dearli.yaml")])
    converted = torch.load(tmp_path / "converted.pth", weights_only=True)["model"]
    assert set(converted) == set(source.state_dict())
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        tool.main([str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")])
