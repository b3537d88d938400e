"""Shared test configuration.

The offline data sets live in the ``shared/data`` folder beside the checkout (CI has it there
too); ``SEQJAX_DATA`` overrides. Tests that need it fail loudly when it is missing: a data test
that skips proves nothing.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_DIR = Path(os.environ.get("SEQJAX_DATA", _SHARED))


@pytest.fixture
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), (
        f"data directory {DATA_DIR} not found: tests read the offline data sets from the "
        "shared/data folder beside the checkout, or from $SEQJAX_DATA"
    )
    return DATA_DIR
