"""``benchmarks/rnn_gpu.py`` runs (on CPU: the tiny grid, pallas in interpret mode vs scan) and
writes the JSON and markdown it promises. Not a benchmark: it only proves the script runs."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import jax

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rnn_gpu.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("rnn_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_main_writes_expected_rows(tmp_path, capsys):
    bench = load_benchmark()
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    cells, dtypes = ["lstm"], ["float32"]
    rc = bench.main([
        "--cells", ",".join(cells), "--dtypes", ",".join(dtypes), "--hidden", "16",
        "--batch", "2", "--steps", "8", "--impls", "pallas,scan", "--reps", "1", "--warmup", "0",
        "--json", str(out_json), "--markdown", str(out_md),
    ])
    assert rc == 0
    data = json.loads(out_json.read_text())
    rows = data["rows"]
    expected = {(c, d, i) for c in cells for d in dtypes for i in ("pallas", "scan")}
    assert {(r["cell"], r["dtype"], r["impl"]) for r in rows} == expected
    assert len(rows) == len(expected)
    for r in rows:
        assert (r["B"], r["T"], r["H"], r["D"]) == (2, 8, 16, 16)
        for mode in ("fwd", "fwd_bwd"):
            assert r[f"{mode}_ms"] > 0 and r[f"{mode}_tflops"] > 0
            assert abs(r[f"{mode}_us_per_step"] - 1e3 * r[f"{mode}_ms"] / 8) < 1e-6
            assert r[f"{mode}_ratio_to_scan"] > 0
            assert r[f"{mode}_ratio_to_torch-cudnn"] is None
        if r["impl"] == "pallas":  # checked against the scan backend before timing
            check = r["check_vs_scan"]
            assert check["max_abs_err_out"] < 1e-5 and check["max_abs_err_grad"] < 1e-4
            assert check["max_rel_err_out"] < 1e-5 and check["max_rel_err_grad"] < 1e-5
    text = out_md.read_text()
    assert "| lstm | float32 | 2 | 8 | 16 | pallas |" in text
    if jax.default_backend() == "cpu":
        assert data["config"]["note"] == bench.CPU_BANNER
        assert "only prove the script runs" in text
        assert "INTERPRET" in capsys.readouterr().out


def test_gpu_check_script_is_ready():
    """benchmarks/gpu_check.sh parses, every file it names exists, and every flag it passes to a
    Python script is one that script defines."""
    script = SCRIPT.parent / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    root = SCRIPT.parents[1]
    for path in re.findall(r"(?:benchmarks|experiments|tests)/[\w/.]*\w", text):
        assert (root / path).exists(), path
    for name in ("benchmarks/rnn_gpu.py", "experiments/tcn_vs_rnn.py"):
        defined = set(re.findall(r'add_argument\("(--[a-z-]+)"', (root / name).read_text()))
        calls = re.findall(re.escape(name) + r"([^\n]*(?:\\\n[^\n]*)*)", text)
        passed = [set(re.findall(r"\s(--[a-z-]+)", call)) for call in calls]
        assert any(passed), name
        for flags in passed:
            assert flags <= defined, (name, flags - defined)
