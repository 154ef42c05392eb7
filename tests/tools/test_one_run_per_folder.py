"""One writer per output folder: a second train_net / SAM run on a folder in use is refused naming the
holder; the lock of a run killed with kill -9 is taken over; .tmp-* leftovers are removed."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tiny import CONFIG_DIR
from helpers.tools import load_tool

from dearli.sam.tiny import TINY_MODEL_TYPE
from dearli.utils.run_lock import LOCK_NAME, FolderLock, FolderLockedError

REPO = Path(__file__).resolve().parents[2]
TINY_SUPERVISED = str(CONFIG_DIR / "tiny_supervised.yaml")
# Importing only the lock module keeps the holder process quick to start.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
lock = run_lock.FolderLock(sys.argv[2], name=sys.argv[3]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def start_holder(folder, name=LOCK_NAME):
    """Another process that holds the lock of ``folder`` until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO / "dearli" / "utils" / "run_lock.py"),
                               str(folder), name], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture
def holders():
    started = []
    yield lambda folder, name=LOCK_NAME: started.append(start_holder(folder, name)) or started[-1]
    for holder in started:
        holder.kill()
        holder.wait()


def holder_text(pid):
    return f"pid {pid} on host {socket.gethostname()}"


def train_args(output_dir, *flags):
    train_net = load_tool("train_net")
    return train_net, train_net.parse_args(["--config-file", TINY_SUPERVISED, *flags, "OUTPUT_DIR", str(output_dir),
                                            "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0"])


def test_second_train_net_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, holders):
    holder = holders(tmp_path)
    train_net, args = train_args(tmp_path)
    with pytest.raises(FolderLockedError) as error:
        train_net.main(args)
    message = str(error.value)
    assert f"OUTPUT_DIR {tmp_path} is in use by another run: {holder_text(holder.pid)}" in message
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "log.txt").exists()  # nothing overwritten


def test_eval_only_on_a_folder_in_use_is_refused_too(tmp_path, holders):
    holder = holders(tmp_path)
    train_net, args = train_args(tmp_path, "--eval-only")
    with pytest.raises(FolderLockedError, match=holder_text(holder.pid)):
        train_net.main(args)


def test_lock_of_a_process_killed_with_sigkill_is_taken_over(tmp_path):
    holder = start_holder(tmp_path)
    with pytest.raises(FolderLockedError):
        FolderLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with FolderLock(tmp_path) as lock:
        assert lock.previous_holder["pid"] == holder.pid
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean release leaves no holder behind
    with FolderLock(tmp_path) as lock:
        assert lock.previous_holder is None


def test_stale_lock_file_naming_a_dead_pid_is_taken_over_by_train_net(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    stale = {"pid": dead_pid, "host": socket.gethostname(), "started": "earlier", "command": "train_net.py"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    leftover = tmp_path / ".tmp-model_0000009.pth.k3j2h1"  # a checkpoint write killed midway
    leftover.write_bytes(b"half a checkpoint")
    nested = tmp_path / "inference" / ".tmp-results.json.abc123"
    nested.parent.mkdir()
    nested.write_text("{")
    train_net, args = train_args(tmp_path)
    train_net.main(args)
    assert f"taking over the stale lock of pid {dead_pid} on host {socket.gethostname()}" in caplog.text
    assert not leftover.exists() and not nested.exists()
    assert (tmp_path / "model_final.pth").exists()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released at the end of the run


SAM_FLAGS = ["--model-type", TINY_MODEL_TYPE, "--points-per-side", "2", "--pred-iou-thresh", "0",
             "--stability-score-thresh", "0", "--device", "cpu", "--no-progress"]


def sam_label_dir(output):
    from dearli.sam.generator import GeneratorSettings
    settings = GeneratorSettings(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, points_per_batch=256)
    return Path(output) / settings.label_subdir(TINY_MODEL_TYPE)


def test_second_sam_run_on_the_same_shard_is_refused_naming_the_holder(tmp_path, holders):
    images, label_dir = tmp_path / "images", sam_label_dir(tmp_path / "labels")
    images.mkdir()
    holder = holders(label_dir, ".dearli-run.shard-1-of-2.lock")
    tool = load_tool("generate_sam_pseudolabels")
    with pytest.raises(SystemExit) as error:
        tool.main(["--images", str(images), "--output", str(tmp_path / "labels"), *SAM_FLAGS, "--shard", "1/2"])
    assert f"SAM label folder (shard 1/2) {label_dir} is in use by another run: {holder_text(holder.pid)}" in str(error.value)
    # Another shard of the same partition writes side by side; leftovers stay (shard 1 may own them).
    leftover = label_dir / "masks" / "00" / ".tmp-img.json.abc123"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{")
    tool.main(["--images", str(images), "--output", str(tmp_path / "labels"), *SAM_FLAGS, "--shard", "0/2"])
    tool.main(["--images", str(images), "--output", str(tmp_path / "labels"), *SAM_FLAGS])
    assert leftover.exists()  # a whole-folder run does not clean while a shard writer is alive


def test_whole_folder_sam_run_removes_leftovers_of_dead_writers(tmp_path):
    images, label_dir = tmp_path / "images", sam_label_dir(tmp_path / "labels")
    images.mkdir()
    leftover = label_dir / "masks" / "00" / ".tmp-img.json.abc123"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{")
    load_tool("generate_sam_pseudolabels").main(["--images", str(images), "--output", str(tmp_path / "labels"), *SAM_FLAGS])
    assert not leftover.exists()
