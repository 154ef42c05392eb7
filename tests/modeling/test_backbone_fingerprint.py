"""Checkpoints record the frozen CLIP they were trained on; another CLIP is refused naming both, and a
model built only to load a checkpoint (eval-only, demo) rebuilds the checkpoint's random CLIP."""
import re

import pytest
import torch
from helpers.tiny import CONFIG_DIR, tiny_cfg
from helpers.tiny_weights import build_model_seeded_as_trained
from helpers.tools import load_tool

from dearli.engine.predictor import DEARLiPredictor
from dearli.engine.trainer import DEARLiTrainer
from dearli.modeling.checkpoint import DEARLiCheckpointer
from dearli.modeling.fingerprint import FINGERPRINT_KEY, BackboneMismatchError
from dearli.utils.hashing import file_sha256


def clip_tensors(model):
    return model.backbone.clip_model.state_dict()


def same_clip(a, b):
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.fixture(scope="module")
def seed2_checkpoint(tmp_path_factory):
    """A checkpoint of the tiny supervised model trained (here: built) with SEED 2."""
    folder = tmp_path_factory.mktemp("seed2")
    model = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised", SEED=2))
    DEARLiCheckpointer(model, save_dir=str(folder)).save("model_final")
    return folder / "model_final.pth", clip_tensors(model)


def test_checkpoint_records_seed_and_digest_of_its_random_clip(seed2_checkpoint):
    path, _ = seed2_checkpoint
    stored = torch.load(path, weights_only=True)[FINGERPRINT_KEY]
    model = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised", SEED=2))
    assert stored == model.backbone.frozen_fingerprint()
    assert stored["random_init_seed"] == 2 and stored["pretrained_sha256"] is None
    assert stored["model_name"] == "dearli_convnext_tiny_test"
    other = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised", SEED=1)).backbone.frozen_fingerprint()
    assert other["digest"] != stored["digest"]  # the digest tells the two random CLIPs apart


def test_loading_onto_another_frozen_clip_names_both(seed2_checkpoint):
    path, _ = seed2_checkpoint
    model = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised", SEED=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BackboneMismatchError) as error:
        DEARLiCheckpointer(model).load(str(path))
    message = str(error.value)
    assert re.search(rf"checkpoint {re.escape(str(path))} was trained on the frozen CLIP dearli_convnext_tiny_test "
                     r"randomly initialised with SEED 2 .*but this model's frozen CLIP is dearli_convnext_tiny_test "
                     r"randomly initialised with SEED 1", message), message
    assert "build the model with SEED 2" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_pretrained_fingerprint_is_the_weight_files_sha256(tmp_path):
    random_clip = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised")).backbone.clip_model
    weights = tmp_path / "clip.pt"
    torch.save(random_clip.state_dict(), weights)
    model = build_model_seeded_as_trained(tiny_cfg(name="tiny_supervised", **{"MODEL.OPEN_CLIP.PRETRAINED": str(weights)}))
    fingerprint = model.backbone.frozen_fingerprint()
    assert fingerprint["pretrained_sha256"] == file_sha256(weights) and fingerprint["random_init_seed"] is None


def test_predictor_rebuilds_the_checkpoints_clip_whatever_the_config_seed(seed2_checkpoint):
    path, trained_clip = seed2_checkpoint
    cfg = tiny_cfg(name="tiny_supervised", SEED=1, **{"MODEL.WEIGHTS": str(path)})
    assert not same_clip(clip_tensors(build_model_seeded_as_trained(cfg)), trained_clip)
    assert same_clip(clip_tensors(DEARLiPredictor(cfg).model), trained_clip)


def test_eval_only_under_another_seed_evaluates_the_trained_clip(seed2_checkpoint, tmp_path, monkeypatch):
    path, trained_clip = seed2_checkpoint
    evaluated = []
    monkeypatch.setattr(DEARLiTrainer, "test", classmethod(lambda cls, cfg, model, **kwargs: evaluated.append(model) or {}))
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", str(CONFIG_DIR / "tiny_supervised.yaml"), "--eval-only",
                                 "MODEL.WEIGHTS", str(path), "SEED", "1", "OUTPUT_DIR", str(tmp_path)])
    train_net.main(args)
    assert len(evaluated) == 1 and same_clip(clip_tensors(evaluated[0]), trained_clip)
