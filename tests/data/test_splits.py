"""Semi-supervised split lists: counts on the real lists, registered split datasets end to end on
stand-in dataset trees (empty image files + jsons), and error messages naming file and line."""
import os
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from helpers.dataset_trees import write_json
from dearli.config import add_dearli_config
from dearli.data.datasets import (
    register_split_datasets, register_split_datasets_from_cfg, splits_root_from_cfg,
)
from dearli.data.datasets.metadata import ade20k_categories, coco_panoptic_categories
from dearli.data.datasets.splits import SplitListError, read_split_file

ADE_SPLITS = ("1_128", "1_64", "1_32", "1_16", "1_8")


@pytest.fixture(scope="module")
def splits_root(shared_data):
    return shared_data / "splits"


def stems(entries):
    return {e.stem for e in entries}


def test_ade_1_128_list_has_158_labeled_images_and_the_unlabeled_list_excludes_them(splits_root):
    labeled = read_split_file(str(splits_root / "ade_splits/1_128/labeled.txt"))
    unlabeled = read_split_file(str(splits_root / "ade_splits/1_128/unlabeled.txt"))
    assert len(labeled) == 158 and len(unlabeled) == 20052
    assert labeled[0].image == "images/training/ADE_train_00001609.jpg"
    assert labeled[0].label == "annotations/training/ADE_train_00001609.png"
    assert not stems(labeled) & stems(unlabeled)
    assert len(stems(labeled) | stems(unlabeled)) == 20210


def test_ade_labeled_lists_are_nested(splits_root):
    lists = [stems(read_split_file(str(splits_root / f"ade_splits/{s}/labeled.txt")))
             for s in ADE_SPLITS]
    assert [len(x) for x in lists] == [158, 316, 632, 1263, 2526]
    assert all(small < large for small, large in zip(lists, lists[1:]))


def make_ade_train_tree(root, splits_root):
    """ADE train stand-in: every image of the 1/128 lists as an empty file, and a train json."""
    ade = Path(root) / "ADEChallengeData2016"
    image_dir = ade / "images" / "training"
    image_dir.mkdir(parents=True)
    entries = [*read_split_file(str(splits_root / "ade_splits/1_128/labeled.txt")),
               *read_split_file(str(splits_root / "ade_splits/1_128/unlabeled.txt"))]
    for stem in sorted(stems(entries)):
        (image_dir / f"{stem}.jpg").touch()
    first = sorted(stems(entries))[0]
    for folder in ("ade20k_panoptic_train", "annotations_detectron2/training"):
        (ade / folder).mkdir(parents=True)
        (ade / folder / f"{first}.png").touch()
    write_json(ade / "ade20k_panoptic_train.json", {
        "images": [{"id": s, "file_name": f"{s}.jpg", "height": 4, "width": 4}
                   for s in sorted(stems(entries))],
        "annotations": [{"image_id": s, "file_name": f"{s}.png",
                         "segments_info": [{"id": 1, "category_id": 12, "iscrowd": 0}]}
                        for s in sorted(stems(entries))],
        "categories": ade20k_categories(),
    })
    return ade


def test_registered_ade_split_datasets_load_the_listed_images(tmp_path, splits_root):
    make_ade_train_tree(tmp_path, splits_root)
    register_split_datasets(str(splits_root), str(tmp_path))
    labeled = DatasetCatalog.get("ade20k_panoptic_train_1_128_labeled")
    unlabeled = DatasetCatalog.get("ade20k_panoptic_train_1_128_unlabeled")
    assert len(labeled) == 158 and len(unlabeled) == 20052
    assert labeled[0]["image_id"] == "ADE_train_00001609"
    assert labeled[0]["segments_info"][0]["category_id"] == 12  # person: dataset id == contiguous
    assert labeled[0]["segments_info"][0]["isthing"] is True
    assert set(unlabeled[0]) == {"file_name", "image_id"}
    assert not {r["image_id"] for r in labeled} & {r["image_id"] for r in unlabeled}
    assert all(os.path.isfile(r["file_name"]) for r in unlabeled[:50])


def make_coco_train_tree(root, labeled_file, extra_ids, objects=False):
    """COCO train2017 stand-in: the listed images plus ``extra_ids``, empty files, and a json."""
    coco = Path(root) / "coco"
    listed = [int(e.stem) for e in read_split_file(str(labeled_file))]
    image_ids = listed + list(extra_ids)
    (coco / "train2017").mkdir(parents=True, exist_ok=True)
    for image_id in image_ids:
        (coco / "train2017" / f"{image_id:012d}.jpg").touch()
    suffix = "_objects" if objects else ""
    categories = coco_panoptic_categories()
    if objects:
        categories = [{"id": 0, "name": "background", "isthing": 0, "color": [0, 0, 0]}] + [
            c for c in categories if c["isthing"]]
    semantic_dir = "masks" if objects else "panoptic_semseg_train2017"
    for folder in (f"panoptic_train2017{suffix}", semantic_dir):
        (coco / folder).mkdir(parents=True, exist_ok=True)
        (coco / folder / f"{image_ids[0]:012d}.png").touch()
    write_json(coco / "annotations" / f"panoptic_train2017{suffix}.json", {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 4, "width": 4}
                   for i in image_ids],
        "annotations": [{"image_id": i, "file_name": f"{i:012d}.png", "segments_info": []}
                        for i in image_ids],
        "categories": categories,
    })


@pytest.mark.parametrize("prefix,objects", [("coco_2017_train_panoptic", False),
                                            ("coco_objects_2017_train", True)])
def test_coco_unlabeled_set_is_the_complement_of_the_labeled_list(tmp_path, splits_root, prefix,
                                                                  objects):
    labeled_file = splits_root / "coco_splits/1_512/labeled.txt"
    extra = range(900000000001, 900000000101)  # 100 train images that no list mentions
    make_coco_train_tree(tmp_path, labeled_file, extra, objects)
    register_split_datasets(str(splits_root), str(tmp_path))
    labeled = DatasetCatalog.get(f"{prefix}_1_512_labeled")
    unlabeled = DatasetCatalog.get(f"{prefix}_1_512_unlabeled")
    assert len(labeled) == 232
    assert [r["image_id"] for r in labeled][:2] == [177254, 210467]  # list order, int ids
    assert sorted(r["image_id"] for r in unlabeled) == list(extra)


# ---- errors --------------------------------------------------------------------------------------

def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_missing_split_file_names_the_file_and_the_config_key(tmp_path):
    register_split_datasets(str(tmp_path / "nowhere"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nowhere/ade_splits/1_8/labeled.txt not found.*"
                                                r"DATASETS.SPLITS_ROOT"):
        DatasetCatalog.get("ade20k_panoptic_train_1_8_labeled")


def test_malformed_and_duplicate_lines_are_reported_with_their_line_number(tmp_path):
    path = tmp_path / "labeled.txt"
    write_lines(path, ["a/x.jpg b/x.png", "", "a/y.jpg b/y.png extra"])
    with pytest.raises(SplitListError, match=r"labeled.txt:3: expected"):
        read_split_file(str(path))
    write_lines(path, ["a/x.jpg b/x.png", "a/y.jpg", "c/x.jpg d/x.png"])
    with pytest.raises(SplitListError, match=r"labeled.txt:3: image 'x' is listed twice "
                                             r"\(first at line 1\)"):
        read_split_file(str(path))


def test_listed_images_that_do_not_exist_are_reported_with_file_and_line(tmp_path, splits_root):
    make_ade_train_tree(tmp_path / "data", splits_root)
    image_dir = tmp_path / "data" / "ADEChallengeData2016" / "images" / "training"
    ade_lists = tmp_path / "lists" / "ade_splits" / "1_8"
    register_split_datasets(str(tmp_path / "lists"), str(tmp_path / "data"))

    write_lines(ade_lists / "labeled.txt", ["images/training/ADE_train_00001609.jpg x",
                                            "images/training/ADE_train_99999999.jpg y"])
    with pytest.raises(SplitListError, match=r"1_8/labeled.txt:2: image "
                                             r"'images/training/ADE_train_99999999.jpg' is not in"):
        DatasetCatalog.get("ade20k_panoptic_train_1_8_labeled")

    write_lines(ade_lists / "labeled.txt", ["images/training/ADE_train_00001609.jpg x"])
    (image_dir / "ADE_train_00001609.jpg").unlink()
    with pytest.raises(SplitListError, match=r"labeled.txt:1: listed image .*ADE_train_00001609"
                                             r".jpg does not exist"):
        DatasetCatalog.get("ade20k_panoptic_train_1_8_labeled")

    write_lines(ade_lists / "unlabeled.txt", ["images/training/ADE_train_00019906.jpg x",
                                              "images/training/ADE_train_00000000.jpg y"])
    with pytest.raises(SplitListError, match=r"unlabeled.txt:2: listed image .*ADE_train_00000000"
                                             r".jpg does not exist"):
        DatasetCatalog.get("ade20k_panoptic_train_1_8_unlabeled")


def test_an_image_both_labeled_and_unlabeled_is_refused(tmp_path):
    lists = tmp_path / "ade_splits" / "1_16"
    write_lines(lists / "labeled.txt", ["images/training/a.jpg x", "images/training/b.jpg y"])
    write_lines(lists / "unlabeled.txt", ["images/training/c.jpg z", "images/training/b.jpg y"])
    register_split_datasets(str(tmp_path), str(tmp_path))
    with pytest.raises(SplitListError, match=r"unlabeled.txt:2: image 'b' is also labeled "
                                             r"\(.*labeled.txt:2\)"):
        DatasetCatalog.get("ade20k_panoptic_train_1_16_unlabeled")


# ---- roots ---------------------------------------------------------------------------------------

def cfg_with_splits_root(value):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.DATASETS.SPLITS_ROOT = value
    return cfg


def test_splits_root_comes_from_cfg_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    monkeypatch.delenv("DEARLI_SPLITS", raising=False)
    assert splits_root_from_cfg(cfg_with_splits_root("")) == str(tmp_path / "d2" / "splits")
    monkeypatch.setenv("DEARLI_SPLITS", str(tmp_path / "env"))
    assert splits_root_from_cfg(cfg_with_splits_root("")) == str(tmp_path / "env")
    assert splits_root_from_cfg(cfg_with_splits_root(str(tmp_path / "cfg"))) == str(
        tmp_path / "cfg")


def test_reregistering_points_the_split_names_at_the_new_root(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for root, name in ((first, "a"), (second, "b")):
        write_lines(root / "ade_splits" / "1_64" / "labeled.txt", [f"images/training/{name}.jpg"])
        write_lines(root / "ade_splits" / "1_64" / "unlabeled.txt",
                    [f"images/training/u{name}.jpg"])
        (tmp_path / "ADEChallengeData2016" / "images" / "training").mkdir(parents=True,
                                                                          exist_ok=True)
        (tmp_path / "ADEChallengeData2016" / "images" / "training" / f"u{name}.jpg").touch()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    register_split_datasets(str(first))
    assert DatasetCatalog.get("ade20k_panoptic_train_1_64_unlabeled")[0]["image_id"] == "ua"
    register_split_datasets_from_cfg(cfg_with_splits_root(str(second)))
    assert DatasetCatalog.get("ade20k_panoptic_train_1_64_unlabeled")[0]["image_id"] == "ub"
