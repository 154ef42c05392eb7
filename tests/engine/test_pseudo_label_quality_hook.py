"""The pseudo-label quality hook: pseudo_quality/* scalars at evaluation iterations only."""
import json
import math

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.engine_setup import engine_cfg, train

from dearli.data.datasets.metadata import register_dataset
from dearli.data.datasets.withheld import withheld_ground_truth
from dearli.engine.pseudo_label_quality import PseudoLabelQuality


def logged_iterations(trainer, key):
    history = trainer.storage.histories().get(key)
    return [] if history is None else [iteration for _, iteration in history.values()]


@pytest.mark.parametrize("ssl", [True, False])
def test_scalars_are_written_at_evaluations_only(tmp_path, ssl):
    # Evaluations after iteration 1 (period 2) and after training; Detectron2 logs the final one
    # at storage iteration MAX_ITER (4), like EvalHook's results. None after iterations 0, 2, 3.
    cfg = engine_cfg(tmp_path, **{"SSL.ENABLED": ssl, "SOLVER.MAX_ITER": 4, "TEST.EVAL_PERIOD": 2,
                                  "SSL.PSEUDO_QUALITY_IMAGES": 2})
    trainer = train(cfg)
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "coverage"):
        assert logged_iterations(trainer, f"pseudo_quality/{key}") == [1, 4], key
    # ... and reach metrics.json (Detectron2's JSONWriter) at those iterations.
    with open(tmp_path / "metrics.json", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [r["iteration"] for r in records if "pseudo_quality/mIoU" in r] == [1, 4]
    hook = next(h for h in trainer._hooks if isinstance(h, PseudoLabelQuality))
    # The last logged numbers are the scores of the final teacher on the same two crops.
    latest = trainer.storage.latest()
    rescored = hook.score()
    for key, value in rescored.items():
        if not math.isnan(value):
            assert latest[f"pseudo_quality/{key}"][0] == pytest.approx(value), key
    assert 0.0 <= rescored["coverage"] <= 100.0
    assert [s["image_id"] for s in hook.samples()] == [d["image_id"] for d in
                                                      DatasetCatalog.get("dearli_shapes_train_unlabeled")[:2]]


def test_off_by_default(tmp_path):
    trainer = train(engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1}))
    assert not any(isinstance(h, PseudoLabelQuality) for h in trainer._hooks)
    assert not [k for k in trainer.storage.histories() if k.startswith("pseudo_quality/")]


def test_needs_an_unlabeled_dataset(tmp_path):
    cfg = engine_cfg(tmp_path, **{"SSL.ENABLED": False, "DATASETS.TRAIN_UNLABELED": [],
                                  "SSL.PSEUDO_QUALITY_IMAGES": 2})
    with pytest.raises(ValueError, match=r"SSL.PSEUDO_QUALITY_IMAGES > 0 needs DATASETS.TRAIN_UNLABELED"):
        PseudoLabelQuality(cfg, teacher=None)


def test_unlabeled_split_without_ground_truth_is_refused():
    images = DatasetCatalog.get("dearli_shapes_train_unlabeled")[:2]
    metadata = MetadataCatalog.get("dearli_shapes_train_unlabeled").as_dict()
    for key in ("panoptic_json", "name"):
        metadata.pop(key)
    register_dataset("t_no_ground_truth", lambda: images, metadata)
    try:
        with pytest.raises(ValueError, match=r"t_no_ground_truth: its metadata has no panoptic_json, so there "
                                             r"is no withheld ground truth"):
            withheld_ground_truth("t_no_ground_truth", 2)
    finally:
        DatasetCatalog.remove("t_no_ground_truth")
        MetadataCatalog.remove("t_no_ground_truth")
