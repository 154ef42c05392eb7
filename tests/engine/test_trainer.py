"""The semi-supervised trainer on the tiny config: step structure, teacher, baselines, evaluation."""
import pytest
import torch
from helpers.engine_setup import engine_cfg, load_checkpoint, train
from helpers.tiny import tiny_cfg

from dearli.engine.ema import ema_decay
from dearli.engine.trainer import DEARLiTrainer


def record_calls(trainer):
    """Wrap the teacher's pseudo-labelling, its network and the student so the test sees what they got."""
    calls = {"teacher": [], "unlabeled": [], "student": []}
    teacher, student = trainer.teacher, trainer.model
    predict, pseudo_label, forward = teacher.model.predict_panoptic, teacher.pseudo_label, student.forward

    def predict_panoptic(images, **kwargs):
        calls["teacher"].append((list(images), kwargs))
        return predict(images, **kwargs)

    def recording_pseudo_label(unlabeled):
        calls["unlabeled"].append(unlabeled)
        return pseudo_label(unlabeled)

    def recording_forward(inputs):
        calls["student"].append(inputs)
        return forward(inputs)

    teacher.model.predict_panoptic = predict_panoptic
    teacher.pseudo_label = recording_pseudo_label
    student.forward = recording_forward
    return calls


def test_step_labels_weak_views_and_trains_on_cutmixed_strong_views(tmp_path):
    calls = {}
    cfg = engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1, "INPUT.UNLABELED.CUTMIX_PROB": 1.0})
    trainer = train(cfg, before_train=lambda t: calls.update(record_calls(t)))
    unlabeled, (teacher_images, teacher_kwargs), inputs = calls["unlabeled"][0], calls["teacher"][0], calls["student"][0]
    weak = [s["weak_image"] for s in unlabeled] + [s["cutmix"]["weak_image"] for s in unlabeled]
    assert len(teacher_images) == len(weak) == 4 and all(torch.equal(a, b) for a, b in zip(teacher_images, weak))
    assert teacher_kwargs == {"zero_shot": True, "object_threshold": 0.0, "overlap_threshold": 0.8, "as_segments": True}
    assert set(inputs) == {"labeled", "pseudo_labeled"} and len(inputs["labeled"]) == len(unlabeled) == 2
    assert all("weak_image" not in sample for sample in inputs["labeled"])  # the labeled crops, not unlabeled
    for sample, student_sample in zip(unlabeled, inputs["pseudo_labeled"]):
        box = sample["cutmix"]["box_mask"]
        expected = torch.where(box[None], sample["cutmix"]["strong_image"], sample["strong_image"])
        assert torch.equal(student_sample["image"], expected)
        assert student_sample["sample_seed"] == sample["sample_seed"]
        assert student_sample["instances"].gt_masks.shape[1:] == expected.shape[1:]
    latest = trainer.storage.latest()
    for key in ("ssl/pseudo_segments_per_image", "ssl/mean_teacher_score", "ssl/pseudo_pixel_coverage",
                "ssl/ema_decay", "teacher_time", "student_time", "data_time", "peak_memory_mb", "grad_norm",
                "lr", "pseudo_loss_ce", "loss_ce"):
        assert key in latest, key


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_teacher_time_is_logged_apart_from_data_time(tmp_path):
    clock = FakeClock()
    trainer = DEARLiTrainer(engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1}), clock=clock)
    trainer.resume_or_load(resume=False)
    predict, forward = trainer.teacher.model.predict_panoptic, trainer.model.forward

    def slow_teacher(images, **kwargs):
        clock.now += 5.0
        return predict(images, **kwargs)

    def slow_student(inputs):
        clock.now += 2.0
        return forward(inputs)

    trainer.teacher.model.predict_panoptic = slow_teacher
    trainer.model.forward = slow_student
    trainer.train()
    latest = trainer.storage.latest()
    assert latest["teacher_time"][0] == 5.0
    assert latest["student_time"][0] == 2.0
    assert latest["data_time"][0] == 0.0


def test_checkpoint_k_holds_teacher_after_ema_update_k(tmp_path):
    cfg = engine_cfg(tmp_path, **{"SOLVER.CHECKPOINT_PERIOD": 1, "MODEL.TEACHER.EMA_DECAY": 0.9})
    train(cfg)
    first, second = (load_checkpoint(tmp_path / f"model_000000{i}.pth") for i in (0, 1))
    assert first["teacher"].keys() == first["model"].keys()
    assert not any(".clip_model." in k for k in first["teacher"])  # the shared frozen CLIP is not stored
    # ramp: decay 0 after step 0 (a copy), 0.5 after step 1
    assert ema_decay(0, 0.9, True) == 0.0 and ema_decay(1, 0.9, True) == 0.5
    changed = 0
    for name, student_0 in first["model"].items():
        assert torch.equal(first["teacher"][name], student_0), name
        if student_0.is_floating_point():
            expected = 0.5 * first["teacher"][name] + 0.5 * second["model"][name]
            torch.testing.assert_close(second["teacher"][name], expected, rtol=1e-5, atol=1e-6)
            changed += not torch.equal(second["model"][name], student_0)
    assert changed > 0  # the student did move between the two checkpoints


def test_teacher_shares_frozen_clip_and_is_never_trained(tmp_path):
    trainer = train(engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 1}))
    teacher, student = trainer.teacher.model, trainer.model
    assert teacher.backbone is student.backbone
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for n, p in teacher.named_parameters() if not n.startswith("backbone.")}
    assert not teacher.training and student.training


def test_supervised_baseline_uses_the_same_trainer(tmp_path):
    calls = {}
    cfg = tiny_cfg("tiny_supervised", **{"SOLVER.MAX_ITER": 2, "OUTPUT_DIR": str(tmp_path), "DATASETS.TEST": []})
    trainer = train(cfg, before_train=lambda t: calls.update(record_calls(t)))
    assert calls["teacher"] == calls["unlabeled"] == [] and all(isinstance(inputs, list) for inputs in calls["student"])
    latest = trainer.storage.latest()
    assert "ssl/ema_decay" in latest and not any(k.startswith("pseudo_") for k in latest)


def test_dearli_teacher_weights_are_loaded_and_not_ramped(tmp_path):
    cfg = engine_cfg(tmp_path / "first", **{"SOLVER.MAX_ITER": 1})
    first = train(cfg)
    weights = tmp_path / "warmup.pth"
    torch.save({"model": {k: v + 1.0 if v.is_floating_point() else v for k, v in first.model.state_dict().items()}}, weights)
    trainer = DEARLiTrainer(engine_cfg(tmp_path / "second", **{"MODEL.TEACHER.WEIGHTS": str(weights)}))
    trainer.resume_or_load(resume=False)
    saved = torch.load(weights, weights_only=True)["model"]
    teacher_state, student_state = trainer.teacher.state_dict(), trainer.model.state_dict()
    name = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(teacher_state[name], saved[name]) and not torch.equal(student_state[name], saved[name])
    assert trainer.teacher.ramp is False and ema_decay(0, trainer.teacher.decay, trainer.teacher.ramp) == 0.999


def test_periodic_evaluation_covers_student_and_teacher(tmp_path):
    cfg = engine_cfg(tmp_path, **{"SOLVER.MAX_ITER": 2, "TEST.EVAL_PERIOD": 1, "DATASETS.TEST": ["dearli_shapes_val"]})
    trainer = DEARLiTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()  # the last evaluation's results
    for metrics in (results, results["teacher"]):
        assert {"PQ", "SQ", "RQ", "PQ-circle"} <= set(metrics["panoptic_seg"])
        assert {"mIoU", "IoU-circle"} <= set(metrics["sem_seg"])
    history = trainer.storage.history("teacher/panoptic_seg/PQ").values()
    assert [it for _, it in history] == [0, 2]  # after iteration 0 (periodic) and after training
    assert results["panoptic_seg"]["PQ"] == pytest.approx(trainer.storage.history("panoptic_seg/PQ").latest())


def load_tool(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"dearli_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_only_and_exported_teacher_reproduce_training_time_evaluation(tmp_path):
    trained = DEARLiTrainer(engine_cfg(tmp_path / "run", **{"SOLVER.MAX_ITER": 2, "MODEL.TEACHER.EMA_DECAY": 0.5,
                                                           "DATASETS.TEST": ["dearli_shapes_val"]}))
    trained.resume_or_load(resume=False)
    at_training = trained.train()
    train_net, export = load_tool("train_net"), load_tool("export_teacher")
    checkpoint, exported = tmp_path / "run" / "model_final.pth", tmp_path / "teacher.pth"
    common = ["DATASETS.TEST", "('dearli_shapes_val',)", "SSL.ENABLED", "True", "OUTPUT_DIR", str(tmp_path / "eval")]
    args = train_net.parse_args(["--config-file", "configs/shapes/tiny_dearli.yaml", "--eval-only", "--eval-teacher",
                                 "MODEL.WEIGHTS", str(checkpoint)] + common)
    both = train_net.main(args)
    # A fresh process rebuilds the same (random, unsaved) CLIP: evaluation is reproducible.
    for who in (both, both["teacher"]):
        reference = at_training if who is both else at_training["teacher"]
        assert who["panoptic_seg"]["PQ"] == reference["panoptic_seg"]["PQ"]
        assert who["sem_seg"]["mIoU"] == reference["sem_seg"]["mIoU"]
    assert export.main([str(checkpoint), str(exported)]) == 0
    teacher, saved = torch.load(exported, weights_only=True)["model"], load_checkpoint(checkpoint)
    assert teacher.keys() == saved["teacher"].keys()
    assert all(torch.equal(v, saved["teacher"][k]) for k, v in teacher.items())
    assert not all(torch.equal(v, saved["model"][k]) for k, v in teacher.items())  # not the student
    args = train_net.parse_args(["--config-file", "configs/shapes/tiny_dearli.yaml", "--eval-only",
                                 "MODEL.WEIGHTS", str(exported)] + common)
    alone = train_net.main(args)
    assert alone["panoptic_seg"]["PQ"] == both["teacher"]["panoptic_seg"]["PQ"]
    assert alone["sem_seg"]["mIoU"] == both["teacher"]["sem_seg"]["mIoU"]
    with pytest.raises(SystemExit, match="holds no teacher"):  # a message, not a traceback
        export.main([str(exported), str(tmp_path / "again.pth")])

