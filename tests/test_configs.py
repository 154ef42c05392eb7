"""Every shipped YAML config merges cleanly; the paper matrix carries the paper's settings."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from dearli.config import add_dearli_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
ADE_SPLITS = ["1_128", "1_64", "1_32", "1_16", "1_8"]
COCO_SPLITS = ["1_512", "1_256", "1_128", "1_64", "1_32"]
PAPER_MATRIX = (
    [("ade20k", s, "base") for s in ADE_SPLITS] + [("ade20k", "1_128", "large")]
    + [(d, s, "base") for d in ("coco_panoptic", "coco_objects") for s in COCO_SPLITS]
)
DATASET_PREFIX = {
    "ade20k": "ade20k_panoptic_train_",
    "coco_panoptic": "coco_2017_train_panoptic_",
    "coco_objects": "coco_objects_2017_train_",
}
TEST_SET = {"ade20k": "ade20k_panoptic_val", "coco_panoptic": "coco_2017_val_panoptic", "coco_objects": "coco_objects_2017_val"}
NUM_CLASSES = {"ade20k": 150, "coco_panoptic": 133, "coco_objects": 81}


def _load(path):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_file(str(path))  # raises KeyError on any key add_dearli_config does not declare
    return cfg


def test_the_config_directory_is_found():
    assert len(ALL_CONFIGS) >= 2 * len(PAPER_MATRIX) + 3


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in ALL_CONFIGS])
def test_every_config_merges_sets_seed_and_has_no_python_tags(path):
    assert "!!python" not in path.read_text()
    cfg = _load(path)
    assert cfg.SEED >= 0, f"{path} does not set SEED"


@pytest.mark.parametrize("dataset,split,size", PAPER_MATRIX)
def test_paper_matrix_settings(dataset, split, size):
    dear = _load(CONFIG_DIR / dataset / f"dear_convnext_{size}_{split}.yaml")
    dearli = _load(CONFIG_DIR / dataset / f"dearli_convnext_{size}_{split}.yaml")
    crop = 640 if dataset == "ade20k" else 512
    for cfg in (dear, dearli):
        assert cfg.DATASETS.TRAIN == (DATASET_PREFIX[dataset] + split + "_labeled",)
        assert cfg.DATASETS.TRAIN_UNLABELED == (DATASET_PREFIX[dataset] + split + "_unlabeled",)
        assert cfg.DATASETS.TEST == (TEST_SET[dataset],)
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == NUM_CLASSES[dataset]
        assert tuple(cfg.INPUT.CROP.SIZE) == (crop, crop) and cfg.INPUT.SIZE_DIVISIBILITY == crop
        assert cfg.INPUT.MIN_SIZE_TEST == crop and cfg.INPUT.MAX_SIZE_TEST == 4 * crop
        assert len(cfg.INPUT.MIN_SIZE_TRAIN) == 16 and cfg.INPUT.MIN_SIZE_TRAIN[0] == crop // 2
        assert cfg.INPUT.MIN_SIZE_TRAIN[-1] == 2 * crop
        assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.TEST.EVAL_PERIOD) == (80000, 8, 20000)
        assert (cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.BACKBONE_MULTIPLIER) == (80000, 0.1)  # the reference's
        assert cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.0
        assert cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD == 0.8
        assert cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA == 0.4 and cfg.SSL.ENABLED
        assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 200 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
        assert cfg.OUTPUT_DIR.endswith(f"{dataset}/{'dearli' if cfg is dearli else 'dear'}_convnext_{size}_{split}")
    assert dear.MODEL.WEIGHTS == "" and dear.MODEL.TEACHER.WEIGHTS == ""
    warmup = "ade20k" if dataset == "ade20k" else "coco"
    suffix = "_convnext_large" if size == "large" else ""
    assert dearli.MODEL.WEIGHTS == dearli.MODEL.TEACHER.WEIGHTS == f"checkpoints/warmup_sam_{warmup}{suffix}.pth"
    expected_clip = {"base": ("convnext_base_w_320", 640), "large": ("convnext_large_d_320", 768)}[size]
    assert (dearli.MODEL.OPEN_CLIP.MODEL_NAME, dearli.MODEL.CLIP_HEAD.EMBED_DIM) == expected_clip


def test_tiny_configs_are_tiny_and_cpu():
    for name in ("tiny_dearli", "tiny_supervised"):
        cfg = _load(CONFIG_DIR / "shapes" / f"{name}.yaml")
        assert cfg.MODEL.DEVICE == "cpu" and cfg.MODEL.OPEN_CLIP.PRETRAINED == ""
        assert cfg.MODEL.OPEN_CLIP.MODEL_NAME == "dearli_convnext_tiny_test"
        assert cfg.MODEL.CLIP_HEAD.CLASS_EMBEDDING == "orthogonal" and cfg.MODEL.CLIP_HEAD.ENSEMBLE_ALPHA == 0.0
        assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 16 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 3
        assert tuple(cfg.INPUT.CROP.SIZE) == (64, 64)
        assert cfg.DATASETS.TRAIN == ("dearli_shapes_train_labeled",)
    assert _load(CONFIG_DIR / "shapes" / "tiny_dearli.yaml").SSL.ENABLED
    assert not _load(CONFIG_DIR / "shapes" / "tiny_supervised.yaml").SSL.ENABLED


def test_an_undeclared_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{CONFIG_DIR / "Base-DEARLi.yaml"}"\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 5\n')
    with pytest.raises(KeyError, match="NUM_QUERIES"):
        _load(bad)
