"""Protocol tables: row validation, the ablation table's layout, and its summary math on hand-made numbers."""
import os
import statistics
from dataclasses import replace

import pytest

from dearli.engine import protocol, protocol_summary, protocol_tables
from dearli.engine.protocol import BRANCH, BURN_IN, WARM_UP, Stage, Table
from dearli.engine.protocol_tables import ABLATION_CAMVID, ABLATION_SHAPES, TABLES


@pytest.mark.parametrize("make, message", [
    (lambda: Stage("a b", "t"), "stage name 'a b': use letters, digits and '_'"),
    (lambda: Stage("visuals", "t"), "stage name 'visuals'"),
    (lambda: Stage("x", "t", role="branchy"), "stage x: role 'branchy' is not one of"),
    (lambda: Stage("x", "t", overrides=("SOLVER.BASE_LR",)), "stage x: overrides ['SOLVER.BASE_LR'] are not KEY VALUE pairs"),
    (lambda: Stage("x", "t", WARM_UP, semi_supervised=True), "stage x: a warm-up trains on class-agnostic masks only"),
    (lambda: Table((Stage("supervised_only", "s"), Stage("supervised_only", "t"))), "stage supervised_only appears twice"),
    (lambda: Table((Stage("supervised_only", "s", start="burn_in"), Stage("burn_in", "b", BURN_IN))),
     "stage supervised_only starts from 'burn_in', which is not an earlier stage"),
    (lambda: Table((Stage("burn_in", "b", BURN_IN),), baseline="burn_in"), "baseline 'burn_in' is not a branch of the table"),
])
def test_bad_rows_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        make()


def test_ablation_rows_and_their_starts():
    starts = {s.name: (s.role, s.start, s.semi_supervised) for s in ABLATION_SHAPES.stages}
    assert starts == {
        "burn_in": (BURN_IN, None, False),
        "supervised_only": (BRANCH, "burn_in", False), "mean_teacher": (BRANCH, "burn_in", True),
        "dear": (BRANCH, "burn_in", True), "dear_definitions": (BRANCH, "burn_in", True),
        "dear_dense": (BRANCH, "burn_in", True), "dear_tags": (BRANCH, "burn_in", True),
        "sam_warmup": (WARM_UP, None, False), "sam_burn_in": (BURN_IN, "sam_warmup", False),
        "dearli": (BRANCH, "sam_burn_in", True), "dearli_refined": (BRANCH, "sam_burn_in", True),
        "oracle_warmup": (WARM_UP, None, False), "oracle_burn_in": (BURN_IN, "oracle_warmup", False),
        "dearli_oracle": (BRANCH, "oracle_burn_in", True),
    }
    assert [s.name for s in ABLATION_SHAPES.compared] == [
        "mean_teacher", "dear", "dear_definitions", "dear_dense", "dear_tags", "dearli", "dearli_refined", "dearli_oracle"]
    assert [s.name for s in ABLATION_CAMVID.compared] == ["mean_teacher"]
    # The benchmark keeps the classic three stages; the demo runs DEARLi's path on shapes, with the
    # ablation's own warm-up, burn-in and DEARLi stages and a supervised-only branch from the same start.
    assert TABLES["benchmark"]["shapes"] is TABLES["demo"]["camvid"] is protocol.CLASSIC
    demo = TABLES["demo"]["shapes"]
    assert [(s.name, s.role, s.start, s.semi_supervised) for s in demo.stages] == [
        ("sam_warmup", WARM_UP, None, False), ("sam_burn_in", BURN_IN, "sam_warmup", False),
        ("supervised_only", BRANCH, "sam_burn_in", False), ("dearli", BRANCH, "sam_burn_in", True)]
    assert all(demo.stage(name) is ABLATION_SHAPES.stage(name) for name in ("sam_warmup", "sam_burn_in", "dearli"))
    assert demo.stage("supervised_only").config_file == ABLATION_SHAPES.stage("dear").config_file
    assert demo.stage("supervised_only").overrides == ()  # alpha 0.4, as DEARLi at inference
    assert [s.name for s in protocol.STAGES] == ["burn_in", "supervised_only", "semi_supervised"]


def test_extension_rows_differ_from_dear_only_in_their_extension(tmp_path):
    budget = protocol.Budget(burn_in_iters=4, branch_iters=4)

    def config(name):
        return protocol.stage_config("", [], str(tmp_path), "shapes", 1, ABLATION_SHAPES.stage(name), budget)

    dear = config("dear")
    assert (dear.MODEL.CLIP_HEAD.CLASS_DEFINITIONS, dear.SSL.DENSE_CLIP_GUIDANCE.ENABLED,
            dear.SSL.IMAGE_TAGS.ENABLED) == ("", False, False)
    changed = {"dear_definitions": ("MODEL.CLIP_HEAD.CLASS_DEFINITIONS", "shapes"),
               "dear_dense": ("SSL.DENSE_CLIP_GUIDANCE.ENABLED", True), "dear_tags": ("SSL.IMAGE_TAGS.ENABLED", True)}
    for name, (key, value) in changed.items():
        row = config(name)
        node = row
        for part in key.split("."):
            node = node[part]
        assert node == value, name
        assert row.OUTPUT_DIR != dear.OUTPUT_DIR and row.MODEL.WEIGHTS == dear.MODEL.WEIGHTS  # same start


def flat(node, prefix=""):
    """{"A.B.C": value} of a config node."""
    items = {}
    for key, value in node.items():
        items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return items


def test_camvid_ablation_rows_differ_from_the_benchmark_only_in_the_trainable_trunk(tmp_path):
    # Every CamVid row runs configs/camvid/tiny_capacity.yaml: the benchmark's CamVid config (the
    # frozen random trunk) with the trunk trained from scratch at the decoder's LR, nothing else.
    camvid = os.path.join(protocol_tables.CONFIGS, "camvid", "tiny_dearli.yaml")
    budget = protocol.Budget(burn_in_iters=4, branch_iters=4)
    for stage in ABLATION_CAMVID.stages:
        row = flat(protocol.stage_config(camvid, [], str(tmp_path), "camvid", 1, stage, budget))
        frozen = flat(protocol.stage_config(camvid, [], str(tmp_path), "camvid", 1, replace(stage, config_file=None), budget))
        assert {k: (frozen[k], row[k]) for k in row if row[k] != frozen[k]} == {
            "MODEL.OPEN_CLIP.FREEZE": (True, False), "SOLVER.BACKBONE_MULTIPLIER": (0.1, 1.0)}, stage.name


def test_budget_per_role_and_no_evaluation_in_a_warm_up():
    budget = protocol.Budget(burn_in_iters=60, branch_iters=40, evals_per_stage=2, checkpoint_period=10, warmup_iters=30)
    assert [budget.iterations(role) for role in (WARM_UP, BURN_IN, BRANCH)] == [30, 60, 40]
    assert budget.solver_settings(WARM_UP) == {"SOLVER.MAX_ITER": 30, "TEST.EVAL_PERIOD": 0, "SOLVER.CHECKPOINT_PERIOD": 10}
    assert budget.solver_settings(BRANCH)["TEST.EVAL_PERIOD"] == 20


def entry(pq, miou, seconds, quality_pq=None):
    scores = {"PQ": pq, "SQ": 70.0, "RQ": pq + 5, "mIoU": miou, "IoU": {"circle": miou}}
    result = {"student": scores, "teacher": dict(scores, PQ=pq + 1), "wall_seconds": seconds}
    if quality_pq is not None:
        result["pseudo_quality"] = {"PQ": quality_pq, "SQ": 60.0, "RQ": 40.0, "mIoU": 30.0, "coverage": 90.0}
    return result


def test_paired_differences_of_every_row_against_supervised_only():
    table = Table((Stage("burn_in", "burn-in", BURN_IN), Stage("supervised_only", "supervised-only", start="burn_in"),
                   Stage("mean_teacher", "mean teacher", semi_supervised=True, start="burn_in", short="MT"),
                   Stage("warm_up", "warm-up", WARM_UP), Stage("dearli", "DEARLi", semi_supervised=True, start="warm_up")))
    runs = {"shapes": {
        "burn_in": {1: entry(10, 20, 100.0, 5.0)},
        "supervised_only": {1: entry(20, 30, 50.0, 7.0), 2: entry(24, 36, 70.0, 9.0), 3: entry(22, 30, 60.0)},
        "mean_teacher": {1: entry(23, 31, 200.0, 8.0), 2: entry(30, 36, 220.0, 12.0)},
        "warm_up": {1: {"wall_seconds": 11.0}, 2: {"wall_seconds": 13.0}},
        "dearli": {2: entry(21, 40, 300.0, 6.0), 3: entry(25, 30, 310.0, 8.0), 4: entry(90, 90, 1.0)},
    }}
    summary = protocol_summary.summarize(runs, {"shapes": table})["shapes"]
    assert list(summary) == ["burn_in", "supervised_only", "mean_teacher", "warm_up", "dearli", "differences"]
    mean_teacher = summary["differences"]["mean_teacher"]  # seeds 1, 2: PQ +3 and +6, mIoU +1 and 0
    assert mean_teacher["seeds"] == [1, 2]
    assert mean_teacher["student"]["PQ"] == {"mean": 4.5, "std": pytest.approx(statistics.stdev([3, 6])), "n": 2}
    assert mean_teacher["teacher"]["mIoU"] == {"mean": 0.5, "std": pytest.approx(statistics.stdev([1, 0])), "n": 2}
    dearli = summary["differences"]["dearli"]  # seeds 2, 3 (seed 4 has no baseline): PQ -3 and +3
    assert dearli["seeds"] == [2, 3]
    assert dearli["student"]["PQ"] == {"mean": 0.0, "std": pytest.approx(statistics.stdev([-3, 3])), "n": 2}
    assert summary["warm_up"] == {"seeds": [1, 2], "wall_seconds": {"mean": 12.0, "std": pytest.approx(2 ** 0.5), "n": 2}}
    assert summary["supervised_only"]["wall_seconds"]["mean"] == 60.0
    # Pseudo-label quality over the seeds that measured it (seed 3 of supervised-only did not).
    assert summary["supervised_only"]["pseudo_quality"]["PQ"] == {"mean": 8.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert summary["supervised_only"]["pseudo_quality"]["coverage"]["mean"] == 90.0


def test_markdown_of_an_ablation_table():
    table = Table((Stage("burn_in", "burn-in", BURN_IN), Stage("supervised_only", "supervised-only", start="burn_in"),
                   Stage("dear", "DEAR", semi_supervised=True, start="burn_in")))
    runs = {"shapes": {"burn_in": {1: entry(10, 20, 100.0)}, "supervised_only": {1: entry(20, 30, 50.0, 7.0)},
                       "dear": {1: entry(23, 31, 200.4, 8.0)}}}
    tables = {"shapes": table}
    lines = protocol_summary.markdown(protocol_summary.summarize(runs, tables), tables).splitlines()
    assert "| **difference** (DEAR - supervised-only, paired) | student | 1 | +3.0 | +0.0 | +3.0 | +1.0 |" in lines
    assert "| **difference** (DEAR - supervised-only, paired) | teacher | 1 | +3.0 | +0.0 | +3.0 | +1.0 |" in lines
    assert lines.index("Per-class IoU (student, mean over seeds):") < lines.index("Per-class IoU (teacher, mean over seeds):")
    assert "| stage | seeds | PQ | SQ | RQ | mIoU | coverage |" in lines
    assert "| DEAR | 1 | 8.0 | 60.0 | 40.0 | 30.0 | 90.0 |" in lines
    assert "| burn-in | 1 | 100 |" in lines and "| DEAR | 1 | 200 |" in lines
    # Wall time, the only part that differs between two runs of the same settings, comes last.
    assert lines.index("| DEAR | 1 | 200 |") > lines.index("| DEAR | 1 | 8.0 | 60.0 | 40.0 | 30.0 | 90.0 |")
