"""Weight loading with a per-module report, atomic checkpoint writes, reference-checkpoint conversion.

Detectron2 only warns when checkpoint keys do not match, so a wrong prefix silently trains from
scratch. :class:`DEARLiCheckpointer` logs, per module (backbone, sem_seg_head.pixel_decoder,
sem_seg_head.predictor, void_embedding, ...), how many tensors were loaded, missing, unexpected or
skipped for their shape, and raises when none of the model's trainable parameters was loaded.
Frozen CLIP tensors missing from a checkpoint are expected: they come from
MODEL.OPEN_CLIP.PRETRAINED, applied when the backbone is built, before MODEL.WEIGHTS; the
checkpoint's backbone fingerprint says which CLIP that must be (:mod:`.fingerprint`). Files are
read tensors-only (:mod:`.weight_files`), never unpickled freely.
"""
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch.nn.parallel import DistributedDataParallel
from tabulate import tabulate

from dearli.utils.atomic_io import atomic_write  # noqa: F401  (re-exported for tools)

from .fingerprint import FINGERPRINT_KEY, backbone_fingerprint, check_backbone_fingerprint
from .weight_files import PICKLE_SUFFIX, UnsafeCheckpointError, pickle_refusal, read_weight_file

FROZEN_CLIP_PREFIX = "backbone.clip_model."
# Top-level modules reported per child module rather than as one row.
SPLIT_MODULES = ("sem_seg_head",)
# Reference-checkpoint entries dearli does not keep: the criterion's constant class weights.
REFERENCE_DROPPED_SUFFIX = "empty_weight"
DEARLI_PREFIXES = ("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.", "void_embedding.", FROZEN_CLIP_PREFIX)


def module_group(key: str) -> str:
    """The report row of a state-dict key: its top-level module (two levels for SPLIT_MODULES)."""
    parts = key.split(".")
    depth = 2 if parts[0] in SPLIT_MODULES and len(parts) > 2 else 1
    return ".".join(parts[:depth])


@dataclass
class LoadReport:
    """What one load did, per state-dict key of the model or the checkpoint."""

    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    wrong_shape: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def table(self) -> str:
        rows: Dict[str, List[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for column, keys in enumerate(
            (self.matched, self.missing, self.unexpected, [k for k, _, _ in self.wrong_shape])
        ):
            for key in keys:
                rows[module_group(key)][column] += 1
        return tabulate(
            [[group] + counts for group, counts in sorted(rows.items())],
            headers=["module", "matched", "missing", "unexpected", "skipped (shape)"],
            tablefmt="pipe",
        )


def trainable_keys_to_check(model: torch.nn.Module) -> List[str]:
    """Parameters a checkpoint must provide at least one of: the trainable ones; for an all-frozen
    model (the EMA teacher) every parameter outside the frozen CLIP; else every parameter."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        names = [n for n, _ in model.named_parameters() if not n.startswith(FROZEN_CLIP_PREFIX)]
    return names or [n for n, _ in model.named_parameters()]


def trainable_keys_missing_from(model: torch.nn.Module, keys: Iterable[str]) -> List[str]:
    """Names of the model's trainable parameters that are not among ``keys``."""
    keys = set(keys)
    return [n for n, p in model.named_parameters() if p.requires_grad and n not in keys]


class DEARLiCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads weight files without unpickling arbitrary objects, checks
    the checkpoint's backbone fingerprint, reports loads per module, fails on a checkpoint that
    loads no trainable parameter, and writes checkpoints atomically (temp file + ``os.replace``).

    A frozen CLIP is left out of ``model.state_dict()`` by the backbone itself, so checkpoints
    store it only when it is trainable, and record its fingerprint instead.

    Args:
        allow_unsafe_pickle: MODEL.ALLOW_UNSAFE_PICKLE; only then are ``.pkl`` files (Detectron2's
            pickle reader) and arbitrary pickled objects read.
    """

    def __init__(self, model, save_dir="", *, allow_unsafe_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_unsafe_pickle = allow_unsafe_pickle

    def load(self, path, *args, **kwargs):
        # (Under DDP, Detectron2 handles workers that lack a file the main worker has.)
        local_file = bool(path) and "://" not in path and not isinstance(self.model, DistributedDataParallel)
        if local_file and not os.path.isfile(path):
            raise FileNotFoundError(f"weight file {path} does not exist")
        self._loading_path = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        if filename.endswith(PICKLE_SUFFIX):
            if not self.allow_unsafe_pickle:
                raise UnsafeCheckpointError(pickle_refusal(filename))
            return super()._load_file(filename)  # Detectron2's model-zoo pickle reader (opted in)
        loaded = read_weight_file(filename, self.allow_unsafe_pickle)
        return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint):
        check_backbone_fingerprint(self.model, checkpoint, getattr(self, "_loading_path", "?"))
        incompatible = super()._load_model(checkpoint)
        report = self._report(incompatible)
        self.last_load_report = report
        self.logger.info("Loaded weights from %s:\n%s", getattr(self, "_loading_path", "?"), report.table())
        self._fail_if_nothing_trainable_matched(report)
        return incompatible

    def _report(self, incompatible) -> LoadReport:
        wrong_shape = list(incompatible.incorrect_shapes)
        skipped = {k for k, _, _ in wrong_shape}
        # Keys skipped for their shape are also "missing" to load_state_dict: count them once.
        missing = [k for k in incompatible.missing_keys if k not in skipped]
        not_loaded = skipped | set(missing)
        matched = [k for k in self.model.state_dict() if k not in not_loaded]
        return LoadReport(matched, missing, list(incompatible.unexpected_keys), wrong_shape)

    def _fail_if_nothing_trainable_matched(self, report: LoadReport) -> None:
        required = trainable_keys_to_check(self.model)
        if not required or set(required) & set(report.matched):
            return
        provided = report.unexpected[:3] + [k for k, _, _ in report.wrong_shape][:3]
        raise RuntimeError(
            f"checkpoint {getattr(self, '_loading_path', '?')} (MODEL.WEIGHTS) loaded none of the "
            f"model's {len(required)} trainable parameters (e.g. {required[:3]}); it provides "
            f"{provided or 'no matching keys'}. Wrong key prefix or wrong file? A reference DEARLi "
            "checkpoint may need tools/convert_reference_checkpoint.py."
        )

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        fingerprint = backbone_fingerprint(self.model)
        if fingerprint is not None:
            data[FINGERPRINT_KEY] = fingerprint
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(last_filename_basename.encode())


def convert_reference_state_dict(
    state_dict: Dict[str, torch.Tensor], keep_clip: bool = False
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """A reference DEARLi state dict (student, teacher or warm-up) in dearli's names.

    dearli keeps the reference names, so conversion strips a DDP ``module.`` prefix, drops the
    criterion buffers (``criterion*.empty_weight``) and, unless ``keep_clip``, the frozen CLIP (it
    comes from MODEL.OPEN_CLIP.PRETRAINED). Returns (converted, dropped keys); raises ValueError
    when a key has no home in dearli or the decoder / void embedding is absent.
    """
    converted, dropped = {}, []
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        is_criterion_buffer = key.startswith("criterion") and key.endswith(REFERENCE_DROPPED_SUFFIX)
        if is_criterion_buffer or (key.startswith(FROZEN_CLIP_PREFIX) and not keep_clip):
            dropped.append(key)
        else:
            converted[key] = value
    validate_dearli_keys(converted.keys())
    return converted, dropped


def validate_dearli_keys(keys: Iterable[str]) -> None:
    """Raise ValueError naming the keys dearli has no place for, or the modules that are absent."""
    keys = list(keys)
    unknown = [k for k in keys if not k.startswith(DEARLI_PREFIXES)]
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys have no place in a dearli model (e.g. {unknown[:5]}); expected "
            f"prefixes {DEARLI_PREFIXES}"
        )
    absent = [p for p in DEARLI_PREFIXES[:3] if not any(k.startswith(p) for k in keys)]
    if absent:
        raise ValueError(f"the checkpoint has no tensors under {absent}; is it a DEARLi checkpoint?")
