"""Image tags in the teacher step (DecoupledNet, extensions.md §4.3; README "Image-level tags").

On an unlabeled image with tags (the mapper's ``image_tags`` / ``has_tags``, also on its CutMix
partner) the teacher's pseudo-label keeps to the tags, by SSL.IMAGE_TAGS.TEACHER_MODE:

- ``restrict``: every query's class distribution is limited to tags + void before panoptic
  inference (``allowed_classes`` of ``DEARLi.predict_panoptic``);
- ``drop``: inference unchanged, then the segments of classes outside the tags are removed. Every
  removed pixel had a class absent from the image, so it was wrong: the pixel precision of the
  pseudo-label never decreases;
- ``none``: the teacher ignores the tags (only the student's tag loss uses them).

The student sample gets the tag-loss targets of the CutMix rule
(:func:`dearli.data.image_tags.student_tag_targets`).
"""
from typing import Dict, List, Optional, Sequence

import torch

from ..data.image_tags import student_tag_targets
from .pseudo_labels import PanopticLabel, merge_and_compact

TEACHER_MODES = ("restrict", "drop", "none")


def drop_untagged(label: PanopticLabel, allowed_classes: Optional[torch.Tensor]) -> PanopticLabel:
    """``label`` without the segments whose class is not in ``allowed_classes`` (bool [C]); ids are
    renumbered 1..K in their order. Unchanged when ``allowed_classes`` is None."""
    if allowed_classes is None or label.num_segments == 0:
        return label
    keep = allowed_classes.to(label.classes.device)[label.classes]
    keep_id = torch.cat([keep.new_zeros(1), keep])  # id 0 ("no segment") stays 0
    seg = torch.where(keep_id[label.seg], label.seg, 0)
    # Teacher segments of one stuff class already share an id, so this only drops and renumbers.
    return merge_and_compact(PanopticLabel(seg, label.classes, label.isthing, label.scores))


class TeacherTags:
    """The teacher's use of image tags (module docstring); built only with SSL.IMAGE_TAGS.ENABLED."""

    def __init__(self, mode: str):
        if mode not in TEACHER_MODES:
            raise ValueError(f"SSL.IMAGE_TAGS.TEACHER_MODE={mode!r}; expected one of {TEACHER_MODES}")
        self.mode = mode

    @classmethod
    def from_config(cls, cfg) -> Optional["TeacherTags"]:
        """None when SSL.IMAGE_TAGS is off."""
        tags = cfg.SSL.IMAGE_TAGS
        return cls(tags.TEACHER_MODE) if tags.ENABLED else None

    @staticmethod
    def allowed_classes(unlabeled: Sequence[Dict], partners: Sequence[int], device=None) -> List[Optional[torch.Tensor]]:
        """Per weak image of the teacher's batch (main images, then the partners of ``partners``):
        its tags (bool [C], on ``device``) or None when it has none. One copy to the device."""
        views = list(unlabeled) + [unlabeled[i]["cutmix"] for i in partners]
        tagged = [i for i, view in enumerate(views) if view.get("has_tags")]
        if not tagged:
            return [None] * len(views)
        on_device = torch.stack([views[i]["image_tags"] for i in tagged]).to(device, non_blocking=True).unbind()
        allowed = [None] * len(views)
        for i, tags in zip(tagged, on_device):
            allowed[i] = tags
        return allowed

    def inference_kwargs(self, allowed: Sequence[Optional[torch.Tensor]]) -> Dict:
        """Extra arguments of ``predict_panoptic``: the allowed classes under ``restrict``."""
        return {"allowed_classes": list(allowed)} if self.mode == "restrict" else {}

    def after_inference(self, labels: Sequence[PanopticLabel], allowed: Sequence[Optional[torch.Tensor]]):
        """The teacher's labels, with the untagged segments dropped under ``drop``."""
        if self.mode != "drop":
            return list(labels)
        return [drop_untagged(label, classes) for label, classes in zip(labels, allowed)]

    @staticmethod
    def student_fields(sample: Dict) -> Dict:
        """``tag_targets`` / ``tag_weights`` of the student sample made from ``sample`` ({} when the
        CutMix rule leaves it no term)."""
        targets = student_tag_targets(sample)
        return {} if targets is None else {"tag_targets": targets[0], "tag_weights": targets[1]}
