"""The class-agnostic warm-up stage: configs, hand-over to dearli_* configs, oracle proposals, and
end to end on CPU: tiny-SAM labels -> a few warm-up iterations -> semi-supervised student + teacher."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from dearli.config import add_dearli_config
from dearli.data import sam_format as fmt
from dearli.data.datasets.sam_images import register_oracle_dataset, register_sam_dataset
from dearli.data.mappers import sam_mapper  # noqa: F401  (registers "sam_pseudo_label")
from dearli.data.sam_oracle import ORACLE_SUBDIR
from dearli.data.datasets.shapes import register_shapes
from dearli.engine.trainer import DEARLiTrainer
from dearli.sam.generator import GeneratorSettings, SamMaskGenerator
from dearli.sam.pipeline import collect_images, generate_labels
from dearli.sam.tiny import build_tiny_sam
from helpers.tiny import tiny_cfg

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
sys.path.insert(0, str(REPO / "tools"))
import generate_sam_pseudolabels as tool  # noqa: E402


def _load(path):
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("name, dataset", [("warmup_sam_ade20k", "ade20k_sam_train"), ("warmup_sam_coco", "coco_sam_train")])
def test_warmup_configs_carry_the_paper_settings(name, dataset):
    cfg = _load(CONFIGS / "warmup" / f"{name}.yaml")
    assert cfg.DATASETS.TRAIN == (dataset,) and cfg.DATASETS.TEST == () and not cfg.SSL.ENABLED
    assert (cfg.MODEL.MASK_FORMER.CLASS_WEIGHT, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES) == (0.0, 1)
    assert cfg.MODEL.CLIP_HEAD.CLASS_SYNONYMS == "sa1b" and cfg.INPUT.DATASET_MAPPER_NAME == "sam_pseudo_label"
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, tuple(cfg.INPUT.CROP.SIZE)) == (160000, 16, (640, 640))
    assert (cfg.SOLVER.OPTIMIZER, cfg.SOLVER.BASE_LR, cfg.SOLVER.LR_SCHEDULER_NAME) == ("ADAMW", 1e-4, "WarmupPolyLR")
    assert (cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE) == ("full_model", 0.01)
    assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "fp16"  # AMPTrainer: fp16 + GradScaler
    assert cfg.SOLVER.CHECKPOINT_PERIOD == 160000 and cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.TEACHER.WEIGHTS == ""


def _semi_supervised_configs():
    return sorted(p for d in ("ade20k", "coco_panoptic", "coco_objects") for p in (CONFIGS / d).glob("dear*_*.yaml"))


@pytest.mark.parametrize("path", _semi_supervised_configs(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_hand_over_dearli_from_warmup_dear_without(path):
    """dearli_*: student and teacher start from the warm-up of the same backbone; dear_*: from nothing."""
    cfg = _load(path)
    if path.name.startswith("dear_"):
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.TEACHER.WEIGHTS == ""
        return
    assert cfg.MODEL.WEIGHTS == cfg.MODEL.TEACHER.WEIGHTS != ""
    warmup = _load(CONFIGS / "warmup" / f"{Path(cfg.MODEL.WEIGHTS).stem}.yaml")  # checkpoints/<warm-up config>.pth
    assert warmup.MODEL.OPEN_CLIP.MODEL_NAME == cfg.MODEL.OPEN_CLIP.MODEL_NAME
    assert warmup.MODEL.CLIP_HEAD.EMBED_DIM == cfg.MODEL.CLIP_HEAD.EMBED_DIM
    assert warmup.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES
    assert warmup.MODEL.MASK_FORMER.DEC_LAYERS == cfg.MODEL.MASK_FORMER.DEC_LAYERS


# ----------------------------------------------------------------------------- oracle proposals
@pytest.fixture(scope="module")
def oracle_set(tmp_path_factory):
    sources = register_shapes(prefix="test_oracle_shapes", num_labeled=3, num_unlabeled=3, num_val=1, image_size=64,
                              cache_dir=tmp_path_factory.mktemp("shapes_cache"))
    names = ("test_oracle_shapes_train_labeled", "test_oracle_shapes_train_unlabeled")
    register_oracle_dataset("test_oracle_sam_train", names)
    return names, sources


def test_oracle_proposals_are_the_ground_truth_segments_without_classes(oracle_set):
    names, sources = oracle_set
    dicts = DatasetCatalog.get("test_oracle_sam_train")
    assert len(dicts) == 6
    for d in dicts:
        label_dir = Path(d["sam_label_dir"])
        assert label_dir.parent.parent.name == "sam_labels" and str(label_dir).endswith(ORACLE_SUBDIR)
        assert fmt.read_meta(label_dir)["source"] == "oracle"
        split_dir = label_dir.parents[2]
        panoptic = json.loads((split_dir / "panoptic.json").read_text())
        ann = next(a for a in panoptic["annotations"] if Path(a["file_name"]).stem == d["sam_key"])
        ids = rgb2id(np.asarray(Image.open(split_dir / "panoptic" / ann["file_name"]).convert("RGB")))
        record, masks = fmt.load_image_masks(label_dir, d["sam_key"])
        expected = [ids == s["id"] for s in ann["segments_info"]]
        assert len(masks) == len(expected) > 1
        for got, want in zip(masks, expected):
            np.testing.assert_array_equal(got, want)
        assert all(a["predicted_iou"] == 1.0 for a in record["annotations"])
    assert MetadataCatalog.get("dearli_shapes_sam_oracle_train").proposal_source == "oracle"


def test_tool_writes_labelled_oracle_proposals(oracle_set, tmp_path, capsys):
    tool.main(["--oracle", "--dataset", "test_oracle_shapes_train_unlabeled", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "[ORACLE proposals (ground-truth segments, not SAM)] images 3 | already done 0 | generated 3" in out
    label_dir = tmp_path / ORACLE_SUBDIR
    assert fmt.read_meta(label_dir)["source"] == "oracle" and len(fmt.finished_keys(label_dir)) == 3
    with pytest.raises(SystemExit, match="--oracle needs --dataset"):
        tool.main(["--oracle", "--images", str(tmp_path), "--output", str(tmp_path)])


def test_shipped_tiny_warmup_config_trains_on_oracle_proposals(oracle_set, tmp_path):
    cfg = tiny_cfg(name="tiny_warmup", DATASETS__TRAIN=("test_oracle_sam_train",), SOLVER__MAX_ITER=2,
                   OUTPUT_DIR=str(tmp_path))
    assert tiny_cfg(name="tiny_warmup").DATASETS.TRAIN == ("dearli_shapes_sam_oracle_train",)
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["loss_ce"] == 0.0 and metrics[-1]["loss_mask"] > 0 and metrics[-1]["loss_dice"] > 0


# ----------------------------------------------------------------------------- tiny SAM end to end
@pytest.fixture(scope="module")
def tiny_sam_labels(shared_data, tmp_path_factory):
    """Tiny-SAM labels (lowered thresholds) of the real sample images, registered as a SAM image set."""
    root = tmp_path_factory.mktemp("tiny_sam_labels")
    items = collect_images(image_sources=[shared_data / "ade20k_semantic_sample" / "images",
                                          shared_data / "coco_panoptic_sample" / "images"])
    settings = GeneratorSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256)
    label_dir = root / settings.label_subdir("dearli_tiny")
    fmt.ensure_meta(label_dir, {"source": "sam", "model_type": "dearli_tiny", "generator": settings.mask_defining()})
    summary = generate_labels(items, label_dir, SamMaskGenerator(build_tiny_sam(), settings).generate, progress=False)
    assert summary.generated == 5 and summary.masks > 0  # never a warm-up on empty targets
    image_list = root / "images.txt"
    image_list.write_text("\n".join(item.file_name for item in items))
    register_sam_dataset("test_tiny_sam_images", image_list, str(label_dir))
    return label_dir


def _trainable_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(("sem_seg_head.", "void_embedding."))}


def test_warmup_from_tiny_sam_labels_hands_over_to_student_and_teacher(tiny_sam_labels, tmp_path):
    cfg = tiny_cfg(name="tiny_warmup", DATASETS__TRAIN=("test_tiny_sam_images",), SOLVER__MAX_ITER=3,
                   OUTPUT_DIR=str(tmp_path / "warmup"))
    warmup = DEARLiTrainer(cfg)
    warmup.resume_or_load(resume=False)
    initial = _trainable_state(warmup.model)
    warmup.train()
    trained = _trainable_state(warmup.model)
    metrics = [json.loads(line) for line in (tmp_path / "warmup" / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["loss_ce"] == 0.0 and metrics[-1]["loss_mask"] > 0
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)  # the warm-up did train
    checkpoint = tmp_path / "warmup" / "model_final.pth"

    semi = tiny_cfg(MODEL__WEIGHTS=str(checkpoint), MODEL__TEACHER__WEIGHTS=str(checkpoint),
                    SOLVER__MAX_ITER=1, OUTPUT_DIR=str(tmp_path / "dearli"))
    ssl = DEARLiTrainer(semi)
    ssl.resume_or_load(resume=False)
    student, teacher = _trainable_state(ssl.model), _trainable_state(ssl.teacher.model)
    assert set(student) == set(trained) == set(teacher)
    for key, value in trained.items():
        assert torch.equal(student[key], value), key
        assert torch.equal(teacher[key], value), key
    ssl.train()  # one semi-supervised step from the warm-up
