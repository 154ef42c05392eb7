"""Tests needing the real sample data skip without it (reason naming DEARLI_SHARED_DATA), and fail
instead when DEARLI_REQUIRE_SHARED_DATA=1, which .ci/run sets."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.shared_data import REPO_ROOT, require_folder, required, shared_data_dir

# One cheap test that takes the shared_data fixture, run in a child pytest.
DATA_TEST = "tests/data/test_splits.py"


def test_data_folder_comes_from_the_environment_else_beside_the_checkout(tmp_path):
    assert shared_data_dir({"DEARLI_SHARED_DATA": str(tmp_path)}) == tmp_path
    assert shared_data_dir({}) == REPO_ROOT.parent / "shared" / "data"


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_require_switch_values(value, expected):
    assert required({"DEARLI_REQUIRE_SHARED_DATA": value}) is expected


def test_missing_folder_skips_naming_the_variable(tmp_path):
    with pytest.raises(pytest.skip.Exception, match=f"not found at {tmp_path / 'absent'}; set DEARLI_SHARED_DATA"):
        require_folder(tmp_path / "absent", "real sample data", environ={})


def test_missing_folder_fails_when_required(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="DEARLI_REQUIRE_SHARED_DATA=1 makes missing sample data a failure"):
        require_folder(tmp_path / "absent", "real sample data", environ={"DEARLI_REQUIRE_SHARED_DATA": "1"})


def test_present_folder_is_returned(tmp_path):
    assert require_folder(tmp_path, "real sample data", environ={"DEARLI_REQUIRE_SHARED_DATA": "1"}) == tmp_path


def run_child_pytest(tmp_path, **env):
    environ = dict(os.environ, DEARLI_SHARED_DATA=str(tmp_path / "no_such_data"), **env)
    if "DEARLI_REQUIRE_SHARED_DATA" not in env:
        environ.pop("DEARLI_REQUIRE_SHARED_DATA", None)
    return subprocess.run([sys.executable, "-m", "pytest", DATA_TEST, "-rs", "-p", "no:cacheprovider", "-q"],
                          cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=600)


def outcome_counts(stdout: str) -> dict:
    """{"passed": n, "skipped": n, "error": n, ...} from pytest's last summary line."""
    return {word.rstrip("s"): int(count) for count, word in re.findall(r"(\d+) (\w+)", stdout.splitlines()[-1])}


@pytest.mark.slow
def test_pytest_run_skips_without_data_and_fails_when_required(tmp_path):
    skipped = run_child_pytest(tmp_path)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    counts = outcome_counts(skipped.stdout)
    assert counts.get("skipped", 0) >= 1 and "failed" not in counts and "error" not in counts, counts
    assert "set DEARLI_SHARED_DATA" in skipped.stdout
    failed = run_child_pytest(tmp_path, DEARLI_REQUIRE_SHARED_DATA="1")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    # Every test that was skipped now errors in its fixture; the others pass as before.
    assert outcome_counts(failed.stdout) == {"passed": counts.get("passed", 0), "error": counts["skipped"]}
    assert "DEARLI_REQUIRE_SHARED_DATA=1 makes missing sample data a failure" in failed.stdout


def test_ci_entry_point_requires_the_data(tmp_path):
    """.ci/run with a stand-in `make` that reports the variable it was given."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "make").write_text('#!/bin/sh\necho "require=$DEARLI_REQUIRE_SHARED_DATA target=$1"\n')
    (fake_bin / "make").chmod(0o755)
    environ = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    environ.pop("DEARLI_REQUIRE_SHARED_DATA", None)
    result = subprocess.run(["bash", str(Path(REPO_ROOT) / ".ci" / "run")], env=environ, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "require=1 target=test"
