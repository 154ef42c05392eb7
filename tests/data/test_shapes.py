"""The synthetic dearli_shapes_* dataset: determinism, annotation consistency, registration, evaluators."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator
from panopticapi.utils import rgb2id
from PIL import Image

from dearli.data.datasets import shapes

IMAGE_HW = (48, 64)


def _read_ids(path):
    return rgb2id(np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def labeled_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return shapes.ensure_split(root / "split", "train_labeled", 6, IMAGE_HW, seed=3)


def test_generation_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path, labeled_split):
    again = shapes.ensure_split(tmp_path / "again", "train_labeled", 6, IMAGE_HW, seed=3)
    files = sorted(p.relative_to(labeled_split) for p in labeled_split.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 * 6  # json + image, panoptic and semantic PNG per image
    for rel in files:
        assert (labeled_split / rel).read_bytes() == (again / rel).read_bytes(), rel

    other_seed = shapes.ensure_split(tmp_path / "other", "train_labeled", 6, IMAGE_HW, seed=4)
    first = "panoptic/train_labeled_000000.png"
    assert (other_seed / first).read_bytes() != (labeled_split / first).read_bytes()


def test_panoptic_annotations_are_internally_consistent(labeled_split):
    panoptic = json.loads((labeled_split / "panoptic.json").read_text())
    categories = {c["id"]: c for c in panoptic["categories"]}
    metadata = shapes.shapes_metadata()
    thing_ids = set(metadata["thing_dataset_id_to_contiguous_id"])
    assert set(categories) == set(metadata["stuff_dataset_id_to_contiguous_id"])
    assert {cid for cid, c in categories.items() if c["isthing"]} == thing_ids == {1, 2, 3, 4, 5}
    images = {im["id"]: im for im in panoptic["images"]}
    assert len(panoptic["annotations"]) == len(images) == 6
    num_things = 0
    for ann in panoptic["annotations"]:
        image = np.asarray(Image.open(labeled_split / "images" / images[ann["image_id"]]["file_name"]))
        ids = _read_ids(labeled_split / "panoptic" / ann["file_name"])
        semantic = np.asarray(Image.open(labeled_split / "semantic" / ann["file_name"]))
        assert image.shape == (*IMAGE_HW, 3) and ids.shape == semantic.shape == IMAGE_HW
        segments = {s["id"]: s for s in ann["segments_info"]}
        # every pixel belongs to a listed segment (no void here) and every listed segment is present
        assert set(np.unique(ids).tolist()) == set(segments)
        for segment_id, segment in segments.items():
            mask = ids == segment_id
            ys, xs = np.nonzero(mask)
            assert segment["area"] == mask.sum()
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert segment["category_id"] in categories and segment["iscrowd"] == 0
            contiguous = metadata["stuff_dataset_id_to_contiguous_id"][segment["category_id"]]
            assert np.all(semantic[mask] == contiguous)
            num_things += segment["category_id"] in thing_ids
        stuff = [s for s in segments.values() if s["category_id"] not in thing_ids]
        assert len(stuff) == 2  # one upper (sky/wall) and one lower (ground/water) region
    assert num_things >= 6  # every image has at least one instance


def test_register_shapes_is_lazy_and_sets_detectron2_metadata(tmp_path):
    names = shapes.register_shapes("t_shapes_reg", num_labeled=3, num_unlabeled=4, num_val=2,
                                   image_size=40, seed=1, cache_dir=tmp_path)
    assert sorted(names) == ["t_shapes_reg_train_labeled", "t_shapes_reg_train_unlabeled", "t_shapes_reg_val"]
    assert not any(tmp_path.rglob("*.json"))  # nothing generated before a split is loaded

    meta = MetadataCatalog.get("t_shapes_reg_val")
    all_classes = ["circle", "square", "triangle", "star", "cross", "sky", "wall", "ground", "water"]
    assert meta.thing_classes == meta.stuff_classes == all_classes
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 11: 5, 12: 6, 13: 7, 14: 8}
    assert (meta.ignore_label, meta.label_divisor, meta.evaluator_type) == (255, 1000, "coco_panoptic_seg")
    assert len(meta.class_synonyms) == 9 and "prompt_file" not in meta.as_dict()

    val = DatasetCatalog.get("t_shapes_reg_val")
    assert Path(meta.panoptic_json).is_file() and Path(meta.sem_seg_root).is_dir()
    assert len(val) == 2
    for d in val:
        assert (d["height"], d["width"]) == (40, 40) and Path(d["file_name"]).is_file()
        for s in d["segments_info"]:
            assert isinstance(s["isthing"], bool) and s["isthing"] == (s["category_id"] < 5)
    unlabeled = DatasetCatalog.get("t_shapes_reg_train_unlabeled")
    assert len(unlabeled) == 4
    assert all(set(d) == {"file_name", "image_id", "height", "width"} for d in unlabeled)
    all_ids = [d["image_id"] for d in val + unlabeled + DatasetCatalog.get("t_shapes_reg_train_labeled")]
    assert len(set(all_ids)) == len(all_ids) == 9  # image ids unique across splits


def test_lost_generation_race_keeps_the_winners_folder_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "split"
    real_write = shapes._write_split

    def write_while_another_process_finishes_first(out_dir, *args):
        real_write(out_dir, *args)
        real_write(tmp_path / "winner", *args)
        (tmp_path / "winner").rename(target)  # the other process renames its folder first

    monkeypatch.setattr(shapes, "_write_split", write_while_another_process_finishes_first)
    assert shapes.ensure_split(target, "val", 2, (32, 32), seed=0) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]  # no temporary folder left
    assert (target / "panoptic.json").is_file()

    monkeypatch.setattr(shapes, "_write_split", lambda *a: pytest.fail("an existing split is regenerated"))
    shapes.ensure_split(target, "val", 2, (32, 32), seed=0)


def test_ground_truth_scores_perfectly_with_detectron2_evaluators(tmp_path):
    shapes.register_shapes("t_shapes_eval", num_labeled=1, num_unlabeled=1, num_val=3, image_size=48,
                           seed=2, cache_dir=tmp_path)
    dicts = DatasetCatalog.get("t_shapes_eval_val")
    panoptic = COCOPanopticEvaluator("t_shapes_eval_val", output_dir=str(tmp_path / "pq"))
    semantic = SemSegEvaluator("t_shapes_eval_val", distributed=False)
    panoptic.reset()
    semantic.reset()
    for d in dicts:
        ids = torch.from_numpy(_read_ids(d["pan_seg_file_name"]).astype(np.int32))
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]} for s in d["segments_info"]]
        labels = torch.from_numpy(np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64))
        scores = torch.nn.functional.one_hot(labels, 9).permute(2, 0, 1).float()
        panoptic.process([d], [{"panoptic_seg": (ids, segments)}])
        semantic.process([d], [{"sem_seg": scores}])
    assert panoptic.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert semantic.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)
