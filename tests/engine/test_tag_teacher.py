"""Image-level tags in the teacher step: restrict / drop (tags = all -> unchanged, tags = none -> no
segment), the precision property of drop on random segment/ground-truth pairs, the student's tag
targets through CutMix, and a training run with tags (loss_tag) or with the feature off."""
import pytest
import torch
from detectron2.modeling import build_model
from helpers.engine_setup import engine_cfg, load_checkpoint, train

from dearli.engine.pseudo_labels import PanopticLabel
from dearli.engine.tag_teacher import TeacherTags, drop_untagged
from dearli.engine.teacher import MeanTeacher

NUM_CLASSES = 9  # shapes: things 0-4, stuff 5-8
SIZE = 32  # weak views: one SIZE_DIVISIBILITY block, masks at stride 4
QUERIES = 10


def fake_network(teacher):
    """Replace the teacher's network by seeded random class scores and rectangular masks per image."""
    def scores_and_masks(images, zero_shot):
        batch = images.tensor.shape[0]
        g = torch.Generator().manual_seed(batch)
        scores = 3 * torch.randn(batch, QUERIES, NUM_CLASSES + 1, generator=g)
        masks = torch.full((batch, QUERIES, SIZE // 4, SIZE // 4), -6.0)
        for b in range(batch):
            for q in range(QUERIES):
                top, left = (int(v) for v in torch.randint(0, 6, (2,), generator=g))
                masks[b, q, top:top + int(torch.randint(2, 8, (1,), generator=g)), left:left + 4] = 6.0
        return scores, masks
    teacher.model._scores_and_masks = scores_and_masks


def make_teacher(tmp_path, **tags):
    cfg = engine_cfg(tmp_path, **{f"SSL.IMAGE_TAGS.{k}": v for k, v in tags.items()})
    torch.manual_seed(0)
    teacher = MeanTeacher(cfg, build_model(cfg))
    fake_network(teacher)
    return teacher


def view(seed, tags=None):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    fields = {"weak_image": image, "strong_image": image.flip(-1), "valid_mask": torch.ones(SIZE, SIZE, dtype=torch.bool)}
    multi_hot = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    if tags is not None:
        multi_hot[list(tags)] = True
    return {**fields, "image_tags": multi_hot, "has_tags": tags is not None}


def batch(main_tags, partner_tags=None, boxed=(False, True)):
    samples = []
    for i, with_box in enumerate(boxed):
        sample = {"file_name": f"u{i}.jpg", "sample_seed": i, **view(i, main_tags), "cutmix": None}
        if with_box:
            box = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            box[4:20, 8:24] = True
            sample["cutmix"] = {"file_name": f"p{i}.jpg", **view(10 + i, partner_tags), "box_mask": box}
        samples.append(sample)
    return samples


def teacher_outputs(teacher, samples):
    student = teacher.pseudo_label(samples)
    return student, teacher.last_pseudo_labels.teacher_labels, teacher.last_pseudo_labels.labels


def assert_labels_equal(a, b):
    for x, y in zip(a, b):
        for field in ("seg", "classes", "isthing", "scores"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field


@pytest.mark.parametrize("mode", ["restrict", "drop"])
def test_all_tags_leave_the_teacher_bitwise_unchanged(tmp_path, mode):
    everything = range(NUM_CLASSES)
    off = teacher_outputs(make_teacher(tmp_path), batch(everything, everything))
    on = teacher_outputs(make_teacher(tmp_path, ENABLED=True, TEACHER_MODE=mode), batch(everything, everything))
    assert sum(label.num_segments for label in off[1]) > 0
    assert_labels_equal(off[1], on[1])
    assert_labels_equal(off[2], on[2])
    for a, b in zip(off[0], on[0]):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["instances"].gt_masks, b["instances"].gt_masks)
        assert "tag_targets" not in a and set(b) - set(a) == {"tag_targets", "tag_weights"}


@pytest.mark.parametrize("mode", ["restrict", "drop"])
def test_no_tags_leave_no_pseudo_segment(tmp_path, mode):
    _, teacher_labels, final = teacher_outputs(make_teacher(tmp_path, ENABLED=True, TEACHER_MODE=mode), batch((), ()))
    assert all(label.num_segments == 0 and not label.seg.any() for label in teacher_labels + final)


def test_classes_outside_the_tags_never_appear_and_untagged_images_are_untouched(tmp_path):
    tags, partner_tags = (1, 5, 7), (0, 8)
    off = teacher_outputs(make_teacher(tmp_path), batch(tags, None))
    for mode in ("restrict", "drop"):
        _, teacher_labels, final = teacher_outputs(make_teacher(tmp_path, ENABLED=True, TEACHER_MODE=mode),
                                                   batch(tags, partner_tags))
        main, untouched = teacher_labels[:2], teacher_labels[2:]
        assert all(set(label.classes.tolist()) <= set(tags) for label in main)
        assert any(label.num_segments for label in main)
        assert set(final[0].classes.tolist()) <= set(tags)  # the unboxed sample
        assert set(final[1].classes.tolist()) <= set(tags) | set(partner_tags)
        assert all(set(label.classes.tolist()) <= set(partner_tags) for label in untouched)
    # The same batch without partner tags: the partner's label is the untagged teacher's.
    _, teacher_labels, _ = teacher_outputs(make_teacher(tmp_path, ENABLED=True), batch(tags, None))
    assert_labels_equal(teacher_labels[2:], off[1][2:])


def test_student_tag_targets_follow_the_cutmix_rule(tmp_path):
    teacher = make_teacher(tmp_path, ENABLED=True, TEACHER_MODE="none")
    student, _, _ = teacher_outputs(teacher, batch((1, 5), (2, 5)))
    plain, boxed = student
    assert torch.nonzero(plain["tag_targets"]).flatten().tolist() == [1, 5] and plain["tag_weights"].eq(1).all()
    assert not boxed["tag_targets"].any()
    assert torch.nonzero(boxed["tag_weights"]).flatten().tolist() == [0, 3, 4, 6, 7, 8]
    plain, boxed = teacher.pseudo_label(batch((1, 5), None))
    assert "tag_targets" in plain and "tag_targets" not in boxed  # an untagged partner: no term


def random_label(g, size=(12, 14), segments=6):
    seg = torch.randint(0, segments + 1, size, generator=g)
    classes = torch.randint(0, NUM_CLASSES, (segments,), generator=g)
    return PanopticLabel(seg, classes, classes < 5, torch.rand(segments, generator=g))


def correct_and_labelled(label, ground_truth):
    class_map = torch.cat([torch.tensor([-1]), label.classes])[label.seg]
    labelled = label.seg > 0
    return int((labelled & (class_map == ground_truth)).sum()), int(labelled.sum())


def test_drop_never_lowers_pseudo_label_pixel_precision():
    g = torch.Generator().manual_seed(0)
    strict = 0
    for _ in range(200):
        label = random_label(g)
        ground_truth = torch.randint(0, 4, label.seg.shape, generator=g) * 2  # classes 0, 2, 4, 6
        tags = torch.zeros(NUM_CLASSES, dtype=torch.bool)
        tags[ground_truth.unique()] = True  # perfect tags: derived from the ground truth
        dropped = drop_untagged(label, tags)
        before, after = correct_and_labelled(label, ground_truth), correct_and_labelled(dropped, ground_truth)
        assert after[0] == before[0]  # every dropped pixel was wrong
        assert after[1] <= before[1]
        if after[1]:
            assert after[0] / after[1] >= before[0] / before[1]
        absent_present = any(not tags[c] and (label.seg == i + 1).any() for i, c in enumerate(label.classes.tolist()))
        assert (after[1] < before[1]) == absent_present  # equality iff no segment of an absent class
        strict += after[1] < before[1]
        assert set(dropped.classes.tolist()) <= set(torch.nonzero(tags).flatten().tolist())
    assert 0 < strict < 200


def test_teacher_mode_is_checked():
    with pytest.raises(ValueError, match=r"SSL.IMAGE_TAGS.TEACHER_MODE='keep'; expected one of \('restrict', 'drop', 'none'\)"):
        TeacherTags("keep")


def test_training_with_tags_adds_loss_tag_and_off_is_bitwise_the_baseline(tmp_path):
    tagged = {"DATASETS.TRAIN_UNLABELED": ("dearli_shapes_train_unlabeled_tagged",), "SOLVER.MAX_ITER": 1}
    baseline = train(engine_cfg(tmp_path / "base", **{"SOLVER.MAX_ITER": 1, "SOLVER.CHECKPOINT_PERIOD": 1}))
    off = train(engine_cfg(tmp_path / "off", **tagged, **{"SOLVER.CHECKPOINT_PERIOD": 1}))
    on = train(engine_cfg(tmp_path / "on", **tagged, **{"SSL.IMAGE_TAGS.ENABLED": True, "SSL.IMAGE_TAGS.FRACTION": 0.5}))
    assert "loss_tag" in on.storage.latest() and "loss_tag" not in baseline.storage.latest()
    a, b = (load_checkpoint(t.cfg.OUTPUT_DIR + "/model_final.pth") for t in (baseline, off))
    for part in ("model", "teacher"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
