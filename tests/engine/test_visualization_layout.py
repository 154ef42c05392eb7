"""Label placement (inside the image, not over each other, readable) and titled panels."""
import itertools

import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image, ImageDraw

from dearli.engine import panels
from dearli.engine.label_layout import GAP_FRACTION, inside_image, overlaps, place_label, shift_inside
from dearli.engine.visualization import MIN_LABEL_POINTS, LabelledVisualizer, drawing_metadata

METADATA = Metadata(name="layout_test", stuff_classes=["ground", "star", "triangle"],
                    thing_classes=["ground", "star", "triangle"])


# ----------------------------------------------------------------------------- placement geometry
def test_a_free_label_inside_the_image_stays_where_it_was_wanted():
    assert place_label((10, 20, 50, 30), 100, 100, []) == (10, 20, 50, 30)


def test_a_label_over_the_edge_is_moved_inside_without_resizing():
    assert place_label((-12, 5, 28, 15), 100, 80, []) == (0, 5, 40, 15)
    assert place_label((70, 75, 110, 85), 100, 80, []) == (60, 70, 100, 80)
    # Wider than the image: aligned with the left edge.
    assert shift_inside((30, 0, 150, 10), 100, 80) == (0, 0, 120, 10)


def test_a_label_on_a_taken_place_moves_one_label_height_up():
    first = (40, 40, 80, 50)
    step = 10 * (1 + GAP_FRACTION)
    assert place_label(first, 200, 200, [first]) == (40, 40 - step, 80, 50 - step)
    # At the top edge it goes down instead.
    top = (40, 0, 80, 10)
    assert place_label(top, 200, 200, [top]) == (40, step, 80, 10 + step)


def test_many_labels_wanted_at_one_spot_are_all_inside_and_apart():
    placed = []
    for k in range(12):
        wanted = (-5 + k, 30, 45 + k, 42)  # all near the left edge, on top of each other
        placed.append(place_label(wanted, 160, 120, placed))
    assert all(inside_image(box, 160, 120) for box in placed)
    assert not any(overlaps(a, b) for a, b in itertools.combinations(placed, 2))
    assert all(b[2] - b[0] == 50 and b[3] - b[1] == 12 for b in placed)  # sizes kept


def test_when_no_place_is_free_the_label_is_still_inside():
    full = [(0, 0, 30, 20)]
    assert place_label((-10, -5, 20, 15), 30, 20, full) == (0, 0, 30, 20)


# ----------------------------------------------------------------------------- drawn labels
def _edge_scene(scale):
    """A triangle at the left edge, a star next to a ground band: Detectron2 cuts the triangle's
    label at the edge and prints "ground" over "star"."""
    seg = torch.zeros(96, 96, dtype=torch.int32)
    seg[:, :] = 1  # ground everywhere ...
    seg[30:50, 0:6] = 3  # ... a thin triangle at the left edge
    seg[56:64, 40:52] = 2  # ... and a small star in the middle of the ground
    segments = [{"id": 1, "category_id": 0, "isthing": False},
                {"id": 2, "category_id": 1, "isthing": True, "score": 0.9},
                {"id": 3, "category_id": 2, "isthing": True, "score": 0.8}]
    image = np.full((96 * scale, 96 * scale, 3), 120, np.uint8)
    big = seg.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return image, big, segments


def _rendered_label_boxes(visualizer):
    """Extents of every drawn label (text with its dark background) as matplotlib renders them,
    in output pixels with y pointing down."""
    canvas = visualizer.output.canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    height = visualizer.output.height * visualizer.output.scale
    boxes = []
    for artist in visualizer.output.ax.texts:
        (x0, y0), (x1, y1) = artist.get_bbox_patch().get_window_extent(renderer).get_points()
        boxes.append((artist.get_text(), (x0, height - y1, x1, height - y0)))
    return boxes


def _draw(visualizer_class, scale=4):
    image, seg, segments = _edge_scene(scale)
    visualizer = visualizer_class(image, drawing_metadata(METADATA), instance_mode=ColorMode.IMAGE)
    visualizer.draw_panoptic_seg(seg, [dict(s) for s in segments])
    return visualizer, image.shape


def test_detectron2_alone_cuts_or_overlaps_labels_in_this_scene():
    visualizer, (height, width, _) = _draw(Visualizer)
    boxes = [box for _, box in _rendered_label_boxes(visualizer)]
    cut = [box for box in boxes if not inside_image(box, width, height)]
    overlapping = [pair for pair in itertools.combinations(boxes, 2) if overlaps(*pair)]
    assert cut or overlapping  # the scene shows the problem the layout solves


def test_labels_are_inside_the_image_apart_and_readable():
    visualizer, (height, width, _) = _draw(LabelledVisualizer)
    rendered = _rendered_label_boxes(visualizer)
    assert sorted(text for text, _ in rendered) == ["ground", "star 90%", "triangle 80%"]
    boxes = [box for _, box in rendered]
    tolerance = 1.0  # pixels of antialiasing / rounding
    for box in boxes:
        assert box[0] >= -tolerance and box[1] >= -tolerance
        assert box[2] <= width + tolerance and box[3] <= height + tolerance
    for a, b in itertools.combinations(boxes, 2):
        shrunk = (a[0] + tolerance, a[1] + tolerance, a[2] - tolerance, a[3] - tolerance)
        assert not overlaps(shrunk, b), (a, b)
    # What the visualizer recorded is what matplotlib drew.
    for (text, drawn), (recorded_text, recorded) in zip(rendered, visualizer.label_boxes):
        assert text == recorded_text and np.allclose(drawn, recorded, atol=tolerance)
    assert all(artist.get_fontsize() >= MIN_LABEL_POINTS for artist in visualizer.output.ax.texts)


# ----------------------------------------------------------------------------- panels
def test_titled_panel_keeps_the_panel_below_a_title_strip():
    panel = np.full((40, 200, 3), 7, np.uint8)
    out = panels.titled(panel, "teacher")
    strip = panels.title_strip_height(200)
    assert out.shape == (40 + strip, 200, 3)
    assert np.array_equal(out[strip:], panel)
    title = out[:strip]
    dark_columns = np.flatnonzero((title < 128).all(axis=-1).any(axis=0))
    assert dark_columns.size and dark_columns[0] >= panels.TITLE_MARGIN  # text, left-aligned
    assert dark_columns[-1] < 200 // 2  # a short title leaves the right half blank


def test_a_long_title_is_shrunk_then_cut_to_fit():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    width = 90
    font, text = panels._fitting_title(draw, "student target (CutMix strong view)", width)
    assert text.endswith("...") and draw.textlength(text, font=font) <= width
    assert font.size == panels.MIN_TITLE_PX
    font, text = panels._fitting_title(draw, "image", width)
    assert text == "image" and font.size == panels.title_font_size(width)


def test_panel_row_sizes_and_padding():
    a, b = np.zeros((30, 50, 3), np.uint8), np.zeros((20, 60, 3), np.uint8)
    row = panels.panel_row([a, b])
    assert row.shape == (30, 50 + panels.PANEL_GAP + 60, 3)
    assert (row[20:, 50 + panels.PANEL_GAP:] == 255).all()  # the shorter panel is padded white
    titled = panels.panel_row([a, b], ["a", "b"])
    assert titled.shape[0] == 30 + max(panels.title_strip_height(50), panels.title_strip_height(60))
    with pytest.raises(ValueError, match="2 panels but 1 titles"):
        panels.panel_row([a, b], ["a"])


@pytest.mark.parametrize("size,scale", [((96, 96), 5.0), ((32, 40), 12.0), ((360, 480), 1.0), ((720, 960), 1.0),
                                        ((1024, 2048), 0.5)])
def test_display_scale_enlarges_crops_keeps_photos_and_shrinks_huge_images(size, scale):
    assert panels.display_scale(*size) == scale
    longest = max(size) * scale
    assert longest <= panels.MAX_SIDE and (longest >= panels.DISPLAY_SIDE - max(size) or scale == 1.0)
