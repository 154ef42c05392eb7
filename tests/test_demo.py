"""tools/demo.py on the real sample images with a tiny random model loaded through MODEL.WEIGHTS."""
import json
from pathlib import Path

import numpy as np
import pytest
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from helpers.tiny import CONFIG_DIR, tiny_cfg
from helpers.tools import load_tool
from helpers.tiny_weights import save_tiny_checkpoint

TINY_CONFIG = str(CONFIG_DIR / "tiny_dearli.yaml")
demo = load_tool("demo")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tiny_cfg(), tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="module")
def inputs(shared_data):
    coco = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[0]
    ade = sorted((shared_data / "ade20k_semantic_sample" / "images").glob("*.jpg"))[0]
    return [str(coco), str(ade)]


@pytest.fixture
def drawn_texts(monkeypatch):
    texts = []
    draw_text = Visualizer.draw_text
    monkeypatch.setattr(Visualizer, "draw_text", lambda self, text, *a, **k: texts.append(text) or draw_text(self, text, *a, **k))
    return texts


def run_demo(inputs, output, checkpoint, *extra):
    # Overlap threshold 0: a random model's overlapping masks still give segments to draw.
    argv = ["--config-file", TINY_CONFIG, "--input", *inputs, "--output", str(output), *extra,
            "--opts", "MODEL.WEIGHTS", str(checkpoint), "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"]
    return demo.main(argv)


def test_overlays_and_segments_with_given_class_names(inputs, checkpoint, tmp_path, drawn_texts):
    classes = ["person", "couch", "tv", "floor"]
    assert run_demo(inputs, tmp_path, checkpoint, "--json", "--classes", ",".join(classes), "--stuff", "floor") == 0
    for path in inputs:
        stem, image = Path(path).stem, read_image(path, format="RGB")
        for kind in ("panoptic", "semantic"):
            overlay = np.asarray(Image.open(tmp_path / f"{stem}_{kind}.png").convert("RGB"))
            assert overlay.shape == image.shape, (stem, kind)
            assert (overlay != image).any(axis=-1).mean() > 0.01, (stem, kind)
        record = json.loads((tmp_path / f"{stem}_segments.json").read_text())
        assert (record["height"], record["width"]) == image.shape[:2]
        assert record["classes"] == classes
        assert record["segments"], f"{stem}: the tiny model predicts at least one segment"
        for segment in record["segments"]:
            assert segment["category_name"] == classes[segment["category_id"]]
            assert segment["isthing"] == (segment["category_name"] != "floor")
            assert 0 < segment["area"] <= image.shape[0] * image.shape[1]
    # Every label drawn is one of the given names ("person 91%" for a thing with its score).
    assert drawn_texts and all(text.rsplit(" ", 1)[0] in classes or text in classes for text in drawn_texts)


def test_class_file_with_synonyms_and_comments(inputs, checkpoint, tmp_path):
    class_file = tmp_path / "classes.txt"
    class_file.write_text("# my classes\ndog, puppy\n\ngrass\nsky,heavens\n")
    assert run_demo(inputs[:1], tmp_path, checkpoint, "--json", "--class-file", str(class_file)) == 0
    record = json.loads((tmp_path / f"{Path(inputs[0]).stem}_segments.json").read_text())
    assert record["classes"] == ["dog", "grass", "sky"]
    assert {s["category_name"] for s in record["segments"]} <= {"dog", "grass", "sky"}


def test_without_classes_uses_the_dataset_names_and_no_json(inputs, checkpoint, tmp_path, drawn_texts):
    assert run_demo(inputs[1:], tmp_path, checkpoint) == 0
    stem = Path(inputs[1]).stem
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}_panoptic.png", f"{stem}_semantic.png"]
    shapes_names = {"circle", "square", "triangle", "star", "cross", "sky", "wall", "ground", "water"}
    assert drawn_texts and {text.rsplit(" ", 1)[0] if "%" in text else text for text in drawn_texts} <= shapes_names


def test_unreadable_inputs_are_reported_and_the_others_processed(inputs, checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    missing = tmp_path / "missing.png"
    output = tmp_path / "out"
    assert run_demo([str(broken), inputs[0], str(missing)], output, checkpoint) == 1
    stderr = capsys.readouterr().err
    assert f"cannot read input image {broken}" in stderr
    assert f"cannot read input image {missing}: FileNotFoundError" in stderr
    assert f"2 of 3 inputs could not be read: {broken}, {missing}" in stderr
    stem = Path(inputs[0]).stem
    assert sorted(p.name for p in output.iterdir()) == [f"{stem}_panoptic.png", f"{stem}_semantic.png"]


@pytest.mark.parametrize("args, message", [
    (["--classes", ""], "--classes: the class list is empty"),
    (["--classes", "cat,dog,Cat"], "--classes: duplicate class name 'Cat' in the class list (classes 1 and 3)"),
    (["--classes", "cat,,dog"], "--classes: class 2 of the class list has an empty name"),
    (["--classes", "cat", "--stuff", "grass"], "stuff classes ['grass'] are not in the class list ['cat']"),
    (["--stuff", "grass"], "--stuff needs --classes or --class-file"),
])
def test_bad_class_lists_are_clear_errors(inputs, checkpoint, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_demo(inputs, tmp_path, checkpoint, *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing is written for a bad class list"


def test_class_file_errors_name_the_file(inputs, checkpoint, tmp_path, capsys):
    class_file = tmp_path / "dup.txt"
    class_file.write_text("dog,puppy\npuppy\n")
    with pytest.raises(SystemExit):
        run_demo(inputs, tmp_path / "out", checkpoint, "--class-file", str(class_file))
    assert f"--class-file {class_file}: duplicate class name 'puppy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_demo(inputs, tmp_path / "out", checkpoint, "--class-file", str(tmp_path / "none.txt"))
    assert f"--class-file {tmp_path / 'none.txt'}: cannot read it" in capsys.readouterr().err


def test_inputs_with_the_same_name_are_refused(inputs, checkpoint, tmp_path, capsys):
    copy = tmp_path / "copy" / Path(inputs[0]).name
    copy.parent.mkdir()
    copy.write_bytes(Path(inputs[0]).read_bytes())
    with pytest.raises(SystemExit):
        run_demo([inputs[0], str(copy)], tmp_path / "out", checkpoint)
    assert f"would both write {Path(inputs[0]).stem}_*.png" in capsys.readouterr().err
