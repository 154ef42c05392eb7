"""The targets of one criterion call, flattened once for every prediction set.

Per image the criterion receives a dict ("labels" [N], "masks" bool [N, H, W] or BitMasks, optional
"seed", "valid_mask", "weights", "mask_weights"). :func:`build_target_batch` turns the list into
flat tensors: all targets' labels [T], masks as float [T, H, W] (converted once, not once per
prediction set and image), optional weights [T] and optional per-pixel mask weights [T, h, w]
(SemiRES's PWA maps; an image without them gets ones), plus the host-side layout (targets per image). Targets that
arrive on the host (the labeled data) are checked there, before their single transfer; targets
already on the device (the teacher's pseudo-labels) are checked with an asynchronous assert, so
neither needs the host to wait for the device.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.structures import BitMasks


def as_mask_tensor(masks, name: str = "gt_masks") -> torch.Tensor:
    """The bool [N, H, W] tensor of ``masks`` (a bool tensor or detectron2 ``BitMasks``)."""
    if isinstance(masks, BitMasks):
        return masks.tensor
    if isinstance(masks, torch.Tensor) and masks.dtype == torch.bool and masks.dim() == 3:
        return masks
    described = type(masks).__name__
    if isinstance(masks, torch.Tensor):
        described += f" of dtype {masks.dtype} and shape {tuple(masks.shape)}"
    raise TypeError(f"{name} must be a bool tensor [N, H, W] or detectron2 BitMasks, got {described}")


@dataclass
class TargetBatch:
    """Flat targets of a batch. ``counts[b]`` targets of image b start at ``offsets[b]``."""

    labels: torch.Tensor  # int64 [T]
    masks: torch.Tensor  # float32 [T, H, W] (0/1)
    counts: List[int]
    offsets: List[int]
    seeds: List[Optional[int]]
    valid: Optional[torch.Tensor] = None  # float32 [B, H, W] (1 on real pixels), or None
    weights: Optional[torch.Tensor] = None  # float32 [T], or None
    mask_weights: Optional[torch.Tensor] = None  # float32 [T, h, w] per-pixel weights, or None
    image_of_target: Optional[torch.Tensor] = None  # int64 [T] on the device
    slot_of_target: Optional[torch.Tensor] = None  # int64 [T]: position among its image's targets

    @property
    def num_images(self) -> int:
        return len(self.counts)

    @property
    def max_count(self) -> int:
        return max(self.counts, default=0)



def build_target_batch(
    targets: Sequence[Dict],
    num_classes: int,
    device,
    class_agnostic: bool = False,
    with_valid: bool = False,
    with_weights: bool = False,
) -> TargetBatch:
    """Check and flatten ``targets`` (see the module docstring); masks of every image with targets
    must share one canvas (the model pads them to the batch's padded size)."""
    masks = [as_mask_tensor(t["masks"], name=f"targets[{i}]['masks']") for i, t in enumerate(targets)]
    counts = []
    for i, (target, mask) in enumerate(zip(targets, masks)):
        if len(target["labels"]) != len(mask):
            raise ValueError(f"targets[{i}]: {len(target['labels'])} labels but {len(mask)} masks")
        counts.append(len(mask))
    canvas = _common_canvas(masks, targets)
    offsets = [sum(counts[:b]) for b in range(len(counts))]
    labels = _flat_labels(targets, num_classes, device, class_agnostic)
    flat_masks = torch.cat([m if len(m) else m.new_zeros((0, *canvas)) for m in masks]) if masks else torch.zeros(0, *canvas, dtype=torch.bool)
    batch = TargetBatch(
        labels=labels,
        masks=flat_masks.to(device, non_blocking=True).to(torch.float32),
        counts=counts,
        offsets=offsets,
        seeds=[t.get("seed") for t in targets],
    )
    layout = torch.tensor([[b for b, n in enumerate(counts) for _ in range(n)], [k for n in counts for k in range(n)]],
                          dtype=torch.int64).view(2, -1).to(device, non_blocking=True)
    batch.image_of_target, batch.slot_of_target = layout[0], layout[1]
    if with_valid and any(t.get("valid_mask") is not None for t in targets):
        batch.valid = torch.stack([_valid_map(t, canvas, device) for t in targets])
    if with_weights:
        batch.weights = torch.cat([_weights(t, n, device) for t, n in zip(targets, counts)]) if targets else None
    if any(t.get("mask_weights") is not None for t in targets):
        batch.mask_weights = _mask_weights(targets, counts, device)
    return batch


def _common_canvas(masks: Sequence[torch.Tensor], targets: Sequence[Dict]):
    canvases = {tuple(m.shape[-2:]) for m in masks if len(m)}
    canvases |= {tuple(t["valid_mask"].shape[-2:]) for t in targets if t.get("valid_mask") is not None}
    if len(canvases) > 1:
        raise ValueError(f"target masks of one batch must share one canvas (pad them to the batch size), got {sorted(canvases)}")
    if canvases:
        return canvases.pop()
    return tuple(masks[0].shape[-2:]) if masks else (1, 1)


def _flat_labels(targets, num_classes: int, device, class_agnostic: bool) -> torch.Tensor:
    labels = [t["labels"] for t in targets]
    if not labels:
        return torch.zeros(0, dtype=torch.int64, device=device)
    on_host = all(label.device.type == "cpu" for label in labels)
    flat = torch.cat([label.reshape(-1) for label in labels]).to(torch.int64)
    if class_agnostic:
        flat = torch.zeros_like(flat)  # one "object" class
    elif on_host and not torch.compiler.is_compiling():  # a traced graph cannot branch on data
        _check_labels_on_host(flat, labels, num_classes)
    elif len(flat):
        torch._assert_async(((flat >= 0) & (flat < num_classes)).all(), "class id outside [0, NUM_CLASSES)")
    return flat.to(device, non_blocking=True)


def _check_labels_on_host(flat: torch.Tensor, labels: Sequence[torch.Tensor], num_classes: int) -> None:
    """One check of the whole batch; only a bad batch is searched image by image for the message."""
    if not len(flat) or not bool(((flat < 0) | (flat >= num_classes)).any()):
        return
    for index, label in enumerate(labels):
        if len(label) and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(
                f"targets[{index}]: class ids must lie in [0, {num_classes}) "
                f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES), got {label.tolist()}"
            )


def _valid_map(target: Dict, canvas, device) -> torch.Tensor:
    valid = target.get("valid_mask")
    if valid is None:
        return torch.ones(canvas, dtype=torch.float32, device=device)
    return valid.to(device, non_blocking=True).to(torch.float32)


def _weights(target: Dict, count: int, device) -> torch.Tensor:
    weights = target.get("weights")
    if weights is None:
        return torch.ones(count, dtype=torch.float32, device=device)
    return weights.to(device=device, dtype=torch.float32, non_blocking=True).reshape(-1)


def _mask_weights(targets: Sequence[Dict], counts: Sequence[int], device) -> torch.Tensor:
    """Every target's per-pixel weight map [T, h, w] (one resolution per batch; ones where missing)."""
    sizes = {tuple(t["mask_weights"].shape[-2:]) for t in targets if t.get("mask_weights") is not None}
    if len(sizes) > 1:
        raise ValueError(f"mask_weights of one batch must share one resolution, got {sorted(sizes)}")
    size = sizes.pop()
    maps = []
    for index, (target, count) in enumerate(zip(targets, counts)):
        weights = target.get("mask_weights")
        if weights is None:
            maps.append(torch.ones(count, *size, dtype=torch.float32, device=device))
            continue
        if weights.dim() != 3 or len(weights) != count:
            raise ValueError(f"targets[{index}]['mask_weights'] must be [N={count}, h, w], got shape {tuple(weights.shape)}")
        maps.append(weights.to(device=device, dtype=torch.float32, non_blocking=True))
    return torch.cat(maps)
