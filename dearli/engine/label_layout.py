"""Where to put a text label: inside the image and clear of the labels already placed.

Detectron2's ``Visualizer`` writes each label centred on its segment, so labels of neighbouring
segments print over each other ("ground" + "star" read "gistand") and labels of segments at the
border are cut ("triangle" at the left edge). :func:`place_label` moves a label's box to the
nearest free position inside the image. Pure geometry on ``(x0, y0, x1, y1)`` boxes in pixels,
so it is tested on its own; :mod:`dearli.engine.visualization` applies it to the drawn text.
"""
import itertools
from typing import List, Sequence, Tuple

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 (x1 > x0, y1 > y0), image pixels

# How far a label may move, in label heights (vertically) and half label widths (horizontally).
MAX_STEPS = 8
# Space kept between neighbouring labels, as a fraction of the label height.
GAP_FRACTION = 0.3


def overlaps(a: Box, b: Box) -> bool:
    """True when the boxes share an area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside_image(box: Box, width: float, height: float) -> bool:
    return box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height


def shift_inside(box: Box, width: float, height: float) -> Box:
    """``box`` moved (not resized) the least to lie inside ``width`` x ``height``; a box larger
    than the image is aligned with its left / top edge."""
    x0, y0, x1, y1 = box
    dx = max(-x0, min(0.0, width - x1))
    dy = max(-y0, min(0.0, height - y1))
    return x0 + dx, y0 + dy, x1 + dx, y1 + dy


def _offsets(box_width: float, box_height: float) -> List[Tuple[float, float]]:
    """Candidate moves, nearest first (the unmoved position comes first)."""
    dy_step = box_height * (1 + GAP_FRACTION)
    dx_step = box_width / 2
    steps = range(-MAX_STEPS, MAX_STEPS + 1)
    moves = [(i * dx_step, j * dy_step) for i, j in itertools.product(steps, steps)]
    return sorted(moves, key=lambda m: (m[0] ** 2 + m[1] ** 2, abs(m[1]), m[1], m[0]))


def place_label(box: Box, width: float, height: float, placed: Sequence[Box]) -> Box:
    """The position for a label wanted at ``box``: the nearest candidate move that lies inside
    the image and overlaps none of ``placed`` (padded by a small gap); when every candidate
    collides, ``box`` shifted inside the image (overlap is then unavoidable)."""
    box_width, box_height = box[2] - box[0], box[3] - box[1]
    gap = box_height * GAP_FRACTION
    padded = [(p[0] - gap, p[1] - gap, p[2] + gap, p[3] + gap) for p in placed]
    for dx, dy in _offsets(box_width, box_height):
        candidate = shift_inside((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), width, height)
        if not any(overlaps(candidate, p) for p in padded):
            return candidate
    return shift_inside(box, width, height)
