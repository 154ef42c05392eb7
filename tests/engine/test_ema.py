"""EMA teacher: decay schedule, name pairing, shared / integer / frozen tensors."""
import copy

import pytest
import torch
from torch import nn

from dearli.engine.ema import ModelEMA, ema_decay, resolve_ema_ramp


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.register_buffer("table", torch.arange(4.0))
        for p in self.parameters():
            p.requires_grad_(False)


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Frozen()
        self.head = nn.Linear(4, 2)
        self.norm = nn.BatchNorm1d(2)  # float running stats + integer num_batches_tracked
        self.scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)  # frozen, not shared


def make_pair():
    torch.manual_seed(0)
    student = Student()
    teacher = copy.deepcopy(student, memo={id(student.backbone): student.backbone})
    return teacher, student


def randomize(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not name.startswith("backbone"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))


def test_decay_schedule_ramp_and_constant():
    assert [ema_decay(t, 0.999, ramp=True) for t in (0, 1, 3, 9)] == [0.0, 0.5, 0.75, 0.9]
    assert ema_decay(5000, 0.999, ramp=True) == 0.999
    assert ema_decay(0, 0.99, ramp=False) == 0.99
    with pytest.raises(ValueError, match="EMA_DECAY"):
        ema_decay(0, 1.5, ramp=False)


def test_ramp_mode_auto_follows_teacher_weights():
    assert resolve_ema_ramp("auto", "") is True
    assert resolve_ema_ramp("auto", "warmup.pth") is False
    assert resolve_ema_ramp("on", "warmup.pth") is True
    assert resolve_ema_ramp("off", "") is False
    with pytest.raises(ValueError, match="EMA_RAMP='sometimes'"):
        resolve_ema_ramp("sometimes", "")


def test_pairing_classifies_tensors():
    teacher, student = make_pair()
    ema = ModelEMA(teacher, student)
    assert sorted(ema.averaged_names) == sorted(
        ["head.weight", "head.bias", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"]
    )
    assert ema.copied_names == ["norm.num_batches_tracked"]
    assert sorted(ema.shared_names) == ["backbone.proj.bias", "backbone.proj.weight", "backbone.table"]


def test_update_matches_formula_and_leaves_other_tensors():
    teacher, student = make_pair()
    randomize(student, 1)
    student.norm.num_batches_tracked.fill_(7)
    teacher.scale.data.fill_(3.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ModelEMA(teacher, student).update(0.9)
    after, target = teacher.state_dict(), student.state_dict()
    for name in ["head.weight", "head.bias", "norm.running_mean", "norm.weight"]:
        expected = 0.9 * before[name] + 0.1 * target[name]
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-7)
    assert int(after["norm.num_batches_tracked"]) == 7  # copied
    assert float(teacher.scale) == 3.0  # frozen, unshared: the teacher's own
    assert teacher.backbone is student.backbone


def test_ramped_ema_is_running_mean_of_student_states():
    teacher, student = make_pair()
    ema = ModelEMA(teacher, student)
    states = []
    for t in range(4):
        randomize(student, 10 + t)
        states.append(student.head.weight.detach().clone())
        ema.update(ema_decay(t, 0.999, ramp=True))
    torch.testing.assert_close(teacher.head.weight, torch.stack(states).mean(0), rtol=1e-5, atol=1e-6)


def test_ddp_style_prefix_is_stripped():
    teacher, student = make_pair()
    randomize(student, 2)
    wrapped = nn.DataParallel(student)  # names gain "module."; CPU-only DataParallel just forwards
    ModelEMA(teacher, wrapped).update(0.0)
    torch.testing.assert_close(teacher.head.weight, student.head.weight, rtol=0, atol=0)


def test_mismatched_architectures_fail_with_tensor_name():
    teacher, student = make_pair()
    student.extra = nn.Linear(2, 2)
    with pytest.raises(KeyError, match="extra.weight"):
        ModelEMA(teacher, student)
    teacher, student = make_pair()
    teacher.head = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="head.weight"):
        ModelEMA(teacher, student)
