"""Interpretable hidden units of a character language model (Karpathy, Johnson & Fei-Fei 2015).

    python experiments/hidden_states.py                                  # tiny-shakespeare, LSTM
    python experiments/hidden_states.py --text my_code/*.py --quotes "\\"'" --steps 2000
    python experiments/hidden_states.py --arch gru --hidden 256 --out results/hidden_gru

Trains a small char model (a :class:`seqjax.models.SequenceModel` with an embedding) on the
text file(s) for ``--steps`` steps, runs it over an excerpt of the held-out tail of the text and
correlates every hidden unit (LSTM: :math:`\\tanh(c_t)`, the cell state as the paper shows it;
GRU/RNN: :math:`h_t`) with indicator sequences of the text: inside quotes, position in the line,
inside brackets, bracket depth, inside a word (:func:`seqjax.analysis.char_features`; an indicator
that is constant on the excerpt, e.g. quotes in Shakespeare, which has none, is reported as
absent). Writes to ``--out`` (default ``results/hidden_states``):

* ``units.html``: the excerpt coloured by the best unit of every feature (blue negative, red
  positive; hover a character for the value), and the indicator itself for reference;
* ``unit_<feature>.png``: the same as images;
* ``correlations.png``: :math:`|r|` of every unit with every feature;
* ``summary.json``: the model, its validation bits per character, the top units per feature.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqjax.analysis import char_features, hidden_states, html_page, render_png, top_units
from seqjax.analysis.hidden import unit_correlations
from seqjax.cli import (
    UserError,
    check_devices,
    check_output_dir,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.data import LanguageModelTask, Vocabulary, resolve_data_dir
from seqjax.models import ARCHS, SequenceModel, param_count
from seqjax.train import fit, make_optimizer, make_task_evaluator, mesh_for, task_loss_fn

SHAKESPEARE = Path("tinyshakespeare") / "input.txt"


def default_text() -> Path:
    """``$SEQJAX_DATA/tinyshakespeare/input.txt``, else the repository's ``data/``."""
    root = resolve_data_dir(None) or Path(__file__).resolve().parents[1] / "data"
    return root / SHAKESPEARE


def read_texts(patterns: list[str]) -> tuple[str, list[str]]:
    files: list[str] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        files.extend(matches)
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise FileNotFoundError(
            f"--text: file(s) not found: {missing or patterns}. The default is Karpathy's "
            f"tiny-shakespeare ({SHAKESPEARE}, from https://raw.githubusercontent.com/karpathy/"
            "char-rnn/master/data/tinyshakespeare/input.txt) in $SEQJAX_DATA; or pass --text.")
    empty = [f for f in files if Path(f).stat().st_size == 0]
    if empty:
        raise UserError(f"--text: empty file(s): {empty}")
    return "".join(Path(f).read_text(encoding="utf-8", errors="replace") for f in files), files


def build_task(text: str, seq_len: int, valid_fraction: float) -> LanguageModelTask:
    vocab = Vocabulary.build(text, "char")
    ids = vocab.encode(text)
    split = int(len(ids) * (1.0 - valid_fraction))
    data = {"train": ids[:split], "valid": ids[split:], "test": ids[split:]}
    return LanguageModelTask("char", vocab, data, seq_len)


def excerpt_of(task: LanguageModelTask, length: int) -> str:
    """``length`` characters of the held-out tail, starting at a line start."""
    valid = task.decode(task.data["valid"])
    start = valid.find("\n") + 1 if "\n" in valid[: len(valid) // 2] else 0
    return valid[start: start + length]


def plot_correlations(corr: dict[str, np.ndarray], path: Path) -> None:
    names = list(corr)
    mat = np.abs(np.stack([corr[n] for n in names]))
    fig = Figure(figsize=(min(16, 2 + mat.shape[1] * 0.08), 1 + 0.45 * len(names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("hidden unit")
    ax.set_title("|Pearson r| of each unit with each indicator")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", nargs="+", default=None,
                   help="text file(s) or glob patterns (default: tiny-shakespeare)")
    p.add_argument("--out", type=Path, default=Path("results") / "hidden_states")
    p.add_argument("--arch", default="lstm", help="lstm, gru, rnn, ... (recurrent)")
    p.add_argument("--hidden", type=positive_int, default=128)
    p.add_argument("--embed", type=positive_int, default=32)
    p.add_argument("--layers", type=positive_int, default=1)
    p.add_argument("--layer", type=int, default=-1, help="which layer to look at")
    p.add_argument("--state", choices=("auto", "h", "c", "tanh_c"), default="auto",
                   help="auto: tanh(c) for LSTMs, h otherwise")
    p.add_argument("--seq-len", type=positive_int, default=100)
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--lr", type=positive_float, default=3e-3)
    p.add_argument("--clip", type=positive_float, default=1.0)
    p.add_argument("--valid-fraction", type=float, default=0.05,
                   help="held-out fraction of the text, in (0, 1)")
    p.add_argument("--excerpt", type=positive_int, default=1200,
                   help="characters analysed and shown")
    p.add_argument("--png-chars", type=positive_int, default=800,
                   help="characters drawn in each PNG")
    p.add_argument("--quotes", default='"', help="quote characters for inside_quotes")
    p.add_argument("--top", type=positive_int, default=3, help="units reported per feature")
    p.add_argument("--devices", type=non_negative_int, default=1,
                    help="data-parallel over this many devices (0: all); the batch must divide")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)
    if args.arch not in ARCHS:
        p.error(f"--arch {args.arch!r}: choose from {', '.join(ARCHS)}")
    if not 0 < args.valid_fraction < 1:
        p.error(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
    if not -args.layers <= args.layer < args.layers:
        p.error(f"--layer {args.layer} must index one of the --layers {args.layers} layers "
                f"(-{args.layers} .. {args.layers - 1})")
    if args.text is None:
        args.text = [str(default_text())]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_dir("--out", args.out)
    check_devices(args.devices, args.batch, batch_flag="--batch")
    t0 = time.perf_counter()
    text, files = read_texts(args.text)
    task = build_task(text, args.seq_len, args.valid_fraction)
    model = SequenceModel(args.arch, task.input_size, task.output_size, args.hidden,
                          num_layers=args.layers, embed_size=args.embed, backend="scan")
    params = model.init(jax.random.PRNGKey(args.seed))
    print(f"{args.arch} char model, vocab {task.input_size}, {param_count(params):,} params, "
          f"{len(task.data['train']):,} training chars from {len(files)} file(s)", flush=True)
    res = fit(params=params, loss_fn=task_loss_fn(model, task),
              optimizer=make_optimizer("adam", args.lr, clip_norm=args.clip),
              train_batches=lambda i: task.train_batch(i, args.batch, seed=args.seed),
              num_steps=args.steps, run_dir=None, log_every=max(1, args.steps // 20),
              progress=False, seed=args.seed, mesh=mesh_for(args.devices))
    params = res.state.params
    valid = make_task_evaluator(model, task, args.batch, max_batches=8)(params, "valid")
    print(f"trained {args.steps} steps in {res.wall_s:.0f}s: valid bpc {valid['bpc']:.3f} "
          f"(unigram baseline {task.baseline:.3f})", flush=True)

    excerpt = excerpt_of(task, args.excerpt)
    states = hidden_states(model, params, task.encode(excerpt), which=args.state,
                           layer=args.layer)
    features = char_features(excerpt, quotes=args.quotes)
    top = top_units(states, features, k=args.top)
    corr = {name: unit_correlations(states, f) for name, f in features.items()
            if top[name] is not None}

    args.out.mkdir(parents=True, exist_ok=True)
    state_name = args.state if args.state != "auto" else ("tanh_c" if "lstm" in args.arch else "h")
    sections = []
    for name, units in top.items():
        if units is None:
            print(f"  {name:17s} constant on this excerpt: skipped", flush=True)
            continue
        unit, r = units[0]
        others = ", ".join(f"{u} ({v:+.2f})" for u, v in units[1:])
        print(f"  {name:17s} best unit {unit:4d} r = {r:+.3f}   next: {others}", flush=True)
        sections.append((f"{name}: unit {unit} ({state_name}), r = {r:+.3f}", excerpt,
                         states[:, unit]))
        sections.append((f"{name}: the indicator itself", excerpt, features[name]))
        n = min(args.png_chars, len(excerpt))
        render_png(excerpt[:n], states[:n, unit], args.out / f"unit_{name}.png",
                   title=f"{name}: unit {unit} ({state_name}), r = {r:+.3f}")
    page = html_page(sections, title=f"{args.arch} char model: units that track text features "
                                     f"(valid bpc {valid['bpc']:.3f})")
    (args.out / "units.html").write_text(page, encoding="utf-8")
    if corr:
        plot_correlations(corr, args.out / "correlations.png")
    summary: dict[str, Any] = {
        "files": files, "arch": args.arch, "hidden": args.hidden, "layers": args.layers,
        "state": state_name, "params": param_count(params), "vocab_size": task.input_size,
        "train_steps": args.steps, "final_train_loss": res.history[-1].get("loss"),
        "valid": valid, "unigram_baseline_bpc": task.baseline,
        "excerpt_chars": len(excerpt),
        "top_units": {k: (None if v is None else [{"unit": u, "r": r} for u, r in v])
                      for k, v in top.items()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    pngs = sorted(p.name for p in args.out.glob("*.png"))
    print(f"wrote {args.out}/units.html, summary.json, {', '.join(pngs)} "
          f"in {summary['wall_s']}s")
    return summary


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
