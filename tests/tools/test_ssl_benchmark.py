"""tools/ssl_benchmark.py end to end on a tiny budget: stages, resumption, summaries, output folder.

The data is a tiny shapes set (4 labeled, 4 unlabeled, 2 val images of 64 px) registered in this
process and selected with trailing KEY VALUE overrides, as a user would select any dataset.
"""
import json
import os
import statistics

import pytest
from detectron2.engine import HookBase
from helpers.tools import load_tool

from dearli.config import load_config
from dearli.data.datasets.shapes import register_shapes
from dearli.engine import protocol, protocol_summary
from dearli.utils.output_dir import MANIFEST

bench = load_tool("ssl_benchmark")
PREFIX = "protocol_shapes"
STAGES = ("burn_in", "supervised_only", "semi_supervised")


@pytest.fixture(scope="module", autouse=True)
def tiny_shapes(tmp_path_factory):
    register_shapes(prefix=PREFIX, num_labeled=4, num_unlabeled=4, num_val=2, image_size=64,
                    cache_dir=tmp_path_factory.mktemp("shapes_cache"))


def argv(output_dir, *extra, seeds=("1",)):
    """A benchmark-preset run on shapes of 4 + 4 iterations, one evaluation per stage, checkpoints
    every 2, on the tiny shapes set."""
    return ["--preset", "benchmark", "--datasets", "shapes", "--evals-per-stage", "1",
            "--burn-in-iters", "4", "--branch-iters", "4", "--checkpoint-period", "2",
            "--workers", "0", "--visuals", "0", "--output-dir", str(output_dir), *extra, "--seeds", *seeds,
            "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TRAIN", f"('{PREFIX}_train_labeled',)", "DATASETS.TRAIN_UNLABELED", f"('{PREFIX}_train_unlabeled',)",
            "DATASETS.TEST", f"('{PREFIX}_val',)"]


def without_wall_time(summary_md):
    return summary_md.split(protocol_summary.WALL_TIME_HEADING)[0]


def results(output_dir, seed=1):
    return {stage: json.loads((output_dir / "shapes" / f"seed{seed}" / stage / "result.json").read_text())["metrics"]
            for stage in STAGES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run (into a folder that already holds a user's file, with --overwrite),
    with its summary as written right after it."""
    output = tmp_path_factory.mktemp("reference")
    (output / "notes.txt").write_text("mine")
    (output / "old").mkdir()
    (output / "old" / "keep.txt").write_text("also mine")
    assert bench.main(argv(output, "--overwrite", "--visuals", "1")) == 0
    return output, (output / "summary.md").read_text()


def test_each_stage_writes_its_config_results_and_pictures(reference):
    output, _ = reference
    seed_dir = output / "shapes" / "seed1"
    for stage in STAGES:
        files = {p.name for p in (seed_dir / stage).iterdir()}
        assert {"config.yaml", "result.json", "metrics.json", "model_final.pth", "last_checkpoint",
                "quality_curves.png"} <= files
        assert any(name.startswith("events.out.tfevents") for name in files)
        # Every stage's teacher is scored on the unlabeled images (all 4: fewer than the 16 asked).
        metrics = [json.loads(line) for line in (seed_dir / stage / "metrics.json").read_text().splitlines()]
        assert [r["iteration"] for r in metrics if "pseudo_quality/PQ" in r] == [4]
    assert sorted(p.name for p in (seed_dir / "visuals").iterdir()) == [
        "burn_in_val0.png", "pseudo_labels_0.png", "semi_supervised_val0.png", "supervised_only_val0.png"]
    burn_in, branch = (load_config(str(seed_dir / s / "config.yaml")) for s in ("burn_in", "semi_supervised"))
    assert (burn_in.SOLVER.MAX_ITER, burn_in.SSL.ENABLED, burn_in.SSL.PSEUDO_QUALITY_IMAGES) == (4, False, 16)
    assert burn_in.DATASETS.TRAIN_UNLABELED == (f"{PREFIX}_train_unlabeled",)  # read only by the quality hook
    assert (branch.SOLVER.MAX_ITER, branch.SSL.ENABLED, branch.SEED) == (4, True, 1)
    start = str(seed_dir / "burn_in" / "model_final.pth")
    assert branch.MODEL.WEIGHTS == branch.MODEL.TEACHER.WEIGHTS == start
    assert branch.DATASETS.TEST == (f"{PREFIX}_val",) and branch.SOLVER.IMS_PER_BATCH == 2


def test_nothing_of_the_users_is_deleted_by_overwrite(reference):
    output, _ = reference
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / "old" / "keep.txt").read_text() == "also mine"


def test_stage_config_reproduces_its_numbers_through_train_net_eval_only(reference, tmp_path):
    output, _ = reference
    stage = output / "shapes" / "seed1" / "semi_supervised"
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", str(stage / "config.yaml"), "--eval-only", "--eval-teacher",
                                 "MODEL.WEIGHTS", str(stage / "model_final.pth"), "OUTPUT_DIR", str(tmp_path)])
    again = train_net.main(args)
    recorded = results(output)["semi_supervised"]
    for model in (lambda r: r, lambda r: r["teacher"]):
        assert model(again)["panoptic_seg"] == pytest.approx(model(recorded)["panoptic_seg"], abs=0, nan_ok=True)
        assert model(again)["sem_seg"] == pytest.approx(model(recorded)["sem_seg"], abs=0, nan_ok=True)


def test_summary_holds_the_stage_results(reference):
    output, _ = reference
    summary = json.loads((output / "summary.json").read_text())["summary"]["shapes"]
    recorded = results(output)
    for stage in STAGES:
        assert summary[stage]["seeds"] == [1]
        for model, metrics in (("student", recorded[stage]), ("teacher", recorded[stage]["teacher"])):
            assert summary[stage][model]["PQ"] == {"mean": metrics["panoptic_seg"]["PQ"], "std": 0.0, "n": 1}
            assert summary[stage][model]["mIoU"]["mean"] == metrics["sem_seg"]["mIoU"]
    expected = recorded["semi_supervised"]["sem_seg"]["mIoU"] - recorded["supervised_only"]["sem_seg"]["mIoU"]
    assert summary["differences"]["semi_supervised"]["student"]["mIoU"]["mean"] == pytest.approx(expected)


def test_rerun_trains_nothing_and_writes_the_same_summary(reference, monkeypatch, capsys):
    output, summary = reference
    monkeypatch.setattr(protocol.ProtocolTrainer, "train", lambda self: pytest.fail("a finished stage was retrained"))
    assert bench.main(argv(output)) == 0
    assert (output / "summary.md").read_text() == summary
    assert summary in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_summary(reference, tmp_path, monkeypatch):
    _, summary = reference
    original_train, trained = protocol.ProtocolTrainer.train, []

    class Kill(HookBase):
        """Stops the process in the semi-supervised stage after iteration 2 (checkpoint after 1)."""

        def after_step(self):
            if self.trainer.cfg.SSL.ENABLED and self.trainer.iter == 2:
                raise KeyboardInterrupt

    def train_recording_start(self, kill):
        trained.append((os.path.basename(self.cfg.OUTPUT_DIR), self.start_iter))
        if kill:
            self.register_hooks([Kill()])
        return original_train(self)

    monkeypatch.setattr(protocol.ProtocolTrainer, "train", lambda self: train_recording_start(self, kill=True))
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv(tmp_path))
    assert not (tmp_path / "shapes" / "seed1" / "semi_supervised" / "result.json").exists()
    monkeypatch.setattr(protocol.ProtocolTrainer, "train", lambda self: train_recording_start(self, kill=False))
    assert bench.main(argv(tmp_path)) == 0
    # Finished stages are read back; the interrupted one resumes from its checkpoint at iteration 2.
    assert trained == [("burn_in", 0), ("supervised_only", 0), ("semi_supervised", 0), ("semi_supervised", 2)]
    # Its wall time counts both runs: the killed one and the one that finished it.
    resumed = json.loads((tmp_path / "shapes" / "seed1" / "semi_supervised" / "result.json").read_text())
    assert resumed["wall_seconds"] > resumed["seconds_of_last_run"] > 0
    # The same numbers; only the wall-time table (the last, measured per run) may differ.
    assert without_wall_time((tmp_path / "summary.md").read_text()) == without_wall_time(summary)


def test_summary_covers_every_finished_seed_in_the_folder(tmp_path, capsys):
    """Seed 1 finished by an 'earlier invocation' (hand-written results for the same configs), seed 3
    finished under other settings; this invocation trains seed 2."""
    config_of = bench.stage_config_factory(bench.parse_args(argv(tmp_path)))
    earlier = {"burn_in": 10.0, "supervised_only": 20.0, "semi_supervised": 26.0}
    for seed, digest_of in ((1, protocol.config_digest), (3, lambda cfg: "other settings")):
        for stage, value in earlier.items():
            cfg = config_of("shapes", seed, stage)
            os.makedirs(cfg.OUTPUT_DIR)
            metrics = {"panoptic_seg": {"PQ": value, "SQ": value, "RQ": value},
                       "sem_seg": {"mIoU": value, "IoU-circle": value}}
            with open(os.path.join(cfg.OUTPUT_DIR, "result.json"), "w") as f:
                json.dump({"metrics": dict(metrics, teacher=metrics), "config_sha256": digest_of(cfg)}, f)
    (tmp_path / MANIFEST).write_text(json.dumps({"tool": bench.TOOL, "settings": bench.pinned_settings(
        bench.parse_args(argv(tmp_path)))}))
    assert bench.main(argv(tmp_path, seeds=("2",))) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]["shapes"]
    now = results(tmp_path, seed=2)
    for stage, value in earlier.items():
        assert summary[stage]["seeds"] == [1, 2]
        pq = [value, now[stage]["panoptic_seg"]["PQ"]]
        assert summary[stage]["student"]["PQ"] == pytest.approx(
            {"mean": statistics.fmean(pq), "std": statistics.stdev(pq), "n": 2})
    differences = [26.0 - 20.0, now["semi_supervised"]["sem_seg"]["mIoU"] - now["supervised_only"]["sem_seg"]["mIoU"]]
    assert summary["differences"]["semi_supervised"]["teacher"]["mIoU"]["mean"] == pytest.approx(statistics.fmean(
        [26.0 - 20.0, now["semi_supervised"]["teacher"]["sem_seg"]["mIoU"]
         - now["supervised_only"]["teacher"]["sem_seg"]["mIoU"]]))
    assert summary["differences"]["semi_supervised"]["student"]["mIoU"]["std"] == pytest.approx(statistics.stdev(differences))
    out, err = capsys.readouterr()
    assert out.startswith("Preset benchmark: shapes, seeds [2]") and f"Logs: {tmp_path}/log.txt" in out
    assert "| burn-in (shared start) | student | 1, 2 |" in out
    for stage in ("burn-in (shared start)", "supervised-only", "semi-supervised"):
        assert f"shapes seed 2 {stage}: 100%|" in err and "4/4 [" in err  # the bars, with ETA fields
    assert f"evaluating on {PREFIX}_val:" in err
    assert (tmp_path / "log.txt").stat().st_size > 0


def test_a_foreign_non_empty_folder_is_refused_and_left_alone(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert bench.main(argv(tmp_path)) == 2
    assert capsys.readouterr().err == (
        f"tools/ssl_benchmark.py: error: {tmp_path} is not empty and was not written by tools/ssl_benchmark.py "
        f"(it has no {MANIFEST}): choose another --output-dir, or pass --overwrite to write into it anyway "
        "(nothing is deleted)\n")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_our_folder_with_other_settings_is_refused(reference, capsys):
    output, summary = reference
    before = sorted(p.name for p in output.rglob("*"))
    assert bench.main(argv(output, "--branch-iters", "5")) == 2
    assert "holds a tools/ssl_benchmark.py run with other settings (branch_iters: 4 there, 5 now)" in capsys.readouterr().err
    assert sorted(p.name for p in output.rglob("*")) == before and (output / "summary.md").read_text() == summary


def test_missing_camvid_names_the_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEARLI_CAMVID", str(tmp_path / "no_camvid"))
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--datasets", "camvid", "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"CamVid not found at {tmp_path / 'no_camvid'}: set DEARLI_CAMVID to the CamVid folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_names_every_data_location(capsys, monkeypatch):
    monkeypatch.setenv("DEARLI_CAMVID", "/data/camvid_here")
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    text = capsys.readouterr().out
    for variable in ("$DEARLI_CACHE", "$DEARLI_CAMVID", "$DETECTRON2_DATASETS", "$DEARLI_DATASET_CACHE"):
        assert variable in text
    assert "now /data/camvid_here" in text


@pytest.mark.parametrize("args, message", [
    (["SOLVER.BASE_LR"], "config key SOLVER.BASE_LR has no value"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--branch-iters", "0"], "--branch-iters must be >= 1, got 0"),
])
def test_bad_arguments_are_clear_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_presets_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "camvid" / "train").mkdir(parents=True)
    monkeypatch.setenv("DEARLI_CAMVID", str(tmp_path / "camvid"))
    demo = bench.parse_args(["--preset", "demo", "--seeds", "4", "5", "SOLVER.BASE_LR", "0.01"])
    assert (demo.datasets, demo.seeds, demo.warmup_iters, demo.burn_in_iters, demo.branch_iters, demo.visuals) == (
        ["shapes"], [4, 5], 200, 400, 300, 3)
    assert demo.opts == ["SOLVER.BASE_LR", "0.01"] and demo.threads == 1
    cfg = bench.stage_config_factory(demo)("shapes", 4, "dearli")  # DEARLi's path: tiny CLIP, from the warm-up
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.MODEL.TEACHER.EMA_DECAY, cfg.SEED) == (0.01, 4, 0.99, 4)
    assert cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA == 0.4 and cfg.MODEL.CLIP_HEAD.CLASS_EMBEDDING == "text"
    assert cfg.MODEL.WEIGHTS.endswith("shapes/seed4/sam_burn_in/model_final.pth") and cfg.SOLVER.MAX_ITER == 300
    benchmark = bench.parse_args(["--burn-in-iters", "7"])
    assert (benchmark.datasets, benchmark.seeds, benchmark.burn_in_iters, benchmark.evals_per_stage) == (
        ["shapes", "camvid"], [1, 2, 3], 7, 4)
