"""Bai, Kolter & Koltun (2018), Table 1: the rows that run here, resumable, one at a time.

    python experiments/table1.py run --rows jsb,nottingham --seeds 0,1,2
    python experiments/table1.py run --rows adding --models tcn     # one model of a row
    python experiments/table1.py run --rows adding --preset tuned   # the tuned recurrent models
    python experiments/table1.py status
    python docs/results_table.py --table1 docs/results/table1     # the README's table

Each (row, seed) is one ``experiments/tcn_vs_rnn.py --preset paper`` comparison (TCN, LSTM, GRU,
RNN) in its own process, its run directory under ``--runs`` (default ``runs/table1``). A row
whose run was cut (the session ended, kill -9) is continued with ``--resume`` from its last
checkpoint, to the same numbers as an uninterrupted run. A finished row's ``results.json``,
``run.json`` (provenance: commit, packages, device), ``table.md`` and ``curves.png`` are copied
to ``docs/results/table1/<row>/seed<k>/``, where the renderer and the README read them; a row
already there is skipped (``--rerun`` runs it again and replaces it). ``--models`` runs part
of a row (its files get the suffix ``-<models>``, e.g. ``results-tcn.json``); the renderer
merges the parts of a seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "table1"

_ADDING = {"tcn": 5.8e-5, "lstm": 0.164, "gru": 5.3e-5, "rnn": 0.177}
#: Table 1 of the paper: (task, metric, {model: value}) per row.
PAPER = {
    "adding": ("adding problem T=600, a marker per half", "mse", _ADDING),
    # The protocol of locuslab/TCN's add_test.py, which produced the paper's adding numbers: the
    # two markers anywhere (the "adding" row draws one per half, the classic protocol).
    "adding-anywhere": ("adding problem T=600, markers anywhere (locuslab's draw)", "mse",
                        _ADDING),
    "copy": ("copy memory T=1000", "loss",
             {"tcn": 3.5e-5, "lstm": 0.0204, "gru": 0.0197, "rnn": 0.0202}),
    "jsb": ("JSB Chorales", "nll", {"tcn": 8.10, "lstm": 8.45, "gru": 8.43, "rnn": 8.91}),
    "nottingham": ("Nottingham", "nll", {"tcn": 3.07, "lstm": 3.29, "gru": 3.46, "rnn": 4.05}),
    "ptb-char": ("char PTB", "bpc", {"tcn": 1.31, "lstm": 1.36, "gru": 1.37, "rnn": 1.48}),
    "ptb-word": ("word PTB", "ppl", {"tcn": 88.68, "lstm": 78.93, "gru": 92.48, "rnn": 114.5}),
    "digits": ("sequential digits (stands in for seq. MNIST: 99.0 / 87.2 / 96.2 / 21.5)",
               "accuracy", {}),
    "pdigits": ("permuted digits (stands in for P-MNIST: 97.2 / 85.7 / 87.3 / 25.3)",
                "accuracy", {}),
}

#: The comparison's arguments per row (beyond ``--seed``): the paper preset, and for the PTB
#: rows the step budget this machine affords (the renderer reports steps run vs the preset's).
#: The paper's PTB models took 7.8-11.6 s per step (char, T=400) and 3.5-5.7 s (word, T=80)
#: on one core that a training run shared (so about half that alone): 500 and 1,000 steps (~1
#: and ~0.7 of the preset's 100 epochs, counted as the paper does) are ~35-50 min per model,
#: a row's four models about two hours on two cores; the 100 epochs would take weeks.
ROWS: dict[str, list[str]] = {
    "adding": ["--task", "adding", "--preset", "paper"],
    "adding-anywhere": ["--task", "adding", "--preset", "paper", "--task-arg", "markers=anywhere"],
    "copy": ["--task", "copy", "--preset", "paper"],
    "jsb": ["--task", "jsb", "--preset", "paper"],
    "nottingham": ["--task", "nottingham", "--preset", "paper"],
    "ptb-char": ["--task", "ptb-char", "--preset", "paper", "--steps", "500",
                 "--eval-every", "250"],
    "ptb-word": ["--task", "ptb-word", "--preset", "paper", "--steps", "1000",
                 "--eval-every", "250"],
    "digits": ["--task", "digits", "--preset", "paper"],
    "pdigits": ["--task", "pdigits", "--preset", "paper"],
}
COPIED = ("results.json", "run.json", "table.md", "curves.png")


def done_dir(row: str, seed: int) -> Path:
    return RESULTS / row / f"seed{seed}"


def row_argv(row: str, seed: int, models: str | None, preset: str = "paper") -> list[str]:
    """The comparison's arguments for one row, seed, (optionally) subset of models, and preset
    (``paper``, or ``tuned``: the recurrent models' settings chosen on validation)."""
    argv = [preset if i and ROWS[row][i - 1] == "--preset" else a
            for i, a in enumerate(ROWS[row])]
    return argv + ["--seed", str(seed)] + ([] if models is None else ["--models", models])


def suffix(models: str | None, preset: str = "paper") -> str:
    tail = "" if models is None else "-" + models.replace(",", "-")
    return tail if preset == "paper" else f"-{preset}{tail}"


def find_unfinished(runs: Path, row: str, seed: int, models: str | None,
                    preset: str = "paper") -> Path | None:
    """The newest run directory of this row and seed without a ``results.json``, if any."""
    argv = row_argv(row, seed, models, preset)
    task = argv[argv.index("--task") + 1]
    candidates = []
    for run_json in sorted((runs / task).glob("*/run.json")):
        try:
            saved = json.loads(run_json.read_text())
        except json.JSONDecodeError:
            continue
        # the run's own arguments are exactly these (then --out ...): a part-row run of
        # --models tcn is not the whole row's run
        ran = saved.get("argv", [])
        if ran[: len(argv)] == argv and ran[len(argv): len(argv) + 1] == ["--out"] and not (
                run_json.parent / "results.json").exists():
            candidates.append(run_json.parent)
    return candidates[-1] if candidates else None


def run_row(row: str, seed: int, runs: Path, models: str | None = None,
            preset: str = "paper") -> Path:
    """Run (or resume) one row and seed; returns the finished run directory."""
    script = str(ROOT / "experiments" / "tcn_vs_rnn.py")
    unfinished = find_unfinished(runs, row, seed, models, preset)
    if unfinished is not None:
        cmd = [sys.executable, script, "--resume", str(unfinished), "--no-progress"]
    else:
        cmd = [sys.executable, script, *row_argv(row, seed, models, preset), "--out", str(runs),
               "--no-progress"]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{row} seed {seed}: tcn_vs_rnn.py exited with status "
                           f"{proc.returncode} (its stderr above); nothing was copied")
    out = proc.stdout
    print(out, flush=True)
    run_dir = next(line.split(": ", 1)[1] for line in out.splitlines()
                   if line.startswith("run directory: "))
    return Path(run_dir) if Path(run_dir).is_absolute() else Path.cwd() / run_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the given rows and seeds that are not done yet")
    run.add_argument("--rows", default="jsb,nottingham,adding,copy",
                     help=f"comma-separated, from {', '.join(ROWS)}")
    run.add_argument("--seeds", default="0", help="comma-separated seeds")
    run.add_argument("--models", default=None,
                     help="run only these models of each row (default: tcn,lstm,gru,rnn)")
    run.add_argument("--preset", default="paper", choices=("paper", "tuned"),
                     help="tuned: the recurrent models with the settings chosen on validation "
                          "(tcn_vs_rnn.py's TUNED_SETTINGS; default: the models they change)")
    run.add_argument("--rerun", action="store_true",
                     help="run the rows and seeds even where docs/results/table1 has them (a "
                          "changed preset); the new files replace the old when the run ends")
    run.add_argument("--runs", default=str(ROOT / "runs" / "table1"),
                     help="where the run directories (with checkpoints) go")
    sub.add_parser("status", help="which rows and seeds are done")
    args = ap.parse_args(argv)
    if args.command == "status":
        for row in ROWS:
            done = sorted(f"{p.parent.name}:{p.stem.removeprefix('results') or '-all'}"
                          for p in (RESULTS / row).glob("seed*/results*.json"))
            print(f"{row:12s} {', '.join(done) or '-'}")
        return
    # here, not at the top: docs/results_table.py loads this file for PAPER alone, without jax
    from seqjax.cli import check_output_dir

    sys.path.insert(0, str(ROOT / "experiments"))
    from tcn_vs_rnn import TUNED_SETTINGS, parse_models

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        ap.error(f"--rows {args.rows!r}: unknown {unknown}; choose from {', '.join(ROWS)}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",") if s.strip()))
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        ap.error(f"--seeds {args.seeds!r} must be comma-separated ints >= 0")
    models = args.models
    if models is not None:
        try:
            models = ",".join(parse_models(models))
        except ValueError as e:
            ap.error(f"--models {models!r}: {e}")
    runs = check_output_dir("--runs", args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if args.preset == "tuned" and models is None:  # the models the tuned preset changes
        models = ",".join(dict.fromkeys(m for row in rows for m, _, _ in
                                        TUNED_SETTINGS.get(ROWS[row][1], ())))
        if not models:
            ap.error(f"--preset tuned: no tuned settings for --rows {args.rows!r}")
    for seed in seeds:
        for row in rows:
            target, tail = done_dir(row, seed), suffix(models, args.preset)
            if (target / f"results{tail}.json").exists() and not args.rerun:
                print(f"{row} seed {seed}: done ({target})", flush=True)
                continue
            run_dir = run_row(row, seed, runs, models, args.preset)
            target.mkdir(parents=True, exist_ok=True)
            for name in COPIED:
                if (run_dir / name).exists():
                    stem, ext = name.rsplit(".", 1)
                    shutil.copy2(run_dir / name, target / f"{stem}{tail}.{ext}")
            print(f"{row} seed {seed}: copied to {target}", flush=True)


if __name__ == "__main__":
    from seqjax.cli import run_main

    run_main(main)
