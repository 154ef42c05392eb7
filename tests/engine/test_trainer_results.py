"""DEARLiTrainer.train() returns its last evaluation's results (public; no private attribute read)."""
from helpers.tiny import tiny_cfg

from dearli.engine.trainer import DEARLiTrainer


def trained(output_dir, test_sets):
    cfg = tiny_cfg(**{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1000, "TEST.EVAL_PERIOD": 0,
                      "DATASETS.TEST": test_sets, "DATALOADER.NUM_WORKERS": 0, "OUTPUT_DIR": str(output_dir)})
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer, trainer.train()


def test_train_returns_the_final_student_and_teacher_results(tmp_path):
    trainer, results = trained(tmp_path, ["dearli_shapes_val"])
    assert {"PQ", "SQ", "RQ"} <= set(results["panoptic_seg"]) and "mIoU" in results["sem_seg"]
    storage = trainer.storage  # what the EvalHook logged after the last iteration
    assert results["panoptic_seg"]["PQ"] == storage.history("panoptic_seg/PQ").latest()
    assert results["teacher"]["sem_seg"]["mIoU"] == storage.history("teacher/sem_seg/mIoU").latest()


def test_train_without_test_sets_returns_no_scores(tmp_path):
    _, results = trained(tmp_path, [])
    assert "panoptic_seg" not in results and not results.get("teacher")
