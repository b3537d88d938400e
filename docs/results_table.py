"""Turns results directories of ``experiments/tcn_vs_rnn.py`` into markdown tables.

    python docs/results_table.py results/adding/20261123-163758            # print the table
    python docs/results_table.py RUN_DIR [RUN_DIR ...] --out docs/results.md

Every number comes from the run's ``results.json``; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(run_dir: str | Path) -> dict:
    """The ``results.json`` of a run directory (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is it a run directory of tcn_vs_rnn.py?")
    return json.loads(path.read_text())


def table(results: dict, *, heading_level: int = 3) -> str:
    """One markdown table (with a heading and the run's settings) from a ``results.json``."""
    better = "lower" if results["lower_is_better"] else "higher"
    metric = results["metric"]
    models = results["models"]
    best = (min if results["lower_is_better"] else max)(
        models, key=lambda m: models[m]["test_metric"])
    lines = [
        f"{'#' * heading_level} {results['task']}: test {metric} ({better} is better)",
        "",
        f"Preset `{results['preset']}`, {results['steps']} steps, T={results['seq_len']}, "
        f"seed {results['seed']}"
        + (f"; trivial baseline {results['baseline']:.4g}" if results["baseline"] is not None
           else "")
        + (f"; total {results['total_wall_s']:.0f} s" if "total_wall_s" in results else "")
        + ".",
        "",
        f"| model | test {metric} | valid {metric} | params | hidden x layers | steps/s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, r in models.items():
        valid = "-" if r["valid_metric"] is None else f"{r['valid_metric']:.4g}"
        test = f"{r['test_metric']:.4g}"
        if name == best:
            test = f"**{test}**"
        lines.append(f"| {name} | {test} | {valid} | {r['params']:,} | "
                     f"{r['hidden_size']} x {r['num_layers']} | {r['steps_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories (or results.json files)")
    ap.add_argument("--out", default=None, help="write the markdown here (else print it)")
    ap.add_argument("--heading-level", type=int, default=3)
    args = ap.parse_args(argv)
    text = "\n".join(table(load(r), heading_level=args.heading_level) for r in args.runs)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return text


if __name__ == "__main__":
    main()
