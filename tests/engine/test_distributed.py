"""Two CPU processes (gloo, through dearli's launcher) against one process on the joined batch.

Each rank records the student inputs of one step (labeled + pseudo-labeled samples), the
all-reduced gradients before the optimizer step and the teacher after the EMA update. The test
then runs the same student on the concatenated inputs in this process and compares gradients:
per-sample seeded point sampling and the criterion's global normalisers make them equal up to
float summation order. AdamW's first step normalises updates, so gradients, not parameters,
are compared.
"""
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from helpers.engine_setup import engine_cfg

from dearli.engine.launch import launch
from dearli.engine.trainer import DEARLiTrainer

OVERRIDES = {
    "SOLVER.IMS_PER_BATCH": 4,  # global labeled batch: 2 per rank, plus 2 unlabeled per rank
    "SOLVER.MAX_ITER": 1,
    "INPUT.UNLABELED.CUTMIX_PROB": 1.0,
    "MODEL.TEACHER.EMA_RAMP": "off",
    "MODEL.TEACHER.EMA_DECAY": 0.9,
}
GROUP_TIMEOUT_S = 120  # a rank stuck in a collective fails the test instead of hanging it


def plain_sample(sample):
    """A sample as tensors and plain values (loadable with weights_only=True)."""
    out = {k: sample[k] for k in ("image", "valid_mask", "sample_seed", "file_name")}
    out["gt_classes"], out["gt_masks"] = sample["instances"].gt_classes, sample["instances"].gt_masks
    return out


def model_sample(plain):
    instances = Instances(tuple(plain["image"].shape[-2:]), gt_classes=plain["gt_classes"], gt_masks=plain["gt_masks"])
    return {"image": plain["image"], "valid_mask": plain["valid_mask"], "sample_seed": plain["sample_seed"],
            "file_name": plain["file_name"], "instances": instances}


def all_tensors(model):
    """Every parameter and buffer by name (state_dict() leaves the frozen CLIP out)."""
    return {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def record_step(trainer, record):
    forward = trainer.model.forward

    def recording_forward(inputs):
        record["inputs"] = {k: [plain_sample(s) for s in v] for k, v in inputs.items()}
        return forward(inputs)

    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        record["grads"] = {n: p.grad.clone() for n, p in trainer.model.module.named_parameters() if p.grad is not None}
        return step(*args, **kwargs)

    trainer.model.forward = recording_forward
    trainer.optimizer.step = recording_step


def two_rank_step(output_dir):
    torch.set_num_threads(1)
    trainer = DEARLiTrainer(engine_cfg(os.path.join(output_dir, "run"), **OVERRIDES))
    trainer.resume_or_load(resume=False)
    record = {"initial_student": all_tensors(trainer.model.module)}
    record_step(trainer, record)
    trainer.train()
    record["labeled_files"] = [s["file_name"] for s in record["inputs"]["labeled"]]
    record["unlabeled_files"] = [s["file_name"] for s in record["inputs"]["pseudo_labeled"]]
    record["teacher"] = trainer.teacher.state_dict()
    torch.save(record, os.path.join(output_dir, f"rank{comm.get_rank()}.pt"))


def launch_two(worker, tmp_path):
    from datetime import timedelta

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    launch(worker, 2, dist_url=f"file://{tmp_path}/rendezvous", args=(str(tmp_path),), device="cpu",
           timeout=timedelta(seconds=GROUP_TIMEOUT_S))


def relative_error(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.slow
def test_two_process_step_equals_one_process_on_joined_batch(tmp_path):
    launch_two(two_rank_step, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert not set(ranks[0]["unlabeled_files"]) & set(ranks[1]["unlabeled_files"])
    assert not set(ranks[0]["labeled_files"]) & set(ranks[1]["labeled_files"])
    assert len(ranks[0]["unlabeled_files"]) == 2
    for name, tensor in ranks[0]["teacher"].items():
        assert torch.equal(tensor, ranks[1]["teacher"][name]), name
    for name, grad in ranks[0]["grads"].items():
        assert torch.equal(grad, ranks[1]["grads"][name]), name  # all-reduced: identical on both ranks

    model = build_model(engine_cfg(tmp_path / "single", **OVERRIDES))
    with torch.no_grad():
        for name, tensor in all_tensors(model).items():
            dict(list(model.named_parameters()) + list(model.named_buffers()))[name].copy_(ranks[0]["initial_student"][name])
    model.train()
    joined = {k: [model_sample(s) for r in ranks for s in r["inputs"][k]] for k in ("labeled", "pseudo_labeled")}
    sum(model(joined).values()).backward()
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert reference.keys() == ranks[0]["grads"].keys()
    distributed = torch.cat([ranks[0]["grads"][n].flatten() for n in reference])
    single = torch.cat([g.flatten() for g in reference.values()])
    assert relative_error(distributed, single) < 1e-6
    # Per tensor too, except those whose gradient is zero up to rounding (conv biases before a
    # GroupNorm: ~1e-7 of noise, relative error meaningless).
    worst = max(relative_error(ranks[0]["grads"][n], g) for n, g in reference.items() if g.norm() > 1e-6 * single.norm())
    assert worst < 1e-5


def nan_on_rank_one(output_dir):
    torch.set_num_threads(1)
    trainer = DEARLiTrainer(engine_cfg(os.path.join(output_dir, "run"), **dict(OVERRIDES, **{"SOLVER.MAX_ITER": 3})))
    trainer.resume_or_load(resume=False)
    forward = trainer.model.forward

    def forward_with_nan(inputs):
        losses = forward(inputs)
        if comm.get_rank() == 1 and get_event_storage().iter == 1:
            losses["loss_mask"] = losses["loss_mask"] + float("inf")
        return losses

    trainer.model.forward = forward_with_nan
    try:
        trainer.train()
        message = "finished"
    except FloatingPointError as error:
        message = str(error)
    with open(os.path.join(output_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(message)


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    launch_two(nan_on_rank_one, tmp_path)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "non-finite loss at iteration 1 (rank 1: loss_mask)" in message, message
