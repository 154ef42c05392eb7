"""The SAM refinement in the teacher (dearli/engine/teacher_refinement.py): each weak view refined
with its own masks before CutMix, weight maps cut by the same box, skips counted, statistics
logged, feature off unchanged, and tiny training iterations with the option on."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers.engine_setup import engine_cfg, train
from helpers.tiny import tiny_cfg

from dearli.data.mappers import UnlabeledWeakStrongMapper
from dearli.data.sam_oracle import with_panoptic_ground_truth, write_oracle_labels
from dearli.engine import teacher_refinement
from dearli.engine.pseudo_labels import PanopticLabel, restrict_to
from dearli.engine.sam_refine import RefineResult
from dearli.engine.teacher import MeanTeacher
from dearli.engine.tag_teacher import drop_untagged
from dearli.engine.teacher_refinement import log_refinement, mean_stats, prob_maps_of

UNLABELED = "dearli_shapes_train_unlabeled"


@pytest.fixture(scope="module")
def sam_cache(tmp_path_factory):
    """A SAM-format cache of the unlabeled shapes images (ORACLE masks: the ground-truth segments)."""
    folder = tmp_path_factory.mktemp("sam") / "oracle"
    write_oracle_labels(with_panoptic_ground_truth(UNLABELED)[:8], folder)
    return str(folder)


def _refine_cfg(sam_cache, **overrides):
    settings = {"SSL.SAM_REFINE.ENABLED": True, "SSL.SAM_REFINE.LABEL_DIR": sam_cache, "INPUT.UNLABELED.CUTMIX_PROB": 1.0}
    settings.update(overrides)
    return tiny_cfg(**settings)


def _batch(cfg, indices=(0, 1)):
    dicts = DatasetCatalog.get(UNLABELED)
    mapper = UnlabeledWeakStrongMapper(cfg)
    return [mapper(dicts[i], np.random.default_rng(i), lambda rng, i=i: dicts[i + 2]) for i in indices]


def _teacher(cfg):
    torch.manual_seed(0)
    return MeanTeacher(cfg, build_model(cfg))


class FakeRefine:
    """Stands in for refine_with_sam: records its inputs; the refined label of view v is one thing
    segment of class v over the whole valid view, its weight map the constant 0.1 * (v + 1)."""

    def __init__(self):
        self.calls = []

    def __call__(self, label, prob_maps, sam_masks, valid, settings, paste_masks=None):
        view = len(self.calls)
        self.calls.append({"label": label, "prob_maps": prob_maps, "sam_masks": sam_masks, "valid": valid,
                           "paste_masks": paste_masks})
        refined = PanopticLabel(valid.long(), torch.tensor([view]), torch.tensor([True]), torch.tensor([0.9]))
        weights = torch.full((1, *prob_maps.shape[1:]), 0.1 * (view + 1))
        return RefineResult(refined, weights, {"matched_iom": float(view), "unmatched": float("nan")})


def test_each_view_is_refined_with_its_own_masks_before_cutmix(sam_cache, monkeypatch):
    cfg = _refine_cfg(sam_cache, **{"SSL.SAM_REFINE.PWA.ENABLED": True})
    unlabeled = _batch(cfg)
    fake = FakeRefine()
    monkeypatch.setattr(teacher_refinement, "refine_with_sam", fake)
    teacher = _teacher(cfg)
    samples = teacher.pseudo_label(unlabeled)
    views = unlabeled + [s["cutmix"] for s in unlabeled]  # main views, then the partners
    assert len(fake.calls) == 4
    for call, view in zip(fake.calls, views):
        assert call["sam_masks"] is not None and torch.equal(call["sam_masks"], view["sam_masks"])
        assert torch.equal(call["valid"], view["valid_mask"])
        h, w = view["weak_image"].shape[-2:]
        assert call["prob_maps"].shape == (call["label"].num_segments, h // 4, w // 4)
        # The full-resolution masks it may paste from: the strided ones are their cell centres.
        full = call["paste_masks"](torch.arange(len(view["sam_masks"])))
        assert full.shape == (len(view["sam_masks"]), h, w) and torch.equal(full[:, 2::4, 2::4], view["sam_masks"])
        assert torch.equal(call["paste_masks"](torch.tensor([1])), full[1:2])
    for index, (sample, student) in enumerate(zip(unlabeled, samples)):
        box = sample["cutmix"]["box_mask"]
        main_view, partner_view = index, len(unlabeled) + index
        # Inside the box the partner's refined segment, outside the main one's; weights likewise.
        classes = student["instances"].gt_classes.tolist()
        masks = student["instances"].gt_masks
        assert classes == [main_view, partner_view]
        assert torch.equal(masks[0], sample["valid_mask"] & ~box)
        assert torch.equal(masks[1], sample["cutmix"]["valid_mask"] & box)
        main_weight, partner_weight = 0.1 * (main_view + 1), 0.1 * (partner_view + 1)
        assert torch.allclose(student["mask_weights"][0], torch.where(box, 1.0, main_weight))
        assert torch.allclose(student["mask_weights"][1], torch.where(box, partner_weight, 1.0))
    record = teacher.refinement.last
    assert (record.refined_views, record.skipped_views) == (4, 0)
    assert record.stats == {"matched_iom": 1.5}  # mean of 0, 1, 2, 3; NaN values are left out
    for unrefined, call in zip(record.unrefined, fake.calls[:2]):  # refined on the valid area only
        assert torch.equal(restrict_to(unrefined, call["valid"]).seg, call["label"].seg)
    with EventStorage(0) as storage:
        log_refinement(storage, teacher.refinement)
        latest = storage.latest()
    assert latest["ssl/sam_refine/matched_iom"][0] == 1.5 and latest["ssl/sam_refine/refined_views"][0] == 4
    assert latest["ssl/sam_refine/skipped_views"][0] == 0


def test_views_without_masks_keep_the_teacher_label_and_are_counted(sam_cache, monkeypatch):
    cfg = _refine_cfg(sam_cache)
    unlabeled = _batch(cfg)
    unlabeled[1]["sam_masks"] = None  # as the mapper emits it under MISSING_MASKS "skip"
    fake = FakeRefine()
    monkeypatch.setattr(teacher_refinement, "refine_with_sam", fake)
    teacher = _teacher(cfg)
    samples = teacher.pseudo_label(unlabeled)
    assert len(fake.calls) == 3 and (teacher.refinement.last.refined_views, teacher.refinement.last.skipped_views) == (3, 1)
    assert all("mask_weights" not in s for s in samples)  # PWA off
    del unlabeled[0]["sam_masks"]
    with pytest.raises(KeyError, match="SSL.SAM_REFINE.ENABLED but the sample has no 'sam_masks'"):
        teacher.pseudo_label(unlabeled)


def test_identity_refinement_gives_the_pseudo_labels_of_the_feature_off(sam_cache, monkeypatch):
    cfg_on, cfg_off = _refine_cfg(sam_cache), _refine_cfg(sam_cache, **{"SSL.SAM_REFINE.ENABLED": False})
    unlabeled = _batch(cfg_on)
    monkeypatch.setattr(teacher_refinement, "refine_with_sam",
                        lambda label, prob_maps, *args, **kwargs: RefineResult(label, prob_maps, {}))
    on, off = _teacher(cfg_on), _teacher(cfg_off)
    assert off.refinement is None
    for a, b in zip(on.pseudo_label(unlabeled), off.pseudo_label(unlabeled)):
        assert a.keys() == b.keys() and "mask_weights" not in a
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["instances"].gt_masks, b["instances"].gt_masks)
        assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)


def test_mean_stats_skips_non_finite_values():
    assert mean_stats([{"a": 1.0, "b": float("nan")}, {"a": torch.tensor(3.0)}]) == {"a": 2.0}


def test_tiny_training_with_refinement_and_pwa(sam_cache, tmp_path):
    """Two iterations with the real refine_with_sam on ORACLE masks: targets carry weights, the
    statistics and the quality before/after refinement are logged."""
    dicts = DatasetCatalog.get(UNLABELED)
    write_oracle_labels(with_panoptic_ground_truth(UNLABELED), sam_cache)  # every unlabeled image
    cfg = engine_cfg(tmp_path, **{"SSL.SAM_REFINE.ENABLED": True, "SSL.SAM_REFINE.PWA.ENABLED": True,
                                  "SSL.SAM_REFINE.LABEL_DIR": sam_cache, "INPUT.UNLABELED.CUTMIX_PROB": 1.0,
                                  "SSL.PSEUDO_QUALITY_IMAGES": 2, "TEST.EVAL_PERIOD": 2})
    seen = []

    def record_inputs(trainer):
        forward = trainer.model.forward
        trainer.model.forward = lambda inputs: seen.append(inputs) or forward(inputs)

    trainer = train(cfg, before_train=record_inputs)
    assert len(dicts) > 8 and len(seen) == 2
    for inputs in seen:
        for sample in inputs["pseudo_labeled"]:
            weights = sample["mask_weights"]
            assert weights.shape == sample["instances"].gt_masks.shape and weights.dtype == torch.float32
    latest = trainer.storage.latest()
    for key in ("ssl/sam_refine/refined_views", "ssl/sam_refine/skipped_views", "ssl/sam_refine/iom_share",
                "ssl/sam_refine/cpi_share", "ssl/sam_refine/unmatched_share", "ssl/sam_refine/mean_iou_teacher_refined",
                "ssl/sam_refine/mean_area_change", "ssl/sam_refine/sam_dropped_share",
                "pseudo_quality/PQ", "pseudo_quality_unrefined/PQ", "pseudo_quality_unrefined/mIoU"):
        assert key in latest, key
    assert latest["ssl/sam_refine/refined_views"][0] == 4 and latest["ssl/sam_refine/skipped_views"][0] == 0


def test_probability_maps_follow_segments_the_tags_dropped():
    seg = torch.tensor([[1, 1, 2, 3], [0, 2, 2, 3]])
    maps = torch.stack([torch.full((2, 4), v) for v in (0.1, 0.2, 0.3)])
    prediction = SimpleNamespace(seg=seg, prob_maps=maps)
    label = PanopticLabel(seg, torch.tensor([0, 4, 2]), torch.tensor([True, True, False]), torch.ones(3))
    assert prob_maps_of(label, prediction) is maps
    dropped = drop_untagged(label, torch.tensor([True, False, True, False, False]))  # class 4 untagged
    assert dropped.seg.tolist() == [[1, 1, 0, 2], [0, 0, 0, 2]]
    assert torch.equal(prob_maps_of(dropped, prediction), maps[[0, 2]])


@pytest.mark.parametrize("tag_mode", ["restrict", "drop"])
def test_every_extension_on_at_once_trains(sam_cache, tmp_path, tag_mode):
    """SAM refinement with PWA, image tags and dense CLIP guidance together (the extensions touch
    the same teacher call and the same loss dict): each contributes its loss or statistics, the
    weight maps still match their targets after the tags' segment changes, and the losses are finite."""
    write_oracle_labels(with_panoptic_ground_truth(UNLABELED), sam_cache)  # every unlabeled image
    cfg = engine_cfg(tmp_path, **{
        "DATASETS.TRAIN_UNLABELED": ("dearli_shapes_train_unlabeled_tagged",),
        "SSL.SAM_REFINE.ENABLED": True, "SSL.SAM_REFINE.PWA.ENABLED": True, "SSL.SAM_REFINE.APPLY_TO_STUFF": True,
        "SSL.SAM_REFINE.LABEL_DIR": sam_cache, "INPUT.UNLABELED.CUTMIX_PROB": 1.0,
        "SSL.IMAGE_TAGS.ENABLED": True, "SSL.IMAGE_TAGS.TEACHER_MODE": tag_mode,
        "SSL.DENSE_CLIP_GUIDANCE.ENABLED": True, "SSL.DENSE_CLIP_GUIDANCE.THRESHOLD": 0.0,
    })
    seen, losses = [], []

    def record(trainer):
        forward = trainer.model.forward

        def recorded(inputs):
            seen.append(inputs)
            out = forward(inputs)
            losses.append({k: float(v.detach()) for k, v in out.items()})
            return out
        trainer.model.forward = recorded

    trainer = train(cfg, before_train=record)
    assert len(seen) == 2
    for inputs in seen:
        for sample in inputs["pseudo_labeled"]:
            assert sample["mask_weights"].shape == sample["instances"].gt_masks.shape
        # CUTMIX_PROB 1: every sample is boxed, so its tag terms are negatives only (classes absent
        # from both tagged images), never a positive.
        with_terms = [s for s in inputs["pseudo_labeled"] if s.get("tag_targets") is not None]
        assert with_terms and not any(s["tag_targets"][s["tag_weights"] > 0].any() for s in with_terms)
    for step in losses:
        assert "loss_tag" in step and "loss_dense_clip" in step
        assert all(np.isfinite(v) for v in step.values())
    assert trainer.storage.latest()["ssl/sam_refine/refined_views"][0] == 4
