"""Evaluation wiring: PQ on the real COCO sample and on hand-computed cases, per-class results,
all-stuff data, and per-class IoU from Detectron2's SemSegEvaluator.

Panoptic quality of a class: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP,
RQ = TP / (TP + FP/2 + FN/2); a match needs IoU > 0.5 and the same class; IoU ignores the
prediction's void pixels; a prediction lying > 50% in void or in a crowd region of its own class
is not a false positive; crowd regions are never false negatives. PQ (SQ, RQ) is the mean over the
classes that occur; _th / _st restrict it to things / stuff.
"""
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from PIL import Image

from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from helpers.dataset_trees import build_coco_tree, write_json
from dearli.data.datasets import register_builtin_datasets, register_semantic_dataset
from dearli.data.datasets.metadata import build_panoptic_metadata, register_dataset
from dearli.data.datasets.prepare_utils import save_panoptic_png
from dearli.data.datasets.validate import read_panoptic_ids
from dearli.evaluation import PerClassPanopticEvaluator, build_panoptic_evaluator

STANDARD_KEYS = [m + s for s in ("", "_th", "_st") for m in ("PQ", "SQ", "RQ")]
# Hand-case classes; contiguous ids = list positions.
CATEGORIES = [
    {"id": 1, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 2, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 10, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 11, "name": "road", "isthing": 0, "color": [128, 64, 128]},
]
CONTIGUOUS = {c["name"]: i for i, c in enumerate(CATEGORIES)}
DATASET_ID = {c["name"]: c["id"] for c in CATEGORIES}


def paint(regions):
    """10x10 id map from {id: (row slice, col slice)}; unpainted pixels are 0 (void)."""
    ids = np.zeros((10, 10), dtype=np.int32)
    for segment_id, region in regions.items():
        ids[region] = segment_id
    return ids


def rows(start, stop):
    return np.s_[start:stop, :]


def evaluate_case(tmp_path, gt_regions, gt_segments, pred_regions, pred_classes,
                  evaluator_class=PerClassPanopticEvaluator):
    """PQ results for one 10x10 image. ``gt_segments``: {id: (class, iscrowd)};
    ``pred_classes``: {id: class} (each painted over ``pred_regions``)."""
    gt_ids = paint(gt_regions)
    save_panoptic_png(gt_ids, tmp_path / "gt" / "img.png")
    write_json(tmp_path / "gt.json", {
        "images": [{"id": 1, "file_name": "img.jpg", "height": 10, "width": 10}],
        "annotations": [{"image_id": 1, "file_name": "img.png", "segments_info": [
            {"id": i, "category_id": DATASET_ID[c], "iscrowd": crowd,
             "area": int((gt_ids == i).sum())} for i, (c, crowd) in gt_segments.items()]}],
        "categories": CATEGORIES,
    })
    name = f"hand_case_{tmp_path.name}"
    register_dataset(name, lambda: [], dict(build_panoptic_metadata(CATEGORIES),
                                            panoptic_json=str(tmp_path / "gt.json"),
                                            panoptic_root=str(tmp_path / "gt")))
    evaluator = evaluator_class(name)
    evaluator.reset()
    segments = [{"id": i, "category_id": CONTIGUOUS[c], "isthing": CATEGORIES[CONTIGUOUS[c]][
        "isthing"] == 1} for i, c in pred_classes.items()]
    evaluator.process([{"file_name": "img.jpg", "image_id": 1}],
                      [{"panoptic_seg": (torch.from_numpy(paint(pred_regions)), segments)}])
    return evaluator.evaluate()["panoptic_seg"]


def assert_results(results, expected):
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(results[key]), key
        else:
            assert results[key] == pytest.approx(value, abs=1e-9), key


NAN = float("nan")


def test_thing_predicted_at_iou_0_6_is_a_true_positive(tmp_path):
    # GT car: rows 0-4 (50 px). Prediction: rows 0-2 (30 px), IoU 30/50 = 0.6 > 0.5: TP.
    results = evaluate_case(tmp_path, {1: rows(0, 5)}, {1: ("car", 0)},
                            {1: rows(0, 3)}, {1: "car"})
    # car: PQ = 0.6 / 1, SQ = 0.6 / 1, RQ = 1 / 1.
    assert_results(results, {"PQ": 60, "SQ": 60, "RQ": 100, "PQ_th": 60, "SQ_th": 60,
                             "RQ_th": 100, "PQ_st": NAN, "PQ-car": 60, "SQ-car": 60,
                             "RQ-car": 100, "PQ-person": NAN, "PQ-sky": NAN})


def test_thing_predicted_at_iou_0_4_is_a_false_positive_and_a_false_negative(tmp_path):
    # GT cars: A rows 0-4, B rows 5-9 (50 px each). Prediction a: rows 0-1 (20 px), IoU 0.4 with
    # A: no match, so A is a FN and a (inside A, not void) a FP. Prediction b == B: TP, IoU 1.
    results = evaluate_case(tmp_path, {1: rows(0, 5), 2: rows(5, 10)},
                            {1: ("car", 0), 2: ("car", 0)},
                            {1: rows(0, 2), 2: rows(5, 10)}, {1: "car", 2: "car"})
    # car: TP 1 (IoU 1), FP 1, FN 1: PQ = 1 / (1 + 0.5 + 0.5) = 0.5, SQ = 1, RQ = 0.5.
    assert_results(results, {"PQ": 50, "SQ": 100, "RQ": 50, "PQ-car": 50, "SQ-car": 100,
                             "RQ-car": 50})


def test_stuff_class_split_into_two_predictions(tmp_path):
    # GT sky rows 0-5 (60 px), road rows 6-9 (40 px). Predicted sky in two parts: rows 0-3
    # (IoU 40/60, TP) and rows 4-5 (IoU 20/60, FP); road exact (TP, IoU 1).
    results = evaluate_case(tmp_path, {1: rows(0, 6), 2: rows(6, 10)},
                            {1: ("sky", 0), 2: ("road", 0)},
                            {1: rows(0, 4), 2: rows(4, 6), 3: rows(6, 10)},
                            {1: "sky", 2: "sky", 3: "road"})
    sky_iou = 40 / 60
    # sky: PQ = (2/3) / (1 + 0.5) = 4/9, SQ = 2/3, RQ = 1 / 1.5 = 2/3; road: 1, 1, 1.
    assert_results(results, {
        "PQ-sky": 100 * sky_iou / 1.5, "SQ-sky": 100 * sky_iou, "RQ-sky": 100 / 1.5,
        "PQ": 50 * (sky_iou / 1.5 + 1), "SQ": 50 * (sky_iou + 1), "RQ": 50 * (1 / 1.5 + 1),
        "PQ_st": 50 * (sky_iou / 1.5 + 1), "PQ_th": NAN, "SQ_th": NAN, "RQ_th": NAN})


def test_prediction_mostly_in_void_is_not_a_false_positive(tmp_path):
    # GT: car rows 0-2 (30 px), sky rows 8-9 (20 px), rows 3-7 void.
    # Predicted car rows 0-3 (40 px, 10 of them void): IoU = 30 / (40 + 30 - 30 - 10) = 1.
    # Predicted person rows 6-8 x cols 0-2 (9 px: 6 void, 3 sky): 6/9 void, ignored.
    # Predicted sky = rows 8-9 minus those 3 px (17 px): IoU 17/20 = 0.85, TP.
    person = np.s_[6:9, 0:3]
    results = evaluate_case(tmp_path, {1: rows(0, 3), 2: rows(8, 10)},
                            {1: ("car", 0), 2: ("sky", 0)},
                            {1: rows(0, 4), 3: rows(8, 10), 2: person},
                            {1: "car", 2: "person", 3: "sky"})
    assert_results(results, {"PQ-car": 100, "PQ-sky": 85, "PQ-person": NAN,
                             "PQ": (100 + 85) / 2, "SQ": (100 + 85) / 2, "RQ": 100,
                             "PQ_th": 100, "PQ_st": 85})


def test_crowd_region_excuses_only_predictions_of_its_own_class(tmp_path):
    # GT: person crowd rows 0-3 (iscrowd), person instance rows 5-6, road rows 7-9, row 4 void.
    # Predictions: person == instance (TP); person rows 0-2 inside the crowd (not matched, not a
    # FP); car row 3 inside the person crowd (a FP: the crowd is not a car crowd); road exact.
    gt = ({1: rows(0, 4), 2: rows(5, 7), 3: rows(7, 10)},
          {1: ("person", 1), 2: ("person", 0), 3: ("road", 0)})
    pred = ({1: rows(5, 7), 2: rows(0, 3), 3: rows(3, 4), 4: rows(7, 10)},
            {1: "person", 2: "person", 3: "car", 4: "road"})
    results = evaluate_case(tmp_path, *gt, *pred)
    # person 1/1/1 (crowd never a FN), car TP 0 FP 1: 0/0/0, road 1/1/1.
    assert_results(results, {"PQ-person": 100, "PQ-car": 0, "SQ-car": 0, "RQ-car": 0,
                             "PQ-road": 100, "PQ": 200 / 3, "SQ": 200 / 3, "RQ": 200 / 3,
                             "PQ_th": 50, "SQ_th": 50, "RQ_th": 50, "PQ_st": 100})
    # Detectron2's own evaluator gives the same standard numbers (it only lacks per-class keys).
    reference = evaluate_case(tmp_path, *gt, *pred, evaluator_class=COCOPanopticEvaluator)
    assert_results(results, {k: reference[k] for k in STANDARD_KEYS})
    assert set(reference) == set(STANDARD_KEYS)


# ---- the real COCO sample ------------------------------------------------------------------------

def gt_as_prediction(record, drop_every=0):
    """The ground truth of a record as a model output; optionally drop every n-th segment."""
    ids = read_panoptic_ids(record["pan_seg_file_name"], record["segments_info"])
    segments = []
    for index, s in enumerate(record["segments_info"]):
        if drop_every and index % drop_every == 0:
            ids[ids == s["id"]] = 0
        else:
            segments.append({"id": s["id"], "category_id": s["category_id"],
                             "isthing": s["isthing"]})
    return {"panoptic_seg": (torch.from_numpy(ids), segments)}


def run(evaluator, records, drop_every=0):
    evaluator.reset()
    for record in records:
        evaluator.process([record], [gt_as_prediction(record, drop_every)])
    return evaluator.evaluate()["panoptic_seg"]


@pytest.fixture
def coco_val(tmp_path, shared_data):
    build_coco_tree(tmp_path, shared_data)
    register_builtin_datasets(str(tmp_path), cache_root=str(tmp_path / "cache"))
    return DatasetCatalog.get("coco_2017_val_panoptic")


def test_coco_sample_ground_truth_scores_pq_100_against_itself(coco_val, tmp_path):
    evaluator = build_panoptic_evaluator("coco_2017_val_panoptic", str(tmp_path / "out"))
    results = run(evaluator, coco_val)
    assert_results(results, {key: 100.0 for key in STANDARD_KEYS})
    present = {MetadataCatalog.get("coco_2017_val_panoptic").stuff_classes[s["category_id"]]
               for r in coco_val for s in r["segments_info"] if not s["iscrowd"]}
    assert len(present) == 8
    for name in MetadataCatalog.get("coco_2017_val_panoptic").stuff_classes:
        value = results[f"PQ-{name}"]
        assert value == 100 if name in present else math.isnan(value)
    assert (tmp_path / "out" / "predictions.json").is_file()


def test_standard_keys_equal_detectron2s_on_an_imperfect_prediction(coco_val):
    ours = run(build_panoptic_evaluator("coco_2017_val_panoptic"), coco_val, drop_every=3)
    reference = run(COCOPanopticEvaluator("coco_2017_val_panoptic"), coco_val, drop_every=3)
    assert 0 < ours["PQ"] < 100
    assert_results(ours, {key: reference[key] for key in STANDARD_KEYS})


def test_missing_prediction_for_an_image_names_the_json(coco_val):
    evaluator = build_panoptic_evaluator("coco_2017_val_panoptic")
    with pytest.raises(ValueError, match=r"no prediction for 1 of the 2 images of .*"
                                         r"panoptic_val2017.json"):
        run(evaluator, coco_val[:1])


# ---- semantic-only data: mIoU per class and all-stuff PQ -----------------------------------------

# 4x6 ground truth (9 = ignore in the file) and prediction over classes a=0, b=1, c=2.
GT_LABELS = np.array([[0, 0, 0, 1, 1, 1],
                      [0, 0, 0, 1, 1, 1],
                      [2, 2, 9, 9, 1, 1],
                      [2, 2, 9, 9, 1, 1]], dtype=np.uint8)
PREDICTION = np.array([[0, 0, 1, 1, 1, 1],
                       [0, 0, 1, 1, 1, 1],
                       [2, 0, 0, 0, 1, 1],
                       [2, 2, 0, 0, 1, 1]])
# Counted on non-ignored pixels: a: TP 4, GT 6, predicted 5 -> 4/7; b: TP 10, GT 10, predicted 12
# -> 10/12; c: TP 3, GT 4, predicted 3 -> 3/4.
IOU = {"a": 4 / 7, "b": 10 / 12, "c": 3 / 4}


@pytest.fixture
def tiny_semantic(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "images" / "x.jpg")
    Image.fromarray(GT_LABELS).save(tmp_path / "labels" / "x.png")
    register_semantic_dataset("tiny_eval_semantic", str(tmp_path / "images"),
                              str(tmp_path / "labels"), ["a", "b", "c"], 9,
                              cache_dir=str(tmp_path / "cache"))
    return DatasetCatalog.get("tiny_eval_semantic")


def test_sem_seg_evaluator_returns_per_class_iou(tiny_semantic):
    evaluator = SemSegEvaluator("tiny_eval_semantic", distributed=False)
    evaluator.reset()
    logits = torch.nn.functional.one_hot(torch.from_numpy(PREDICTION), 3).permute(2, 0, 1)
    evaluator.process(tiny_semantic, [{"sem_seg": logits.float()}])
    results = evaluator.evaluate()["sem_seg"]
    assert_results(results, {f"IoU-{k}": 100 * v for k, v in IOU.items()})
    assert results["mIoU"] == pytest.approx(100 * sum(IOU.values()) / 3)


def test_all_stuff_pq_on_semantic_only_data(tiny_semantic):
    # One predicted segment per predicted class (id = class + 1). Each IoU > 0.5, so all are TPs
    # and PQ equals mean IoU here: the void-excluding IoU of PQ equals the ignore-excluding IoU.
    segments = [{"id": c + 1, "category_id": c, "isthing": False} for c in range(3)]
    evaluator = build_panoptic_evaluator("tiny_eval_semantic")
    evaluator.reset()
    evaluator.process(tiny_semantic, [{"panoptic_seg": (torch.from_numpy(PREDICTION + 1),
                                                         segments)}])
    results = evaluator.evaluate()["panoptic_seg"]
    mean_iou = 100 * sum(IOU.values()) / 3
    assert_results(results, {"PQ": mean_iou, "SQ": mean_iou, "RQ": 100, "PQ_st": mean_iou,
                             "PQ_th": NAN, "SQ_th": NAN, "RQ_th": NAN,
                             **{f"PQ-{k}": 100 * v for k, v in IOU.items()}})
