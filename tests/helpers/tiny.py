"""The tiny CPU config used across the test-suite.

``tiny_cfg(**overrides)`` returns a fresh (unfrozen) config merged from
``configs/shapes/tiny_dearli.yaml``; ``tiny_cfg(name="tiny_supervised")`` picks the other tiny file.
Override keys use dots or double underscores: ``tiny_cfg(**{"SOLVER.MAX_ITER": 2})`` or
``tiny_cfg(SOLVER__MAX_ITER=2)``. Importing this module registers dearli's model components and
the synthetic shapes datasets.
"""
from pathlib import Path

from dearli.config import load_config
from dearli.data.datasets import shapes  # noqa: F401  (registers dearli_shapes_*)
from dearli.modeling import meta_arch  # noqa: F401  (registers DEARLi and its parts)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "shapes"


def tiny_cfg(name: str = "tiny_dearli", **overrides):
    pairs = []
    for key, value in overrides.items():
        pairs += [key.replace("__", "."), value]
    return load_config(str(CONFIG_DIR / f"{name}.yaml"), pairs)
