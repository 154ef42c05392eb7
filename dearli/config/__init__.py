"""Every config key dearli adds to Detectron2's defaults, declared once, each with a comment.

Usage, as with any Detectron2 project::

    cfg = get_cfg()
    add_dearli_config(cfg)
    cfg.merge_from_file("configs/ade20k/dearli_convnext_base_1_128.yaml")

Config files are plain YAML: importing this module routes every ``merge_from_file`` of the process
(Detectron2's and fvcore's ``CfgNode``, whatever their ``allow_unsafe``) through
:func:`dearli.utils.safe_yaml.load_yaml_with_base`, which reads each file of a ``_BASE_`` chain with
``yaml.SafeLoader`` and refuses Python tags (naming file, line and tag) and ``_BASE_`` cycles. No
Python is evaluated.
The keys are declared in :mod:`.keys` (the method) and :mod:`.extension_keys` (optional
extensions, all off by default); reading and checking configs is :mod:`.loading`.
"""
from .keys import add_dearli_config
from .loading import check_list_keys, check_list_value, load_config

__all__ = ["add_dearli_config", "check_list_keys", "check_list_value", "load_config"]
