"""Prompt files of dearli/data/prompts: byte-exact reference files, ids per dataset, templates, errors."""
import hashlib
from collections import Counter

import pytest
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from dearli.data import class_prompts

VILD_TEMPLATES = [  # method spec §1.4
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene",
    "There is the {} in the scene", "a photo of a {} in the scene", "a photo of a small {}.",
    "a photo of a medium {}.", "a photo of a large {}.", "This is a photo of a small {}.",
    "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
]


def test_ade20k_file_is_byte_exact_to_the_reference():
    data = (class_prompts.PROMPTS_DIR / "ade20k_150.txt").read_bytes()
    assert len(data) == 4011 and not data.endswith(b"\n")
    assert hashlib.sha256(data).hexdigest() == "3204c154e2c524ce2575f873838893fc25d68c5c4f7973f2d4ee76d7e24bb781"


def test_ade20k_synonyms_by_dataset_id():
    synonyms = class_prompts.read_prompt_file("ade20k_150")
    assert sorted(synonyms) == list(range(150))  # line k is dataset id k - 1; line 0 skipped
    histogram = Counter(len(names) for names in synonyms.values())
    assert histogram == {1: 34, 2: 60, 3: 20, 4: 16, 5: 11, 6: 5, 8: 1, 10: 2, 12: 1}
    assert sum(len(names) for names in synonyms.values()) == 403
    assert synonyms[0][0] == "wall" and synonyms[149] == ["flag", "flags"]
    assert synonyms[71].count("kitchen range") == 2  # the reference keeps this duplicate


def test_coco_files_cover_the_coco_category_ids():
    panoptic = class_prompts.read_prompt_file("coco_panoptic")
    assert sorted(panoptic) == sorted(c["id"] for c in COCO_CATEGORIES)  # 133, from detectron2
    objects = class_prompts.read_prompt_file("coco_objects")
    assert sorted(objects) == [0] + sorted(c["id"] for c in COCO_CATEGORIES if c["isthing"])
    assert objects[0] == ["background"]
    assert all(objects[i] == panoptic[i] for i in objects if i)  # things share FC-CLIP's synonyms
    assert panoptic[1][:3] == ["person", "child", "girl"] and panoptic[200] == ["rug"]


def test_sa1b_file_and_templates():
    assert class_prompts.read_prompt_file("sa1b") == {0: ["segment", "object", "regular shape"]}
    assert class_prompts.load_templates("vild") == VILD_TEMPLATES
    assert class_prompts.load_templates("single") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="PROMPT_TEMPLATES='ensemble'"):
        class_prompts.load_templates("ensemble")


def test_malformed_prompt_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("0:cat\n1 dog\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        class_prompts.read_prompt_file(str(path))
    with pytest.raises(FileNotFoundError, match="ade20k_151"):
        class_prompts.read_prompt_file("ade20k_151")
