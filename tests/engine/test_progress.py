"""Console progress bars: the training bar counts iterations from a resumed start, the evaluation
wrapper counts images and leaves the wrapped evaluator's behaviour unchanged."""
from types import SimpleNamespace

from detectron2.evaluation import DatasetEvaluator

from dearli.engine.progress import EvaluationProgress, TrainingProgress


class RecordingEvaluator(DatasetEvaluator):
    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def process(self, inputs, outputs):
        self.calls.append(("process", len(inputs), outputs))

    def evaluate(self):
        self.calls.append("evaluate")
        return {"sem_seg": {"mIoU": 12.5}}


def test_training_bar_starts_at_the_resumed_iteration(capsys):
    hook = TrainingProgress("stage A")
    hook.trainer = SimpleNamespace(start_iter=2, max_iter=5)
    hook.before_train()
    for _ in range(3):
        hook.after_step()
    assert hook._bar.n == 5
    hook.after_train()
    err = capsys.readouterr().err
    assert "stage A: 100%" in err and "5/5 [" in err
    assert "0/5" not in err  # it never showed the iterations done before the resume as to-do


def test_evaluation_wrapper_counts_images_and_passes_everything_through(capsys):
    inner = RecordingEvaluator()
    wrapped = EvaluationProgress(inner, total=3, description="evaluating on X")
    wrapped.reset()
    wrapped.process([{"image_id": 1}, {"image_id": 2}], "out12")
    wrapped.process([{"image_id": 3}], "out3")
    assert wrapped._bar.n == 3
    assert wrapped.evaluate() == {"sem_seg": {"mIoU": 12.5}}
    assert inner.calls == ["reset", ("process", 2, "out12"), ("process", 1, "out3"), "evaluate"]
    assert "evaluating on X:   0%|" in capsys.readouterr().err  # shown at once; cleared when done (leave=False)


def test_disabled_bars_print_nothing(capsys):
    wrapped = EvaluationProgress(RecordingEvaluator(), total=1, description="quiet", enabled=False)
    wrapped.reset()
    wrapped.process([{}], None)
    wrapped.evaluate()
    assert capsys.readouterr().err == ""
