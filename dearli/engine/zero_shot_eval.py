"""Zero-shot classification of ground-truth segments through the model's own zero-shot branch.

This measures what the CLIP model knows, isolated from the mask decoder: each ground-truth segment
of an image becomes a mask, and the production functions classify it: dense CLIP features of the
predictor's resized input (``backbone(...)["clip_vis_dense"]``), binarised mask pooling, the CLIP
image head, cosine against the model's text classifier (synonyms x prompt templates, max over
synonyms) with CLIP's temperature (``text_classifier.zero_shot_logits``). The predicted class is the
arg-max over the real classes (void excluded). ``predictor.set_classes`` changes the classifier
used here exactly as it changes the predictor's outputs.
"""
import numpy as np
import torch

from ..data.datasets.validate import read_panoptic_ids, read_rgb_image
from ..modeling.text_classifier import zero_shot_logits

GROUPS = ("things", "stuff", "overall")


def ground_truth_segments(dataset_dict):
    """(masks [N,H,W] bool, contiguous class ids [N], is-thing flags [N]) of a panoptic record."""
    infos = dataset_dict["segments_info"]
    ids = read_panoptic_ids(dataset_dict["pan_seg_file_name"], infos)
    masks = np.stack([ids == info["id"] for info in infos])
    classes = np.array([info["category_id"] for info in infos], dtype=np.int64)
    is_thing = np.array([bool(info["isthing"]) for info in infos])
    return masks, classes, is_thing


@torch.no_grad()
def classify_segments(predictor, image_rgb, masks):
    """Contiguous class ids [N] the zero-shot branch of ``predictor.model`` gives the segments
    ``masks`` [N,H,W] (bool, image size) of ``image_rgb`` (uint8 HxWx3)."""
    model = predictor.model
    transform = predictor.resize.get_transform(image_rgb)
    resized = transform.apply_image(image_rgb)
    images = model.preprocess_images([torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))])
    padded_hw = images.tensor.shape[-2:]
    mask_logits = -torch.ones((1, len(masks), *padded_hw), device=model.device)
    for index, mask in enumerate(masks):
        resized_mask = torch.from_numpy(transform.apply_segmentation(mask.astype(np.uint8)) > 0)
        mask_logits[0, index, :resized_mask.shape[0], :resized_mask.shape[1]][resized_mask] = 1.0
    features = model.backbone(images.tensor)
    classifier, num_synonyms = model.classifier()
    logits = zero_shot_logits(model.backbone, features["clip_vis_dense"], mask_logits,
                              classifier, num_synonyms)
    return logits[0, :, :-1].argmax(dim=-1).cpu().numpy()


def zero_shot_segment_accuracy(predictor, dataset_dicts):
    """Accuracy of ``classify_segments`` on every ground-truth segment of ``dataset_dicts``:
    {"things"|"stuff"|"overall": {"correct", "total", "accuracy"}} plus the confusion matrix
    (rows: true class, columns: predicted class) under "confusion"."""
    num_classes = predictor.num_classes
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    correct = dict.fromkeys(GROUPS, 0)
    total = dict.fromkeys(GROUPS, 0)
    for record in dataset_dicts:
        masks, classes, is_thing = ground_truth_segments(record)
        predicted = classify_segments(predictor, read_rgb_image(record["file_name"]), masks)
        np.add.at(confusion, (classes, predicted), 1)
        groups = (("things", is_thing), ("stuff", ~is_thing), ("overall", np.ones_like(is_thing)))
        for group, selected in groups:
            correct[group] += int((predicted[selected] == classes[selected]).sum())
            total[group] += int(selected.sum())
    result = {group: {"correct": correct[group], "total": total[group],
                      "accuracy": correct[group] / total[group] if total[group] else float("nan")}
              for group in GROUPS}
    result["confusion"] = confusion.tolist()
    return result
