"""tools/demo.py reads its inputs with dearli's image reader: a 16-bit grayscale PNG reaches the
predictor scaled by its high byte (Detectron2's read_image clipped it to white), and a float TIFF
is reported by path with exit code 1."""
import numpy as np

from helpers.deep_images import GRAY16_AS_8BIT, write_gray16_png, write_tiff
from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

demo = load_tool("demo")


class _NoModel:
    """Stands in for DEARLiPredictor: the test is about the pixels the demo hands to it."""

    def __init__(self, cfg):
        self.metadata = None


def run_capturing_images(monkeypatch, inputs, output):
    received = {}

    def record_image(predictor, image, path, *rest):
        received[path] = image
        return []

    monkeypatch.setattr(demo, "DEARLiPredictor", _NoModel)
    monkeypatch.setattr(demo, "process_image", record_image)
    code = demo.main(["--config-file", str(CONFIG_DIR / "tiny_dearli.yaml"), "--input", *inputs,
                      "--output", str(output)])
    return code, received


def test_16bit_grayscale_png_reaches_the_model_scaled_not_clipped(tmp_path, monkeypatch):
    path = write_gray16_png(tmp_path / "gray16.png")
    code, received = run_capturing_images(monkeypatch, [path], tmp_path / "out")
    assert code == 0
    np.testing.assert_array_equal(received[path], np.repeat(GRAY16_AS_8BIT[..., None], 3, axis=2))


def test_float_tiff_is_reported_with_its_path(tmp_path, monkeypatch, capsys):
    path = write_tiff(tmp_path / "float.tif", np.full((2, 3), 0.5, np.float32))
    code, received = run_capturing_images(monkeypatch, [path], tmp_path / "out")
    assert code == 1 and received == {}
    assert f"error: cannot read input image {path}: DatasetFileError: {path}: image mode 'F'" in capsys.readouterr().err
