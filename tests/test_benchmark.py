"""tools/benchmark.py on the tiny config: the reported fields, the phases, the GPU options on CPU.

No timing is asserted: only that each phase was measured once per timed iteration and that the
derived numbers follow from the measured ones.
"""
import json

import pytest
import torch

from helpers.tiny import CONFIG_DIR, tiny_cfg
from helpers.tools import load_tool

TINY_DEARLI = str(CONFIG_DIR / "tiny_dearli.yaml")
TINY_SUPERVISED = str(CONFIG_DIR / "tiny_supervised.yaml")
REPORTED_FIELDS = {
    "task", "config_file", "opts", "device", "device_name", "precision", "torch_threads", "cpu_count",
    "iters", "warmup", "images_per_iter", "median_s_per_iter", "images_per_s", "peak_memory_mb",
    "peak_memory_kind", "phases",
}
benchmark = load_tool("benchmark")


def run_benchmark(task, tmp_path, *extra, config=TINY_DEARLI):
    out = tmp_path / f"{task}.json"
    result = benchmark.main(["--config-file", config, "--task", task, "--iters", "2", "--warmup", "1",
                             "--device", "cpu", "--json", str(out), *extra])
    assert json.loads(out.read_text()) == result
    return result


def _check_report(result, task, phases):
    assert set(result) == REPORTED_FIELDS
    assert (result["task"], result["iters"], result["warmup"], result["device"]) == (task, 2, 1, "cpu")
    assert list(result["phases"]) == phases
    for name, phase in result["phases"].items():
        assert phase["count"] == 2, name
        assert 0 <= phase["min_s"] <= phase["median_s"] <= phase["max_s"], name
    assert result["median_s_per_iter"] == result["phases"]["iteration"]["median_s"]
    assert result["images_per_s"] == pytest.approx(result["images_per_iter"] / result["median_s_per_iter"])
    assert result["peak_memory_kind"] == "cpu_peak_rss" and result["peak_memory_mb"] > 0


def test_infer_reports_data_and_model_time(tmp_path, capsys):
    result = run_benchmark("infer", tmp_path)
    _check_report(result, "infer", ["data", "model", "iteration"])
    assert result["images_per_iter"] == 1
    assert result["precision"] == "fp32"
    table = capsys.readouterr().out
    assert "| model " in table and "images/s" in table and "peak memory" in table


def test_train_reports_data_teacher_and_student_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative OUTPUT_DIR would land here
    result = run_benchmark("train", tmp_path)
    _check_report(result, "train", ["data", "teacher", "student", "iteration"])
    # tiny_dearli: 2 labeled crops (SOLVER.IMS_PER_BATCH) + 2 x UNLABELED_RATIO 1.0 unlabeled crops.
    assert result["images_per_iter"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["train.json"], "no checkpoints, logs or statistics"


def test_teacher_with_the_gpu_options_selected_on_cpu(tmp_path):
    opts = ["MODEL.OPEN_CLIP.CHANNELS_LAST", "True", "MODEL.SEM_SEG_HEAD.DEFORMABLE_CHECKPOINT", "True",
            "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "bf16"]
    result = run_benchmark("teacher", tmp_path, "--opts", *opts)
    _check_report(result, "teacher", ["data", "teacher", "iteration"])
    assert result["opts"] == opts
    assert result["precision"] == "fp32"  # autocast is a GPU path: CPU always runs fp32
    # 2 unlabeled crops per iteration, plus a CutMix partner for some of them.
    assert 2 <= result["images_per_iter"] <= 4


@pytest.mark.parametrize("args, message", [
    (["--task", "teacher", "--config-file", TINY_SUPERVISED], "it needs SSL.ENABLED True"),
    (["--task", "infer", "--config-file", TINY_DEARLI, "--opts", "DATASETS.TEST", "()"],
     "DATASETS.TEST[0], which is empty"),
    (["--task", "infer", "--config-file", TINY_DEARLI, "--iters", "0"], "--iters must be >= 1"),
    (["--task", "infer", "--config-file", TINY_DEARLI, "--count-syncs"], "it needs --task train, not infer"),
])
def test_bad_requests_are_clear_errors(capsys, args, message):
    if "--iters" not in args:
        args = args[:4] + ["--iters", "1"] + args[4:]
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        benchmark.main(["--config-file", TINY_DEARLI, "--task", "infer", "--iters", "1", "--device", "cuda"])
    assert "CUDA is not available; use --device cpu" in capsys.readouterr().err


def test_count_syncs_reports_per_iteration_counts_by_call_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_benchmark("train", tmp_path, "--count-syncs")
    counts = result["sync_count"]
    assert set(result) == REPORTED_FIELDS | {"sync_count"}
    assert counts["iterations"] == 2
    assert counts["syncs_per_iter"] == sum(counts["sync_kinds"].values()) / 2
    assert counts["ops_per_iter"] > 1000  # two forwards, a backward, the teacher and the optimizer
    # One host round trip per criterion call (labeled and pseudo-labeled): the assignment op.
    matcher_site = [site for site in counts["syncs_by_site"] if site.startswith("dearli/modeling/criterion.py")]
    assert counts["sync_kinds"]["dearli.hungarian_match"] == 2 * 2 and len(matcher_site) == 1
    # The losses are read once per iteration (finite check and metrics).
    assert counts["syncs_by_site"][next(s for s in counts["syncs_by_site"] if "losses_on_host" in s)] == 2
