"""claim_output_dir: which folders a tool may write into, and that it never deletes anything."""
import json

import pytest

from dearli.utils.output_dir import MANIFEST, OutputDirError, claim_output_dir, read_manifest

TOOL = "tools/some_tool.py"
SETTINGS = {"iters": 4, "opts": ("A", "1")}


def test_a_missing_folder_is_created_and_claimed(tmp_path):
    folder = tmp_path / "new" / "out"
    assert claim_output_dir(str(folder), TOOL, SETTINGS) is False
    assert [p.name for p in folder.iterdir()] == [MANIFEST]
    assert read_manifest(str(folder)) == {"tool": TOOL, "settings": {"iters": 4, "opts": ["A", "1"]}}


def test_our_folder_with_the_same_settings_is_resumed(tmp_path):
    claim_output_dir(str(tmp_path), TOOL, SETTINGS)
    (tmp_path / "stage").mkdir()
    assert claim_output_dir(str(tmp_path), TOOL, dict(SETTINGS)) is True


def test_other_settings_are_refused_naming_the_first_difference(tmp_path):
    claim_output_dir(str(tmp_path), TOOL, SETTINGS)
    with pytest.raises(OutputDirError) as error:
        claim_output_dir(str(tmp_path), TOOL, {"iters": 5, "opts": ("A", "1")})
    assert str(error.value) == (
        f"{tmp_path} holds a {TOOL} run with other settings (iters: 4 there, 5 now); results of different "
        "settings would mix: choose another --output-dir, or pass --overwrite to write into it anyway (nothing is deleted)")


def test_another_tools_folder_is_refused(tmp_path):
    claim_output_dir(str(tmp_path), "tools/other.py", SETTINGS)
    with pytest.raises(OutputDirError, match=f"holds the output of 'tools/other.py', not of {TOOL}"):
        claim_output_dir(str(tmp_path), TOOL, SETTINGS)


def test_a_foreign_folder_is_refused_and_overwrite_keeps_its_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputDirError, match=f"is not empty and was not written by {TOOL}"):
        claim_output_dir(str(tmp_path), TOOL, SETTINGS)
    assert not (tmp_path / MANIFEST).exists()
    assert claim_output_dir(str(tmp_path), TOOL, SETTINGS, overwrite=True) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, "keep.txt", "sub"])
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_settings_of_our_own_folder(tmp_path):
    claim_output_dir(str(tmp_path), TOOL, SETTINGS)
    claim_output_dir(str(tmp_path), TOOL, {"iters": 9}, overwrite=True)
    assert json.loads((tmp_path / MANIFEST).read_text())["settings"] == {"iters": 9}
    assert claim_output_dir(str(tmp_path), TOOL, {"iters": 9}) is True


def test_a_broken_manifest_is_a_clear_error(tmp_path):
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(OutputDirError, match=f"{tmp_path / MANIFEST} is not valid JSON"):
        claim_output_dir(str(tmp_path), TOOL, SETTINGS)
