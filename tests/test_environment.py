"""The environment `make env` builds: pins, the patched detectron2, offline guards, CI exit codes."""
import hashlib
import importlib
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import install_detectron2 as installer  # noqa: E402


def _pins():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_torch_pair_matches_constraints_and_is_not_the_local_cpu_wheel():
    pins = _pins()
    assert torch.__version__.split("+")[0] == pins["torch"]
    assert torchvision.__version__.split("+")[0] == pins["torchvision"]
    assert "+cpu" not in torch.__version__
    # torchvision's compiled operators load with this torch (the CPU-only wheel breaks this).
    keep = torchvision.ops.nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    assert int(np.__version__.split(".")[0]) < 2


def test_detectron2_pieces_dearli_uses_import():
    from detectron2.engine import DefaultTrainer, HookBase  # noqa: F401
    from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator  # noqa: F401
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
    from detectron2 import model_zoo

    import dearli  # noqa: F401  (registers dearli's components in detectron2's registries)

    assert "DEARLi" in {name for name, _ in META_ARCH_REGISTRY}
    assert "OpenCLIPBackbone" in {name for name, _ in BACKBONE_REGISTRY}
    assert "CLIPClassificationHead" in {name for name, _ in SEM_SEG_HEADS_REGISTRY}
    cfg_file = model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    assert os.path.isfile(cfg_file)  # the model-zoo configs are shipped


def test_detectron2_patches_work_with_current_pillow_and_numpy():
    from detectron2.data.transforms import ExtentTransform
    from detectron2.structures.masks import polygons_to_bitmask

    ExtentTransform((0, 0, 4, 4), (2, 2))  # default interp was Image.LINEAR (removed in Pillow 10)
    assert polygons_to_bitmask([], 3, 4).dtype == bool  # used np.bool


def test_placeholder_C_raises_clear_error():
    from detectron2 import _C

    with pytest.raises(RuntimeError, match="box_iou_rotated is not available.*pure Python"):
        _C.box_iou_rotated


def test_import_dearli_without_detectron2_says_how_to_install():
    code = "import sys; sys.modules['detectron2'] = None; import dearli"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "tools/install_detectron2.py" in proc.stderr and "pb1-detectron2==0.6" in proc.stderr


def test_network_guard_refuses_connections():
    from conftest import NetworkAccessInTests

    with pytest.raises(NetworkAccessInTests, match="must not use the network"):
        socket.create_connection(("pypi.org", 443), timeout=1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkAccessInTests):
        s.connect(("127.0.0.1", 9))
    s.close()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def _fake_sdist(tmp_path, setup_text="ext_modules=get_extensions(),\n"):
    src = tmp_path / "src" / installer.SRC_DIR
    (src / "detectron2").mkdir(parents=True)
    (src / "setup.py").write_text(setup_text)
    sdist = tmp_path / "fake.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname=installer.SRC_DIR)
    return sdist


def test_installer_rejects_changed_sdist_hash(tmp_path):
    sdist = _fake_sdist(tmp_path)
    with pytest.raises(installer.StepError, match=r"install_detectron2: verify.*sha256"):
        installer.verify_sha256(str(sdist))
    installer.verify_sha256(str(sdist), hashlib.sha256(sdist.read_bytes()).hexdigest())


def test_installer_patch_that_does_not_apply_names_file_and_text(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "setup.py").write_text("nothing to patch here\n")
    with pytest.raises(installer.StepError, match=r"patch\] setup.py: expected 1 occurrence"):
        installer.patch_text(str(root), "setup.py", "ext_modules=get_extensions(),", "", 1)


def test_installer_numpy_alias_patch_counts_exactly(tmp_path):
    pkg = tmp_path / "detectron2"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = np.int(3)\ny = np.float64(1)\nz = np.bool_\n")
    with pytest.raises(installer.StepError, match="expected 19 removed NumPy aliases, found 1"):
        installer.patch_numpy_aliases(str(tmp_path))
    assert "np.int(3)" in (pkg / "a.py").read_text()  # nothing written when the count is wrong


@pytest.mark.parametrize("make_rc,expected", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_ci_script_fails_on_test_failure_and_on_no_tests(tmp_path, make_rc, expected):
    fake_make = tmp_path / "make"
    fake_make.write_text(f"#!/bin/sh\necho fake make \"$@\"\nexit {make_rc}\n")
    fake_make.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run")], capture_output=True, text=True, env=env)
    assert "fake make test" in proc.stdout
    assert proc.returncode == expected


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
