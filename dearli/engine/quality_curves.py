"""A PNG of a run's quality over its iterations: val PQ / mIoU of student and teacher next to the
teacher's pseudo-label PQ / mIoU and coverage (``pseudo_quality/*``, see
:mod:`dearli.engine.pseudo_label_quality`), read from the run's metrics.json.

It shows whether pseudo-labels are good enough to help, and whether val quality follows them.
"""
import io
import json
from typing import Dict, List, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.atomic_io import atomic_write

# Panels: (title, [(metrics.json key, legend label)]).
PANELS = (
    ("PQ", (("panoptic_seg/PQ", "student, val"), ("teacher/panoptic_seg/PQ", "teacher, val"),
            ("pseudo_quality/PQ", "pseudo-labels, unlabeled"))),
    ("mIoU", (("sem_seg/mIoU", "student, val"), ("teacher/sem_seg/mIoU", "teacher, val"),
              ("pseudo_quality/mIoU", "pseudo-labels, unlabeled"))),
    ("pseudo-label coverage (% of pixels)", (("pseudo_quality/coverage", "pseudo-labels, unlabeled"),)),
)
# One colour per source in every panel.
COLOURS = {"student, val": "tab:blue", "teacher, val": "tab:orange", "pseudo-labels, unlabeled": "tab:green"}
Series = List[Tuple[int, float]]


def read_metrics(path: str) -> List[Dict]:
    """The records of a Detectron2 metrics.json (one JSON object per line)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error.msg})") from None
    return records


def quality_series(records: List[Dict]) -> Dict[str, Series]:
    """{key: [(iteration, value)] ascending} of every plotted key present; a resumed run's
    repeated iteration keeps its last value."""
    by_key: Dict[str, Dict[int, float]] = {}
    keys = {key for _, curves in PANELS for key, _ in curves}
    for record in records:
        for key in keys & set(record):
            by_key.setdefault(key, {})[int(record["iteration"])] = float(record[key])
    return {key: sorted(values.items()) for key, values in by_key.items()}


def plot_quality_curves(metrics_file: str, png_path: str, title: str) -> bool:
    """Write the PNG (atomically) of ``metrics_file``; False (nothing written) when it holds no
    evaluation at all."""
    series = quality_series(read_metrics(metrics_file))
    if not series:
        return False
    figure = Figure(figsize=(4.2 * len(PANELS), 3.4), dpi=100)
    FigureCanvasAgg(figure)
    for axes, (panel_title, curves) in zip(figure.subplots(1, len(PANELS)), PANELS):
        for key, label in curves:
            if key in series:
                iterations, values = zip(*series[key])
                axes.plot(iterations, values, marker="o", label=label, color=COLOURS[label])
        axes.set_title(panel_title)
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    with atomic_write(png_path, "wb") as f:
        f.write(buffer.getvalue())
    return True
