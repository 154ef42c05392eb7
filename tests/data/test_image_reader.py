"""dearli's one image reader (validate.read_rgb_image) on high-bit-depth files, and the training
mappers' use of it: 16-bit images are scaled (high byte), 32-bit integer and float images are
refused with the file in the message, never clipped to white."""
import numpy as np
import pytest

from dearli.data.datasets.validate import DatasetFileError, read_rgb_image
from dearli.data.mappers.panoptic_targets import read_training_image
from helpers.deep_images import GRAY16, GRAY16_AS_8BIT, write_gray16_png, write_rgb16_png, write_tiff


def gray_as_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=2)


def test_16bit_grayscale_png_is_scaled_by_its_high_byte(tmp_path):
    image = read_rgb_image(write_gray16_png(tmp_path / "gray16.png"))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, gray_as_rgb(GRAY16_AS_8BIT))


def test_16bit_grayscale_tiff_is_scaled_like_the_png(tmp_path):
    image = read_rgb_image(write_tiff(tmp_path / "gray16.tif", GRAY16))
    np.testing.assert_array_equal(image, gray_as_rgb(GRAY16_AS_8BIT))


def test_16bit_rgb_png_keeps_the_high_byte_of_each_channel(tmp_path):
    values = np.stack([GRAY16, GRAY16[::-1], np.full_like(GRAY16, 65535)], axis=2)
    image = read_rgb_image(write_rgb16_png(tmp_path / "rgb16.png", values))
    np.testing.assert_array_equal(image, (values >> 8).astype(np.uint8))


def test_a_gray_image_reads_the_same_in_16_bit_gray_and_16_bit_rgb(tmp_path):
    gray = read_rgb_image(write_gray16_png(tmp_path / "gray16.png"))
    rgb = read_rgb_image(write_rgb16_png(tmp_path / "rgb16.png", np.repeat(GRAY16[..., None], 3, axis=2)))
    np.testing.assert_array_equal(gray, rgb)


@pytest.mark.parametrize("name, values, mode", [
    ("int32.tif", np.full((2, 3), 70000, np.int32), "I"),
    ("float.tif", np.full((2, 3), 0.5, np.float32), "F"),
])
def test_32bit_integer_and_float_images_are_refused_naming_the_file(tmp_path, name, values, mode):
    path = write_tiff(tmp_path / name, values)
    with pytest.raises(DatasetFileError) as error:
        read_rgb_image(path)
    assert str(error.value).startswith(f"{path}: image mode '{mode}' (32-bit integer or float pixels) "
                                       "has no known value range")


def test_training_mapper_reader_scales_a_16bit_png(tmp_path):
    path = write_gray16_png(tmp_path / "gray16.png")
    record = {"file_name": path, "height": 2, "width": 3}
    np.testing.assert_array_equal(read_training_image(record), gray_as_rgb(GRAY16_AS_8BIT))
