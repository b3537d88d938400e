"""Shared test configuration.

The offline data sets ship in the repository's ``data/`` folder (PTB, tiny-shakespeare, the
music ``.mat`` files, MR); ``SEQJAX_DATA`` overrides. A fresh clone has everything the suite
reads: nothing beside the checkout is needed.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# run_main (called in-process by the script tests) would tune the test process's malloc
# (seqjax.cli.tune_allocator); its own test runs it in a subprocess
os.environ["SEQJAX_TUNE_MALLOC"] = "0"

REPO_DATA = Path(__file__).resolve().parents[1] / "data"
DATA_DIR = Path(os.environ.get("SEQJAX_DATA") or REPO_DATA)


@pytest.fixture
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), (
        f"data directory {DATA_DIR} not found: the data sets ship in the repository's data/ "
        "folder ($SEQJAX_DATA overrides)"
    )
    return DATA_DIR
