"""Weight files with a manifest load through MODEL.OPEN_CLIP.PRETRAINED after a sha256 check; bad
files fail with the file named and never fall back to random weights."""
import hashlib
import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from dearli.modeling.backbone.open_clip_backbone import OpenCLIPBackbone
from dearli.modeling.backbone.weight_manifest import (WEIGHTS_DIR, manifest_path, save_weights_with_manifest,
                                                      verify_weights_file)
from dearli.utils.hashing import file_sha256

MODEL = "dearli_convnext_tiny_shapes"
OTHER_MODEL = "dearli_convnext_tiny_test"


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(5)
    return open_clip.create_model(MODEL)


@pytest.fixture
def saved(tmp_path, reference_model):
    path = tmp_path / "tiny.safetensors"
    sha = save_weights_with_manifest(reference_model.state_dict(), path, MODEL, {"seed": 5})
    return path, sha


def test_manifest_records_the_file_hash_and_settings(saved):
    path, sha = saved
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["sha256"] == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["size_bytes"] == path.stat().st_size
    assert manifest["model_name"] == MODEL and manifest["dtype"] == "float16"
    assert manifest["settings"] == {"seed": 5}
    assert verify_weights_file(path, MODEL)["sha256"] == sha


def test_backbone_loads_the_half_precision_weights(saved, reference_model):
    path, _ = saved
    backbone = OpenCLIPBackbone(model_name=MODEL, pretrained=str(path))
    loaded = backbone.clip_model.state_dict()
    for name, tensor in reference_model.state_dict().items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        torch.testing.assert_close(loaded[name].float(), expected.float(), rtol=0, atol=0, msg=name)


def _flip_one_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_file_fails_the_sha256_check(saved, damage):
    path, sha = saved
    if damage == "flip":
        _flip_one_byte(path, path.stat().st_size - 10)
    else:
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError) as error:
        OpenCLIPBackbone(model_name=MODEL, pretrained=str(path))
    message = str(error.value)
    assert str(path) in message and "corrupted or truncated" in message
    assert file_sha256(path) in message and sha in message


def test_a_truncated_file_without_manifest_is_a_read_error_naming_it(saved):
    path, _ = saved
    manifest_path(path).unlink()
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match="could not load") as error:
        OpenCLIPBackbone(model_name=MODEL, pretrained=str(path))
    assert str(path) in str(error.value)


def test_a_manifest_of_another_model_is_refused(saved):
    path, _ = saved
    with pytest.raises(ValueError, match=f"holds weights of OpenCLIP model '{MODEL}'.*is '{OTHER_MODEL}'"):
        OpenCLIPBackbone(model_name=OTHER_MODEL, pretrained=str(path))


def test_weights_of_another_architecture_name_the_file_and_the_mismatching_keys(tmp_path):
    torch.manual_seed(0)
    other = open_clip.create_model(OTHER_MODEL)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(RuntimeError) as error:
        OpenCLIPBackbone(model_name=MODEL, pretrained=str(path))
    message = str(error.value)
    assert str(path) in message and MODEL in message
    # the text towers differ in context length and width (77 x 64 vs 32 x 32)
    assert "shape mismatches" in message
    assert "positional_embedding: file (77, 64) vs model (32, 32)" in message


def test_the_committed_weights_match_their_manifest():
    weights = WEIGHTS_DIR / f"{MODEL}.safetensors"
    manifest = verify_weights_file(weights, MODEL)
    assert manifest is not None and manifest["sha256"] == file_sha256(weights)
    assert weights.stat().st_size <= 5 * 1024 * 1024
