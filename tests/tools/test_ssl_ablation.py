"""tools/ssl_benchmark.py --preset ablation: the table's stage configs, a tiny run of a table with
a warm-up (stage layout, --stages, resumption, summary), and the tiny-SAM labels it generates first.

The tiny run swaps the preset's table for one of the same shape on the fast random tiny config and
a tiny shapes set (4 labeled, 4 unlabeled, 2 val images of 64 px), with ORACLE proposals for the
warm-up (the real table's SAM labels take minutes to generate; their step is tested on its own).
"""
import json
import os
import subprocess

import pytest
from detectron2.data import DatasetCatalog
from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

from dearli.config import load_config
from dearli.data.datasets.sam_images import register_images_of_datasets, register_oracle_dataset
from dearli.data.datasets.shapes import register_shapes
from dearli.data.sam_format import record_path
from dearli.engine import protocol
from dearli.engine.protocol import BURN_IN, WARM_UP, Stage, Table
from dearli.engine.protocol_tables import ABLATION_SHAPES, SAM_WARMUP, TINY_SAM_LABELS

bench = load_tool("ssl_benchmark")
PREFIX = "ablation_shapes"
TINY = str(CONFIG_DIR / "tiny_dearli.yaml")
TINY_WARMUP = str(CONFIG_DIR / "tiny_warmup.yaml")
NO_ENSEMBLE = ("MODEL.CLIP_HEAD.ENSEMBLE_ALPHA", "0.0")
TINY_TABLE = Table((
    Stage("burn_in", "burn-in (shared start)", BURN_IN, config_file=TINY),
    Stage("supervised_only", "supervised-only", start="burn_in", config_file=TINY, short="supervised"),
    Stage("mean_teacher", "mean teacher", semi_supervised=True, start="burn_in", config_file=TINY,
          overrides=NO_ENSEMBLE + ("MODEL.TEACHER.EMA_DECAY", "0.9")),
    Stage("oracle_warmup", "warm-up on oracle proposals", WARM_UP, config_file=TINY_WARMUP,
          overrides=("DATASETS.TRAIN", f"('{PREFIX}_sam_oracle_train',)")),
    Stage("oracle_burn_in", "burn-in after the warm-up", BURN_IN, start="oracle_warmup", config_file=TINY),
    Stage("dearli_oracle", "DEARLi, oracle", semi_supervised=True, start="oracle_burn_in", config_file=TINY),
))


@pytest.fixture(scope="module", autouse=True)
def tiny_shapes(tmp_path_factory):
    register_shapes(prefix=PREFIX, num_labeled=4, num_unlabeled=4, num_val=2, image_size=64,
                    cache_dir=tmp_path_factory.mktemp("shapes_cache"))
    sources = (f"{PREFIX}_train_labeled", f"{PREFIX}_train_unlabeled")
    register_oracle_dataset(f"{PREFIX}_sam_oracle_train", sources)
    register_images_of_datasets(f"{PREFIX}_sam_train", sources)


def argv(output_dir, *extra):
    return ["--preset", "ablation", "--warmup-iters", "2", "--burn-in-iters", "2", "--branch-iters", "2",
            "--evals-per-stage", "1", "--checkpoint-period", "2", "--workers", "0", "--seeds", "1",
            "--output-dir", str(output_dir), "--no-progress", *extra, "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TRAIN", f"('{PREFIX}_train_labeled',)", "DATASETS.TRAIN_UNLABELED", f"('{PREFIX}_train_unlabeled',)",
            "DATASETS.TEST", f"('{PREFIX}_val',)"]


def test_ablation_preset_stage_configs(tmp_path):
    args = bench.parse_args(["--preset", "ablation", "--output-dir", str(tmp_path)])
    assert (args.datasets, args.seeds, args.warmup_iters, args.burn_in_iters, args.branch_iters) == (
        ["shapes"], [1, 2, 3], 300, 600, 600)
    config_of = bench.stage_config_factory(args)
    cfg = {s.name: config_of("shapes", 2, s.name) for s in ABLATION_SHAPES.stages}
    seed_dir = tmp_path / "shapes" / "seed2"
    for stage in ABLATION_SHAPES.stages:
        c = cfg[stage.name]
        assert c.OUTPUT_DIR == str(seed_dir / stage.name) and c.SEED == 2
        assert c.MODEL.OPEN_CLIP.MODEL_NAME == "dearli_convnext_tiny_shapes"  # every row: the tiny CLIP trained here
        assert c.SOLVER.MAX_ITER == {WARM_UP: 300, BURN_IN: 600, "branch": 600}[stage.role]
        start = str(seed_dir / stage.start / "model_final.pth") if stage.start else ""
        assert c.MODEL.WEIGHTS == start
        assert c.SSL.ENABLED == stage.semi_supervised
        warm_up = stage.role == WARM_UP
        assert (c.MODEL.SEM_SEG_HEAD.NUM_CLASSES, c.DATASETS.TEST, c.SSL.PSEUDO_QUALITY_IMAGES) == (
            (1, (), 0) if warm_up else (9, ("dearli_shapes_val",), 16))
    alphas = {name: cfg[name].MODEL.CLIP_HEAD.ENSEMBLE_ALPHA for name in cfg if cfg[name].MODEL.SEM_SEG_HEAD.NUM_CLASSES > 1}
    assert alphas == {"burn_in": 0.0, "supervised_only": 0.0, "mean_teacher": 0.0, "dear": 0.4,
                      "dear_definitions": 0.4, "dear_dense": 0.4, "dear_tags": 0.4, "sam_burn_in": 0.4, "dearli": 0.4,
                      "dearli_refined": 0.4, "oracle_burn_in": 0.4, "dearli_oracle": 0.4}
    assert (cfg["sam_warmup"].DATASETS.TRAIN, cfg["sam_warmup"].SAM.LABEL_DIR) == (("dearli_shapes_sam_train",), TINY_SAM_LABELS)
    assert cfg["oracle_warmup"].DATASETS.TRAIN == ("dearli_shapes_sam_oracle_train",)
    assert cfg["dearli"].MODEL.TEACHER.WEIGHTS == str(seed_dir / "sam_burn_in" / "model_final.pth")
    # SAM refinement: DEARLi's row with SSL.SAM_REFINE on, reading the warm-up's tiny-SAM cache.
    refined, dearli = cfg["dearli_refined"].clone(), cfg["dearli"].clone()
    assert (refined.SSL.SAM_REFINE.ENABLED, refined.SSL.SAM_REFINE.LABEL_DIR) == (True, TINY_SAM_LABELS)
    assert not dearli.SSL.SAM_REFINE.ENABLED and refined.MODEL.WEIGHTS == dearli.MODEL.WEIGHTS
    # The Li rows differ from DEAR only in their start (MODEL.WEIGHTS, MODEL.TEACHER.WEIGHTS).
    for li_row in ("dearli", "dearli_oracle"):
        li, dear = cfg[li_row].clone(), cfg["dear"].clone()
        for c in (li, dear):
            c.defrost()
            c.MODEL.WEIGHTS = c.MODEL.TEACHER.WEIGHTS = c.OUTPUT_DIR = ""
        assert li.dump() == dear.dump()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """--stages dearli_oracle, then every stage, then a rerun; the stages each invocation trained."""
    output = tmp_path_factory.mktemp("ablation")
    patch = pytest.MonkeyPatch()
    patch.setitem(bench.TABLES, "ablation", {"shapes": TINY_TABLE, "camvid": TINY_TABLE})
    trained, original_train = [], protocol.ProtocolTrainer.train

    def train_recorded(self):
        trained[-1].append(os.path.basename(self.cfg.OUTPUT_DIR))
        return original_train(self)

    patch.setattr(protocol.ProtocolTrainer, "train", train_recorded)
    summaries = []
    try:
        for extra in (("--stages", "dearli_oracle"), (), ()):
            trained.append([])
            assert bench.main(argv(output, *extra)) == 0
            summaries.append((output / "summary.md").read_text())
    finally:
        patch.undo()
    return output, trained, summaries


def test_stages_runs_the_rows_asked_and_their_starts_and_a_rerun_trains_nothing(tiny_run):
    _, trained, summaries = tiny_run
    assert trained == [["oracle_warmup", "oracle_burn_in", "dearli_oracle"],
                       ["burn_in", "supervised_only", "mean_teacher"], []]
    assert summaries[2] == summaries[1]


def test_each_row_writes_a_config_that_reproduces_its_overrides_and_start(tiny_run):
    output, _, _ = tiny_run
    seed_dir = output / "shapes" / "seed1"
    for stage in TINY_TABLE.stages:
        written = load_config(str(seed_dir / stage.name / "config.yaml"))
        for key, value in zip(stage.overrides[::2], stage.overrides[1::2]):
            expected = load_config(stage.config_file, [key, value])
            node_written, node_expected = written, expected
            for part in key.split("."):
                node_written, node_expected = node_written[part], node_expected[part]
            assert node_written == node_expected, (stage.name, key)
        start = str(seed_dir / stage.start / "model_final.pth") if stage.start else ""
        assert (written.MODEL.WEIGHTS, written.SSL.ENABLED, written.SOLVER.MAX_ITER) == (start, stage.semi_supervised, 2)
    assert load_config(str(seed_dir / "mean_teacher" / "config.yaml")).MODEL.TEACHER.EMA_DECAY == 0.9
    assert load_config(str(seed_dir / "supervised_only" / "config.yaml")).MODEL.TEACHER.EMA_DECAY == 0.99  # the recipe's


def test_results_hold_wall_time_and_final_pseudo_label_quality(tiny_run):
    output, _, _ = tiny_run
    seed_dir = output / "shapes" / "seed1"
    for stage in TINY_TABLE.stages:
        result = json.loads((seed_dir / stage.name / "result.json").read_text())
        assert result["wall_seconds"] >= result["seconds_of_last_run"] > 0
        if stage.role == WARM_UP:
            assert result["metrics"] == {} and result["pseudo_quality"] == {}
            continue
        records = [json.loads(line) for line in (seed_dir / stage.name / "metrics.json").read_text().splitlines()]
        last = [r for r in records if "pseudo_quality/PQ" in r][-1]
        assert result["pseudo_quality"] == {k: last[f"pseudo_quality/{k}"] for k in ("PQ", "SQ", "RQ", "mIoU", "coverage")}


def test_summary_pairs_every_branch_with_supervised_only(tiny_run):
    output, _, summaries = tiny_run
    summary = json.loads((output / "summary.json").read_text())["summary"]["shapes"]

    def student(stage, metric):
        metrics = json.loads((output / "shapes" / "seed1" / stage / "result.json").read_text())["metrics"]
        return metrics["panoptic_seg"][metric] if metric == "PQ" else metrics["sem_seg"][metric]

    for branch in ("mean_teacher", "dearli_oracle"):
        for metric in ("PQ", "mIoU"):
            assert summary["differences"][branch]["student"][metric]["mean"] == pytest.approx(
                student(branch, metric) - student("supervised_only", metric))
    assert "oracle_warmup" in summary and "student" not in summary["oracle_warmup"]
    assert "| **difference** (DEARLi, oracle - supervised, paired) | student | 1 |" in summaries[1]
    assert "| warm-up on oracle proposals | 1 |" in summaries[1]  # its wall time


@pytest.fixture
def sam_stage(tmp_path):
    """A warm-up config reading tiny-SAM labels of the 8 tiny training images from a missing folder."""
    label_dir = tmp_path / "labels" / "dearli_tiny" / "points_per_side_16_pred_iou_thresh_0.5_stability_score_thresh_0.8"
    return load_config(SAM_WARMUP, ["DATASETS.TRAIN", f"('{PREFIX}_sam_train',)", "SAM.LABEL_DIR", str(label_dir)])


def test_missing_sam_labels_run_the_generator_and_fail_clearly_if_it_leaves_gaps(sam_stage, monkeypatch, capsys):
    commands = []
    def run(command, cwd):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)  # a generator that wrote nothing

    monkeypatch.setattr(bench.subprocess, "run", run)
    with pytest.raises(SystemExit) as exit_info:
        bench.prepare_sam_labels(sam_stage, threads=1)
    label_dir = sam_stage.SAM.LABEL_DIR
    assert str(exit_info.value) == (f"tools/ssl_benchmark.py: error: 8 of 8 images still have no pseudo-label in {label_dir} "
                                    "(generator exit code 0); rerun the command above, then this one")
    assert commands[0][1:] == [bench.GENERATOR, "--dataset", f"{PREFIX}_sam_train", "--output",
                               os.path.dirname(os.path.dirname(label_dir)), "--model-type", "dearli_tiny", "--checkpoint",
                               "dearli/weights/dearli_tiny_sam_shapes.safetensors", "--points-per-side", "16",
                               "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8", "--threads", "1", "--no-progress"]
    assert "8 of 8 images have no pseudo-label in" in capsys.readouterr().out


def test_complete_sam_labels_are_not_regenerated(sam_stage, monkeypatch):
    for record in DatasetCatalog.get(f"{PREFIX}_sam_train"):
        path = record_path(sam_stage.SAM.LABEL_DIR, record["sam_key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    generator_calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: generator_calls.append(a))
    bench.prepare_sam_labels(sam_stage, threads=1)
    assert generator_calls == []  # complete labels: the generator is never started
    records = DatasetCatalog.get(f"{PREFIX}_sam_train")
    assert all(record_path(sam_stage.SAM.LABEL_DIR, r["sam_key"]).read_text() == "{}" for r in records)


def test_a_label_folder_the_generator_cannot_write_is_refused(sam_stage):
    cfg = sam_stage.clone()
    cfg.SAM.LABEL_DIR = os.path.join(os.path.dirname(cfg.SAM.LABEL_DIR), "my_labels")
    settings = "dearli_tiny/points_per_side_16_pred_iou_thresh_0.5_stability_score_thresh_0.8"
    with pytest.raises(SystemExit, match=f"is not <root>/{settings}"):
        bench.prepare_sam_labels(cfg, threads=1)


@pytest.mark.parametrize("args, message", [
    (["--stages", "dearli", "nothing"], "--stages nothing: no such stage in the ablation preset"),
    (["--warmup-iters", "0"], "--warmup-iters must be >= 1, got 0"),
    (["--preset", "benchmark", "--warmup-iters", "5"], "--warmup-iters: the benchmark preset has no warm-up on shapes, camvid"),
])
def test_bad_ablation_arguments(args, message, capsys, monkeypatch, tmp_path):
    (tmp_path / "camvid" / "train").mkdir(parents=True)
    monkeypatch.setenv("DEARLI_CAMVID", str(tmp_path / "camvid"))
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "ablation", *args])
    assert message in capsys.readouterr().err


def test_camvid_rows_of_the_ablation_have_no_warm_up(tmp_path, monkeypatch):
    (tmp_path / "camvid" / "train").mkdir(parents=True)
    monkeypatch.setenv("DEARLI_CAMVID", str(tmp_path / "camvid"))
    args = bench.parse_args(["--preset", "ablation", "--datasets", "camvid"])
    assert args.warmup_iters == 0 and "warmup_iters" not in bench.pinned_settings(args)
    cfg = bench.stage_config_factory(args)("camvid", 1, "mean_teacher")
    assert (cfg.DATASETS.TRAIN, cfg.SSL.ENABLED, cfg.SOLVER.MAX_ITER) == (("camvid_train_1_8_labeled",), True, 600)
    assert cfg.MODEL.WEIGHTS.endswith(os.path.join("camvid", "seed1", "burn_in", "model_final.pth"))
    assert (cfg.MODEL.OPEN_CLIP.FREEZE, cfg.SOLVER.BACKBONE_MULTIPLIER) == (False, 1.0)  # tiny_capacity.yaml
