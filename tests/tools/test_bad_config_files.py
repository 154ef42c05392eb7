"""Config files cannot run code (Python YAML tags, also through _BASE_, in every tool); _BASE_ cycles
and bad list values are errors that name the file or key."""
import os
import re

import pytest
import yaml
from detectron2.config import get_cfg
from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

from dearli.config import add_dearli_config, load_config
from dearli.utils.safe_yaml import ConfigFileError

TINY_SUPERVISED = CONFIG_DIR / "tiny_supervised.yaml"


def write_payload_config(folder, marker):
    """A tiny config whose SEED line asks PyYAML to call os.system (it would create ``marker``)."""
    path = folder / "payload.yaml"
    path.write_text(f'_BASE_: "{TINY_SUPERVISED}"\n'
                    f'SEED: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path


REFUSAL = r"config file {path}, line 2: tag !!python/object/apply:os\.system is refused"


def assert_refused(error_text, path, marker):
    assert re.search(REFUSAL.format(path=re.escape(str(path))), error_text), error_text
    assert not marker.exists(), "the YAML payload ran"


def test_train_net_refuses_a_python_tag_naming_file_line_and_tag(tmp_path):
    marker = tmp_path / "marker"
    config = write_payload_config(tmp_path, marker)
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "1"])
    with pytest.raises(ConfigFileError) as error:
        train_net.main(args)
    assert_refused(str(error.value), config, marker)


def test_payload_in_a_base_file_is_refused_also_with_detectron2s_allow_unsafe(tmp_path):
    marker = tmp_path / "marker"
    base = write_payload_config(tmp_path, marker)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: payload.yaml\nSOLVER:\n  MAX_ITER: 1\n")
    with pytest.raises(ConfigFileError) as error:
        load_config(str(child))
    assert_refused(str(error.value), base, marker)
    cfg = get_cfg()  # Detectron2's own entry point, whose default is allow_unsafe=True
    add_dearli_config(cfg)
    with pytest.raises(ConfigFileError) as error:
        cfg.merge_from_file(str(child), allow_unsafe=True)
    assert_refused(str(error.value), base, marker)


def test_demo_refuses_the_payload_with_a_message(tmp_path, shared_data):
    marker = tmp_path / "marker"
    config = write_payload_config(tmp_path, marker)
    image = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[0]
    with pytest.raises(SystemExit) as error:
        load_tool("demo").main(["--config-file", str(config), "--input", str(image), "--output", str(tmp_path / "out")])
    assert str(error.value).startswith("error: ")
    assert_refused(str(error.value), config, marker)


def test_sam_generation_refuses_the_payload_in_its_config_file(tmp_path):
    marker = tmp_path / "marker"
    config = write_payload_config(tmp_path, marker)
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(SystemExit) as error:
        load_tool("generate_sam_pseudolabels").main(
            ["--images", str(images), "--output", str(tmp_path / "labels"), "--config-file", str(config),
             "--model-type", "dearli_tiny", "--device", "cpu", "--no-progress"])
    assert_refused(str(error.value), config, marker)


def test_base_pointing_to_itself_is_a_cycle_error(tmp_path):
    config = tmp_path / "self.yaml"
    config.write_text("_BASE_: self.yaml\nSEED: 3\n")
    with pytest.raises(ConfigFileError, match=re.escape(f"_BASE_ chain is a cycle: {config} -> {config}")):
        load_config(str(config))


def test_two_file_base_cycle_names_the_chain(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("_BASE_: b.yaml\n")
    second.write_text("_BASE_: [a.yaml]\n")
    with pytest.raises(ConfigFileError, match=re.escape(f"cycle: {first} -> {second} -> {first}")):
        load_config(str(first))


def test_missing_base_names_the_file_that_asks_for_it(tmp_path):
    config = tmp_path / "child.yaml"
    config.write_text("_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigFileError, match=re.escape(f"{tmp_path / 'nowhere.yaml'} (a _BASE_ of {config}) does not exist")):
        load_config(str(config))


def test_every_shipped_config_still_loads_and_equals_plain_yaml_merging():
    """The safe loader changes nothing for plain configs: a leaf value read from the file itself."""
    path = CONFIG_DIR / "tiny_dearli.yaml"
    cfg = load_config(str(path))
    raw = yaml.safe_load(path.read_text())
    assert cfg.SOLVER.MAX_ITER == raw["SOLVER"]["MAX_ITER"] and list(cfg.INPUT.CROP.SIZE) == raw["INPUT"]["CROP"]["SIZE"]
    for root, _, files in os.walk(CONFIG_DIR.parent):
        for name in files:
            if name.endswith(".yaml"):
                load_config(os.path.join(root, name))


def test_crop_size_with_one_value_names_the_key():
    with pytest.raises(ValueError, match=re.escape("INPUT.CROP.SIZE must have 2 items, got [64]")):
        load_config(str(TINY_SUPERVISED), ["INPUT.CROP.SIZE", "[64]"])


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.MIN_SIZE_TRAIN", "[]", "INPUT.MIN_SIZE_TRAIN must have at least one item, got []"),
    ("MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]", "MODEL.PIXEL_STD must hold positive numbers, got [1.0, 0.0, 1.0]"),
    ("INPUT.UNLABELED.CUTMIX_AREA", "[0.1]", "INPUT.UNLABELED.CUTMIX_AREA must have 2 items, got [0.1]"),
])
def test_other_list_keys_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(str(TINY_SUPERVISED), [key, value])


def test_training_without_labeled_datasets_names_the_key(tmp_path):
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", str(TINY_SUPERVISED), "DATASETS.TRAIN", "[]",
                                 "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "1"])
    with pytest.raises(ValueError, match=re.escape("DATASETS.TRAIN is empty: training needs at least one labeled dataset")):
        train_net.main(args)
