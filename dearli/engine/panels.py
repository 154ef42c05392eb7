"""Pictures made of several panels: a title above each panel, panels side by side, display sizes.

Used by tools/visualize_data.py, the demo's visuals and the TensorBoard pseudo-label images, so a
reader sees what each panel shows ("teacher pseudo-label", "student", ...) and small crops are
enlarged while large photos are not blown up. Titles are drawn with Pillow's built-in scalable font,
so pictures look the same on every machine. RGB uint8 HxWx3 in, RGB uint8 out.
"""
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PANEL_GAP = 4  # white pixels between panels
# Title font: 1/20 of the panel width, between these sizes (pixels); a longer title is shrunk
# down to MIN_TITLE_PX and then cut with "...".
MIN_TITLE_PX, MAX_TITLE_PX = 10, 22
TITLE_MARGIN = 3  # pixels around the title text
# Display size: small crops are enlarged (integer factor, nearest neighbour) until their longer side
# reaches DISPLAY_SIDE; larger images are shrunk only when their longer side exceeds MAX_SIDE.
DISPLAY_SIDE, MAX_SIDE = 512, 1024


def display_scale(height: int, width: int) -> float:
    """The scale that gives an image of ``height`` x ``width`` a sensible size on screen."""
    longest = max(height, width)
    if longest > MAX_SIDE:
        return MAX_SIDE / longest
    return float(max(1, DISPLAY_SIDE // longest))


def title_font_size(panel_width: int) -> int:
    return int(min(MAX_TITLE_PX, max(MIN_TITLE_PX, panel_width // 20)))


def _fitting_title(draw, title: str, width: int):
    """(font, text) of ``title`` in the largest size <= the panel's that fits ``width`` pixels."""
    size = title_font_size(width + 2 * TITLE_MARGIN)
    while True:
        font = ImageFont.load_default(size=size)
        if draw.textlength(title, font=font) <= width or size <= MIN_TITLE_PX:
            break
        size -= 1
    if draw.textlength(title, font=font) <= width:
        return font, title
    text = title
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return font, text.rstrip() + "..."


def title_strip_height(panel_width: int) -> int:
    """Height of the title strip that :func:`titled` adds above a panel this wide."""
    return title_font_size(panel_width) + 2 * TITLE_MARGIN + 2


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` below a white strip holding ``title`` (black, left-aligned)."""
    width = panel.shape[1]
    strip = Image.new("RGB", (width, title_strip_height(width)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font, text = _fitting_title(draw, title, width - 2 * TITLE_MARGIN)
    draw.text((TITLE_MARGIN, TITLE_MARGIN), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), panel], axis=0)


def panel_row(panels: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None) -> np.ndarray:
    """The panels side by side, each under its title, bottoms padded white to the tallest."""
    if titles is not None:
        if len(titles) != len(panels):
            raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
        panels = [titled(p, t) for p, t in zip(panels, titles)]
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, PANEL_GAP, 3), 255, dtype=np.uint8)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate([x for p in padded for x in (p, gap)][:-1], axis=1)
