"""Panoptic and semantic overlays with class names, on top of Detectron2's ``Visualizer``.

Generic on purpose: the demo draws model predictions with them, and the trainer can draw
pseudo-labels or ground truth for TensorBoard. Every function takes an RGB uint8 HxWx3 image and
returns a new RGB uint8 image of the same size; nothing is written to disk here.

Colours are deterministic: classes without colours in their metadata get a fixed palette colour
per class id (Detectron2 would otherwise pick random colours on every call, so two overlays of the
same prediction would differ). Labels are drawn by :class:`LabelledVisualizer`: never smaller than
a readable size, inside the image, and not over each other (see :mod:`.label_layout`).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

from .label_layout import Box, place_label

# Opacity of the drawn segments: the image stays visible beneath the overlay.
OVERLAY_ALPHA = 0.6
_PALETTE = colormap(rgb=True, maximum=255).astype(int).tolist()
# Smallest label font, in points of the output image (9 pt at matplotlib's 100 dpi is ~12 px):
# Detectron2 halves thing labels, which makes them unreadable on enlarged crops. On images smaller
# than LABEL_FLOOR_SIDE x 9 pixels (geometric mean side) the floor shrinks with the image, so a few
# labels still leave most of it visible.
MIN_LABEL_POINTS = 9.0
LABEL_FLOOR_SIDE = 40.0


class LabelledVisualizer(Visualizer):
    """Detectron2's ``Visualizer`` whose labels are at least MIN_LABEL_POINTS high and are moved to
    the nearest place inside the image that no earlier label covers.

    ``label_boxes`` lists the drawn labels as (text, (x0, y0, x1, y1)) in input-image pixels.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_boxes = []

    def draw_text(self, text, position, *, font_size=None, color="g", horizontal_alignment="center", rotation=0):
        output_side = (self.output.width * self.output.height) ** 0.5 * self.output.scale
        floor_points = min(MIN_LABEL_POINTS, output_side / LABEL_FLOOR_SIDE)
        font_size = max(font_size or self._default_font_size, floor_points / self.output.scale)
        output = super().draw_text(text, position, font_size=font_size, color=color,
                                   horizontal_alignment=horizontal_alignment, rotation=rotation)
        artist = self.output.ax.texts[-1]
        wanted = self._label_box(artist)
        placed = place_label(wanted, self.output.width, self.output.height, [b for _, b in self.label_boxes])
        x, y = artist.get_position()
        artist.set_position((x + placed[0] - wanted[0], y + placed[1] - wanted[1]))
        self.label_boxes.append((text, placed))
        return output

    def _label_box(self, artist) -> Box:
        """The extent of a drawn label with its dark background, in input-image pixels."""
        renderer = self.output.canvas.get_renderer()
        artist.update_bbox_position_size(renderer)
        extent = artist.get_bbox_patch().get_window_extent(renderer)
        (x0, y0), (x1, y1) = self.output.ax.transData.inverted().transform(extent.get_points())
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def class_names(metadata) -> List[str]:
    """Display names of all classes, contiguous order (contract: ``stuff_classes`` lists all)."""
    names = metadata.get("stuff_classes", None) or metadata.get("thing_classes", None)
    if not names:
        raise ValueError(f"metadata {metadata.name!r} has no stuff_classes/thing_classes to name "
                         "the classes")
    return list(names)


def palette_colors(num_classes: int) -> List[List[int]]:
    """A fixed RGB colour per class id (Detectron2's palette, repeated when there are more)."""
    return [list(_PALETTE[i % len(_PALETTE)]) for i in range(num_classes)]


def drawing_metadata(metadata) -> Metadata:
    """An unregistered copy of the names and colours the Visualizer reads, with a deterministic
    palette wherever the dataset defines no colours."""
    names = class_names(metadata)
    colors = metadata.get("stuff_colors", None) or palette_colors(len(names))
    return Metadata(
        name=f"{metadata.name}_drawing",
        thing_classes=list(metadata.get("thing_classes", None) or names),
        stuff_classes=names,
        thing_colors=list(metadata.get("thing_colors", None) or colors),
        stuff_colors=list(colors),
    )


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image HxWx3, got {image.dtype} {image.shape}")


def _check_same_size(image: np.ndarray, segmentation, what: str) -> None:
    if tuple(segmentation.shape[-2:]) != image.shape[:2]:
        raise ValueError(f"{what} of size {tuple(segmentation.shape[-2:])} does not match the "
                         f"image size {image.shape[:2]}")


def draw_panoptic(image: np.ndarray, panoptic_seg, segments_info: Sequence[Dict], metadata,
                  alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Overlay a panoptic segmentation: ``panoptic_seg`` int [H,W] (0 = no segment) with
    ``segments_info`` items {"id", "category_id" (contiguous), "isthing"[, "score"]}. Stuff is
    labelled with its class name, things with name and score."""
    _check_image(image)
    _check_same_size(image, panoptic_seg, "panoptic_seg")
    panoptic_seg = torch.as_tensor(panoptic_seg).cpu()
    # The Visualizer adds an "area" entry to the dicts it is given: hand it copies.
    segments = [dict(s) for s in segments_info]
    visualizer = LabelledVisualizer(image, drawing_metadata(metadata), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_panoptic_seg(panoptic_seg, segments, alpha=alpha).get_image()


def draw_semantic(image: np.ndarray, sem_seg, metadata, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Overlay a semantic segmentation, given as class scores [C,H,W] (argmax is drawn) or as a
    label map [H,W] (values outside 0..C-1, e.g. the ignore label 255, are not drawn)."""
    _check_image(image)
    _check_same_size(image, sem_seg, "sem_seg")
    labels = torch.as_tensor(sem_seg).detach().cpu()
    if labels.dim() == 3:
        labels = labels.argmax(dim=0)
    visualizer = LabelledVisualizer(image, drawing_metadata(metadata), instance_mode=ColorMode.IMAGE)
    return visualizer.draw_sem_seg(labels.to(torch.int64), alpha=alpha).get_image()


def named_segments(segments_info: Sequence[Dict], metadata, panoptic_seg=None) -> List[Dict]:
    """JSON-ready segments: each item of ``segments_info`` with plain Python values, its
    ``category_name`` and, when ``panoptic_seg`` is given, its ``area`` in pixels."""
    names = class_names(metadata)
    areas = {}
    if panoptic_seg is not None:
        ids = torch.as_tensor(panoptic_seg).cpu().flatten().long()
        counts = torch.bincount(ids.clamp(min=0))  # linear time: unique() sorts all pixels
        areas = {i: n for i, n in enumerate(counts.tolist()) if n}
    segments = []
    for segment in segments_info:
        item = {key: _plain(value) for key, value in segment.items()}
        item["category_name"] = names[int(segment["category_id"])]
        if panoptic_seg is not None:
            item["area"] = int(areas.get(int(segment["id"]), 0))
        segments.append(item)
    return segments


def _plain(value):
    """A JSON-serialisable copy of a scalar that may be a tensor or a numpy number."""
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return value
