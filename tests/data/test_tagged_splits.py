"""The "weakly labeled" *_unlabeled_tagged splits on real samples: the same images as the unlabeled
split, with tags equal to the classes of their label files (read here independently)."""
import json
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from dearli.data.datasets import register_split_datasets
from dearli.data.datasets.semantic import CAMVID_CLASSES, register_semantic_dataset, register_semantic_split
from dearli.data.datasets.splits import SplitListError
from dearli.data.datasets.tagged import DERIVED_TAGS_NOTE, register_tagged_list
from dearli.data.image_tags import attach_image_tags, derived_tags
from helpers.dataset_trees import build_coco_tree
from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)


def test_camvid_tagged_split_tags_are_the_classes_of_the_label_files(tmp_path, shared_data):
    source_dir = shared_data / "camvid/train"
    stems = sorted(p.stem for p in (source_dir / "labels").glob("*.png"))[:16]
    for kind, ext in (("images", ".jpg"), ("labels", ".png")):
        (tmp_path / kind).mkdir()
        for stem in stems:
            shutil.copy(source_dir / kind / f"{stem}{ext}", tmp_path / kind / f"{stem}{ext}")
    source = register_semantic_dataset("t_camvid", str(tmp_path / "images"), str(tmp_path / "labels"),
                                       CAMVID_CLASSES, 11, cache_dir=str(tmp_path / "cache"))
    register_semantic_split("t_camvid_1_8", source, 1 / 8, seed=0)
    unlabeled = DatasetCatalog.get("t_camvid_1_8_unlabeled")
    tagged = DatasetCatalog.get("t_camvid_1_8_unlabeled_tagged")
    assert len(tagged) == 14 and [{k: r[k] for k in unlabeled[0]} for r in tagged] == unlabeled
    assert MetadataCatalog.get("t_camvid_1_8_unlabeled_tagged").image_tags == DERIVED_TAGS_NOTE
    for record in tagged:
        labels = np.asarray(Image.open(tmp_path / "labels" / f"{record['image_id']}.png"))
        classes, counts = np.unique(labels[labels != 11], return_counts=True)  # 11 = void
        assert derived_tags(record, 0.0) == tuple(classes.tolist())
        assert record["class_areas"] == dict(zip(classes.tolist(), counts.tolist()))
    # 0.1 % of 360x480 is 172.8 pixels: some real classes (a far pole, a sign) fall below it.
    small = [(r, c) for r in tagged for c, n in r["class_areas"].items() if n < 0.001 * 360 * 480]
    assert small and all(c not in derived_tags(r, 0.001) for r, c in small)


def test_coco_tagged_split_tags_are_the_categories_of_the_panoptic_png(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data, split="train2017")
    lists = tmp_path / "lists/coco_splits/1_512"
    lists.mkdir(parents=True)
    (lists / "labeled.txt").write_text("train2017/000000142238.jpg masks/000000142238.png\n")
    register_split_datasets(str(tmp_path / "lists"), str(tmp_path))
    [tagged] = DatasetCatalog.get("coco_2017_train_panoptic_1_512_unlabeled_tagged")
    assert tagged["image_id"] == 439180 and "segments_info" not in tagged
    panoptic = json.loads((coco / "annotations/panoptic_train2017.json").read_text())
    [annotation] = [a for a in panoptic["annotations"] if a["image_id"] == 439180]
    rgb = np.asarray(Image.open(coco / "panoptic_train2017" / annotation["file_name"])).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
    category_of = {s["id"]: s["category_id"] for s in annotation["segments_info"]}
    contiguous = MetadataCatalog.get("coco_2017_train_panoptic_1_512_unlabeled_tagged").stuff_dataset_id_to_contiguous_id
    present = {contiguous[category_of[i]] for i in np.unique(ids).tolist() if i in category_of}
    assert len(present) == 7 and derived_tags(tagged, 0.0) == tuple(sorted(present))
    names = MetadataCatalog.get("coco_2017_train_panoptic_1_512_unlabeled_tagged").stuff_classes
    [with_tags] = attach_image_tags([tagged], names)
    assert with_tags["image_tags"] == tuple(sorted(present)) and "class_areas" not in with_tags


def test_tagged_list_split_checks_its_lists_like_the_unlabeled_one(tmp_path):
    for stem in "abc":  # the images must exist, as for the unlabeled list
        (tmp_path / f"{stem}.jpg").touch()

    def load_full():
        return [{"file_name": str(tmp_path / f"{s}.jpg"), "image_id": s, "height": 2, "width": 2,
                 "segments_info": [{"category_id": 3, "area": 3}, {"category_id": 7, "area": 1}]} for s in "abc"]

    labeled, unlabeled = tmp_path / "labeled.txt", tmp_path / "unlabeled.txt"
    labeled.write_text("images/training/a.jpg annotations/training/a.png\n")
    unlabeled.write_text("images/training/b.jpg annotations/training/b.png\nimages/training/c.jpg x.png\n")
    register_tagged_list("t_ade_tagged", str(unlabeled), str(labeled), load_full, {}, "ade.json")
    assert [(r["image_id"], r["class_areas"]) for r in DatasetCatalog.get("t_ade_tagged")] == [
        ("b", {3: 3, 7: 1}), ("c", {3: 3, 7: 1})]
    unlabeled.write_text("images/training/b.jpg x.png\nimages/training/a.jpg x.png\n")
    with pytest.raises(SplitListError, match=r"unlabeled\.txt:2: image 'a' is also labeled \(.*labeled\.txt:1\)"):
        DatasetCatalog.get("t_ade_tagged")
    unlabeled.write_text("images/training/b.jpg x.png\nimages/training/z.jpg x.png\n")
    with pytest.raises(SplitListError, match=r"unlabeled\.txt:2: image 'images/training/z.jpg' is not in the dataset"):
        DatasetCatalog.get("t_ade_tagged")
