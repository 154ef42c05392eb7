"""Readers that validate dataset files when a mapper opens them, with errors naming the file.

Bad data must never turn into a silently wrong label. These functions are what the mappers call
instead of reading files directly:

- :func:`read_rgb_image`: any image as RGB uint8 HxWx3; THE image reader of dearli (mappers,
  evaluation, SAM generation, the demo and the tools all call it). Documented conversions:
  grayscale (``L``) is replicated to three channels, ``LA`` / ``RGBA`` images lose their alpha
  channel (it is dropped, not composited), palette (``P``) images are expanded through their
  palette, CMYK / YCbCr are converted by Pillow. High bit depths: 16-bit RGB(A) files are already
  decoded by Pillow to 8 bits per channel by keeping the high byte; 16-bit grayscale (Pillow's
  ``I;16*`` modes) is scaled the same way (``value >> 8``, so 65535 -> 255, not clipped to white as
  Pillow's own conversion does). 32-bit integer (``I``) and float (``F``) images are refused: their
  value range is not known. EXIF orientation is applied, as Detectron2's ``read_image`` does. A
  corrupt or truncated file raises :class:`DatasetFileError`.
- :func:`read_panoptic_ids`: a COCO panoptic PNG as an int32 id map, checking that every id in
  the PNG has an entry in the json's ``segments_info``.
- :func:`read_sem_seg`: a semantic label PNG, checking that every value is a class or ``ignore``.
"""
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from panopticapi.utils import rgb2id

from .metadata import IGNORE_LABEL

# Pillow modes that convert to RGB without losing information beyond the documented alpha drop.
_CONVERTIBLE_MODES = {"RGB", "L", "LA", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "1"}
# Pillow's 16-bit single-channel modes (values 0..65535); Pillow's convert() would clip them at 255.
_SIXTEEN_BIT_GRAY_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


class DatasetFileError(ValueError):
    """A dataset file is missing, unreadable or inconsistent with its annotations."""


def _open_fully(path):
    """Open and decode an image; truncated or corrupt files raise a DatasetFileError."""
    try:
        image = Image.open(path)
        image.load()  # decode now: a truncated file fails here, not later inside a transform
    except FileNotFoundError as e:
        raise DatasetFileError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetFileError(f"{path}: cannot decode image ({e}); the file is corrupt or "
                               "truncated") from e
    return image


def read_rgb_image(path):
    """The image at ``path`` as an RGB uint8 array HxWx3 (see the module docstring)."""
    image = _open_fully(path)
    if image.mode not in _CONVERTIBLE_MODES | _SIXTEEN_BIT_GRAY_MODES:
        raise DatasetFileError(
            f"{path}: image mode {image.mode!r} (32-bit integer or float pixels) has no known "
            "value range, so it cannot be converted to 8-bit RGB; convert the file to 8-bit or "
            "16-bit RGB or grayscale first"
        )
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_GRAY_MODES:  # high byte, as Pillow decodes 16-bit RGB files
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8), mode="L")
    return np.asarray(image.convert("RGB"))


def read_panoptic_ids(path, segments_info):
    """Segment-id map (int32 HxW, 0 = void) of a COCO panoptic PNG, checked against its json.

    Every non-zero id in the PNG must be an ``id`` of ``segments_info``; otherwise the pixels
    would silently become void or take another segment's label.
    """
    image = _open_fully(path)
    if image.mode != "RGB":
        raise DatasetFileError(f"{path}: panoptic PNG must be RGB-encoded (mode {image.mode!r})")
    ids = rgb2id(np.asarray(image, dtype=np.uint32)).astype(np.int32)
    known = {int(s["id"]) for s in segments_info}
    unknown = sorted(set(np.unique(ids).tolist()) - known - {0})
    if unknown:
        raise DatasetFileError(
            f"{path}: segment ids {unknown[:10]} appear in the PNG but not in its json "
            f"segments_info (known ids: {sorted(known)[:10]}...)"
        )
    return ids


def read_sem_seg(path, num_classes, ignore_label=IGNORE_LABEL):
    """Semantic label map (uint8 HxW) whose values are all in 0..num_classes-1 or ``ignore``."""
    image = _open_fully(path)
    if image.mode not in ("L", "P"):
        raise DatasetFileError(f"{path}: semantic labels must be a single-channel 8-bit PNG "
                               f"(mode {image.mode!r})")
    labels = np.asarray(image, dtype=np.uint8)
    check_label_values(labels, num_classes, ignore_label, path)
    return labels


def check_label_values(labels, num_classes, ignore_label, path):
    """Raise if ``labels`` holds a value that is neither a class id nor ``ignore_label``."""
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
        raise DatasetFileError(
            f"{path}: label values {bad.tolist()[:10]} are outside 0..{num_classes - 1} and are "
            f"not the ignore value {ignore_label}"
        )


def check_same_size(path_a, shape_a, path_b, shape_b):
    """Raise if two per-image files (e.g. an image and its label) differ in height/width."""
    if tuple(shape_a[:2]) != tuple(shape_b[:2]):
        raise DatasetFileError(
            f"{path_b} has size {tuple(shape_b[:2])} (HxW) but {path_a} has {tuple(shape_a[:2])}"
        )
