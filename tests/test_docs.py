"""The documentation: the MkDocs site builds warning-free, public names have docstrings with
shapes, the README's code runs and its results table is the one the script generates."""

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import seqjax

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Public names that take arrays: their docstrings must give shapes ("[B, T, D]" style).
ARRAY_TAKING = {"rnn", "stacked", "bidirectional", "pyramid", "reduce_time", "length_mask",
                "reverse_padded", "SimpleRNN", "LSTM", "PeepholeLSTM", "GRU"}


def _load_results_table():
    spec = importlib.util.spec_from_file_location("results_table",
                                                  ROOT / "docs" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "WARNING" not in log and "ERROR" not in log, log
    core = (tmp_path / "site" / "core" / "index.html").read_text(encoding="utf-8")
    for name in ("SimpleRNN", "PeepholeLSTM", "GRU", "rnn", "stacked"):
        assert name in core
    results = (tmp_path / "site" / "results" / "index.html").read_text(encoding="utf-8")
    assert "adding: test mse" in results


@pytest.mark.parametrize("name", seqjax.__all__)
def test_public_names_have_docstrings(name):
    doc = inspect.getdoc(getattr(seqjax, name)) or ""
    assert len(doc.strip()) >= 20, f"seqjax.{name} needs a docstring"
    if name in ARRAY_TAKING:
        assert "[" in doc, f"seqjax.{name}'s docstring should give shapes, e.g. [B, T, D]"


def test_array_taking_list_is_current():
    assert ARRAY_TAKING <= set(seqjax.__all__)


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_snippets():
    assert len(_python_blocks(README)) >= 2


@pytest.mark.parametrize("index", range(len(_python_blocks(README))))
def test_readme_snippet_runs(index, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    code = _python_blocks(README)[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def test_readme_results_table_is_generated():
    """The README's table is docs/results_table.py's output for the committed results.json."""
    rt = _load_results_table()
    runs = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/results.json"))
    assert runs, "docs/results/<run>/results.json missing"
    for run in runs:
        assert rt.table(rt.load(run), heading_level=3) in README, (
            f"README's table for {run.name} is stale: paste `python docs/results_table.py {run}`")


def test_results_table_numbers_come_from_json(tmp_path):
    rt = _load_results_table()
    run = sorted((ROOT / "docs" / "results").glob("*/results.json"))[0]
    results = rt.load(run)
    text = rt.table(results)
    for name, r in results["models"].items():
        assert f"| {name} |" in text and f"{r['test_metric']:.4g}" in text
    out = tmp_path / "t.md"
    assert rt.main([str(run.parent), "--out", str(out)]) == out.read_text()


def test_readme_table1_is_generated():
    """The README's Table 1 is docs/results_table.py --table1 of docs/results/table1."""
    rt = _load_results_table()
    start, end = "<!-- table1:start -->\n", "<!-- table1:end -->"
    assert start in README and end in README
    shown = README.split(start, 1)[1].split(end, 1)[0]
    assert shown == rt.table1(ROOT / "docs" / "results" / "table1"), (
        "README's Table 1 is stale: paste `python docs/results_table.py --table1 "
        "docs/results/table1` between the table1 markers")


def test_readme_quick_seeds_table_is_generated():
    """The README's spread of the main job over seeds is results_table.py --seeds of the
    committed run (seed 0) and docs/results/adding-quick/seeds/*."""
    rt = _load_results_table()
    start, end = "<!-- quick-seeds:start -->\n", "<!-- quick-seeds:end -->"
    assert start in README and end in README
    quick = ROOT / "docs" / "results" / "adding-quick"
    runs = [quick] + sorted(p.parent for p in quick.glob("seeds/*/results.json"))
    assert len(runs) >= 3, "the main job's spread needs at least three seeds"
    shown = README.split(start, 1)[1].split(end, 1)[0]
    assert shown == rt.seeds_table([rt.load(r) for r in runs]), (
        "README's seeds table is stale: paste `python docs/results_table.py --seeds "
        "docs/results/adding-quick docs/results/adding-quick/seeds/*`")
