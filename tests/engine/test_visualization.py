"""Overlays: class names drawn, image size kept, undrawn pixels untouched, JSON segments."""
import json

import numpy as np
import pytest
import torch
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer

from dearli.engine.visualization import (
    draw_panoptic, draw_semantic, drawing_metadata, named_segments, palette_colors,
)

METADATA = Metadata(name="vis_test", thing_classes=["cat", "sky", "road"], stuff_classes=["cat", "sky", "road"])


@pytest.fixture
def drawn_texts(monkeypatch):
    texts = []
    draw_text = Visualizer.draw_text

    def recording_draw_text(self, text, *args, **kwargs):
        texts.append(text)
        return draw_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Visualizer, "draw_text", recording_draw_text)
    return texts


def _scene():
    """A 60x80 grey image; segment 1 = a "cat" box (thing), segment 2 = the "road" band (stuff)."""
    image = np.full((60, 80, 3), 90, np.uint8)
    pan_seg = torch.zeros(60, 80, dtype=torch.int32)
    pan_seg[5:25, 5:35] = 1
    pan_seg[40:60, :] = 2
    segments = [{"id": 1, "category_id": 0, "isthing": True, "score": 0.75},
                {"id": 2, "category_id": 2, "isthing": False, "score": 0.5}]
    return image, pan_seg, segments


def test_panoptic_overlay_names_segments_and_keeps_the_rest(drawn_texts):
    image, pan_seg, segments = _scene()
    overlay = draw_panoptic(image, pan_seg, segments, METADATA)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert sorted(drawn_texts) == ["cat 75%", "road"]
    assert (overlay[10:20, 10:30] != image[10:20, 10:30]).any(axis=-1).all()  # inside the cat box
    assert (overlay[45:55] != image[45:55]).any(axis=-1).all()  # inside the road band
    assert np.array_equal(overlay[5:22, 62:80], image[5:22, 62:80])  # far from every segment and label
    assert segments[0].keys() == {"id", "category_id", "isthing", "score"}  # inputs not modified


def test_semantic_overlay_from_scores_and_labels(drawn_texts):
    image = np.full((60, 80, 3), 90, np.uint8)
    labels = torch.full((60, 80), 255, dtype=torch.int64)  # ignore label: not drawn
    labels[:, :30] = 1
    scores = torch.nn.functional.one_hot(labels.clamp(max=2), 3).permute(2, 0, 1).float()
    from_labels = draw_semantic(image, labels, METADATA)
    assert drawn_texts == ["sky"]
    assert np.array_equal(from_labels[:, 40:], image[:, 40:])
    assert (from_labels[:, 5:25] != image[:, 5:25]).any(axis=-1).all()
    # Scores [C,H,W] are drawn by their argmax (here "road" on the right), in fixed colours.
    from_scores = draw_semantic(image, scores, METADATA)
    assert drawn_texts == ["sky", "road", "sky"]  # largest region first
    assert np.array_equal(from_scores, draw_semantic(image, scores, METADATA))


def test_palette_is_used_only_without_dataset_colours():
    assert drawing_metadata(METADATA).stuff_colors == palette_colors(3)
    coloured = Metadata(name="coloured", stuff_classes=["a"], stuff_colors=[[1, 2, 3]])
    assert drawing_metadata(coloured).stuff_colors == [[1, 2, 3]]
    assert drawing_metadata(coloured).thing_classes == ["a"]
    assert len(palette_colors(200)) == 200


def test_named_segments_add_names_and_areas():
    _, pan_seg, segments = _scene()
    segments[0]["score"] = torch.tensor(0.75)  # tensors and numpy scalars become plain numbers
    named = named_segments(segments, METADATA, pan_seg)
    assert [s["category_name"] for s in named] == ["cat", "road"]
    assert [s["area"] for s in named] == [20 * 30, 20 * 80]
    assert json.loads(json.dumps(named))[0]["score"] == 0.75


def test_size_mismatch_and_bad_images_are_errors():
    image, pan_seg, segments = _scene()
    with pytest.raises(ValueError, match=r"panoptic_seg of size \(30, 80\) does not match the image size \(60, 80\)"):
        draw_panoptic(image, pan_seg[:30], segments, METADATA)
    with pytest.raises(ValueError, match="RGB uint8 image"):
        draw_semantic(image.astype(np.float32), torch.zeros(60, 80), METADATA)
    with pytest.raises(ValueError, match="has no stuff_classes/thing_classes"):
        draw_semantic(image, torch.zeros(60, 80), Metadata(name="nameless"))
