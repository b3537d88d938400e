"""Sequence to sequence with and without attention on translation tasks.

    python experiments/translate.py --task dates --attention bahdanau,none --steps 3000
    python experiments/translate.py --task numbers-en-fr --attention luong,none
    python experiments/translate.py --task data/fra.tsv --columns 0,1 --attention bahdanau

Every model trains on the same deterministic batches of the training split (teacher forcing,
masked cross-entropy, adam with gradient clipping) and is then decoded (greedy, or beam search
with ``--beam K``) on the held-out test split. The run directory
``<out>/translate-<task>/<timestamp>/`` gets ``table.md`` (exact match, BLEU, and exact match by
source-length bucket), ``results.json``, ``curves.png`` (validation loss), ``curves_acc.png``
(teacher-forced validation sequence accuracy), ``attention_<model>.png`` (attention heat maps
of a few test examples) and one sub-directory per model with its ``config.json``,
``metrics.jsonl`` and checkpoints.

BLEU is sacrebleu's corpus BLEU with its ``13a`` tokeniser for word-level tasks and ``char``
for character-level ones (dates: an ISO date is one "word", so word BLEU would be exact match).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cli import (
    check_devices,
    check_file,
    check_output_dir,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.data.translation import (
    TRANSLATION_TASKS,
    ParallelData,
    make_translation_data,
    tokenize,
)
from seqjax.models import param_count
from seqjax.models.seq2seq import Seq2Seq
from seqjax.train import (
    fit,
    initialize_distributed,
    make_eval_fn,
    make_optimizer,
    mesh_for,
    plot_curves,
)

ATTENTION_CHOICES = ("bahdanau", "luong", "dot", "general", "none")


def build_model(args, data: ParallelData, attention: str) -> Seq2Seq:
    return Seq2Seq(
        src_vocab=len(data.src_vocab), tgt_vocab=len(data.tgt_vocab), embed_size=args.embed,
        hidden_size=args.hidden, cell=args.cell, encoder_layers=args.layers,
        bidirectional=not args.unidirectional, attention=attention,
        reverse_source=args.reverse_source, backend=args.backend,
    )


def loss_fn_for(model: Seq2Seq):
    def loss_fn(params, batch, key, train):
        return model.loss(params, *batch)
    return loss_fn


def decode(model: Seq2Seq, params, data: ParallelData, split: str, args) -> dict[str, Any]:
    """Decode a split; returns hypotheses, references, sources and attention of the first
    batch."""
    pairs = data.splits[split]
    max_len = data.max_tgt_len + 2
    hyps, weights = [], None
    for start in range(0, len(pairs), args.eval_batch_size):
        src, src_len, _, _ = data.encode(pairs[start : start + args.eval_batch_size])
        if args.beam > 1:
            out = model.beam_search(params, src, src_len, max_len, beam_size=args.beam,
                                    length_penalty=args.length_penalty)
            tokens = np.asarray(out.tokens[:, 0])
        else:
            out = model.greedy(params, src, src_len, max_len)
            tokens = np.asarray(out.tokens)
            if weights is None:
                weights = np.asarray(out.weights)
        hyps.extend(data.tgt_vocab.decode(row) for row in tokens)
    return {"hyps": hyps, "refs": [t for _, t in pairs], "srcs": [s for s, _ in pairs],
            "weights": weights}


def length_buckets(data: ParallelData, split: str, num: int = 4) -> list[tuple[int, int]]:
    """``num`` source-length ranges ``[lo, hi]`` (tokens) of about equal size (one per length
    when there are at most ``2 * num`` distinct lengths)."""
    lens = np.array([len(tokenize(s, data.src_vocab.level)) for s, _ in data.splits[split]])
    distinct = np.unique(lens)
    if len(distinct) <= 2 * num:  # few lengths: one bucket per length
        return [(int(n), int(n)) for n in distinct]
    qs = np.unique(np.quantile(lens, np.linspace(0, 1, num + 1)).round().astype(int))
    edges = [int(lens.min())] + [int(q) for q in qs[1:-1]] + [int(lens.max()) + 1]
    edges = sorted(set(edges))
    return [(lo, hi - 1) for lo, hi in zip(edges[:-1], edges[1:])]


def score(out: dict[str, Any], data: ParallelData, buckets) -> dict[str, Any]:
    import sacrebleu

    hyps, refs, srcs = out["hyps"], out["refs"], out["srcs"]
    exact = np.array([h == r for h, r in zip(hyps, refs)])
    tok = "char" if data.tgt_vocab.level == "char" else "13a"
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tok).score
    lens = np.array([len(tokenize(s, data.src_vocab.level)) for s in srcs])
    by_len = {}
    for lo, hi in buckets:
        sel = (lens >= lo) & (lens <= hi)
        by_len[f"{lo}-{hi}"] = {"n": int(sel.sum()),
                                "exact": float(exact[sel].mean()) if sel.any() else None}
    return {"exact_match": float(exact.mean()), "bleu": bleu, "bleu_tokenize": tok,
            "by_length": by_len, "n": len(hyps),
            "errors": [{"src": s, "ref": r, "hyp": h}
                       for s, r, h, e in zip(srcs, refs, hyps, exact) if not e][:10]}


def plot_attention(out: dict[str, Any], data: ParallelData, path: Path, title: str,
                   count: int = 4) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    weights = out["weights"]
    # a few examples of different source lengths from the first decoded batch
    n = min(len(weights), len(out["srcs"]))
    order = np.argsort([len(s) for s in out["srcs"][:n]])
    picks = [int(order[int(q * (n - 1))]) for q in np.linspace(0.25, 1.0, count)]
    fig = Figure(figsize=(4.5 * count, 4.5))
    FigureCanvasAgg(fig)
    for j, i in enumerate(picks):
        src = tokenize(out["srcs"][i], data.src_vocab.level)
        hyp = tokenize(out["hyps"][i], data.tgt_vocab.level) + ["<eos>"]
        w = weights[i, : len(hyp), : len(src)]
        ax = fig.add_subplot(1, count, j + 1)
        ax.imshow(w, cmap="gray_r", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), src, rotation=90, fontsize=7)
        ax.set_yticks(range(len(hyp)), hyp, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_table(results: dict, path: Path) -> str:
    names = list(results["models"])
    buckets = list(next(iter(results["models"].values()))["test"]["by_length"])
    lines = [
        f"# {results['task']}: test exact match and BLEU ({results['decoding']})",
        "",
        f"{results['num_test']} test pairs; BLEU tokenizer "
        f"`{results['models'][names[0]]['test']['bleu_tokenize']}`; {results['steps']} steps "
        f"of batch {results['batch_size']}.",
        "",
        "| model | exact match | BLEU | valid loss | params | steps/s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        r = results["models"][name]
        lines.append(f"| {name} | {100 * r['test']['exact_match']:.2f}% | "
                     f"{r['test']['bleu']:.2f} | {r['valid_loss']:.4f} | {r['params']:,} | "
                     f"{r['steps_per_s']:.1f} | {r['wall_s']:.0f} |")
    lines += ["", "Exact match by source length (tokens):", "",
              "| source length | n | " + " | ".join(names) + " |",
              "|---|---:|" + "---:|" * len(names)]
    for b in buckets:
        n = results["models"][names[0]]["test"]["by_length"][b]["n"]
        cells = []
        for name in names:
            e = results["models"][name]["test"]["by_length"][b]["exact"]
            cells.append("-" if e is None else f"{100 * e:.2f}%")
        lines.append(f"| {b} | {n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def run_model(name: str, model: Seq2Seq, data: ParallelData, args, run_dir: Path,
              buckets) -> tuple[dict, list]:
    optimizer = make_optimizer("adam", args.lr, clip_norm=args.clip, schedule="cosine",
                               total_steps=args.steps, warmup_steps=min(100, args.steps // 10))
    valid_pairs = data.splits["valid"][: args.eval_batch_size * 2]
    valid_batches = [data.encode(valid_pairs[i : i + args.eval_batch_size])
                     for i in range(0, len(valid_pairs), args.eval_batch_size)]
    loss_fn = loss_fn_for(model)
    params = model.init(jax.random.PRNGKey(args.seed))
    result = fit(
        params=params, loss_fn=loss_fn, optimizer=optimizer,
        train_batches=lambda i: data.train_batch(i, args.batch_size, args.seed),
        num_steps=args.steps, run_dir=run_dir, seed=args.seed,
        eval_fn=make_eval_fn(loss_fn, valid_batches), eval_every=args.eval_every,
        checkpoint_every=0, log_every=max(1, args.eval_every // 5), overwrite=True,
        config={"model": dataclasses.asdict(model), "args": vars(args)},
        progress=not args.no_progress and sys.stderr.isatty(), desc=f"{data.name} {name}",
        mesh=mesh_for(args.devices),
    )
    t0 = time.time()
    out = decode(model, result.state.params, data, "test", args)
    test = score(out, data, buckets)
    test["decode_s"] = time.time() - t0
    if model.uses_attention and out["weights"] is not None:
        plot_attention(out, data, run_dir.parent / f"attention_{name}.png",
                       f"{data.name}: {name} attention (test examples)")
    valid = [r for r in result.history if r.get("split") == "valid"]
    return {
        "test": test,
        "valid_loss": valid[-1]["loss"],
        "valid_seq_acc_tf": valid[-1]["seq_acc"],
        "params": param_count(result.state.params),
        "wall_s": result.wall_s,
        "steps_per_s": result.steps_per_s,
        "model": dataclasses.asdict(model),
    }, result.history


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="dates", help="numbers-en-fr, dates, or a TSV file")
    ap.add_argument("--attention", default="bahdanau,none",
                    help=f"comma-separated, from {', '.join(ATTENTION_CHOICES)}")
    ap.add_argument("--steps", type=positive_int, default=2000)
    ap.add_argument("--batch-size", type=positive_int, default=64)
    ap.add_argument("--eval-batch-size", type=positive_int, default=500)
    ap.add_argument("--eval-every", type=positive_int, default=250)
    ap.add_argument("--lr", type=positive_float, default=3e-3)
    ap.add_argument("--clip", type=positive_float, default=1.0)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=positive_int, default=128)
    ap.add_argument("--embed", type=positive_int, default=32)
    ap.add_argument("--layers", type=positive_int, default=1, help="encoder layers")
    ap.add_argument("--unidirectional", action="store_true", help="one-directional encoder")
    ap.add_argument("--reverse-source", action="store_true", help="Sutskever's reversal")
    ap.add_argument("--beam", type=positive_int, default=1,
                    help="beam size for the test (1: greedy)")
    ap.add_argument("--length-penalty", type=float, default=0.0)
    ap.add_argument("--num-examples", type=positive_int, default=None,
                    help="pairs to generate / read (default: 20000 generated, all of a file)")
    ap.add_argument("--level", default=None, choices=("char", "word"),
                    help="tokenisation (default: char for dates, word otherwise)")
    ap.add_argument("--columns", default="0,1", help="TSV source,target columns")
    ap.add_argument("--lowercase", action="store_true", help="lowercase a TSV corpus")
    ap.add_argument("--backend", default="auto", choices=("auto", "scan", "pallas", "native"))
    ap.add_argument("--out", default="results", help="root of the run directories")
    ap.add_argument("--devices", type=non_negative_int, default=1,
                    help="data-parallel over this many devices (0: all); the batch must divide")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    names = [a.strip() for a in args.attention.split(",") if a.strip()]
    bad = [a for a in names if a not in ATTENTION_CHOICES]
    if bad or not names:
        ap.error(f"unknown --attention {bad}; choose from {', '.join(ATTENTION_CHOICES)}")
    args.attentions = list(dict.fromkeys(names))
    try:
        columns = tuple(int(c) for c in args.columns.split(","))
    except ValueError:
        columns = ()
    if len(columns) != 2 or min(columns) < 0:
        ap.error(f"--columns={args.columns!r} must be two comma-separated ints >= 0")
    args.columns = columns
    args.eval_every = min(args.eval_every, args.steps)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    initialize_distributed()  # multi-host runs: SEQJAX_COORDINATOR etc.; a no-op otherwise
    # Everything that can reject the input runs before the run directory is written.
    check_output_dir("--out", args.out)
    if args.task not in TRANSLATION_TASKS:  # a TSV file
        if not Path(args.task).expanduser().exists():
            raise FileNotFoundError(f"--task {args.task}: neither a built-in task "
                                    f"({', '.join(TRANSLATION_TASKS)}) nor an existing file")
        check_file("--task", args.task)
    check_devices(args.devices, args.batch_size)
    data = make_translation_data(args.task, seed=args.seed, num_examples=args.num_examples,
                                 level=args.level, lowercase=args.lowercase,
                                 columns=args.columns)
    models = {f"{args.cell}-{att}": build_model(args, data, att) for att in args.attentions}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_root = Path(args.out) / f"translate-{data.name}" / stamp
    run_root.mkdir(parents=True, exist_ok=False)
    print(f"{data.name}: {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} pairs; "
          f"vocab src {len(data.src_vocab)} tgt {len(data.tgt_vocab)} ({data.src_vocab.level})"
          f"\nrun directory: {run_root}\n", flush=True)
    buckets = length_buckets(data, "test")
    results: dict[str, Any] = {
        "task": data.name, "steps": args.steps, "batch_size": args.batch_size,
        "decoding": "greedy" if args.beam == 1 else
                    f"beam {args.beam}, length penalty {args.length_penalty}",
        "num_test": len(data.splits["test"]), "argv": list(sys.argv[1:] if argv is None else argv),
        "models": {},
    }
    histories = {}
    t0 = time.time()
    for name, model in models.items():
        r, histories[name] = run_model(name, model, data, args, run_root / name, buckets)
        results["models"][name] = r
        print(f"{name}: test exact match {100 * r['test']['exact_match']:.2f}%, BLEU "
              f"{r['test']['bleu']:.2f} ({r['params']:,} params, {r['wall_s']:.0f} s)",
              flush=True)
    results["total_wall_s"] = time.time() - t0
    (run_root / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    plot_curves(histories, "loss", run_root / "curves.png", split="valid", logy=True,
                title=f"{data.name}: validation loss (teacher forcing)")
    plot_curves(histories, "seq_acc", run_root / "curves_acc.png", split="valid",
                title=f"{data.name}: validation sequence accuracy (teacher forcing)")
    print("\n" + write_table(results, run_root / "table.md"))
    print(f"wrote {run_root}/{{table.md,results.json,curves.png,attention_*.png}}")
    return results


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before the first timing
    run_main(main)
