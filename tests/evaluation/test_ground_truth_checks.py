"""The evaluators check ground truth before scoring it: PNG ids missing from the panoptic json,
categories not in the json, semantic values outside the classes, and ground truth of another size
than the prediction for its image are errors naming the file (Detectron2/panopticapi scored them
silently wrong, or raised broadcast/reshape errors naming no file)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dearli.data.datasets.metadata import build_panoptic_metadata, register_dataset
from dearli.data.datasets.prepare_utils import save_panoptic_png
from dearli.data.datasets.validate import DatasetFileError
from dearli.evaluation import CheckedSemSegEvaluator, build_panoptic_evaluator

CATEGORIES = [{"id": 1, "name": "car", "isthing": 1, "color": [0, 0, 142]},
              {"id": 10, "name": "sky", "isthing": 0, "color": [70, 130, 180]}]


def two_segments(height=10, width=10, extra_id=None):
    """Id map: rows 0-4 segment 1 (car), the rest segment 2 (sky); ``extra_id`` paints one pixel."""
    ids = np.full((height, width), 2, dtype=np.int32)
    ids[:5] = 1
    if extra_id is not None:
        ids[9, 9] = extra_id
    return ids


def panoptic_evaluator(tmp_path, gt_ids, segments_info):
    png = tmp_path / "gt" / "img.png"
    save_panoptic_png(gt_ids, png)
    (tmp_path / "gt.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "img.jpg", "height": 10, "width": 10}],
        "annotations": [{"image_id": 1, "file_name": "img.png", "segments_info": segments_info}],
        "categories": CATEGORIES,
    }))
    name = f"gt_check_{tmp_path.name}"
    register_dataset(name, lambda: [], dict(build_panoptic_metadata(CATEGORIES), panoptic_json=str(tmp_path / "gt.json"),
                                            panoptic_root=str(tmp_path / "gt")))
    evaluator = build_panoptic_evaluator(name)
    evaluator.reset()
    return evaluator, str(png)


SEGMENTS = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 50},
            {"id": 2, "category_id": 10, "iscrowd": 0, "area": 50}]
PREDICTED = [{"id": 1, "category_id": 0, "isthing": True}, {"id": 2, "category_id": 1, "isthing": False}]


def process_perfect_prediction(evaluator, height=10, width=10):
    prediction = torch.from_numpy(two_segments(height, width))
    evaluator.process([{"file_name": "img.jpg", "image_id": 1, "height": height, "width": width}],
                      [{"panoptic_seg": (prediction, PREDICTED)}])


def test_sound_panoptic_ground_truth_is_scored(tmp_path):
    evaluator, _ = panoptic_evaluator(tmp_path, two_segments(), SEGMENTS)
    process_perfect_prediction(evaluator)
    assert evaluator.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)


def test_panoptic_png_id_missing_from_the_json_names_the_png(tmp_path):
    evaluator, png = panoptic_evaluator(tmp_path, two_segments(extra_id=7), SEGMENTS)
    with pytest.raises(DatasetFileError) as error:
        process_perfect_prediction(evaluator)
    assert str(error.value).startswith(f"{png}: segment ids [7] appear in the PNG but not in its json segments_info")


def test_panoptic_category_not_in_the_json_names_json_and_png(tmp_path):
    segments = [dict(SEGMENTS[0]), dict(SEGMENTS[1], category_id=99)]
    evaluator, png = panoptic_evaluator(tmp_path, two_segments(), segments)
    with pytest.raises(DatasetFileError, match=rf"gt.json: segments of {png} have category ids \[99\] that are "
                                               r"not in the json's categories"):
        process_perfect_prediction(evaluator)


def test_panoptic_png_of_another_size_names_the_png(tmp_path):
    evaluator, png = panoptic_evaluator(tmp_path, two_segments(10, 12), SEGMENTS)
    with pytest.raises(DatasetFileError) as error:
        process_perfect_prediction(evaluator)
    assert str(error.value) == (f"{png}: ground truth is (10, 12) (HxW) but its image img.jpg is predicted at "
                                "(10, 10); the ground truth must have the image's size")


def test_image_missing_from_the_panoptic_json_names_json_and_image(tmp_path):
    evaluator, _ = panoptic_evaluator(tmp_path, two_segments(), SEGMENTS)
    with pytest.raises(DatasetFileError) as error:
        evaluator.process([{"file_name": "other.jpg", "image_id": 5, "height": 10, "width": 10}],
                          [{"panoptic_seg": (torch.from_numpy(two_segments()), PREDICTED)}])
    assert str(error.value) == f"{tmp_path / 'gt.json'}: no annotation for image_id 5 (other.jpg)"


# ---- semantic: 9 classes, ignore 255 ------------------------------------------------------------

def semantic_evaluator(tmp_path, labels):
    label_file = tmp_path / "label.png"
    Image.fromarray(labels).save(label_file)
    name = f"sem_check_{tmp_path.name}"
    register_dataset(name, lambda: [{"file_name": "img.jpg", "sem_seg_file_name": str(label_file)}],
                     {"stuff_classes": [f"c{i}" for i in range(9)], "ignore_label": 255})
    evaluator = CheckedSemSegEvaluator(name, distributed=False)
    evaluator.reset()
    return evaluator, str(label_file)


def process_semantic(evaluator, height=4, width=6):
    scores = torch.zeros(9, height, width)
    scores[3] = 1.0  # class 3 everywhere
    evaluator.process([{"file_name": "img.jpg", "height": height, "width": width}], [{"sem_seg": scores}])


def test_sound_semantic_ground_truth_is_scored(tmp_path):
    labels = np.full((4, 6), 3, np.uint8)
    labels[0] = 255
    evaluator, _ = semantic_evaluator(tmp_path, labels)
    process_semantic(evaluator)
    assert evaluator.evaluate()["sem_seg"]["IoU-c3"] == pytest.approx(100.0)


def test_semantic_value_outside_the_classes_names_the_label_file(tmp_path):
    labels = np.full((4, 6), 3, np.uint8)
    labels[1, 1] = 200
    evaluator, label_file = semantic_evaluator(tmp_path, labels)
    with pytest.raises(DatasetFileError) as error:
        process_semantic(evaluator)
    assert str(error.value) == (f"{label_file}: label values [200] are outside 0..8 and are not the ignore "
                                "value 255")


def test_semantic_label_of_another_size_names_the_label_file(tmp_path):
    evaluator, label_file = semantic_evaluator(tmp_path, np.full((5, 6), 3, np.uint8))
    with pytest.raises(DatasetFileError) as error:
        process_semantic(evaluator)
    assert str(error.value) == (f"{label_file}: ground truth is (5, 6) (HxW) but its image img.jpg is predicted "
                                "at (4, 6); the ground truth must have the image's size")
