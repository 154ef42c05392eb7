"""The tag-constrained class distribution of the teacher (DecoupledNet, extensions.md §4.3 A).

On an image with tags, each query's class distribution is limited to tags + void and renormalised
before panoptic inference ("restrict"): the logits of the other classes become -inf, so the
softmax of :func:`dearli.modeling.inference.panoptic_segments` spreads their mass over the allowed
classes in proportion to their probabilities. With every class allowed the scores are returned
unchanged (bitwise); with none, every query's label is void and no segment survives.
"""
import torch


def restrict_class_scores(class_scores: torch.Tensor, allowed_classes: torch.Tensor) -> torch.Tensor:
    """``class_scores`` [..., C+1] (logits or log-probabilities, void last) with the columns of the
    classes not in ``allowed_classes`` (bool [C]) set to -inf; void is always kept."""
    num_classes = class_scores.shape[-1] - 1
    if allowed_classes.shape != (num_classes,) or allowed_classes.dtype != torch.bool:
        raise ValueError(f"allowed_classes must be bool [{num_classes}] (one flag per class, void excluded), "
                         f"got {allowed_classes.dtype} {tuple(allowed_classes.shape)}")
    keep = torch.cat([allowed_classes.to(class_scores.device), allowed_classes.new_ones(1).to(class_scores.device)])
    return class_scores.masked_fill(~keep, float("-inf"))
