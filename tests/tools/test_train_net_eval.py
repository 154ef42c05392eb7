"""tools/train_net.py --eval-only: results headed by model, the results file, the teacher check."""
import json

import pytest
import torch
from helpers.tiny import tiny_cfg
from helpers.tiny_weights import save_tiny_checkpoint
from helpers.tools import load_tool

from dearli.engine.trainer import DEARLiTrainer

CONFIG = "configs/shapes/tiny_dearli.yaml"
VAL = "dearli_shapes_val"


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """model_final.pth (student + EMA teacher) of a 2-iteration semi-supervised run."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(**{"SSL.ENABLED": True, "SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1000,
                      "TEST.EVAL_PERIOD": 0, "DATASETS.TEST": [], "DATALOADER.NUM_WORKERS": 0,
                      "MODEL.TEACHER.EMA_DECAY": 0.5, "OUTPUT_DIR": str(out)})
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return out / "model_final.pth"


def eval_args(train_net, weights, output_dir, *flags):
    return train_net.parse_args(["--config-file", CONFIG, "--eval-only", *flags, "MODEL.WEIGHTS", str(weights),
                                 "DATASETS.TEST", f"('{VAL}',)", "OUTPUT_DIR", str(output_dir)])


def test_eval_only_writes_results_file_and_heads_results_by_model(trained_checkpoint, tmp_path):
    train_net = load_tool("train_net")
    results = train_net.main(eval_args(train_net, trained_checkpoint, tmp_path, "--eval-teacher"))
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert written["checkpoint"] == str(trained_checkpoint.resolve())
    assert written["datasets"] == [VAL]
    assert set(written["results"]) == {"student", "teacher"}
    student, teacher = written["results"]["student"][VAL], written["results"]["teacher"][VAL]
    assert student["panoptic_seg"]["PQ"] == pytest.approx(results["panoptic_seg"]["PQ"])
    assert student["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    assert teacher["panoptic_seg"]["PQ"] == pytest.approx(results["teacher"]["panoptic_seg"]["PQ"])
    assert "teacher" not in written["results"]["student"][VAL]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # written atomically
    log = (tmp_path / "log.txt").read_text()
    student_header = f"Evaluation results of the student on {VAL} in csv format"
    teacher_header = f"Evaluation results of the teacher on {VAL} in csv format"
    assert log.count(student_header) == 1 and log.count(teacher_header) == 1
    assert log.index(student_header) < log.index(teacher_header)


def test_eval_only_without_teacher_writes_student_only(trained_checkpoint, tmp_path):
    train_net = load_tool("train_net")
    train_net.main(eval_args(train_net, trained_checkpoint, tmp_path))
    written = json.loads((tmp_path / "eval_results.json").read_text())
    assert list(written["results"]) == ["student"]
    assert {"PQ", "SQ", "RQ"} <= set(written["results"]["student"][VAL]["panoptic_seg"])


def _refuse_evaluation(monkeypatch):
    def evaluated(*args, **kwargs):
        raise AssertionError("evaluated before the teacher check")
    monkeypatch.setattr(DEARLiTrainer, "test", classmethod(evaluated))


def test_eval_teacher_of_exported_teacher_fails_before_evaluating(trained_checkpoint, tmp_path, monkeypatch):
    train_net, export = load_tool("train_net"), load_tool("export_teacher")
    exported = tmp_path / "teacher.pth"
    assert export.main([str(trained_checkpoint), str(exported)]) == 0
    _refuse_evaluation(monkeypatch)
    with pytest.raises(SystemExit) as error:
        train_net.main(eval_args(train_net, exported, tmp_path / "eval", "--eval-teacher"))
    message = str(error.value)
    assert message.startswith(f"--eval-teacher: {exported} holds no teacher (entries: ['__source__', 'backbone_fingerprint', 'model'])")
    assert "evaluated as MODEL.WEIGHTS without --eval-teacher" in message
    assert not (tmp_path / "eval" / "eval_results.json").exists()


def test_eval_teacher_of_plain_weights_or_missing_file_fails_before_evaluating(tmp_path, monkeypatch):
    train_net = load_tool("train_net")
    weights = save_tiny_checkpoint(tiny_cfg(), tmp_path)
    assert "teacher" not in torch.load(weights, weights_only=True)
    _refuse_evaluation(monkeypatch)
    with pytest.raises(SystemExit, match=f"--eval-teacher: {weights} holds no teacher"):
        train_net.main(eval_args(train_net, weights, tmp_path / "eval", "--eval-teacher"))
    missing = tmp_path / "nope.pth"
    with pytest.raises(SystemExit, match=f"^--eval-teacher: checkpoint {missing} does not exist$"):
        train_net.main(eval_args(train_net, missing, tmp_path / "eval", "--eval-teacher"))
