"""Every notebook in experiments/notebooks executes end to end (CPU, small settings)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120


def _data_dir() -> str | None:
    for d in (os.environ.get("SEQJAX_DATA"), ROOT / "data"):
        if d and Path(d).is_dir():
            return str(d)
    return None


def test_notebooks_found():
    names = {p.stem for p in NOTEBOOKS}
    assert {"quickstart", "tcn_vs_rnn", "char_rnn", "kernels"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: store notebooks without outputs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("SEQJAX_RESULTS", raising=False)  # tcn_vs_rnn: run the tiny job
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    data = _data_dir()
    if data:
        monkeypatch.setenv("SEQJAX_DATA", data)
    # Kernel "python3": ipykernel's spec runs `python -m ipykernel_launcher`, and jupyter_client
    # replaces a bare `python` with sys.executable, i.e. the venv's interpreter running pytest.
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
