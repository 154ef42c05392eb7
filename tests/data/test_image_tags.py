"""Image-level tags, data side: the tag file reader and its errors, tags derived from ground truth
(checked against the semantic PNGs), the fraction subset, the mapper's tag fields and the CutMix rule."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from dearli.data.datasets import shapes
from dearli.data.datasets.tagged import DERIVED_TAGS_NOTE
from dearli.data.image_tags import (
    TagFileError, attach_image_tags, derived_tags, keep_fraction, read_tag_file, student_tag_targets, tags_by_record,
)
from dearli.config import add_dearli_config, load_config
from dearli.data.registry import MAPPER_REGISTRY

CLASSES = ("circle", "square", "triangle", "star", "cross", "sky", "wall", "ground", "water")
PREFIX = "t_tags"


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    shapes.register_shapes(PREFIX, num_labeled=2, num_unlabeled=6, num_val=1, image_size=(64, 80), seed=3,
                           cache_dir=tmp_path_factory.mktemp("cache"))
    return DatasetCatalog.get(f"{PREFIX}_train_unlabeled"), DatasetCatalog.get(f"{PREFIX}_train_unlabeled_tagged")


def make_cfg(**overrides):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 9, "INPUT.MIN_SIZE_TRAIN", (48, 64), "INPUT.CROP.SIZE",
                         (40, 40), "INPUT.SIZE_DIVISIBILITY", 32] + [x for kv in overrides.items() for x in kv])
    return cfg


def rng(*entropy):
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def partner_from(dicts, index):
    return lambda generator: dicts[(index + 1 + int(generator.integers(len(dicts) - 1))) % len(dicts)]


def assert_samples_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_samples_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


def records(*stems):
    return [{"file_name": f"/data/images/{stem}.jpg", "image_id": 100 + i} for i, stem in enumerate(stems)]


# ----------------------------------------------------------------------------- tag files
def test_text_and_json_tag_files_read_to_the_same_class_ids(tmp_path):
    text = tmp_path / "tags.txt"
    text.write_text("# comment\n\na.jpg\tcircle, sky\nimages/b.png: water\n102:\n")
    table = tmp_path / "tags.json"
    table.write_text(json.dumps({"a.jpg": ["sky", "circle"], "images/b.png": ["water"], "102": []}, indent=1))
    dicts = records("a", "b", "c")  # image ids 100, 101, 102
    for path in (text, table):
        assert tags_by_record(read_tag_file(str(path)), dicts, CLASSES, "test set") == {0: (0, 5), 1: (8,), 2: ()}
    # "101" is image b's id: b listed twice, once by file name and once by id.
    text.write_text("a.jpg\tcircle, sky\nimages/b.png: water\n101:\n")
    with pytest.raises(TagFileError, match=r"tags\.txt:3: image '101' names the same dataset image as an earlier line"):
        tags_by_record(read_tag_file(str(text)), dicts, CLASSES, "test set")


def test_tag_lines_name_images_by_stem_or_image_id(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("x/y/a.png\tcircle\n101\t\n")
    assert tags_by_record(read_tag_file(str(path)), records("a", "b"), CLASSES, "s") == {0: (0,), 1: ()}


@pytest.mark.parametrize("content, message", [
    ("a.jpg circle\n", r"tags\.txt:1: expected '<file name><TAB or :><class>, <class>, \.\.\.', got 'a.jpg circle'"),
    ("a.jpg\tcircle,, sky\n", r"tags\.txt:1: empty file name or class name in 'a.jpg\\tcircle,, sky'"),
    ("a.jpg\tcircle\n\nb.jpg\tsky\na.png\tstar\n", r"tags\.txt:4: image 'a.png' is listed twice \(first at .*tags\.txt:1\)"),
])
def test_malformed_text_lines_are_errors_at_their_line(tmp_path, content, message):
    path = tmp_path / "tags.txt"
    path.write_text(content)
    with pytest.raises(TagFileError, match=message):
        read_tag_file(str(path))


def test_tags_naming_an_unknown_class_or_image_are_errors_at_their_line(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("a.jpg\tcircle\nb.jpg\tcirlce, sky\n")
    with pytest.raises(TagFileError, match=r"tags\.txt:2: unknown class 'cirlce' for image 'b.jpg' "
                                           r"\(close class names: \['circle'\]; 9 classes\)"):
        tags_by_record(read_tag_file(str(path)), records("a", "b"), CLASSES, "test set")
    path.write_text("a.jpg\tcircle\nc.jpg\tsky\n")
    with pytest.raises(TagFileError, match=r"tags\.txt:2: image 'c.jpg' is not in the dataset \(2 images in test set\)"):
        tags_by_record(read_tag_file(str(path)), records("a", "b"), CLASSES, "test set")


def test_json_tag_file_errors_name_the_line(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text('{\n "a.jpg": ["circle"],\n "b.jpg": ["sky"],\n "a.jpg": []\n}\n')
    with pytest.raises(TagFileError, match=r"tags\.json:4: image .a.jpg. is listed twice \(first at line 2\)"):
        read_tag_file(str(path))
    path.write_text('{\n "a.jpg": ["circle"],\n "b.jpg": "sky"\n}\n')
    with pytest.raises(TagFileError, match=r"tags\.json:3: the tags of 'b.jpg' must be a list of class names"):
        read_tag_file(str(path))
    path.write_text('{\n "a.jpg": ["circle"],\n "b.jpg": ["sky"\n}\n')
    with pytest.raises(TagFileError, match=r"tags\.json:4: not valid JSON"):
        read_tag_file(str(path))
    path.write_text('["a.jpg"]')
    with pytest.raises(TagFileError, match=r"tags\.json:1: expected a JSON object"):
        read_tag_file(str(path))
    path.write_text('{\n "a.jpg": ["circle"],\n "b.jpg": ["sky", "sea"]\n}\n')
    with pytest.raises(TagFileError, match=r"tags\.json:3: unknown class 'sea' for image 'b.jpg'"):
        tags_by_record(read_tag_file(str(path)), records("a", "b"), CLASSES, "s")
    with pytest.raises(FileNotFoundError, match="SSL.IMAGE_TAGS.FILE"):
        read_tag_file(str(tmp_path / "missing.json"))


# ----------------------------------------------------------------------------- derived tags
def test_derived_tags_are_the_classes_of_the_semantic_ground_truth(unlabeled):
    plain, tagged = unlabeled
    assert [{k: r[k] for k in plain[0]} for r in tagged] == plain  # same images, same fields
    assert MetadataCatalog.get(f"{PREFIX}_train_unlabeled_tagged").image_tags == DERIVED_TAGS_NOTE
    for record in tagged:
        assert set(record) == set(plain[0]) | {"class_areas"}  # no mask, no segment of the ground truth
        semantic = np.asarray(Image.open(record["file_name"].replace("/images/", "/semantic/").replace(".jpg", ".png")))
        classes, counts = np.unique(semantic[semantic != 255], return_counts=True)
        assert derived_tags(record, 0.0) == tuple(classes.tolist())
        assert record["class_areas"] == dict(zip(classes.tolist(), counts.tolist()))
        threshold = 0.1
        assert derived_tags(record, threshold) == tuple(c for c, n in zip(classes, counts) if n >= threshold * 64 * 80)


def test_min_area_fraction_keeps_classes_of_at_least_one_pixel():
    record = {"height": 10, "width": 20, "class_areas": {0: 1, 3: 2, 5: 197}}
    assert derived_tags(record, 0.0) == (0, 3, 5)
    assert derived_tags(record, 0.01) == (3, 5)  # 2 pixels = 1 % of 200
    assert derived_tags(record, 0.5) == (5,)
    assert derived_tags({**record, "class_areas": {2: 0}}, 0.0) == ()


def test_fraction_keeps_a_seeded_subset_and_no_ground_truth_reaches_training(unlabeled):
    _, tagged = unlabeled
    half = attach_image_tags(tagged, CLASSES, fraction=0.5, seed=4)
    assert sum("image_tags" in r for r in half) == 3 and all("class_areas" not in r for r in half)
    assert half == attach_image_tags(tagged, CLASSES, fraction=0.5, seed=4)
    assert {i for i, r in enumerate(half) if "image_tags" in r} == keep_fraction(range(6), 0.5, 4)
    everything = attach_image_tags(tagged, CLASSES)
    assert [r["image_tags"] for r in everything] == [derived_tags(r, 0.0) for r in tagged]
    with pytest.raises(ValueError, match=r"SSL.IMAGE_TAGS.FRACTION must be in \(0, 1\], got 0"):
        attach_image_tags(tagged, CLASSES, fraction=0)
    plain, _ = unlabeled
    with pytest.raises(ValueError, match="no derived tags .*'\\*_unlabeled_tagged' dataset.*FILE is empty"):
        attach_image_tags(plain, CLASSES)


# ----------------------------------------------------------------------------- mapper and CutMix rule
def tag_mapper(enabled):
    cfg = make_cfg(**{"INPUT.UNLABELED.CUTMIX_PROB": 0.5, "SSL.IMAGE_TAGS.ENABLED": enabled})
    return MAPPER_REGISTRY.get("unlabeled_weak_strong")(cfg)


def test_mapper_without_tags_is_unchanged_and_tags_draw_nothing(unlabeled):
    _, tagged = unlabeled
    dicts = attach_image_tags(tagged, CLASSES, fraction=0.5, seed=1)
    off, on = tag_mapper(False), tag_mapper(True)
    boxed = 0
    for index in range(len(dicts)):
        generator_off, generator_on = rng(9, index), rng(9, index)
        a = off(dicts[index], generator_off, partner_from(dicts, index))
        b = on(dicts[index], generator_on, partner_from(dicts, index))
        assert "image_tags" not in a and (a["cutmix"] is None or "image_tags" not in a["cutmix"])
        # The views (and the generator's state afterwards) are bitwise those of a run without tags.
        stripped = {k: v for k, v in b.items() if k not in ("image_tags", "has_tags")}
        if b["cutmix"] is not None:
            boxed += 1
            stripped["cutmix"] = {k: v for k, v in b["cutmix"].items() if k not in ("image_tags", "has_tags")}
        assert_samples_equal(a, stripped)
        assert generator_off.bit_generator.state == generator_on.bit_generator.state
        for view, record in [(b, dicts[index])] + ([(b["cutmix"], _partner_record(dicts, b))] if b["cutmix"] else []):
            assert view["has_tags"] == ("image_tags" in record)
            assert view["image_tags"].dtype == torch.bool and view["image_tags"].shape == (9,)
            assert torch.nonzero(view["image_tags"]).flatten().tolist() == list(record.get("image_tags", ()))
    assert 0 < boxed < len(dicts)


def _partner_record(dicts, sample):
    return next(r for r in dicts if r["file_name"] == sample["cutmix"]["file_name"])


def test_mapper_refuses_tags_that_are_not_class_ids(unlabeled):
    _, tagged = unlabeled
    with pytest.raises(ValueError, match=r"image tags \[9\] are not class ids 0..8"):
        tag_mapper(True)(dict(tagged[0], image_tags=(1, 9)), rng(0))


def multi_hot(*classes):
    tags = torch.zeros(5, dtype=torch.bool)
    tags[list(classes)] = True
    return tags


def test_cutmix_rule_no_positive_on_boxed_samples_negatives_absent_from_both():
    plain = {"image_tags": multi_hot(0, 2), "has_tags": True, "cutmix": None}
    targets, weights = student_tag_targets(plain)
    assert targets.tolist() == [True, False, True, False, False] and weights.tolist() == [1.0] * 5
    boxed = dict(plain, cutmix={"image_tags": multi_hot(2, 3), "has_tags": True})
    targets, weights = student_tag_targets(boxed)
    assert not targets.any()  # no positive term on a boxed sample
    assert weights.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]  # classes 1 and 4 are absent from both images
    assert student_tag_targets(dict(plain, has_tags=False, image_tags=multi_hot())) is None
    assert student_tag_targets(dict(plain, cutmix={"image_tags": multi_hot(), "has_tags": False})) is None
    empty_partner = dict(plain, cutmix={"image_tags": multi_hot(), "has_tags": True})  # tags = none: all absent
    assert student_tag_targets(empty_partner)[1].tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]


# ----------------------------------------------------------------------------- configs
def test_every_shipped_config_but_the_tags_row_keeps_tags_off():
    configs = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))
    with_tags = {p.name for p in configs if load_config(str(p)).SSL.IMAGE_TAGS.ENABLED}
    assert with_tags == {"tiny_dear_clip_tags.yaml"}
    cfg = load_config(str(next(p for p in configs if p.name == "tiny_dear_clip_tags.yaml")))
    assert cfg.DATASETS.TRAIN_UNLABELED == ("dearli_shapes_train_unlabeled_tagged",) and cfg.SSL.IMAGE_TAGS.FRACTION == 0.5


def test_json_line_numbers_of_a_large_file_and_of_escaped_keys(tmp_path):
    names = [f"im{i:06d}.jpg" for i in range(20_000)] + ['caf\u00e9 "x".jpg']
    table = {name: ["circle"] for name in names}
    table[names[-1]] = ["unknown"]
    path = tmp_path / "tags.json"
    path.write_text(json.dumps(table, indent=0))  # line 1 "{", then 3 lines per image: key, class, "]"
    dicts = [{"file_name": name, "image_id": i} for i, name in enumerate(names)]
    with pytest.raises(TagFileError, match=rf"tags\.json:{3 * (len(names) - 1) + 2}: unknown class 'unknown' for image 'caf"):
        tags_by_record(read_tag_file(str(path)), dicts, CLASSES, "s")
