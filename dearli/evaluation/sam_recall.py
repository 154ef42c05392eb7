"""How well class-agnostic masks (SAM pseudo-labels) cover a panoptic dataset's ground truth.

For each image, every non-crowd ground-truth segment (thing or stuff) is *recalled* when some
predicted mask overlaps it with IoU >= 0.5, and a predicted mask is *precise* when it overlaps
some ground-truth segment with IoU >= 0.5. Reported: recall of things, of stuff and of all
segments, masks per image, and precision (precise masks / all masks). Classes play no part.
"""
from dataclasses import asdict, dataclass

import numpy as np

from dearli.data.datasets.validate import read_panoptic_ids
from dearli.data.sam_format import image_key, load_image_masks

IOU_THRESHOLD = 0.5


def mask_iou_matrix(gt_masks, pred_masks):
    """IoU float[G, P] between bool[G, H, W] and bool[P, H, W] masks (0 where both are empty)."""
    gt = gt_masks.reshape(len(gt_masks), -1).astype(np.float64)
    pred = pred_masks.reshape(len(pred_masks), -1).astype(np.float64)
    intersection = gt @ pred.T
    union = gt.sum(1)[:, None] + pred.sum(1)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


@dataclass
class RecallCounts:
    """Counts summed over images; the rates are properties."""

    images: int = 0
    things: int = 0
    things_recalled: int = 0
    stuff: int = 0
    stuff_recalled: int = 0
    masks: int = 0
    masks_precise: int = 0

    def __add__(self, other):
        return RecallCounts(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    @property
    def recall_things(self):
        return self.things_recalled / max(self.things, 1)

    @property
    def recall_stuff(self):
        return self.stuff_recalled / max(self.stuff, 1)

    @property
    def recall(self):
        return (self.things_recalled + self.stuff_recalled) / max(self.things + self.stuff, 1)

    @property
    def masks_per_image(self):
        return self.masks / max(self.images, 1)

    @property
    def precision(self):
        return self.masks_precise / max(self.masks, 1)

    def summary(self):
        """Counts and rates as one flat dict (for JSON)."""
        rates = {k: getattr(self, k) for k in ("recall_things", "recall_stuff", "recall", "masks_per_image", "precision")}
        return {**asdict(self), **rates}


def image_counts(gt_masks, gt_is_thing, pred_masks, iou_threshold=IOU_THRESHOLD):
    """``RecallCounts`` of one image: bool[G, H, W] ground truth with bool[G] thing flags, bool[P, H, W] masks."""
    gt_is_thing = np.asarray(gt_is_thing, dtype=bool)
    iou = mask_iou_matrix(gt_masks, pred_masks) if len(pred_masks) else np.zeros((len(gt_masks), 0))
    recalled = (iou >= iou_threshold).any(axis=1) if iou.shape[1] else np.zeros(len(gt_masks), dtype=bool)
    precise = (iou >= iou_threshold).any(axis=0) if iou.shape[0] else np.zeros(len(pred_masks), dtype=bool)
    return RecallCounts(
        images=1,
        things=int(gt_is_thing.sum()),
        things_recalled=int((recalled & gt_is_thing).sum()),
        stuff=int((~gt_is_thing).sum()),
        stuff_recalled=int((recalled & ~gt_is_thing).sum()),
        masks=len(pred_masks),
        masks_precise=int(precise.sum()),
    )


def ground_truth_segments(dataset_dict):
    """(bool[G, H, W] masks, bool[G] thing flags) of a panoptic dataset dict's non-crowd segments."""
    ids = read_panoptic_ids(dataset_dict["pan_seg_file_name"], dataset_dict["segments_info"])
    segments = [s for s in dataset_dict["segments_info"] if not s.get("iscrowd", 0) and (ids == s["id"]).any()]
    masks = np.stack([ids == s["id"] for s in segments]) if segments else np.zeros((0, *ids.shape), dtype=bool)
    return masks, np.array([bool(s["isthing"]) for s in segments], dtype=bool)


def evaluate_label_folder(dataset_dicts, label_dir, iou_threshold=IOU_THRESHOLD):
    """``RecallCounts`` of the pseudo-labels in ``label_dir`` against the panoptic ``dataset_dicts``
    (every image needs a record: a missing one is an error naming it)."""
    total = RecallCounts()
    for d in dataset_dicts:
        gt_masks, gt_is_thing = ground_truth_segments(d)
        _, pred_masks = load_image_masks(label_dir, image_key(d["file_name"]))
        if pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise ValueError(f"{label_dir}: masks of {d['file_name']} are {pred_masks.shape[1:]}, "
                             f"its ground truth is {gt_masks.shape[1:]}")
        total = total + image_counts(gt_masks, gt_is_thing, pred_masks, iou_threshold)
    return total
