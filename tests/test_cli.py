"""Where config overrides start on a command line (dearli/cli.py); the per-tool behaviour is in
tests/tools/test_tool_arguments.py."""
import argparse

import pytest

from dearli.cli import add_tool_arguments, check_overrides, is_config_key, parse_tool_args, split_overrides


@pytest.mark.parametrize("token, expected", [
    ("MODEL.WEIGHTS", True), ("SEED", True), ("SOLVER.AMP.ENABLED", True), ("OUTPUT_DIR", True),
    ("IMG_0001.JPG", False),  # upper-case file name, but IMG_0001 is not a top-level config key
    ("model.weights", False), ("MODEL.", False), ("m.pth", False), ("--opts", False),
])
def test_config_keys_are_upper_case_names_under_a_top_level_key(token, expected):
    assert is_config_key(token) is expected


@pytest.mark.parametrize("argv, expected", [
    (["--input", "a.jpg", "IMG_0001.JPG", "MODEL.WEIGHTS", "m.pth"],
     (["--input", "a.jpg", "IMG_0001.JPG"], ["MODEL.WEIGHTS", "m.pth"])),
    (["--json", "--opts", "SEED", "3"], (["--json"], ["SEED", "3"])),
    (["--json"], (["--json"], [])),
    (["SEED", "3", "--json"], ([], ["SEED", "3", "--json"])),  # the misplaced option is reported later
])
def test_split_at_opts_or_the_first_key(argv, expected):
    assert split_overrides(argv) == expected


@pytest.mark.parametrize("overrides", [
    [], ["SOLVER.BASE_LR", "-1e-3"], ["MODEL.OPEN_CLIP.PRETRAINED", ""], ["DATASETS.TEST", "('a',)"],
    ["SOLVER.BASE_LR", "-inf"],
])
def test_well_formed_pairs_pass(overrides):
    check_overrides(overrides)


def tool_parser():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--input", nargs="+")
    add_tool_arguments(parser)
    return parser


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--bogus", "SEED", "1"], "unrecognized arguments: --bogus"),
])
def test_bad_tool_arguments_exit_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_tool_args(tool_parser(), argv)
    assert exit_info.value.code == 2
    assert f"tool: error: {message}" in capsys.readouterr().err


def test_leftover_words_are_reported_as_overrides(capsys):
    with pytest.raises(SystemExit):
        parse_tool_args(tool_parser(), ["--threads", "1", "model.weights", "m.pth"])
    assert "expected a config KEY but got 'model.weights'" in capsys.readouterr().err
