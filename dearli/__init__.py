"""dearli: DEARLi semi-supervised panoptic segmentation as a Detectron2 extension.

Importing the package registers its Detectron2 components (datasets, dataset mappers, the
``OpenCLIPBackbone`` backbone, the ``CLIPClassificationHead`` head and the ``DEARLi``
meta-architecture). The package layout follows the data flow: data -> modeling -> sam -> engine.
"""
try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_environment.py in a subprocess
    raise ImportError(
        "dearli needs detectron2 0.6, which is not published on PyPI. Install it with "
        "`python tools/install_detectron2.py` (part of `make env`: it installs the pinned, "
        "hash-checked sdist pb1-detectron2==0.6 as pure Python), or build detectron2 from source "
        "(https://github.com/facebookresearch/detectron2) and then install dearli."
    ) from e

from .config import add_dearli_config  # noqa: E402,F401
from . import data, modeling  # noqa: E402,F401  (registers datasets, mappers and models)

__version__ = "0.1.0"
