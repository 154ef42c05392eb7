"""Class definitions files: the format, its errors (file, line, class), and the shipped files."""
import hashlib

import pytest

from dearli.data.class_definitions import DEFINITIONS_DIR, read_class_definitions
from dearli.data.class_prompts import read_prompt_file
from dearli.data.datasets import ade20k, coco
from dearli.data.datasets.semantic import CAMVID_CLASSES
from dearli.data.datasets.shapes import shapes_categories

CLASSES = ["car", "road, route", "sky"]


def write(tmp_path, text, name="defs.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_map_to_classes_by_name_in_any_order(tmp_path):
    text = ("# header: where the concepts come from\n\n"
            "sky: sky\n"
            "car:  car , SUV, pickup truck\n"
            "  road, route: road,route, street  \n"
            "void: lorry, tractor\n")
    path = write(tmp_path, text)
    definitions = read_class_definitions(str(path), CLASSES, "toy")
    assert definitions.concepts == [["car", "SUV", "pickup truck"], ["road", "route", "street"], ["sky"]]
    assert definitions.void_concepts == ["lorry", "tractor"]
    assert definitions.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert definitions.path == path


def test_void_line_is_optional(tmp_path):
    path = write(tmp_path, "car: car\nroad, route: road\nsky: sky\n")
    assert read_class_definitions(str(path), CLASSES, "toy").void_concepts == []


@pytest.mark.parametrize("text, message", [
    ("car: car\nroad, route: road\nbus: bus\nsky: sky\n",
     r"defs.txt:3: 'bus' is not a class of dataset 'toy' \(its classes: \['car', 'road, route', 'sky'\]\)"),
    ("car: car\nsky: sky\n",
     r"defs.txt: no line for the classes \['road, route'\] of dataset 'toy'"),
    ("car: car\nroad, route: road\nsky: sky\n# again\ncar: automobile\n",
     r"defs.txt:5: 'car' appears twice \(first on line 1\)"),
    ("car: car\nroad, route: road\nsky: sky\nvoid: a\nvoid: b\n",
     r"defs.txt:5: 'void' appears twice \(first on line 4\)"),
    ("car: car,, SUV\nroad, route: road\nsky: sky\n",
     r"defs.txt:1: empty concept for 'car' in 'car: car,, SUV'"),
    ("car: car\nroad, route\nsky: sky\n",
     r"defs.txt:2: expected '<class name>: concept1, concept2, ...' or 'void: ...', got 'road, route'"),
    ("car:\nroad, route: road\nsky: sky\n", r"defs.txt:1: expected '<class name>: concept1"),
])
def test_bad_files_name_file_line_and_class(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        read_class_definitions(str(path), CLASSES, "toy")


def test_a_class_named_void_is_refused(tmp_path):
    path = write(tmp_path, "void: void\n")
    with pytest.raises(ValueError, match="dataset 'toy' has a class named 'void', the key reserved"):
        read_class_definitions(str(path), ["void"], "toy")


def test_unknown_shipped_name_lists_the_shipped_files():
    with pytest.raises(FileNotFoundError, match=r"class definitions file .*cityscapes.txt' not found; "
                                                r"shipped files: \['ade20k_150', 'camvid', 'coco_panoptic', 'shapes'\]"):
        read_class_definitions("cityscapes", CLASSES, "toy")


@pytest.mark.parametrize("name, categories, prompt_file", [
    ("ade20k_150", ade20k.ade20k_categories(), "ade20k_150"),
    ("coco_panoptic", coco.coco_panoptic_categories(), "coco_panoptic"),
])
def test_ade20k_and_coco_concepts_are_their_prompt_synonyms(name, categories, prompt_file):
    """§3.4a: nothing new for ADE20K / COCO (no guidelines): concept lists = the synonym lists, so
    the max classifier with the shipped file is today's."""
    definitions = read_class_definitions(name, [c["name"] for c in categories], name)
    synonyms = read_prompt_file(prompt_file)
    assert definitions.concepts == [synonyms[c["id"]] for c in categories]
    assert definitions.void_concepts == []
    assert definitions.path.parent == DEFINITIONS_DIR


def test_camvid_and_shapes_files_cover_their_classes_name_first():
    camvid = read_class_definitions("camvid", CAMVID_CLASSES, "camvid")
    assert [concepts[0] for concepts in camvid.concepts] == list(CAMVID_CLASSES)  # SemiVL: name is concept #1
    assert camvid.concepts[CAMVID_CLASSES.index("car")] == [
        "car", "SUV", "pickup truck", "truck", "bus", "train", "other moving vehicle"]
    names = [c["name"] for c in shapes_categories()]
    shapes = read_class_definitions("shapes", names, "dearli_shapes")
    assert [concepts[0] for concepts in shapes.concepts] == names
    assert shapes.concepts[names.index("cross")] == ["cross", "plus sign", "crosses", "plus signs"]
    for text in (DEFINITIONS_DIR / "camvid.txt", DEFINITIONS_DIR / "shapes.txt"):
        assert "Source:" in text.read_text()
    assert "DRAFT, NOT VERIFIED" in (DEFINITIONS_DIR / "camvid.txt").read_text()
