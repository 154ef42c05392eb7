"""Where the real sample data is, and what a test that needs it does when it is absent.

The data (``shared/data``: COCO/ADE20K samples, CamVid, split lists; ``shared/reference``: state-dict
manifests of the reference checkpoints) is not part of the repository. It is found at
``$DEARLI_SHARED_DATA`` or, by default, at ``../shared/data`` next to the checkout; the manifests in
the ``reference`` folder beside it. A test that needs a missing folder is skipped with a reason
naming ``DEARLI_SHARED_DATA``, unless ``DEARLI_REQUIRE_SHARED_DATA=1`` (set by ``.ci/run``): then it
fails, so CI can never pass by skipping them.
"""
import os
from pathlib import Path
from typing import Mapping

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ENV = "DEARLI_SHARED_DATA"
REQUIRE_ENV = "DEARLI_REQUIRE_SHARED_DATA"


def shared_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$DEARLI_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    return Path(environ.get(DATA_ENV) or REPO_ROOT.parent / "shared" / "data")


def required(environ: Mapping[str, str] = os.environ) -> bool:
    """True when missing sample data must fail the run (``DEARLI_REQUIRE_SHARED_DATA`` = 1/true/yes)."""
    return environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def require_folder(folder: Path, what: str, environ: Mapping[str, str] = os.environ) -> Path:
    """``folder`` when it exists; otherwise skip the test (or fail it when the data is required)."""
    if folder.is_dir():
        return folder
    message = (f"{what} not found at {folder}; set {DATA_ENV} to the sample data folder "
               "(README: 'Sample data for the tests')")
    if required(environ):
        pytest.fail(f"{message}. {REQUIRE_ENV}=1 makes missing sample data a failure", pytrace=False)
    pytest.skip(message)
