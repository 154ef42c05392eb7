"""tools/activation_memory.py on the tiny config: saved bytes, scaling, and what checkpointing saves."""
import json

import pytest

from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

activation_memory = load_tool("activation_memory")
TINY = str(CONFIG_DIR / "tiny_dearli.yaml")


def test_scaled_estimate_follows_crops_and_pixels_and_checkpointing_saves_memory(tmp_path):
    out = tmp_path / "memory.json"
    args = ["--config-file", TINY, "--images", "1", "--size", "64", "--targets", "3"]
    plain = activation_memory.main(args + ["--scale-to-images", "4", "--scale-to-size", "128", "--json", str(out)])
    assert json.loads(out.read_text()) == plain
    assert plain["measured_gib"] > 0
    assert plain["scaled_gib"] == pytest.approx(plain["measured_gib"] * 4 * 4)  # 4 crops, 4x the pixels
    checkpointed = activation_memory.main(args + ["MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT", "True"])
    assert checkpointed["measured_gib"] < plain["measured_gib"]
    assert checkpointed["scaled_gib"] == checkpointed["measured_gib"]  # nothing to scale to
