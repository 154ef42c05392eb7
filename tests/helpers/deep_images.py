"""Writers of high-bit-depth image files (16-bit PNG / TIFF, 32-bit integer and float TIFF) with
known pixel values, for the tests of dearli's one image reader."""
import cv2
import numpy as np
import tifffile

# A 16-bit ramp whose expected 8-bit value is the high byte: 0 -> 0, 257 -> 1, 40000 -> 156, 65535 -> 255.
GRAY16 = np.array([[0, 257, 40000], [65535, 32896, 511]], dtype=np.uint16)
GRAY16_AS_8BIT = np.array([[0, 1, 156], [255, 128, 1]], dtype=np.uint8)


def write_gray16_png(path, values=GRAY16):
    """A 16-bit grayscale PNG (Pillow opens it in mode I;16)."""
    assert cv2.imwrite(str(path), values)
    return str(path)


def write_rgb16_png(path, values_rgb):
    """A 48-bit RGB PNG from a uint16 HxWx3 RGB array (OpenCV writes BGR order)."""
    assert cv2.imwrite(str(path), np.ascontiguousarray(values_rgb[..., ::-1]))
    return str(path)


def write_tiff(path, values):
    """A TIFF of ``values`` as given (uint16 -> I;16, int32 -> I, float32 -> F in Pillow)."""
    tifffile.imwrite(str(path), values)
    return str(path)
