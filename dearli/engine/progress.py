"""Console progress bars with ETA for training and evaluation (tqdm, as the SAM pipeline uses).

Detectron2 logs progress to its logger, which long-running tools send to a log file; these bars
keep the console alive: :class:`TrainingProgress` is a hook ticking once per iteration,
:class:`EvaluationProgress` wraps an evaluator and ticks once per evaluated batch.
"""
from detectron2.engine import HookBase
from detectron2.evaluation import DatasetEvaluator
from tqdm import tqdm


class TrainingProgress(HookBase):
    """A bar over the trainer's iterations (a resumed run starts at its iteration)."""

    def __init__(self, description: str, enabled: bool = True):
        self.description = description
        self.enabled = enabled
        self._bar = None

    def before_train(self):
        trainer = self.trainer
        self._bar = tqdm(total=trainer.max_iter, initial=trainer.start_iter, desc=self.description,
                         unit="it", disable=not self.enabled, dynamic_ncols=True)

    def after_step(self):
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EvaluationProgress(DatasetEvaluator):
    """``evaluator`` unchanged, plus a bar over the ``total`` images of one evaluation pass."""

    def __init__(self, evaluator: DatasetEvaluator, total: int, description: str, enabled: bool = True):
        self.evaluator = evaluator
        self.total = total
        self.description = description
        self.enabled = enabled
        self._bar = None

    def reset(self):
        self.evaluator.reset()
        self._close()
        self._bar = tqdm(total=self.total, desc=self.description, unit="img", leave=False,
                         disable=not self.enabled, dynamic_ncols=True)

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)
        if self._bar is not None:
            self._bar.update(len(inputs))

    def evaluate(self):
        self._close()
        return self.evaluator.evaluate()

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
