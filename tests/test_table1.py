"""experiments/table1.py finds the run to resume for a row, seed and model subset, and the
renderer merges a seed's parts into one row beside the paper's numbers; bad command lines
stop before any run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seqjax.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table1 = _load("table1", ROOT / "experiments" / "table1.py")
results_table = _load("results_table", ROOT / "docs" / "results_table.py")


def _run(runs, stamp, argv, finished=False):
    run_dir = runs / "adding" / stamp
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"argv": argv + ["--out", str(runs)]}))
    if finished:
        (run_dir / "results.json").write_text("{}")
    return run_dir


def test_find_unfinished_matches_row_seed_and_models_exactly(tmp_path):
    whole = table1.row_argv("adding", 0, None)
    tcn = table1.row_argv("adding", 0, "tcn")
    a = _run(tmp_path, "20261130-010000", tcn)
    assert table1.find_unfinished(tmp_path, "adding", 0, None) is None  # a part is not the row
    assert table1.find_unfinished(tmp_path, "adding", 0, "tcn") == a
    b = _run(tmp_path, "20261130-020000", whole)
    _run(tmp_path, "20261130-030000", whole, finished=True)
    _run(tmp_path, "20261130-040000", table1.row_argv("adding", 1, None))
    assert table1.find_unfinished(tmp_path, "adding", 0, None) == b
    assert table1.find_unfinished(tmp_path, "adding", 2, None) is None
    assert table1.suffix("tcn,lstm") == "-tcn-lstm" and table1.suffix(None) == ""


def test_table1_merges_the_parts_of_a_seed(tmp_path):
    def part(name, models, wall):
        seed = tmp_path / "jsb" / "seed0"
        seed.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(json.dumps({
            "seed": 0, "steps": 22900, "total_wall_s": wall,
            "provenance": {"devices": "1 x cpu cpu", "cpu_count": 2},
            "models": {m: {"test_metric": v} for m, v in models.items()}}))

    part("results-tcn.json", {"tcn": 8.2}, 600.0)
    part("results-lstm-gru-rnn.json", {"lstm": 8.5, "gru": 8.6, "rnn": 8.9}, 1200.0)
    text = results_table.table1(tmp_path)
    assert ("| JSB Chorales (nll) | 8.2 (8.1) | 8.5 (8.45) | 8.6 (8.43) | 8.9 (8.91) | - | 0 | "
            "22,900 | 30 min, 2-core CPU |") in text
    # the whole row's results.json (sorted after "results-..." by name) does not override a
    # named part, the later rerun of those models
    part("results.json", {"tcn": 8.0, "lstm": 8.4, "gru": 9.9, "rnn": 9.9}, 600.0)
    assert "| JSB Chorales (nll) | 8.2 (8.1) | 8.5 (8.45) | 8.6 (8.43) | 8.9 (8.91) |" in (
        results_table.table1(tmp_path))
    assert "adding" not in text  # rows without runs are left out


def test_table1_puts_tuned_and_other_models_beside_the_paper_columns(tmp_path):
    def part(seed, name, models, preset="paper"):
        folder = tmp_path / "adding" / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps({
            "seed": seed, "steps": 15625, "preset": preset, "total_wall_s": 60.0,
            "provenance": {"devices": "1 x cpu cpu", "cpu_count": 2},
            "models": {m: {"test_metric": v} for m, v in models.items()}}))

    part(0, "results-tcn.json", {"tcn": 1e-4})
    part(1, "results-tcn.json", {"tcn": 3e-4})
    part(0, "results-lstm.json", {"lstm": 0.17})
    part(0, "results-tuned-lstm.json", {"lstm": 2e-4}, preset="tuned")
    part(0, "results-mingru.json", {"mingru": 5e-4})
    resumed = json.loads((tmp_path / "adding" / "seed0" / "results-mingru.json").read_text())
    resumed["models"]["mingru"]["elapsed_s"] = 7200.0  # a resumed run: 2 h in all, 60 s last
    (tmp_path / "adding" / "seed0" / "results-mingru.json").write_text(json.dumps(resumed))
    row = next(line for line in results_table.table1(tmp_path).splitlines()
               if line.startswith("| adding"))
    assert row == ("| adding problem T=600, a marker per half (mse) | 2.00e-04 ± 0.00014 "
                   "(5.80e-05) | 0.17 [seed 0] (0.164) | - | - | mingru 5.00e-04 [seed 0]; "
                   "tuned lstm 2.00e-04 [seed 0] | "
                   "0, 1 | 15,625 | 62 min, 2-core CPU |")
    assert table1.row_argv("adding", 0, "lstm", "tuned") == [
        "--task", "adding", "--preset", "tuned", "--seed", "0", "--models", "lstm"]
    assert table1.row_argv("adding-anywhere", 1, None) == [
        "--task", "adding", "--preset", "paper", "--task-arg", "markers=anywhere", "--seed", "1"]
    assert table1.suffix("lstm,gru", "tuned") == "-tuned-lstm-gru"


def test_table1_says_when_a_step_budget_cut_the_protocol_short(tmp_path):
    """The PTB rows run a budget of the paper's 100 epochs: the steps column says how much."""
    folder = tmp_path / "ptb-char" / "seed0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "seed": 0, "steps": 500, "preset_steps": 48828, "total_wall_s": 3000.0,
        "provenance": {"devices": "1 x cpu cpu", "cpu_count": 2},
        "models": {"tcn": {"test_metric": 2.1}}}))
    row = next(line for line in results_table.table1(tmp_path).splitlines()
               if line.startswith("| char PTB"))
    assert row.endswith("| 0 | 500 of 48,828 | 50 min, 2-core CPU |")
    argv = table1.row_argv("ptb-char", 0, None)
    assert argv[argv.index("--steps") + 1] == "500"


def test_seeds_table_shows_each_seed_and_the_spread(tmp_path):
    def run(seed, lstm, steps=3000):
        return {"task": "adding", "preset": "quick", "steps": steps, "seq_len": 200,
                "seed": seed, "metric": "mse",
                "models": {"tcn": {"test_metric": 1e-3}, "lstm": {"test_metric": lstm}}}

    text = results_table.seeds_table([run(1, 0.17), run(0, 0.07)])
    assert text.splitlines() == [
        "| model | seed 0 | seed 1 | mean ± std (test mse) |", "|---|---:|---:|---:|",
        "| tcn | 0.001 | 0.001 | 1.00e-03 ± 0 |", "| lstm | 0.07 | 0.17 | 0.12 ± 0.071 |"]
    try:
        results_table.seeds_table([run(0, 0.1), run(1, 0.1, steps=10)])
    except ValueError as e:
        assert "seed 1 is not the same comparison as seed 0" in str(e)
    else:
        raise AssertionError("runs of different comparisons were tabled as seeds")


def test_numbers_keep_a_few_significant_figures():
    """A diverged perplexity (1e27) reads as one, not 28 digits; small losses in exponent form."""
    fmt = results_table._fmt
    assert [fmt(x) for x in (5.4999e27, 3.5e-5, 8.123, 268.98)] == [
        "5.50e+27", "3.50e-05", "8.123", "268.98"]


def test_bad_command_lines_stop_before_running(tmp_path, capsys):
    """Seeds, models and --runs are checked before any comparison starts (exit 2)."""
    file = tmp_path / "file"
    file.write_text("")
    for argv, message in ((["--seeds", "-1"], "--seeds '-1' must be comma-separated ints >= 0"),
                          (["--seeds", ","], "must be comma-separated ints >= 0"),
                          (["--models", "tcn,foo"], "--models 'tcn,foo': unknown model(s) ['foo']"),
                          (["--runs", str(file)], f"--runs {file} is an existing file")):
        with pytest.raises(SystemExit) as exc:
            run_main(table1.main, ["run", "--rows", "adding", *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_comparison_shows_its_stderr_and_copies_nothing(tmp_path, monkeypatch,
                                                                 capsys):
    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 2, "", "error: the child's message\n")

    monkeypatch.setattr(table1.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="adding seed 0: tcn_vs_rnn.py exited with status 2"):
        table1.run_row("adding", 0, tmp_path)
    assert "error: the child's message" in capsys.readouterr().err


def test_renderer_errors_name_the_path(tmp_path):
    """A wrong folder is an error, not an empty table (a row folder given for the root used
    to print the header alone); a file that is not JSON names itself."""
    row = tmp_path / "adding"
    (row / "seed0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"--table1 .*adding: no row folders \(adding, "):
        results_table.table1(row)
    with pytest.raises(NotADirectoryError, match="not a directory"):
        results_table.table1(tmp_path / "missing")
    bad = tmp_path / "results.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match=r"results.json is not a results.json \(not valid"):
        results_table.load(bad)
    script = ROOT / "docs" / "results_table.py"
    out = subprocess.run([sys.executable, str(script), "--table1", str(row)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: --table1 ") and not out.stdout
