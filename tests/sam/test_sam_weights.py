"""The committed tiny-SAM weights and the checks on SAM weight files (dearli/sam/weights.py): manifest,
sha256, size, loading through build_sam, and the bad inputs (corrupted, truncated, other architecture)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dearli.sam.generator import build_sam
from dearli.sam.tiny import TINY_MODEL_TYPE, build_tiny_sam
from dearli.utils.hashing import file_sha256
from dearli.sam.weights import (
    TRAINED_TINY_SAM,
    SamCheckpointError,
    load_sam_state_dict,
    manifest_path,
    save_sam_weights,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import generate_sam_pseudolabels as generation_tool  # noqa: E402

MAX_COMMITTED_BYTES = 5 * 1024 * 1024


def _copy_with_manifest(tmp_path, name="copy.safetensors"):
    target = tmp_path / name
    shutil.copyfile(TRAINED_TINY_SAM, target)
    shutil.copyfile(manifest_path(TRAINED_TINY_SAM), manifest_path(target))
    return target


def test_committed_weights_are_small_tracked_and_vouched_for_by_their_manifest():
    manifest = json.loads(manifest_path(TRAINED_TINY_SAM).read_text())
    size = TRAINED_TINY_SAM.stat().st_size
    assert size <= MAX_COMMITTED_BYTES and manifest["size_bytes"] == size
    assert manifest["sha256"] == file_sha256(TRAINED_TINY_SAM)
    assert manifest["model_name"] == TINY_MODEL_TYPE and manifest["file"] == TRAINED_TINY_SAM.name
    assert manifest["settings"]["seed"] == 0 and manifest["settings"]["command"].startswith("python tools/pretrain_tiny_sam.py")
    # not hidden by .gitignore (*.pth / *.pt): it is part of a fresh clone
    for path in (TRAINED_TINY_SAM, manifest_path(TRAINED_TINY_SAM)):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert ignored.returncode == 1, f"{path} is git-ignored"


def test_build_sam_loads_the_trained_weights_exactly():
    model = build_sam(TINY_MODEL_TYPE, TRAINED_TINY_SAM)
    stored = load_file(str(TRAINED_TINY_SAM))
    random = build_tiny_sam().state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    assert not torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], random["mask_decoder.iou_token.weight"])


def test_flipped_byte_fails_the_sha256_check_naming_the_file(tmp_path):
    copy = _copy_with_manifest(tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # still a readable safetensors file: only the sha256 can tell
    copy.write_bytes(bytes(data))
    with pytest.raises(SamCheckpointError, match=rf"SAM checkpoint {copy} is corrupted or truncated: its sha256 is"):
        build_sam(TINY_MODEL_TYPE, copy)


def test_truncated_file_fails_with_or_without_manifest(tmp_path):
    copy = _copy_with_manifest(tmp_path)
    copy.write_bytes(copy.read_bytes()[:1000])
    with pytest.raises(SamCheckpointError, match=rf"{copy} is corrupted or truncated"):
        build_sam(TINY_MODEL_TYPE, copy)
    manifest_path(copy).unlink()
    with pytest.raises(SamCheckpointError, match=rf"cannot read SAM checkpoint {copy}"):
        load_sam_state_dict(copy)


def test_manifest_of_another_model_type_is_refused(tmp_path):
    copy = _copy_with_manifest(tmp_path)
    with pytest.raises(SamCheckpointError, match=rf"{copy} holds weights of model type 'dearli_tiny' .*not 'vit_b'"):
        build_sam("vit_b", copy)


def test_weights_of_another_architecture_name_the_file_and_the_keys(tmp_path):
    other = build_tiny_sam().state_dict()
    other["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)  # another width
    del other["mask_decoder.mask_tokens.weight"]
    other["extra.head.weight"] = torch.zeros(2)
    path = tmp_path / "other.safetensors"
    save_sam_weights(other, path, TINY_MODEL_TYPE, {"note": "not the tiny architecture"})
    with pytest.raises(SamCheckpointError) as e:
        build_sam(TINY_MODEL_TYPE, path)
    message = str(e.value)
    assert f"SAM checkpoint {path} does not fit model type 'dearli_tiny'" in message
    assert "1 missing keys (e.g. mask_decoder.mask_tokens.weight)" in message
    assert "1 unexpected keys (e.g. extra.head.weight)" in message
    assert "mask_decoder.iou_token.weight: checkpoint (1, 7) vs model (1, 48)" in message


def test_saved_weights_round_trip_in_half_precision(tmp_path):
    source = build_tiny_sam(seed=3).state_dict()
    path = tmp_path / "w.safetensors"
    sha256 = save_sam_weights(source, path, TINY_MODEL_TYPE, {"seed": 3})
    assert sha256 == file_sha256(path) == json.loads(manifest_path(path).read_text())["sha256"]
    loaded = build_sam(TINY_MODEL_TYPE, path).state_dict()
    for key, value in source.items():
        assert torch.equal(loaded[key], value.half().float()), key


def test_generation_tool_stops_on_a_corrupted_checkpoint(tmp_path):
    copy = _copy_with_manifest(tmp_path)
    copy.write_bytes(copy.read_bytes()[:-10])
    with pytest.raises(SystemExit, match=rf"error: SAM checkpoint {copy} is corrupted or truncated"):
        generation_tool.main(["--images", str(tmp_path), "--output", str(tmp_path / "labels"),
                              "--model-type", TINY_MODEL_TYPE, "--checkpoint", str(copy), "--device", "cpu"])
    assert not (tmp_path / "labels").exists()
