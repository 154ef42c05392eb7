"""Every tool: trailing KEY VALUE overrides (and the --opts alias) reach the tool, malformed pairs
are clear errors, and --threads is applied to torch and exported for child processes.

Each tool's main entry point runs with its heavy part replaced by a recorder, so what is tested is
the tool's own argument handling up to the point where the work would start.
"""
import argparse
import os
from types import SimpleNamespace

import pytest
import torch

from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

TINY = str(CONFIG_DIR / "tiny_dearli.yaml")
PAIRS = ["MODEL.WEIGHTS", "m.pth", "SEED", "7"]


def seen_now(args=None, cfg=None):
    """What a tool had set up when its work would have started."""
    return SimpleNamespace(args=args, cfg=cfg, threads=torch.get_num_threads(),
                           env={name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})


def run_train_net(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("train_net"), []
    monkeypatch.setattr(tool, "launch", lambda main, n, args, **kw: seen.append(seen_now(args[0], tool.config_of(args[0]))))
    tool.cli(["--config-file", TINY, *extra])
    return seen[0]


def run_demo(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("demo"), []
    monkeypatch.setattr(tool, "run", lambda args, stems, classes: seen.append(seen_now(args, tool.setup_cfg(args))) or [])
    assert tool.main(["--config-file", TINY, "--input", "a.jpg", "b.jpg", "--output", str(tmp_path), *extra]) == 0
    return seen[0]


def run_benchmark(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("benchmark"), []

    def record(cfg, warmup, iters, timer):
        seen.append(seen_now(cfg=cfg))
        timer.add("iteration", 1.0)
        timer.images.append(1)

    monkeypatch.setattr(tool, "benchmark_infer", record)
    result = tool.main(["--config-file", TINY, "--task", "infer", "--iters", "1", "--device", "cpu", *extra])
    seen[0].args = SimpleNamespace(opts=result["opts"])
    return seen[0]


def run_visualize_data(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("visualize_data"), []
    monkeypatch.setattr(tool, "render", lambda cfg, args: seen.append(seen_now(args, cfg)) or {})
    tool.main(["--config-file", TINY, "--num", "1", "--output", str(tmp_path), *extra])
    return seen[0]


def run_generate_sam(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("generate_sam_pseudolabels"), []
    monkeypatch.setattr(tool, "_run", lambda args, argv: seen.append(seen_now(args, tool.load_config(args.config_file, args.opts))))
    tool.main(["--config-file", TINY, "--images", "a.jpg", "b.jpg", "--output", str(tmp_path), *extra])
    return seen[0]


def run_convert(monkeypatch, tmp_path, extra):
    tool, seen = load_tool("convert_reference_checkpoint"), []
    monkeypatch.setattr(tool, "load_reference_state_dict", lambda path, allow_pickle: {})
    monkeypatch.setattr(tool, "convert_reference_state_dict", lambda state_dict, keep_clip: ({}, []))
    monkeypatch.setattr(tool, "check_against_config", lambda config_file, path, opts: seen.append(
        seen_now(SimpleNamespace(opts=opts), tool.load_config(config_file, opts))))
    tool.main(["in.pth", str(tmp_path / "out.pth"), "--config-file", TINY, *extra])
    return seen[0]


RUNNERS = {"train_net": run_train_net, "demo": run_demo, "benchmark": run_benchmark,
           "visualize_data": run_visualize_data, "generate_sam_pseudolabels": run_generate_sam,
           "convert_reference_checkpoint": run_convert}


@pytest.mark.parametrize("tool", sorted(RUNNERS))
@pytest.mark.parametrize("style", ["trailing", "opts_alias"])
def test_overrides_reach_the_config(tool, style, monkeypatch, tmp_path):
    extra = PAIRS if style == "trailing" else ["--opts", *PAIRS]
    seen = RUNNERS[tool](monkeypatch, tmp_path, extra)
    assert list(seen.args.opts) == PAIRS
    assert (seen.cfg.MODEL.WEIGHTS, seen.cfg.SEED) == ("m.pth", 7)


@pytest.mark.parametrize("tool", sorted(RUNNERS))
def test_threads_are_applied_and_exported(tool, monkeypatch, tmp_path):
    torch.set_num_threads(1)
    seen = RUNNERS[tool](monkeypatch, tmp_path, ["--threads", "2"])
    assert seen.threads == 2
    assert seen.env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_demo_inputs_stop_at_the_first_config_key(monkeypatch, tmp_path):
    """--input takes several values; the trailing pairs are not swallowed as more images."""
    seen = run_demo(monkeypatch, tmp_path, PAIRS)
    assert seen.args.input == ["a.jpg", "b.jpg"]


def test_train_net_flags_before_pairs_still_parse(monkeypatch, tmp_path):
    seen = run_train_net(monkeypatch, tmp_path, ["--eval-only", "--threads", "1", *PAIRS])
    assert seen.args.eval_only and seen.args.threads == 1 and seen.args.opts == PAIRS


@pytest.mark.parametrize("tool", sorted(RUNNERS))
@pytest.mark.parametrize("pairs, message", [
    (["m.pth", "MODEL.WEIGHTS"], "wrong order: value 'm.pth' comes before config key MODEL.WEIGHTS; "
                                 "write KEY VALUE, e.g. MODEL.WEIGHTS m.pth"),
    (["MODEL.WEIGHTS", "m.pth", "SEED"], "config key SEED has no value; config overrides are KEY VALUE pairs"),
    (["MODEL.WEIGHTS", "SEED", "7"], "config key MODEL.WEIGHTS has no value"),
    (["SEED", "7", "--threads", "1"], "option --threads comes after the config overrides; put options before"),
    (["SEED", "7", "model.weights", "m.pth"], "expected a config KEY after SEED 7 but got 'model.weights'"),
])
def test_malformed_overrides_are_named(tool, pairs, message, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        RUNNERS[tool](monkeypatch, tmp_path, pairs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "odd length" not in err


def test_export_teacher_takes_threads_and_no_overrides(monkeypatch, tmp_path, capsys):
    tool, seen = load_tool("export_teacher"), []
    monkeypatch.setattr(tool, "export_teacher", lambda checkpoint, output: seen.append(seen_now()) or 3)
    torch.set_num_threads(1)
    assert tool.main(["ckpt.pth", "out.pth", "--threads", "2"]) == 0
    assert seen[0].threads == 2 and seen[0].env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(SystemExit):
        tool.main(["ckpt.pth", "out.pth", "SEED", "7"])
    assert "unrecognized arguments: SEED 7" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["demo", "benchmark"])
def test_help_describes_every_option(tool, capsys):
    parser = load_tool(tool).get_parser()
    undescribed = [action.option_strings or action.dest for action in parser._actions
                   if not action.help or action.help == argparse.SUPPRESS]
    assert undescribed == []
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--threads N" in help_text and "KEY VALUE" in help_text and "--opts" in help_text
