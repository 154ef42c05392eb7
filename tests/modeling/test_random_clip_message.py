"""A random OpenCLIP model (empty MODEL.OPEN_CLIP.PRETRAINED) is reported once per process and
model, at INFO, naming the config key, instead of OpenCLIP's root-logger warning on every build."""
import logging

from dearli.modeling.backbone import open_clip_backbone
from dearli.modeling.backbone.open_clip_backbone import build_clip_model

TINY = "dearli_convnext_tiny_test"


def test_random_clip_is_one_info_line_naming_the_key(monkeypatch, caplog):
    monkeypatch.setattr(open_clip_backbone, "_random_models_reported", set())
    with caplog.at_level(logging.INFO):
        build_clip_model(TINY)
        build_clip_model(TINY)
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
    lines = [r for r in caplog.records if "MODEL.OPEN_CLIP.PRETRAINED" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].getMessage().startswith(f"MODEL.OPEN_CLIP.PRETRAINED is empty: OpenCLIP {TINY} has random weights")


def test_other_root_warnings_still_pass_after_a_build(caplog):
    build_clip_model(TINY)
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
    # The filter is removed once the build is over: the same warning from elsewhere still shows.
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "No pretrained weights loaded for model 'x'. Model initialized randomly."]
