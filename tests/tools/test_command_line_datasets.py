"""Datasets declared by config keys on the command line, no Python: the SAM warm-up image set
(tools/generate_sam_pseudolabels.py --images, then train_net.py) and a semantic image/label folder
evaluated with train_net.py --eval-only."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers.tiny import tiny_cfg
from helpers.tools import load_tool
from PIL import Image

from dearli.data.datasets.from_config import find_label_dir, register_config_datasets
from dearli.sam.tiny import TINY_MODEL_TYPE

REPO = Path(__file__).resolve().parents[2]
SAM_FLAGS = ["--model-type", TINY_MODEL_TYPE, "--points-per-side", "4", "--pred-iou-thresh", "0",
             "--stability-score-thresh", "0", "--device", "cpu", "--no-progress"]


def _blocks_image(seed, size=64):
    """An image of a few flat-coloured rectangles (something for SAM to segment)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(0, 255, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, size - 16, 2)
        h, w = rng.integers(12, 32, 2)
        image[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    return image


@pytest.fixture(scope="module")
def sam_output(tmp_path_factory):
    """3 images and the tiny SAM's labels of them, written by the generator from the command line."""
    root = tmp_path_factory.mktemp("sam")
    images = root / "images"
    images.mkdir()
    for k in range(3):
        Image.fromarray(_blocks_image(k)).save(images / f"img_{k}.png")
    load_tool("generate_sam_pseudolabels").main(["--images", str(images), "--output", str(root / "labels"), *SAM_FLAGS])
    return images, root / "labels"


def test_label_dir_is_found_below_the_generator_output(sam_output, tmp_path):
    images, output = sam_output
    settings_dir = next(output.glob("*/*/meta.json")).parent
    assert find_label_dir(output) == str(settings_dir) == find_label_dir(settings_dir)
    with pytest.raises(FileNotFoundError, match=f"LABEL_DIR {tmp_path}: no meta.json in it"):
        find_label_dir(tmp_path)
    (tmp_path / "vit_b" / "other").mkdir(parents=True)
    (tmp_path / "vit_b" / "other" / "meta.json").write_text("{}")
    (tmp_path / "vit_h" / "other").mkdir(parents=True)
    (tmp_path / "vit_h" / "other" / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="holds 2 pseudo-label folders"):
        find_label_dir(tmp_path)


def test_sam_image_set_from_config_keys(sam_output):
    images, output = sam_output
    cfg = tiny_cfg(name="tiny_warmup", **{"DATASETS.SAM_IMAGES.NAME": "test_cli_sam_set",
                                          "DATASETS.SAM_IMAGES.IMAGES": str(images),
                                          "DATASETS.SAM_IMAGES.LABEL_DIR": str(output)})
    register_config_datasets(cfg)
    register_config_datasets(cfg)  # again: nothing to do
    dicts = DatasetCatalog.get("test_cli_sam_set")
    assert [d["sam_key"] for d in dicts] == ["img_0", "img_1", "img_2"]
    assert {d["sam_label_dir"] for d in dicts} == {find_label_dir(output)}
    taken = tiny_cfg(**{"DATASETS.SAM_IMAGES.NAME": "dearli_shapes_val", "DATASETS.SAM_IMAGES.IMAGES": str(images),
                        "DATASETS.SAM_IMAGES.LABEL_DIR": str(output)})
    with pytest.raises(ValueError, match="DATASETS.SAM_IMAGES.NAME 'dearli_shapes_val' is already a registered"):
        register_config_datasets(taken)
    no_labels = tiny_cfg(**{"DATASETS.SAM_IMAGES.NAME": "test_cli_sam_nolabels",
                            "DATASETS.SAM_IMAGES.IMAGES": str(images)})
    with pytest.raises(ValueError, match="DATASETS.SAM_IMAGES.LABEL_DIR is empty"):
        register_config_datasets(no_labels)


def test_warmup_trains_on_generated_sam_labels_from_the_command_line(sam_output, tmp_path):
    """A fresh process: nothing registers the set but the KEY VALUE pairs."""
    images, output = sam_output
    command = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", "configs/shapes/tiny_warmup.yaml",
               "DATASETS.SAM_IMAGES.IMAGES", str(images), "DATASETS.SAM_IMAGES.LABEL_DIR", str(output),
               "DATASETS.TRAIN", "('sam_images',)", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
               "OUTPUT_DIR", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 1
    assert metrics[-1]["loss_ce"] == 0.0 and metrics[-1]["loss_mask"] > 0
    assert (tmp_path / "model_final.pth").is_file()


# ----------------------------------------------------------------------------- semantic folder
@pytest.fixture(scope="module")
def label_folder(tmp_path_factory):
    """2 images with label PNGs over the 9 shapes classes; value 200 = ignore."""
    root = tmp_path_factory.mktemp("folder")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for k in range(2):
        labels = np.full((48, 64), 2, dtype=np.uint8)
        labels[:20] = 0
        labels[30:40, 10:30] = 5
        labels[0, 0] = 200
        Image.fromarray(labels).save(root / "labels" / f"frame_{k}.png")
        Image.fromarray(_blocks_image(10 + k)[:48]).save(root / "images" / f"frame_{k}.png")
    return root


def folder_keys(root, name, *extra):
    return ["DATASETS.SEMANTIC_FOLDER.NAME", name, "DATASETS.SEMANTIC_FOLDER.IMAGES", str(root / "images"),
            "DATASETS.SEMANTIC_FOLDER.LABELS", str(root / "labels"), "DATASETS.SEMANTIC_FOLDER.IMAGE_EXT", ".png",
            "DATASETS.SEMANTIC_FOLDER.IGNORE_VALUE", "200", *extra]


def test_semantic_folder_takes_the_model_classes(label_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DEARLI_DATASET_CACHE", str(tmp_path))
    pairs = folder_keys(label_folder, "test_cli_folder_classes")
    cfg = tiny_cfg(**dict(zip(pairs[::2], pairs[1::2])))
    register_config_datasets(cfg)
    metadata = MetadataCatalog.get("test_cli_folder_classes")
    assert metadata.stuff_classes == MetadataCatalog.get("dearli_shapes_train_labeled").stuff_classes
    assert metadata.thing_dataset_id_to_contiguous_id == {}
    records = DatasetCatalog.get("test_cli_folder_classes")
    sem = np.asarray(Image.open(records[0]["sem_seg_file_name"]))
    assert sem[0, 0] == 255 and sem[1, 0] == 0 and sem[35, 20] == 5 and sem[45, 60] == 2
    assert sorted(s["category_id"] for s in records[0]["segments_info"]) == [0, 2, 5]
    three = folder_keys(label_folder, "test_cli_folder_3", "DATASETS.SEMANTIC_FOLDER.CLASSES", ["a", "b", "c"])
    wrong = tiny_cfg(**dict(zip(three[::2], three[1::2])))
    with pytest.raises(ValueError, match="DATASETS.SEMANTIC_FOLDER has 3 classes but the model has "
                                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES 9"):
        register_config_datasets(wrong)
    missing = tiny_cfg(**{"DATASETS.SEMANTIC_FOLDER.IMAGES": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="DATASETS.SEMANTIC_FOLDER.IMAGES '.*nope': no such folder"):
        register_config_datasets(missing)


def test_eval_only_on_a_label_folder_from_the_command_line(label_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DEARLI_DATASET_CACHE", str(tmp_path / "cache"))
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", "configs/shapes/tiny_dearli.yaml", "--eval-only",
                                 *folder_keys(label_folder, "test_cli_folder_eval"),
                                 "DATASETS.TEST", "('test_cli_folder_eval',)", "OUTPUT_DIR", str(tmp_path / "eval")])
    results = train_net.main(args)
    written = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    metrics = written["results"]["student"]["test_cli_folder_eval"]
    assert metrics["sem_seg"]["mIoU"] == pytest.approx(results["sem_seg"]["mIoU"])
    # Classes absent from the labels and never predicted have no IoU; present ones have one in [0, 100].
    assert 0 <= metrics["sem_seg"]["IoU-sky"] <= 100 and "PQ" in metrics["panoptic_seg"]


# ----------------------------------------------------------------------------- panoptic folder
@pytest.fixture(scope="module")
def panoptic_split(tmp_path_factory):
    """A registered 3-image shapes val split: its files are the folder, its name the reference."""
    from dearli.data.datasets.shapes import register_shapes
    register_shapes(prefix="test_cli_pan", num_labeled=1, num_unlabeled=1, num_val=3, image_size=64,
                    cache_dir=tmp_path_factory.mktemp("pan_shapes"))
    DatasetCatalog.get("test_cli_pan_val")  # writes the files
    return MetadataCatalog.get("test_cli_pan_val")


def panoptic_keys(metadata, name, semantic=True):
    return ["DATASETS.PANOPTIC_FOLDER.NAME", name, "DATASETS.PANOPTIC_FOLDER.IMAGES", metadata.image_root,
            "DATASETS.PANOPTIC_FOLDER.PANOPTIC", metadata.panoptic_root,
            "DATASETS.PANOPTIC_FOLDER.JSON", metadata.panoptic_json,
            "DATASETS.PANOPTIC_FOLDER.SEMANTIC", metadata.sem_seg_root if semantic else ""]


def test_eval_only_on_a_panoptic_folder_matches_the_registered_dataset(panoptic_split, tmp_path):
    train_net = load_tool("train_net")

    def evaluate(test_name, *keys):
        args = train_net.parse_args(["--config-file", "configs/shapes/tiny_dearli.yaml", "--eval-only", *keys,
                                     "DATASETS.TEST", f"('{test_name}',)", "OUTPUT_DIR", str(tmp_path / test_name)])
        return train_net.main(args)

    reference = evaluate("test_cli_pan_val")
    from_folder = evaluate("test_cli_pan_folder", *panoptic_keys(panoptic_split, "test_cli_pan_folder"))
    # Same keys (per class too; NaN for classes in neither), same values.
    assert from_folder["panoptic_seg"] == pytest.approx(reference["panoptic_seg"], nan_ok=True)
    assert from_folder["sem_seg"] == pytest.approx(reference["sem_seg"], nan_ok=True)
    # The ground truth read from the folder is the registered split's, record by record.
    keys = ("file_name", "pan_seg_file_name", "sem_seg_file_name", "segments_info", "height", "width")
    folder_records = [{k: r[k] for k in keys} for r in DatasetCatalog.get("test_cli_pan_folder")]
    assert folder_records == [{k: r[k] for k in keys} for r in DatasetCatalog.get("test_cli_pan_val")]
    assert len(folder_records) == 3 and all(r["segments_info"] for r in folder_records)
    assert MetadataCatalog.get("test_cli_pan_folder").stuff_classes == panoptic_split.stuff_classes
    assert MetadataCatalog.get("test_cli_pan_folder").thing_dataset_id_to_contiguous_id == \
        panoptic_split.thing_dataset_id_to_contiguous_id


def test_panoptic_folder_errors_name_the_key(panoptic_split, tmp_path):
    keys = panoptic_keys(panoptic_split, "test_cli_pan_bad", semantic=False)
    values = dict(zip(keys[::2], keys[1::2]))
    no_json = tiny_cfg(**dict(values, **{"DATASETS.PANOPTIC_FOLDER.JSON": ""}))
    with pytest.raises(ValueError, match="DATASETS.PANOPTIC_FOLDER.JSON is empty"):
        register_config_datasets(no_json)
    one_class = tmp_path / "one.json"
    one_class.write_text(json.dumps({"categories": [{"id": 1, "name": "thing", "isthing": 1}]}))
    wrong = tiny_cfg(**dict(values, **{"DATASETS.PANOPTIC_FOLDER.JSON": str(one_class)}))
    with pytest.raises(ValueError, match=f"JSON {one_class} has 1 categories but the model has "
                                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES 9"):
        register_config_datasets(wrong)
    missing = tiny_cfg(**dict(values, **{"DATASETS.PANOPTIC_FOLDER.PANOPTIC": str(tmp_path / "none")}))
    with pytest.raises(FileNotFoundError, match="DATASETS.PANOPTIC_FOLDER.PANOPTIC '.*none': no such folder"):
        register_config_datasets(missing)


def test_predictor_takes_the_classes_of_a_config_declared_training_set(label_folder, tmp_path, monkeypatch):
    from dearli.engine.predictor import DEARLiPredictor
    monkeypatch.setenv("DEARLI_DATASET_CACHE", str(tmp_path))
    names = [f"class {i}" for i in range(9)]
    keys = folder_keys(label_folder, "test_cli_folder_trained", "DATASETS.SEMANTIC_FOLDER.CLASSES", names,
                       "DATASETS.TRAIN", ("test_cli_folder_trained",), "DATASETS.TEST", ())
    predictor = DEARLiPredictor(tiny_cfg(**dict(zip(keys[::2], keys[1::2]))))
    assert predictor.metadata.stuff_classes == names and predictor.num_classes == 9
