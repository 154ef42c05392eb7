"""Two split-list roots over one stand-in ADE20K tree: the environment's default root
(``$DETECTRON2_DATASETS/splits``) lists the unlabeled image 'from_env', another folder
(``my_splits``, for DATASETS.SPLITS_ROOT) lists 'from_cfg'."""
import numpy as np
from PIL import Image

from dearli.data.datasets import register_split_datasets

UNLABELED_SPLIT = "ade20k_panoptic_train_1_64_unlabeled"
LOOKUP_ORDER = ("Split lists are read from DATASETS.SPLITS_ROOT when the config sets it, else from "
                "$DEARLI_SPLITS, else from $DETECTRON2_DATASETS/splits")


def write_split(root, image_names):
    """``<root>/ade_splits/1_64/{labeled,unlabeled}.txt`` listing ``image_names`` as unlabeled."""
    folder = root / "ade_splits" / "1_64"
    folder.mkdir(parents=True)
    (folder / "labeled.txt").write_text("images/training/labeled_only.jpg\n")
    (folder / "unlabeled.txt").write_text("".join(f"images/training/{n}.jpg\n" for n in image_names))


def build_two_split_roots(tmp_path, monkeypatch):
    """The tree under ``tmp_path`` as $DETECTRON2_DATASETS, split names registered as at import."""
    images = tmp_path / "ADEChallengeData2016" / "images" / "training"
    images.mkdir(parents=True)
    for name in ("from_env", "from_cfg"):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(images / f"{name}.jpg")
    write_split(tmp_path / "splits", ["from_env"])
    write_split(tmp_path / "my_splits", ["from_cfg"])
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.delenv("DEARLI_SPLITS", raising=False)
    register_split_datasets()
    return tmp_path
