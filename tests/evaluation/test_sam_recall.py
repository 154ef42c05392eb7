"""Recall / precision of class-agnostic masks against panoptic ground truth (dearli/evaluation/sam_recall.py,
tools/eval_sam_recall.py): hand-computed cases, and the ground truth itself (ORACLE labels) scoring 100 %."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog

from dearli.data import sam_oracle
from dearli.evaluation.sam_recall import RecallCounts, evaluate_label_folder, image_counts, mask_iou_matrix

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import eval_sam_recall as tool  # noqa: E402


def _mask(rows, cols, shape=(4, 4)):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_iou_matrix_by_hand():
    gt = np.stack([_mask(slice(0, 2), slice(0, 4)), _mask(slice(2, 4), slice(0, 4))])  # top half, bottom half
    pred = np.stack([_mask(slice(0, 2), slice(0, 2)), _mask(slice(0, 4), slice(0, 4)), np.zeros((4, 4), bool)])
    expected = np.array([[4 / 8, 8 / 16, 0.0], [0.0, 8 / 16, 0.0]])
    np.testing.assert_allclose(mask_iou_matrix(gt, pred), expected)


def test_counts_of_one_image_by_hand():
    thing, stuff = _mask(slice(0, 2), slice(0, 2)), ~_mask(slice(0, 2), slice(0, 2))
    half_thing = _mask(slice(0, 2), slice(0, 1))  # IoU 2/4 = 0.5: counts (>=)
    bigger_thing = _mask(slice(0, 3), slice(0, 3))  # IoU 4/9 with the thing, 5/12... with stuff: < 0.5
    counts = image_counts(np.stack([thing, stuff]), [True, False], np.stack([half_thing, bigger_thing]))
    assert counts == RecallCounts(images=1, things=1, things_recalled=1, stuff=1, stuff_recalled=0, masks=2,
                                  masks_precise=1)
    assert (counts.recall_things, counts.recall_stuff, counts.recall, counts.precision) == (1.0, 0.0, 0.5, 0.5)
    empty = image_counts(np.stack([thing, stuff]), [True, False], np.zeros((0, 4, 4), bool))
    assert (empty.recall, empty.masks, empty.precision) == (0.0, 0, 0.0)


def test_counts_add_up_over_images():
    a = RecallCounts(1, 2, 1, 2, 2, 5, 3)
    b = RecallCounts(1, 1, 1, 2, 0, 3, 1)
    total = a + b
    assert total == RecallCounts(2, 3, 2, 4, 2, 8, 4)
    assert (total.recall, total.masks_per_image, total.precision) == (4 / 7, 4.0, 0.5)


@pytest.fixture(scope="module")
def oracle_val_labels(tmp_path_factory):
    """ORACLE labels (the ground-truth segments) of the first 3 synthetic validation images."""
    dicts = DatasetCatalog.get("dearli_shapes_val")[:3]
    label_dir = tmp_path_factory.mktemp("oracle") / "labels"
    sam_oracle.write_oracle_labels(dicts, label_dir)
    return dicts, label_dir


def test_ground_truth_as_labels_recalls_everything_precisely(oracle_val_labels):
    dicts, label_dir = oracle_val_labels
    counts = evaluate_label_folder(dicts, label_dir)
    segments = sum(len(d["segments_info"]) for d in dicts)
    things = sum(s["isthing"] for d in dicts for s in d["segments_info"])
    assert counts == RecallCounts(images=3, things=things, things_recalled=things, stuff=segments - things,
                                  stuff_recalled=segments - things, masks=segments, masks_precise=segments)
    assert counts.stuff == 6  # two stuff regions per synthetic image


def test_tool_prints_the_table_and_writes_json(oracle_val_labels, tmp_path, capsys):
    _, label_dir = oracle_val_labels
    out = tmp_path / "recall.json"
    summary = tool.main(["--labels", str(label_dir), "--dataset", "dearli_shapes_val", "--num-images", "3",
                         "--json", str(out)])
    assert "| 100.0 " in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["recall"] == summary["recall"] == 1.0 and written["images"] == 3
    assert written["label_meta"]["source"] == "oracle"


def test_tool_names_an_image_without_labels(oracle_val_labels):
    _, label_dir = oracle_val_labels
    with pytest.raises(SystemExit, match=r"no pseudo-label file .*val_000003\.json for image 'val_000003'"):
        tool.main(["--labels", str(label_dir), "--dataset", "dearli_shapes_val", "--num-images", "4"])
