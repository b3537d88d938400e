"""CPU benchmark (issue #21): minGRU with the parallel scan against the sequential scan.

Forward+backward (``jax.grad`` of the summed outputs, params and inputs) of one layer, B=16,
D=H=128, float32, at T = 128, 512, 1024, 4096, for:

* ``mingru parallel``: ``rnn(MinGRU, backend="parallel")``: :func:`jax.lax.associative_scan`,
  in blocks of ``seqjax.core.backend.TIME_BLOCK`` steps (``--time-block``; each block's
  coefficients, scan and outputs together, recomputed in the backward pass);
* ``mingru hoisted seq``: ``backend="sequential"``, the same blocks combined step by step
  with :func:`seqjax.core.linear.sequential_linear_scan` (hand-written VJP);
* ``... whole T``: the same two with the whole sequence at once (no blocks: the coefficients
  of all steps, then one scan over ``T``), what both backends did before the blocks;
* ``mingru parallel log``: the paper's log-space scan (``parallel_mode="log"``), in blocks;
* ``mingru scan``: ``rnn(MinGRU, backend="scan")``, the sequential ``lax.scan`` of its step;
* ``lstm scan``: ``rnn(LSTM, backend="scan")`` of the same width (hand-written VJP).

Contenders are compiled ahead (each under its own ``TIME_BLOCK``), then run interleaved in
one process with ``block_until_ready``; the table gives medians and ratios to the LSTM scan.
The issue's goal: at T=1024 the parallel minGRU fwd+bwd at least 5x faster than the LSTM scan.

    python benchmarks/parallel_scan.py [--reps 5] [--T 128,512,1024,4096] [--D 128]
        [--time-block 64] [--json results/bench_parallel_scan.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax.cli import positive_int
from seqjax.core.linear import MinGRU

# name: (cell maker, backend, blocked): blocked contenders run under --time-block, the others
# with the whole sequence at once
CONTENDERS = {
    "mingru parallel": (lambda d, h: MinGRU(d, h), "parallel", True),
    "mingru hoisted seq": (lambda d, h: MinGRU(d, h), "sequential", True),
    "mingru parallel whole T": (lambda d, h: MinGRU(d, h), "parallel", False),
    "mingru hoisted seq whole T": (lambda d, h: MinGRU(d, h), "sequential", False),
    "mingru parallel log": (lambda d, h: MinGRU(d, h, parallel_mode="log"), "parallel", True),
    "mingru scan": (lambda d, h: MinGRU(d, h), "scan", False),
    "lstm scan": (lambda d, h: seqjax.LSTM(d, h), "scan", False),
}
REFERENCE = "lstm scan"


@contextlib.contextmanager
def time_block(steps):
    """``seqjax.core.backend.TIME_BLOCK`` of both linear backends on this platform set to
    ``steps`` (``None``: blocks off; ``"default"``: as they are)."""
    table, platform = seqjax.core.backend.TIME_BLOCK, jax.default_backend()
    saved = dict(table)
    if steps != "default":
        for backend in seqjax.core.backend.LINEAR_BACKENDS:
            table.pop((platform, backend), None)
            if steps is not None:
                table[(platform, backend)] = steps
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def fwd_bwd_fn(cell, backend, params, xs, block):
    """The compiled fwd+bwd of one layer (traced under ``TIME_BLOCK = block``)."""
    def loss(p, x):
        return jnp.sum(seqjax.rnn(cell, p, x, backend=backend)[0])

    with time_block(block):
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--T", default="128,512,1024,4096")
    ap.add_argument("--B", type=positive_int, default=16)
    ap.add_argument("--D", type=positive_int, default=128)
    ap.add_argument("--H", type=positive_int, default=128)
    ap.add_argument("--time-block", type=positive_int, default=None,
                    help="steps per block of the blocked contenders (default: TIME_BLOCK)")
    ap.add_argument("--json", default="results/bench_parallel_scan.json")
    args = ap.parse_args(argv)
    B, D, H = args.B, args.D, args.H
    rows = []
    for T in (int(t) for t in args.T.split(",")):
        xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))
        fns = {}
        for name, (make, backend, blocked) in CONTENDERS.items():
            cell = make(D, H)
            params = cell.init(jax.random.PRNGKey(0))
            block = (args.time_block or "default") if blocked else None
            fb = fwd_bwd_fn(cell, backend, params, xs, block)
            fns[name] = lambda fb=fb, p=params: jax.block_until_ready(fb(p, xs))
        for fn in fns.values():  # warm-up (compiles)
            fn()
            fn()
        times = {name: [] for name in fns}
        for _ in range(args.reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
        for name, ms in med.items():
            rows.append({"T": T, "impl": name, "fwd_bwd_ms": ms,
                         "speedup_vs_lstm_scan": med[REFERENCE] / ms,
                         "speedup_vs_mingru_scan": med["mingru scan"] / ms})
        print(f"T={T} done", flush=True)

    blocks = args.time_block or {b: k for (p, b), k in seqjax.core.backend.TIME_BLOCK.items()
                                 if p == jax.default_backend()}
    print(f"\nB={B} D={D} H={H} float32 fwd+bwd, CPU ({os.cpu_count()} cores), "
          f"jax {jax.__version__}, median of {args.reps}, blocks: {blocks}\n")
    print("| T | implementation | fwd+bwd ms | lstm scan / this | mingru scan / this |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['T']} | {r['impl']} | {r['fwd_bwd_ms']:.1f} | "
              f"{r['speedup_vs_lstm_scan']:.2f}x | {r['speedup_vs_mingru_scan']:.2f}x |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"B": B, "D": D, "H": H, "reps": args.reps, "jax": jax.__version__,
                "time_block": blocks,
                "cpu": platform.processor(), "cores": os.cpu_count()}
        Path(args.json).write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
