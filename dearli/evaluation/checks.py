"""Ground truth checked before it is scored: the evaluation fails naming the file, never scores wrong.

Detectron2's evaluators trust their ground truth. panopticapi skips pixels whose id has no entry in
the json's ``segments_info`` (the PQ comes out wrong, e.g. 99.5 instead of an error), and
``SemSegEvaluator`` folds a label value outside the classes into other cells of its confusion
matrix (a wrong mIoU) or fails in ``reshape`` / broadcasting, as it does for a label map of another
size than its image, with no file in the message. dearli's evaluators call these checks on each
image in ``process`` before Detectron2 sees it:

- panoptic: the image is in the json; every non-zero id of the PNG is a segment of the json entry,
  and each segment's category is a category of the json; the PNG has the size of the prediction
  (which the model makes at the image's ``height`` x ``width``);
- semantic: the label PNG is 8-bit single-channel, every value is a class or the ignore value, and
  it has the size of the prediction.

Errors are :class:`dearli.data.datasets.validate.DatasetFileError` naming the ground-truth file.
"""
import os

from detectron2.evaluation import SemSegEvaluator

from ..data.datasets.validate import DatasetFileError, read_panoptic_ids, read_sem_seg


def check_gt_size(gt_path, gt_shape, sample, prediction_hw):
    """Raise if a ground-truth map is not of the size of the prediction for its image (the model
    predicts at the image's height x width, so this is also a ground truth / image mismatch)."""
    if tuple(gt_shape[:2]) != tuple(prediction_hw):
        raise DatasetFileError(
            f"{gt_path}: ground truth is {tuple(gt_shape[:2])} (HxW) but its image "
            f"{sample.get('file_name', '?')} is predicted at {tuple(prediction_hw)}; the ground truth "
            "must have the image's size"
        )


class PanopticGroundTruth:
    """The panoptic json of a dataset, indexed by image id, with the per-image check."""

    def __init__(self, gt_json, json_file, panoptic_root):
        self.json_file = json_file
        self.panoptic_root = panoptic_root
        self.annotations = {ann["image_id"]: ann for ann in gt_json["annotations"]}
        self.category_ids = {int(c["id"]) for c in gt_json["categories"]}

    def check(self, sample, prediction_hw):
        """Raise if the ground truth of ``sample`` (a model input) cannot be scored correctly."""
        annotation = self.annotations.get(sample["image_id"])
        if annotation is None:
            raise DatasetFileError(f"{self.json_file}: no annotation for image_id {sample['image_id']!r} "
                                   f"({sample.get('file_name', '?')})")
        png_path = os.path.join(self.panoptic_root, annotation["file_name"])
        unknown = sorted({int(s["category_id"]) for s in annotation["segments_info"]} - self.category_ids)
        if unknown:
            raise DatasetFileError(f"{self.json_file}: segments of {png_path} have category ids {unknown} "
                                   "that are not in the json's categories")
        ids = read_panoptic_ids(png_path, annotation["segments_info"])  # ids missing from the json
        check_gt_size(png_path, ids.shape, sample, prediction_hw)


class CheckedSemSegEvaluator(SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` (unchanged scoring) that checks each label file first."""

    def process(self, inputs, outputs):
        for sample, output in zip(inputs, outputs):
            gt_path = self.input_file_to_gt_file[sample["file_name"]]
            labels = read_sem_seg(gt_path, self._num_classes, self._ignore_label)
            check_gt_size(gt_path, labels.shape, sample, output["sem_seg"].shape[-2:])
        super().process(inputs, outputs)
