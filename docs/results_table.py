"""Turns results directories of ``experiments/tcn_vs_rnn.py`` into markdown tables.

    python docs/results_table.py results/adding/20261123-163758            # print the table
    python docs/results_table.py RUN_DIR [RUN_DIR ...] --out docs/results.md
    python docs/results_table.py --table1 docs/results/table1           # Table 1, ours vs paper
    python docs/results_table.py --seeds RUN_DIR RUN_DIR ...   # one comparison over seeds

Every number comes from the run's ``results.json``; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

MODELS = ("tcn", "lstm", "gru", "rnn")


def load(run_dir: str | Path) -> dict:
    """The ``results.json`` of a run directory (or the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is it a run directory of tcn_vs_rnn.py?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a results.json (not valid JSON: {e})") from None


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


def seeds_table(runs: list[dict]) -> str:
    """The test metric of each model in runs of one comparison that differ only in the seed:
    one column per seed, then mean ± std (the spread a single run hides)."""
    first = runs[0]
    for r in runs[1:]:
        same = ("task", "preset", "steps", "seq_len")
        if any(r[k] != first[k] for k in same) or list(r["models"]) != list(first["models"]):
            raise ValueError(f"seed {r['seed']} is not the same comparison as seed "
                             f"{first['seed']} (task, preset, steps, T and models must match)")
    runs = sorted(runs, key=lambda r: r["seed"])
    metric = first["metric"]
    lines = ["| model | " + " | ".join(f"seed {r['seed']}" for r in runs)
             + f" | mean ± std (test {metric}) |",
             "|---|" + "---:|" * (len(runs) + 1)]
    for name in first["models"]:
        values = [r["models"][name]["test_metric"] for r in runs]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in values)
                     + f" | {_mean_std(values)} |")
    return "\n".join(lines) + "\n"


def _paper_rows() -> dict:
    """``experiments/table1.py``'s ``PAPER`` (the paper's numbers), loaded from the script."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "table1.py"
    spec = importlib.util.spec_from_file_location("table1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PAPER


def _fmt(x: float) -> str:
    """Three or four significant figures; exponent notation below 0.01 and from 1e6 (a diverged
    perplexity)."""
    if abs(x) < 1e-2 or abs(x) >= 1e6:
        return f"{x:.2e}"
    return f"{x:.4g}" if abs(x) < 10 else f"{x:.2f}"


def _mean_std(values: list[float]) -> str:
    """The mean, and ``± std`` from two values on."""
    text = _fmt(statistics.fmean(values))
    return text + (f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else "")


def _model_cell(runs: list[dict], model: str) -> str:
    """``model``'s mean test metric (``± std``) over the seeds that ran it, naming those seeds
    when they are not all of the row's."""
    ran = [r for r in runs if model in r["models"]]
    text = _mean_std([r["models"][model]["test_metric"] for r in ran])
    if len(ran) < len(runs):
        text += " [seed " + ", ".join(str(r["seed"]) for r in ran) + "]"
    return text


def _compute_s(part: dict) -> float:
    """A comparison's compute: its models' ``elapsed_s`` (whole runs, resumed segments
    included) where recorded, else ``total_wall_s`` (older results: the last segment only)."""
    models = part.get("models", {})
    if models and all("elapsed_s" in m for m in models.values()):
        return sum(m["elapsed_s"] for m in models.values())
    return part.get("total_wall_s", 0.0)


def _merged_seeds(row_dir: Path) -> list[dict]:
    """One results dict per ``seed*/`` folder, merging its parts (``results.json`` and
    ``results-<models>.json``: the models of one seed run in several comparisons; a model in
    both is taken from the named part, a rerun of those models); the total wall time is the sum
    of the parts'."""
    seeds = []
    for seed_dir in sorted(p for p in row_dir.glob("seed*") if p.is_dir()):
        files = sorted(seed_dir.glob("results*.json"), key=lambda p: (p.name != "results.json",
                                                                      p.name))
        parts = [json.loads(p.read_text()) for p in files]
        if not parts:
            continue
        merged = dict(parts[0], models={}, total_wall_s=sum(_compute_s(p) for p in parts))
        for part in parts:
            # a tuned run's models are the paper's architectures with other settings
            prefix = "tuned " if part.get("preset") == "tuned" else ""
            merged["models"].update({prefix + k: v for k, v in part["models"].items()})
        seeds.append(merged)
    return seeds


def table1(root: str | Path) -> str:
    """Table 1 of Bai et al. (2018), ours beside the paper's, from ``<root>/<row>/seed*/``.

    Each cell is the mean test metric over the seeds run (``± std`` from two seeds on) with the
    paper's number in brackets; the last columns give the seeds, the steps per model (``N of
    M`` where a step budget cut the preset's protocol of ``M`` steps short, as for PTB) and the
    compute (summed wall time of the four models per seed, and the device of the first seed).
    """
    paper = _paper_rows()
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"--table1 {root}: not a directory")
    if not any((root / row).is_dir() for row in paper):
        raise ValueError(f"--table1 {root}: no row folders ({', '.join(paper)}) in it; give "
                         "the folder that holds them, e.g. docs/results/table1")
    lines = ["| task (metric) | TCN | LSTM | GRU | RNN | not in the paper | seeds | steps "
             "| compute per seed |",
             "|---|---:|---:|---:|---:|---|---|---:|---|"]
    for row, (title, metric, theirs) in paper.items():
        runs = _merged_seeds(root / row)
        if not runs:
            continue
        cells = []
        for model in MODELS:
            if not any(model in r["models"] for r in runs):
                cells.append("-")
                continue
            cell = _model_cell(runs, model)
            if model in theirs:
                cell += f" ({_fmt(theirs[model])})"
            cells.append(cell)
        others = sorted({m for r in runs for m in r["models"]} - set(MODELS))
        cells.append("; ".join(f"{m} {_model_cell(runs, m)}" for m in others) or "-")
        minutes = statistics.fmean(r.get("total_wall_s", 0.0) for r in runs) / 60
        prov = runs[0].get("provenance") or {}
        device = prov.get("devices", "?")
        if device.endswith(" cpu cpu"):  # jax names a CPU device "cpu"; say how many cores
            device = f"{prov.get('cpu_count', '?')}-core CPU"
        seeds = ", ".join(str(r["seed"]) for r in runs)
        steps = f"{runs[0]['steps']:,}"
        protocol = runs[0].get("preset_steps", runs[0]["steps"])
        if protocol > runs[0]["steps"]:  # a budget: the steps run out of the protocol's
            steps += f" of {protocol:,}"
        lines.append(f"| {title} ({metric}) | " + " | ".join(cells)
                     + f" | {seeds} | {steps} | {minutes:.0f} min, {device} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories (or results.json files)")
    ap.add_argument("--table1", default=None, metavar="DIR",
                    help="render Table 1 from DIR/<row>/seed*/results.json instead")
    ap.add_argument("--seeds", action="store_true",
                    help="the run directories are one comparison run with different seeds: "
                         "one table of each model's test metric per seed, mean and std")
    ap.add_argument("--out", default=None, help="write the markdown here (else print it)")
    ap.add_argument("--heading-level", type=int, default=3, choices=range(1, 7))
    args = ap.parse_args(argv)
    if args.table1 is None and not args.runs:
        ap.error("give run directories, or --table1 DIR")
    if args.table1 is not None:
        text = table1(args.table1)
    elif args.seeds:
        text = seeds_table([load(r) for r in args.runs])
    else:
        text = "\n".join(table(load(r), heading_level=args.heading_level) for r in args.runs)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return text


if __name__ == "__main__":
    try:  # a bad path or file: one line and status 2, as seqjax.cli.run_main (not used: jax)
        main()
    except KeyError as e:
        sys.stderr.write(f"error: a results.json without the key {e}\n")
        raise SystemExit(2) from None
    except (OSError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
