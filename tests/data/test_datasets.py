"""Dataset registrations: metadata invariants, the real COCO / CamVid samples through the registered
code paths, lazy registration, and clear errors on bad annotations and image files."""
import builtins
import csv
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from helpers.dataset_trees import build_coco_tree, read_json, write_json
from dearli.data.datasets import register_builtin_datasets, register_semantic_dataset
from dearli.data.datasets.metadata import ADE20K_THING_IDS
from dearli.data.datasets.panoptic import PanopticAnnotationError
from dearli.data.datasets.semantic import (
    CAMVID_CLASSES, choose_labeled_stems, register_camvid, register_semantic_split,
)
from dearli.data.datasets.validate import (
    DatasetFileError, read_panoptic_ids, read_rgb_image, read_sem_seg,
)
from dearli.data.class_prompts import read_prompt_file

# name prefix -> (number of classes, number of things, prompt file, evaluator type)
EXPECTED = {
    "ade20k_panoptic": (150, 100, "ade20k_150", "ade20k_panoptic_seg"),
    "coco_2017": (133, 80, "coco_panoptic", "coco_panoptic_seg"),
    "coco_objects": (81, 80, "coco_objects", "coco_panoptic_seg"),
    "camvid": (11, 0, None, "sem_seg"),
}
REGISTERED = [
    "ade20k_panoptic_train", "ade20k_panoptic_val", "coco_2017_train_panoptic",
    "coco_2017_val_panoptic", "coco_objects_2017_val", "camvid_train", "camvid_val",
    "camvid_train_1_8_labeled", "camvid_train_1_8_unlabeled",
    *[f"ade20k_panoptic_train_{s}_{kind}" for s in ("1_128", "1_64", "1_32", "1_16", "1_8")
      for kind in ("labeled", "unlabeled")],
    *[f"{prefix}_{s}_{kind}" for prefix in ("coco_2017_train_panoptic", "coco_objects_2017_train")
      for s in ("1_512", "1_256", "1_128", "1_64", "1_32") for kind in ("labeled", "unlabeled")],
]


@pytest.mark.parametrize("name", REGISTERED)
def test_metadata_follows_detectron2_conventions(name):
    num_classes, num_things, prompt_file, evaluator_type = next(
        v for k, v in EXPECTED.items() if name.startswith(k))
    meta = MetadataCatalog.get(name)
    assert len(meta.thing_classes) == len(meta.stuff_classes) == num_classes
    assert meta.thing_classes == meta.stuff_classes
    assert len(meta.thing_colors) == len(meta.stuff_colors) == num_classes
    assert isinstance(meta.thing_dataset_id_to_contiguous_id, dict)  # {} for all-stuff sets
    assert len(meta.thing_dataset_id_to_contiguous_id) == num_things
    stuff_map = meta.stuff_dataset_id_to_contiguous_id
    assert sorted(stuff_map.values()) == list(range(num_classes))
    assert all(stuff_map[k] == v for k, v in meta.thing_dataset_id_to_contiguous_id.items())
    assert (meta.ignore_label, meta.label_divisor) == (255, 1000)
    assert meta.evaluator_type == evaluator_type
    assert meta.get("prompt_file", None) == prompt_file
    assert {"panoptic_json", "panoptic_root", "sem_seg_root", "image_root"} <= set(meta.as_dict())


@pytest.mark.parametrize("name", ["ade20k_panoptic_val", "coco_2017_val_panoptic",
                                  "coco_objects_2017_val"])
def test_prompt_file_lines_map_to_exactly_the_dataset_categories(name):
    meta = MetadataCatalog.get(name)
    assert set(read_prompt_file(meta.prompt_file)) == set(meta.stuff_dataset_id_to_contiguous_id)


def test_ade20k_things_are_the_instance_release_classes_not_objectinfo_stuff_column(shared_data):
    with open(shared_data / "ade20k_semantic_sample" / "objectInfo150.csv") as f:
        objectinfo_things = {int(r["Idx"]) - 1 for r in csv.DictReader(f) if r["Stuff"] == "0"}
    assert len(objectinfo_things) == 115 and len(ADE20K_THING_IDS) == 100
    meta = MetadataCatalog.get("ade20k_panoptic_val")
    assert set(meta.thing_dataset_id_to_contiguous_id) == ADE20K_THING_IDS
    names = meta.stuff_classes
    assert names[12] == "person" and 12 in ADE20K_THING_IDS  # people are things
    assert names[0] == "wall" and 0 not in ADE20K_THING_IDS
    # objectInfo150 marks 15 more classes as things, e.g. tree and plant; PQ_th must not use them.
    assert ADE20K_THING_IDS < objectinfo_things
    assert names[4] == "tree" and 4 in objectinfo_things and 4 not in ADE20K_THING_IDS
    assert names[17] == "plant" and 17 not in ADE20K_THING_IDS


def test_registration_reads_no_file_and_missing_data_fails_on_load(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"registration touched the file system: {args}")

    with monkeypatch.context() as patch:
        for module, name in ((builtins, "open"), (os, "listdir"), (os, "scandir"), (os, "stat")):
            patch.setattr(module, name, refuse)
        register_builtin_datasets(str(tmp_path / "missing"), cache_root=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"missing/ADEChallengeData2016/ade20k_panoptic_val"
                                                r"\.json not found; run datasets/prepare_ade20k"):
        DatasetCatalog.get("ade20k_panoptic_val")
    with pytest.raises(FileNotFoundError, match=r"missing/camvid/val/labels not found"):
        DatasetCatalog.get("camvid_val")


# ---- COCO panoptic sample through the registered COCO code path ----------------------------------

@pytest.fixture
def coco_val(tmp_path, shared_data):
    coco = build_coco_tree(tmp_path, shared_data)
    register_builtin_datasets(str(tmp_path), cache_root=str(tmp_path / "cache"))
    return coco


def test_coco_sample_loads_through_the_coco_registration(coco_val):
    records = DatasetCatalog.get("coco_2017_val_panoptic")
    source = read_json(coco_val / "annotations" / "panoptic_val2017.json")
    assert [r["image_id"] for r in records] == [142238, 439180]
    assert [len(r["segments_info"]) for r in records] == [18, 32]
    meta = MetadataCatalog.get("coco_2017_val_panoptic")
    for record, ann in zip(records, source["annotations"]):
        assert (record["height"], record["width"]) == np.asarray(Image.open(
            record["file_name"])).shape[:2]
        for segment, original in zip(record["segments_info"], ann["segments_info"]):
            contiguous = meta.stuff_dataset_id_to_contiguous_id[original["category_id"]]
            assert segment["category_id"] == contiguous
            assert segment["isthing"] is (original["category_id"] <= 90)
            assert segment["iscrowd"] == original["iscrowd"]
        ids = read_panoptic_ids(record["pan_seg_file_name"], record["segments_info"])
        semantic = read_sem_seg(record["sem_seg_file_name"], 133)
        assert ids.shape == semantic.shape
    assert records[0]["segments_info"][0]["category_id"] == meta.thing_classes.index("person")


def test_visualizer_draws_a_coco_sample_with_the_registered_metadata(coco_val):
    record = DatasetCatalog.get("coco_2017_val_panoptic")[0]
    image = read_rgb_image(record["file_name"])
    visualizer = Visualizer(image, MetadataCatalog.get("coco_2017_val_panoptic"))
    drawn = visualizer.draw_dataset_dict(record).get_image()
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)


def test_json_with_unknown_category_or_other_table_is_refused(coco_val):
    json_file = coco_val / "annotations" / "panoptic_val2017.json"
    gt = read_json(json_file)
    gt["annotations"][1]["segments_info"][2]["category_id"] = 12  # no COCO category 12
    write_json(json_file, gt)
    with pytest.raises(PanopticAnnotationError, match=r"panoptic_val2017.json: image 439180, "
                                                      r"segment \d+: unknown category_id 12"):
        DatasetCatalog.get("coco_2017_val_panoptic")
    gt["categories"][0]["isthing"] = 0  # a different thing/stuff split would change PQ_th
    write_json(json_file, gt)
    with pytest.raises(PanopticAnnotationError, match=r"categories \[1\] have a different "
                                                      "thing/stuff flag"):
        DatasetCatalog.get("coco_2017_val_panoptic")
    gt["categories"] = [dict(c, id=c["id"] - 1) for c in gt["categories"]]
    write_json(json_file, gt)
    with pytest.raises(PanopticAnnotationError, match="category ids differ"):
        DatasetCatalog.get("coco_2017_val_panoptic")


def test_panoptic_png_ids_missing_from_the_json_are_refused(coco_val):
    record = DatasetCatalog.get("coco_2017_val_panoptic")[1]
    dropped = record["segments_info"].pop(5)["id"]
    with pytest.raises(DatasetFileError, match=rf"000000439180.png: segment ids \[{dropped}\]"):
        read_panoptic_ids(record["pan_seg_file_name"], record["segments_info"])


# ---- image files ---------------------------------------------------------------------------------

def test_grayscale_and_rgba_images_are_converted_to_rgb(tmp_path, shared_data):
    rgb = np.asarray(Image.open(shared_data / "coco_panoptic_sample/images/000000142238.jpg"))
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    converted = read_rgb_image(tmp_path / "gray.png")
    assert converted.shape == rgb.shape and all(np.array_equal(converted[..., c], gray)
                                                for c in range(3))
    alpha = np.full(rgb.shape[:2] + (1,), 7, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(tmp_path / "rgba.png")
    assert np.array_equal(read_rgb_image(tmp_path / "rgba.png"), rgb)  # alpha dropped


def test_corrupt_truncated_and_float_images_raise_naming_the_file(tmp_path, shared_data):
    # 16-bit images are scaled, not refused: tests/data/test_image_reader.py
    data = (shared_data / "coco_panoptic_sample/images/000000142238.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "deep.tif")
    for name, message in (("truncated.jpg", "corrupt or truncated"),
                          ("garbage.jpg", "corrupt or truncated"),
                          ("deep.tif", "cannot be converted to 8-bit RGB"),
                          ("absent.jpg", "file not found")):
        with pytest.raises(DatasetFileError, match=rf"{name}: .*{message}"):
            read_rgb_image(tmp_path / name)


# ---- semantic-only (CamVid) ----------------------------------------------------------------------

def test_camvid_val_gets_remapped_labels_and_all_stuff_panoptic_gt(tmp_path, shared_data):
    register_camvid(str(shared_data / "camvid"), cache_root=str(tmp_path))
    records = DatasetCatalog.get("camvid_val")
    assert len(records) == 101
    assert MetadataCatalog.get("camvid_val").thing_dataset_id_to_contiguous_id == {}
    assert MetadataCatalog.get("camvid_val").stuff_classes == list(CAMVID_CLASSES)
    for record in records[:3]:
        raw = np.asarray(Image.open(shared_data / "camvid/val/labels" /
                                    f"{record['image_id']}.png")).astype(np.int64)
        labels = read_sem_seg(record["sem_seg_file_name"], 11)
        assert np.array_equal(labels, np.where(raw == 11, 255, raw))
        ids = read_panoptic_ids(record["pan_seg_file_name"], record["segments_info"])
        classes = sorted(set(np.unique(raw).tolist()) - {11})
        assert [s["category_id"] for s in record["segments_info"]] == classes
        for segment in record["segments_info"]:
            assert segment["isthing"] is False
            assert np.array_equal(ids == segment["id"], raw == segment["category_id"])
        assert sum(s["area"] for s in record["segments_info"]) == (raw != 11).sum()


def copy_camvid_subset(shared_data, target, count):
    for kind, ext in (("images", ".jpg"), ("labels", ".png")):
        (target / kind).mkdir(parents=True)
    stems = sorted(p.stem for p in (shared_data / "camvid/train/labels").glob("*.png"))[:count]
    for stem in stems:
        for kind, ext in (("images", ".jpg"), ("labels", ".png")):
            (target / kind / f"{stem}{ext}").write_bytes(
                (shared_data / "camvid/train" / kind / f"{stem}{ext}").read_bytes())
    return stems


def test_semantic_cache_is_reused_and_regenerated_only_for_changed_labels(tmp_path, shared_data):
    stems = copy_camvid_subset(shared_data, tmp_path / "src", 3)
    register_semantic_dataset("tiny_semantic", str(tmp_path / "src/images"),
                              str(tmp_path / "src/labels"), CAMVID_CLASSES, 11,
                              cache_dir=str(tmp_path / "cache"))
    DatasetCatalog.get("tiny_semantic")
    outputs = [tmp_path / "cache/panoptic" / f"{s}.png" for s in stems]
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    DatasetCatalog.get("tiny_semantic")
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes
    os.utime(tmp_path / "src/labels" / f"{stems[1]}.png", ns=(1, 1))  # "edited" label
    DatasetCatalog.get("tiny_semantic")
    changed = [p.stat().st_mtime_ns != m for p, m in zip(outputs, mtimes)]
    assert changed == [False, True, False]


def test_semantic_label_outside_the_classes_is_an_error_naming_the_file(tmp_path, shared_data):
    stems = copy_camvid_subset(shared_data, tmp_path / "src", 2)
    bad = tmp_path / "src/labels" / f"{stems[1]}.png"
    labels = np.asarray(Image.open(bad)).copy()
    labels[5, 5] = 12
    Image.fromarray(labels).save(bad)
    register_semantic_dataset("bad_semantic", str(tmp_path / "src/images"),
                              str(tmp_path / "src/labels"), CAMVID_CLASSES, 11,
                              cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DatasetFileError, match=rf"{stems[1]}.png: label values \[12\]"):
        DatasetCatalog.get("bad_semantic")


def test_camvid_one_eighth_split_is_deterministic_and_disjoint(tmp_path, shared_data):
    all_stems = [p.stem for p in (shared_data / "camvid/train/labels").glob("*.png")]
    chosen = choose_labeled_stems(all_stems, 1 / 8, seed=0)
    assert len(all_stems) == 367 and len(chosen) == 46
    assert chosen == choose_labeled_stems(list(reversed(all_stems)), 1 / 8, seed=0)
    assert chosen != choose_labeled_stems(all_stems, 1 / 8, seed=1)

    stems = copy_camvid_subset(shared_data, tmp_path / "src", 16)
    source = register_semantic_dataset("tiny_train", str(tmp_path / "src/images"),
                                       str(tmp_path / "src/labels"), CAMVID_CLASSES, 11,
                                       cache_dir=str(tmp_path / "cache"))
    register_semantic_split("tiny_train_1_8", source, 1 / 8, seed=0)
    labeled = DatasetCatalog.get("tiny_train_1_8_labeled")
    unlabeled = DatasetCatalog.get("tiny_train_1_8_unlabeled")
    assert {r["image_id"] for r in labeled} == choose_labeled_stems(stems, 1 / 8, seed=0)
    assert len(labeled) == 2 and len(unlabeled) == 14
    assert sorted(r["image_id"] for r in labeled + unlabeled) == stems
    assert all("segments_info" in r for r in labeled)
    assert all(set(r) == {"file_name", "image_id", "height", "width"} for r in unlabeled)
    meta = MetadataCatalog.get("tiny_train_1_8_unlabeled")
    assert meta.thing_dataset_id_to_contiguous_id == {}


def test_camvid_labeled_split_is_evaluable_with_pq_over_its_own_images(tmp_path, shared_data):
    # The split's records must carry their own panoptic json: PQ is computed over the json's images,
    # so with the 16-image source json, 2 predictions would be refused ("no prediction for 14 ...").
    from dearli.evaluation import PerClassPanopticEvaluator

    copy_camvid_subset(shared_data, tmp_path / "src", 16)
    source = register_semantic_dataset("tiny_train", str(tmp_path / "src/images"),
                                       str(tmp_path / "src/labels"), CAMVID_CLASSES, 11,
                                       cache_dir=str(tmp_path / "cache" / "tiny_train"))
    register_semantic_split("tiny_train_1_8", source, 1 / 8, seed=0)
    labeled = DatasetCatalog.get("tiny_train_1_8_labeled")
    split_json = read_json(MetadataCatalog.get("tiny_train_1_8_labeled").panoptic_json)
    assert sorted(image["id"] for image in split_json["images"]) == sorted(r["image_id"] for r in labeled)
    assert [a["image_id"] for a in split_json["annotations"]] == [i["id"] for i in split_json["images"]]
    assert MetadataCatalog.get("tiny_train_1_8_unlabeled").panoptic_json == str(tmp_path / "cache/tiny_train/panoptic.json")

    evaluator = PerClassPanopticEvaluator("tiny_train_1_8_labeled", str(tmp_path / "eval"))
    evaluator.reset()
    for record in labeled:  # the ground truth as the prediction: PQ, SQ, RQ 100
        ids = read_panoptic_ids(record["pan_seg_file_name"], record["segments_info"])
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": False} for s in record["segments_info"]]
        evaluator.process([{"file_name": record["file_name"], "image_id": record["image_id"]}],
                          [{"panoptic_seg": (torch.from_numpy(ids), segments)}])
    results = evaluator.evaluate()["panoptic_seg"]
    assert (results["PQ"], results["SQ"], results["RQ"]) == (100.0, 100.0, 100.0)
