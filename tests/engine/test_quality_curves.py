"""The quality-curve PNG of a run's metrics.json."""
import json

import numpy as np
import pytest
from PIL import Image

from dearli.engine.quality_curves import plot_quality_curves, quality_series, read_metrics


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
    {"iteration": 19, "total_loss": 3.0},
    {"iteration": 49, "panoptic_seg/PQ": 10.0, "sem_seg/mIoU": 20.0, "pseudo_quality/PQ": 5.0,
     "pseudo_quality/mIoU": 15.0, "pseudo_quality/coverage": 60.0, "teacher/panoptic_seg/PQ": 9.0},
    # A resumed run evaluates iteration 49 again: the later value wins.
    {"iteration": 49, "pseudo_quality/PQ": 6.0},
    {"iteration": 100, "panoptic_seg/PQ": 12.5, "pseudo_quality/PQ": 7.0},
]


def test_series_per_key_in_iteration_order():
    series = quality_series(RECORDS)
    assert series["panoptic_seg/PQ"] == [(49, 10.0), (100, 12.5)]
    assert series["pseudo_quality/PQ"] == [(49, 6.0), (100, 7.0)]
    assert series["pseudo_quality/coverage"] == [(49, 60.0)]
    assert "total_loss" not in series and "teacher/sem_seg/mIoU" not in series


def test_png_is_written_and_only_with_evaluations(tmp_path):
    metrics = tmp_path / "metrics.json"
    write_metrics(metrics, RECORDS)
    assert plot_quality_curves(str(metrics), str(tmp_path / "curves.png"), "shapes, seed 1: semi-supervised")
    picture = np.asarray(Image.open(tmp_path / "curves.png"))
    assert picture.shape[:2] == (340, 1260) and picture.std() > 0  # three panels of 4.2 x 3.4 in at 100 dpi
    write_metrics(metrics, RECORDS[:1])
    assert not plot_quality_curves(str(metrics), str(tmp_path / "none.png"), "no evaluation")
    assert not (tmp_path / "none.png").exists()


def test_a_broken_line_names_the_file_and_line(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 1}\n{"iteration": \n')
    with pytest.raises(ValueError, match=r"metrics.json, line 2: not a JSON record"):
        read_metrics(str(metrics))
