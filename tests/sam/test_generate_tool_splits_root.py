"""generate_sam_pseudolabels.py --dataset reads split lists where training does: under
DATASETS.SPLITS_ROOT (a trailing KEY VALUE pair) when set, else the environment's root."""
import sys
from pathlib import Path

import pytest

from dearli.data import sam_format as fmt
from dearli.sam.tiny import TINY_MODEL_TYPE
from helpers.dataset_trees import restore_default_registrations  # noqa: F401 (autouse)
from helpers.split_trees import UNLABELED_SPLIT, build_two_split_roots

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import generate_sam_pseudolabels as tool  # noqa: E402

FLAGS = ["--model-type", TINY_MODEL_TYPE, "--points-per-side", "2", "--pred-iou-thresh", "0",
         "--stability-score-thresh", "0", "--device", "cpu", "--no-progress", "--threads", "1"]


def generated_keys(output):
    """Image keys with a finished record under the one label folder the tool wrote."""
    (label_dir,) = {p.parent for p in Path(output).rglob(fmt.META_FILE)}
    return sorted(fmt.finished_keys(label_dir))


@pytest.mark.parametrize("use_splits_root, expected", [(True, ["from_cfg"]), (False, ["from_env"])])
def test_dataset_split_lists_follow_datasets_splits_root(tmp_path, monkeypatch, use_splits_root, expected):
    roots = build_two_split_roots(tmp_path, monkeypatch)
    overrides = ["DATASETS.SPLITS_ROOT", str(roots / "my_splits")] if use_splits_root else []
    output = tmp_path / "sam_out"
    tool.main(["--dataset", UNLABELED_SPLIT, "--output", str(output), *FLAGS, *overrides])
    assert generated_keys(output) == expected
