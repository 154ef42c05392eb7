"""The unlabeled mapper's weak view with its withheld ground truth (pseudo-label quality only)."""
import numpy as np
import torch
from detectron2.config import get_cfg
from panopticapi.utils import id2rgb
from PIL import Image

from dearli.config import add_dearli_config
from dearli.data.datasets.splits import image_only
from dearli.data.mappers import UnlabeledWeakStrongMapper

HEIGHT, WIDTH = 40, 50


def make_cfg():
    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", (40, 60), "INPUT.MAX_SIZE_TRAIN", 200,
                         "INPUT.CROP.SIZE", (32, 32), "INPUT.SIZE_DIVISIBILITY", 64])
    return cfg


def write_labeled_image(tmp_path):
    """A 40x50 image: a red block (segment 1, class 0) in the top-left 20x20 corner, the rest blue
    (segment 2, class 1); flipping or shifting the labels against the image would show."""
    ids = np.full((HEIGHT, WIDTH), 2, dtype=np.int64)
    ids[:20, :20] = 1
    image = np.where((ids == 1)[..., None], [255, 0, 0], [0, 0, 255]).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(id2rgb(ids)).save(tmp_path / "pan.png")
    return {"file_name": str(tmp_path / "image.png"), "image_id": 0, "height": HEIGHT, "width": WIDTH,
            "pan_seg_file_name": str(tmp_path / "pan.png"),
            "segments_info": [{"id": 1, "category_id": 0, "iscrowd": 0}, {"id": 2, "category_id": 1, "iscrowd": 0}]}


def test_ground_truth_follows_the_weak_view_geometry(tmp_path):
    record = write_labeled_image(tmp_path)
    mapper = UnlabeledWeakStrongMapper(make_cfg())
    red_on_left = []
    for seed in range(8):
        sample = mapper.with_ground_truth(record, np.random.default_rng(seed))
        training_sample = mapper(image_only(record), np.random.default_rng(seed))
        # The same weak view (and strong view) as the training mapper makes from the same generator.
        assert torch.equal(sample["weak_image"], training_sample["weak_image"])
        assert torch.equal(sample["strong_image"], training_sample["strong_image"])
        truth = sample["gt_instances"]
        assert truth.image_size == tuple(sample["valid_mask"].shape) == (64, 64)
        assert not (truth.gt_masks & ~sample["valid_mask"]).any()  # nothing on the padding
        red = sample["weak_image"][0] > 127
        blue = sample["weak_image"][2] > 127
        red_truth = truth.gt_masks[truth.gt_classes == 0].any(0)
        blue_truth = truth.gt_masks[truth.gt_classes == 1].any(0)
        # Resizing blends colours on the block edge; the labels agree elsewhere, pixel for pixel.
        valid = sample["valid_mask"]
        assert (red_truth == red)[valid].float().mean() > 0.95
        assert (blue_truth == blue)[valid].float().mean() > 0.95
        assert (red_truth | blue_truth)[valid].all()
        if red_truth.any():
            columns = red_truth.any(0).nonzero()
            red_on_left.append(bool(columns.min() == 0))
    assert True in red_on_left and False in red_on_left  # crops with and without a flip were seen
