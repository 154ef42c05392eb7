"""The comparison protocol's pure parts: stage configs, the finished-stage check, statistics, table."""
import json
import os
import statistics

import pytest
from helpers.tiny import CONFIG_DIR

from dearli.engine import protocol, protocol_summary

TINY = str(CONFIG_DIR / "tiny_dearli.yaml")


def scores(pq, miou, teacher_pq=None):
    student = {"PQ": pq, "SQ": 80.0, "RQ": pq / 0.8, "mIoU": miou, "IoU": {"circle": miou, "sky": 2 * miou}}
    return {"student": student, "teacher": dict(student, PQ=teacher_pq if teacher_pq is not None else pq)}


def test_budget_spreads_evaluations_and_ends_with_one():
    budget = protocol.Budget(burn_in_iters=100, branch_iters=40, evals_per_stage=4, checkpoint_period=10)
    assert budget.solver_settings(protocol.BURN_IN) == {"SOLVER.MAX_ITER": 100, "TEST.EVAL_PERIOD": 25, "SOLVER.CHECKPOINT_PERIOD": 10}
    assert budget.solver_settings(protocol.BRANCH)["TEST.EVAL_PERIOD"] == 10
    # One evaluation: period 0, i.e. Detectron2's EvalHook evaluates only after the last iteration.
    assert protocol.Budget(100, 40).solver_settings(protocol.BRANCH)["TEST.EVAL_PERIOD"] == 0


def test_stage_configs_share_the_start_and_differ_only_in_unlabeled_data(tmp_path):
    budget = protocol.Budget(6, 4)
    opts = ["SOLVER.BASE_LR", "0.01", "SEED", "99", "SOLVER.MAX_ITER", "1000"]  # SEED and MAX_ITER are the protocol's
    burn_in, supervised, semi = (protocol.stage_config(TINY, opts, str(tmp_path), "shapes", 3, s, budget)
                                 for s in protocol.STAGES)
    start = str(tmp_path / "shapes" / "seed3" / "burn_in" / "model_final.pth")
    assert burn_in.OUTPUT_DIR == str(tmp_path / "shapes" / "seed3" / "burn_in")
    assert (burn_in.SOLVER.MAX_ITER, burn_in.SSL.ENABLED, burn_in.MODEL.WEIGHTS) == (6, False, "")
    # Every stage names the unlabeled images (the pseudo-label quality hook scores its teacher on
    # them); only the semi-supervised branch trains on them.
    for stage in (burn_in, supervised, semi):
        assert stage.DATASETS.TRAIN_UNLABELED == ("dearli_shapes_train_unlabeled",)
    assert (burn_in.SSL.ENABLED, supervised.SSL.ENABLED, semi.SSL.ENABLED) == (False, False, True)
    for branch in (supervised, semi):
        assert (branch.SOLVER.MAX_ITER, branch.SEED, branch.SOLVER.BASE_LR) == (4, 3, 0.01)
        assert branch.MODEL.WEIGHTS == branch.MODEL.TEACHER.WEIGHTS == start
    assert burn_in.is_frozen()


def test_a_result_counts_only_for_the_config_it_was_written_for(tmp_path):
    cfg = protocol.stage_config(TINY, [], str(tmp_path), "shapes", 1, protocol.STAGES[0], protocol.Budget(2, 2))
    assert protocol.finished_result(cfg) is None
    os.makedirs(cfg.OUTPUT_DIR)
    path = os.path.join(cfg.OUTPUT_DIR, protocol.RESULT_FILE)
    with open(path, "w") as f:
        json.dump({"metrics": {}, "config_sha256": protocol.config_digest(cfg)}, f)
    assert protocol.finished_result(cfg) == {"metrics": {}, "config_sha256": protocol.config_digest(cfg)}
    longer = protocol.stage_config(TINY, [], str(tmp_path), "shapes", 1, protocol.STAGES[0], protocol.Budget(3, 2))
    assert protocol.finished_result(longer) is None


def test_stage_scores_pick_student_teacher_and_per_class_iou():
    def metrics(pq):
        return {"panoptic_seg": {"PQ": pq, "SQ": 70.0, "RQ": 50.0, "PQ_th": 1.0},
                "sem_seg": {"mIoU": 40.0, "fwIoU": 3.0, "IoU-circle": 30.0, "IoU-sky": 50.0, "ACC-sky": 9.0}}
    picked = protocol.stage_scores(dict(metrics(10.0), teacher=metrics(12.0)))
    assert picked["student"] == {"PQ": 10.0, "SQ": 70.0, "RQ": 50.0, "mIoU": 40.0, "IoU": {"circle": 30.0, "sky": 50.0}}
    assert picked["teacher"]["PQ"] == 12.0
    assert set(protocol.stage_scores(metrics(1.0))) == {"student"}  # MODEL.TEACHER.EVALUATE False


def test_summary_is_mean_and_sample_std_with_paired_differences():
    runs = {"shapes": {
        "burn_in": {1: scores(10.0, 30.0), 2: scores(14.0, 34.0)},
        "supervised_only": {1: scores(20.0, 40.0), 2: scores(22.0, 44.0), 3: scores(30.0, 50.0)},
        "semi_supervised": {1: scores(23.0, 41.0), 2: scores(28.0, 44.0)},
    }}
    summary = protocol_summary.summarize(runs, {"shapes": protocol.CLASSIC})["shapes"]
    assert summary["burn_in"]["seeds"] == [1, 2]
    assert summary["burn_in"]["student"]["PQ"] == {"mean": 12.0, "std": pytest.approx(2 ** 0.5 * 2), "n": 2}
    assert summary["supervised_only"]["student"]["mIoU"] == {"mean": pytest.approx(134 / 3),
                                                             "std": pytest.approx(statistics.stdev([40, 44, 50])), "n": 3}
    assert summary["supervised_only"]["student"]["IoU"]["sky"]["mean"] == pytest.approx(2 * 134 / 3)
    # Paired over seeds 1 and 2 only (seed 3 has no semi-supervised branch): PQ differences 3 and 6.
    difference = summary["differences"]["semi_supervised"]
    assert difference["seeds"] == [1, 2]
    assert difference["student"]["PQ"] == {"mean": 4.5, "std": pytest.approx(statistics.stdev([3, 6])), "n": 2}
    assert difference["student"]["mIoU"] == {"mean": 0.5, "std": pytest.approx(statistics.stdev([1, 0])), "n": 2}


def test_markdown_table_rows():
    runs = {"shapes": {"burn_in": {1: scores(10.0, 30.0)}, "supervised_only": {1: scores(20.0, 40.0), 2: scores(22.0, 44.0)},
                       "semi_supervised": {1: scores(23.0, 41.0), 2: scores(21.0, 44.0)}}}
    tables = {"shapes": protocol.CLASSIC}
    lines = protocol_summary.markdown(protocol_summary.summarize(runs, tables), tables).splitlines()
    assert lines[:3] == ["### shapes", "", "| stage | model | seeds | PQ | SQ | RQ | mIoU |"]
    assert "| burn-in (shared start) | student | 1 | 10.0 | 80.0 | 12.5 | 30.0 |" in lines
    assert "| supervised-only | teacher | 1, 2 | 21.0 +- 1.4 | 80.0 +- 0.0 | 26.2 +- 1.8 | 42.0 +- 2.8 |" in lines
    assert "| **difference** (semi - supervised, paired) | student | 1, 2 | +1.0 +- 2.8 | +0.0 +- 0.0 | +1.2 +- 3.5 | +0.5 +- 0.7 |" in lines
    assert "| stage | circle | sky |" in lines and "| supervised-only | 42.0 | 84.0 |" in lines
