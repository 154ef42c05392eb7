"""Reading configs: the safe YAML loader behind every ``merge_from_file``, the checks of list-valued
keys, and :func:`load_config`, the one way tools build a config from the command line."""
from fvcore.common.config import CfgNode as _FvcoreCfgNode

from ..utils.safe_yaml import load_yaml_with_base
from .keys import add_dearli_config


def _safe_load_yaml_with_base(cls, filename, allow_unsafe=False):
    """Replaces fvcore's loader, whose ``allow_unsafe`` (Detectron2's default: True) falls back to
    ``yaml.unsafe_load``; the argument is accepted and ignored."""
    return load_yaml_with_base(filename)


# The one place config files are read: Detectron2's CfgNode inherits this method from fvcore's.
_FvcoreCfgNode.load_yaml_with_base = classmethod(_safe_load_yaml_with_base)


# List-valued keys: (key, exact length or None for "at least one", positive numbers only).
_LIST_KEYS = (
    ("INPUT.MIN_SIZE_TRAIN", None, True),
    ("MODEL.PIXEL_MEAN", 3, False),
    ("MODEL.PIXEL_STD", 3, True),
    ("MODEL.OPEN_CLIP.OUT_FEATURES", None, False),
    ("MODEL.SEM_SEG_HEAD.IN_FEATURES", None, False),
    ("INPUT.UNLABELED.BLUR_SIGMA", 2, True),
    ("INPUT.UNLABELED.CUTMIX_AREA", 2, True),
    ("INPUT.UNLABELED.CUTMIX_ASPECT", 2, True),
)


def _value_at(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_list_value(key: str, value, length=None, positive: bool = False) -> None:
    """Raise ValueError naming ``key`` unless ``value`` is a list of ``length`` items (or, with
    ``length`` None, at least one), positive numbers when ``positive``."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key} must be a list, got {value!r}")
    if (length is None and not value) or (length is not None and len(value) != length):
        wanted = "at least one item" if length is None else f"{length} items"
        raise ValueError(f"{key} must have {wanted}, got {list(value)!r}")
    if positive and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{key} must hold positive numbers, got {list(value)!r}")


def check_list_keys(cfg) -> None:
    """Length and type of dearli's list-valued keys, so a bad value is named here rather than
    raising IndexError deep in a mapper."""
    for key, length, positive in _LIST_KEYS:
        check_list_value(key, _value_at(cfg, key), length, positive)
    if cfg.INPUT.CROP.ENABLED:
        check_list_value("INPUT.CROP.SIZE", cfg.INPUT.CROP.SIZE, 2, positive=True)


def load_config(config_file=None, opts=()):
    """Detectron2 defaults + dearli's keys, then ``config_file`` (if any), then ``KEY VALUE`` ``opts``.

    The one place tools build a config from the command line; unknown keys raise (yacs' check),
    list-valued keys are checked (:func:`check_list_keys`).
    """
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_dearli_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    check_list_keys(cfg)
    return cfg
