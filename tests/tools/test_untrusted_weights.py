"""Weight files are read without unpickling arbitrary objects, wherever they come from; a .pkl
needs MODEL.ALLOW_UNSAFE_PICKLE; truncated files are reported by name in every tool."""
import os
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from helpers.tiny import CONFIG_DIR, tiny_cfg
from helpers.tiny_weights import save_tiny_checkpoint
from helpers.tools import load_tool

from dearli.modeling.checkpoint import DEARLiCheckpointer
from dearli.modeling.weight_files import UnreadableCheckpointError, UnsafeCheckpointError

TINY_SUPERVISED = str(CONFIG_DIR / "tiny_supervised.yaml")


class Payload:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_pickle_payload(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": Payload(marker)}, "__author__": "attacker"}, f)
    return path


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "marker"
    return write_pickle_payload(tmp_path / "weights.pkl", marker), marker


def train_net_args(tmp_path, *opts, flags=()):
    train_net = load_tool("train_net")
    return train_net, train_net.parse_args(["--config-file", TINY_SUPERVISED, *flags, "OUTPUT_DIR", str(tmp_path / "out"),
                                            "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0", *opts])


def assert_pickle_refused(error_text, path, marker):
    assert f"weight file {path} is a pickle (.pkl)" in error_text and "MODEL.ALLOW_UNSAFE_PICKLE" in error_text
    assert not marker.exists(), "the pickle payload ran"


def test_model_weights_pkl_is_refused_in_training(tmp_path, payload):
    path, marker = payload
    train_net, args = train_net_args(tmp_path, "MODEL.WEIGHTS", str(path))
    with pytest.raises(UnsafeCheckpointError) as error:
        train_net.main(args)
    assert_pickle_refused(str(error.value), path, marker)


def test_teacher_weights_pkl_is_refused(tmp_path, payload):
    path, marker = payload
    train_net, args = train_net_args(tmp_path, "MODEL.TEACHER.WEIGHTS", str(path))
    with pytest.raises(UnsafeCheckpointError) as error:
        train_net.main(args)
    assert_pickle_refused(str(error.value), path, marker)


def test_eval_only_pkl_is_refused(tmp_path, payload):
    path, marker = payload
    train_net, args = train_net_args(tmp_path, "MODEL.WEIGHTS", str(path), flags=["--eval-only"])
    with pytest.raises(UnsafeCheckpointError) as error:
        train_net.main(args)
    assert_pickle_refused(str(error.value), path, marker)


def test_resume_from_a_last_checkpoint_naming_a_pkl_is_refused(tmp_path):
    output, marker = tmp_path / "out", tmp_path / "marker"
    output.mkdir()
    path = write_pickle_payload(output / "model_0000009.pkl", marker)
    (output / "last_checkpoint").write_text("model_0000009.pkl")
    train_net, args = train_net_args(tmp_path, flags=["--resume"])
    with pytest.raises(UnsafeCheckpointError) as error:
        train_net.main(args)
    assert_pickle_refused(str(error.value), path, marker)


def test_demo_refuses_a_pkl_with_a_message(tmp_path, payload, shared_data):
    path, marker = payload
    image = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[0]
    with pytest.raises(SystemExit) as error:
        load_tool("demo").main(["--config-file", TINY_SUPERVISED, "--input", str(image), "--output",
                                str(tmp_path / "demo"), "--opts", "MODEL.WEIGHTS", str(path)])
    assert str(error.value).startswith("error: ")
    assert_pickle_refused(str(error.value), path, marker)


def test_torch_file_with_a_pickled_object_is_refused_naming_the_object(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "weights.pth"
    torch.save({"model": {"x": Payload(marker)}}, path)
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"weight file {path} holds objects other than tensors")) as error:
        DEARLiCheckpointer(build_model(tiny_cfg(name="tiny_supervised"))).load(str(path))
    assert "os.system" in str(error.value) or "posix.system" in str(error.value)
    assert not marker.exists()
    with pytest.raises(SystemExit, match="holds objects other than tensors"):
        load_tool("export_teacher").main([str(path), str(tmp_path / "teacher.pth")])
    assert not marker.exists()
    with pytest.raises(SystemExit, match=r"holds objects other than tensors.*re-run with --allow-pickle"):
        load_tool("convert_reference_checkpoint").main([str(path), str(tmp_path / "converted.pth")])
    assert not marker.exists()


def test_opt_in_reads_a_genuine_detectron2_model_zoo_pkl(tmp_path):
    cfg = tiny_cfg(name="tiny_supervised")
    source, target = build_model(cfg), build_model(cfg)
    arrays = {name: tensor.numpy().copy() for name, tensor in source.state_dict().items()}
    path = tmp_path / "model_zoo.pkl"
    with open(path, "wb") as f:  # Detectron2's model-zoo layout: numpy arrays and an author
        pickle.dump({"model": arrays, "__author__": "Detectron2 model zoo"}, f)
    with pytest.raises(UnsafeCheckpointError):
        DEARLiCheckpointer(target).load(str(path))
    DEARLiCheckpointer(target, allow_unsafe_pickle=True).load(str(path))
    loaded = target.state_dict()
    assert all(np.array_equal(loaded[name].numpy(), array) for name, array in arrays.items())
    assert not all(torch.equal(a, b) for a, b in zip(build_model(cfg).state_dict().values(), loaded.values()))


def truncated_copy(checkpoint, folder):
    data = checkpoint.read_bytes()
    broken = folder / "truncated.pth"
    broken.write_bytes(data[: len(data) // 2])
    return broken


def test_truncated_checkpoint_in_demo_names_the_file(tmp_path, shared_data):
    broken = truncated_copy(save_tiny_checkpoint(tiny_cfg(), tmp_path), tmp_path)
    image = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[0]
    with pytest.raises(SystemExit) as error:
        load_tool("demo").main(["--config-file", str(CONFIG_DIR / "tiny_dearli.yaml"), "--input", str(image),
                                "--output", str(tmp_path / "demo"), "--opts", "MODEL.WEIGHTS", str(broken)])
    assert f"error: checkpoint {broken} cannot be read: it is probably truncated or corrupt" in str(error.value)


def test_truncated_checkpoint_in_export_teacher_names_the_file(tmp_path):
    broken = truncated_copy(save_tiny_checkpoint(tiny_cfg(), tmp_path), tmp_path)
    with pytest.raises(SystemExit) as error:
        load_tool("export_teacher").main([str(broken), str(tmp_path / "teacher.pth")])
    assert f"error: checkpoint {broken} cannot be read: it is probably truncated or corrupt" in str(error.value)
    with pytest.raises(UnreadableCheckpointError, match=re.escape(str(broken))):
        DEARLiCheckpointer(build_model(tiny_cfg())).load(str(broken))


def test_missing_weight_file_in_demo_names_the_file(tmp_path, shared_data):
    missing = tmp_path / "nowhere.pth"
    image = sorted((shared_data / "coco_panoptic_sample" / "images").glob("*.jpg"))[0]
    with pytest.raises(SystemExit, match=re.escape(f"error: weight file {missing} does not exist")):
        load_tool("demo").main(["--config-file", TINY_SUPERVISED, "--input", str(image), "--output",
                                str(tmp_path / "demo"), "--opts", "MODEL.WEIGHTS", str(missing)])


def test_opt_in_key_lets_eval_only_read_a_model_zoo_pkl(tmp_path, monkeypatch):
    from dearli.engine.trainer import DEARLiTrainer

    source = build_model(tiny_cfg(name="tiny_supervised"))
    arrays = {name: tensor.numpy().copy() for name, tensor in source.state_dict().items()}
    path = tmp_path / "model_zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 model zoo"}, f)
    evaluated = []
    monkeypatch.setattr(DEARLiTrainer, "test", classmethod(lambda cls, cfg, model, **kwargs: evaluated.append(model) or {}))
    train_net, args = train_net_args(tmp_path, "MODEL.WEIGHTS", str(path), "MODEL.ALLOW_UNSAFE_PICKLE", "True",
                                     flags=["--eval-only"])
    train_net.main(args)
    loaded = evaluated[0].state_dict()
    assert all(np.array_equal(loaded[name].numpy(), array) for name, array in arrays.items())
