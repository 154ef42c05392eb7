"""The teacher's pseudo-labels follow the reference's overlap rule (method §1.6 step 4): a segment
whose query also wins pixels below sigmoid 0.5 is kept as a student target (tests/helpers/overlap_case.py)."""
import torch
from detectron2.modeling import build_model
from helpers import overlap_case as case
from helpers.engine_setup import engine_cfg

from dearli.engine.teacher import MeanTeacher

SCALE = 8  # 32x32 weak view: one SIZE_DIVISIBILITY block, no resize
SHAPES_STUFF = 5  # shapes classes: 0-4 things, 5-8 stuff


def test_pseudo_labels_keep_the_segment_the_reference_keeps(tmp_path):
    cfg = engine_cfg(tmp_path)
    assert cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD == 0.8
    torch.manual_seed(0)
    teacher = MeanTeacher(cfg, build_model(cfg))
    scores = case.class_log_probs(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, stuff=SHAPES_STUFF)
    masks = case.mask_logits(SCALE)
    teacher.model._scores_and_masks = lambda images, zero_shot: (scores[None], masks[None])
    size = 4 * SCALE
    unlabeled = [{
        "file_name": "u.jpg",
        "weak_image": torch.zeros(3, size, size, dtype=torch.uint8),
        "strong_image": torch.zeros(3, size, size, dtype=torch.uint8),
        "valid_mask": torch.ones(size, size, dtype=torch.bool),
        "sample_seed": 1,
    }]
    [student_sample] = teacher.pseudo_label(unlabeled)
    instances = student_sample["instances"]
    assert instances.gt_classes.tolist() == [case.THING, SHAPES_STUFF]
    expected = case.expected_pan(SCALE)
    assert torch.equal(instances.gt_masks, torch.stack([expected == 1, expected == 2]))
