"""GPU benchmark: the fused Pallas LSTM and GRU kernels against the scan backend and cuDNN.

For each cell and shape, a single-layer forward and forward+backward (grads w.r.t. params and
inputs) with ``seqjax.rnn(..., backend="pallas")``, ``seqjax.rnn(..., backend="scan")`` and, for
the LSTM only, ``jax.experimental.rnn.lstm`` (cuDNN; float32 only: it rejects bfloat16).
``jax.experimental.rnn`` has no GRU, so the GRU rows (``gru``: reset after, the cuDNN/PyTorch
variant; ``gru_before``: Cho et al.) compare with the scan backend only. Before timing, the
pallas outputs and gradients are checked against the scan backend (the first evidence that a
kernel is right on a real GPU, where its block-wide barriers matter). Contenders run interleaved
in one process after a warm-up, timed with ``block_until_ready``; the table gives medians and
ratios to cuDNN (LSTM) and to the scan backend.

    python benchmarks/kernels_gpu.py [--reps 20] [--dtype float32] [--cells lstm,gru,gru_before]
        [--shapes "128,32,128,256;512,64,256,512"] [--json results/bench_kernels_gpu.json]

Shapes are ``T,B,D,H``. Needs a GPU: on any other platform it exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import seqjax

DEFAULT_SHAPES = "128,32,128,256;128,256,128,128;512,64,256,512;1024,16,64,64"
CELLS = ("lstm", "gru", "gru_before")


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for item in text.split(";"):
        parts = tuple(int(v) for v in item.split(","))
        if len(parts) != 4 or min(parts) < 1:
            raise SystemExit(f"--shapes entry {item!r} must be four positive ints T,B,D,H")
        shapes.append(parts)
    return shapes


def seqjax_fns(backend: str, cell, lengths):
    def fwd(params, xs):
        return seqjax.rnn(cell, params, xs, seq_lengths=lengths, backend=backend)

    def loss(params, xs):
        ys, carry = fwd(params, xs)  # carry: (h, c) for an LSTM, h for a GRU
        carry_sum = sum(jnp.sum(x) for x in jax.tree.leaves(carry))
        return jnp.sum(ys.astype(jnp.float32) ** 2) + carry_sum

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1)))


def cudnn_fns(D: int, H: int, B: int, lengths):
    from jax.experimental import rnn as jrnn

    weights = jrnn.init_lstm_weight(jax.random.PRNGKey(0), D, H, 1, False)
    h0 = jnp.zeros((1, B, H), jnp.float32)

    def fwd(w, xs):
        return jrnn.lstm(xs, h0, h0, w, lengths, input_size=D, hidden_size=H, num_layers=1,
                         dropout=0.0, bidirectional=False)[:3]

    def loss(w, xs):
        ys, h, c = fwd(w, xs)
        return jnp.sum(ys**2) + jnp.sum(h) + jnp.sum(c)

    return weights, jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1)))


def max_diff(a, b) -> float:
    diffs = jax.tree.map(
        lambda x, y: float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))), a, b
    )
    return max(jax.tree.leaves(diffs))


def time_all(contenders: dict, reps: int) -> dict:
    """Median milliseconds of each (fwd, fwd+bwd) pair, interleaved after a warm-up."""
    for pair in contenders.values():
        for fn in pair + pair:
            jax.block_until_ready(fn())
    times = {name: ([], []) for name in contenders}
    for _ in range(reps):
        for name, pair in contenders.items():
            for fn, acc in zip(pair, times[name]):
                t0 = time.perf_counter()
                jax.block_until_ready(fn())
                acc.append(time.perf_counter() - t0)
    return {name: (1e3 * float(np.median(a)), 1e3 * float(np.median(b)))
            for name, (a, b) in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="T,B,D,H;T,B,D,H;...")
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {CELLS}")
    ap.add_argument("--json", default="results/bench_kernels_gpu.json")
    args = ap.parse_args(argv)

    if jax.default_backend() != "gpu":
        print(f"benchmarks/kernels_gpu.py needs a GPU: jax.default_backend() is "
              f"{jax.default_backend()!r} (devices: {jax.devices()}). Run it on a CUDA machine "
              "with jax[cuda]; on CPU use benchmarks/rnn_cpu.py.", file=sys.stderr)
        return 2

    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    if not cells or any(c not in CELLS for c in cells):
        raise SystemExit(f"--cells {args.cells!r} must be a comma-separated subset of {CELLS}")
    dtype = jnp.dtype(args.dtype)
    rows = []
    for kind, (T, B, D, H) in ((k, s) for k in cells for s in parse_shapes(args.shapes)):
        cell = seqjax.make_cell(kind, D, H)
        params = jax.tree.map(lambda a: a.astype(dtype), cell.init(jax.random.PRNGKey(0)))
        xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), dtype)
        lengths = jnp.full((B,), T, jnp.int32)
        choice = seqjax.resolve_backend(cell, "pallas", dtype=dtype, batch=B, steps=T)
        if choice.name != "pallas":
            print(f"skipping {kind} T={T} B={B} D={D} H={H}: {choice.reason}", file=sys.stderr)
            continue

        fns = {b: seqjax_fns(b, cell, lengths) for b in ("pallas", "scan")}
        # Correctness on this device before any timing.
        out_err = max_diff(fns["pallas"][0](params, xs), fns["scan"][0](params, xs))
        grad_err = max_diff(fns["pallas"][1](params, xs), fns["scan"][1](params, xs))

        contenders = {
            f"seqjax {b}": (lambda f=f, p=params, x=xs: f(p, x), lambda g=g, p=params, x=xs: g(p, x))
            for b, (f, g) in fns.items()
        }
        if dtype == jnp.float32 and kind == "lstm":  # jax.experimental.rnn has no GRU
            w, f, g = cudnn_fns(D, H, B, lengths)
            contenders["cuDNN (jax.experimental.rnn)"] = (
                lambda f=f, w=w, x=xs: f(w, x), lambda g=g, w=w, x=xs: g(w, x))
        med = time_all(contenders, args.reps)
        ref = med.get("cuDNN (jax.experimental.rnn)")
        scan = med["seqjax scan"]
        for name, (f_ms, fb_ms) in med.items():
            rows.append({
                "cell": kind, "T": T, "B": B, "D": D, "H": H, "dtype": args.dtype, "impl": name,
                "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms,
                "fwd_vs_cudnn": f_ms / ref[0] if ref else None,
                "fwd_bwd_vs_cudnn": fb_ms / ref[1] if ref else None,
                "fwd_vs_scan": f_ms / scan[0], "fwd_bwd_vs_scan": fb_ms / scan[1],
                "max_abs_err_vs_scan": {"outputs": out_err, "grads": grad_err}
                if name == "seqjax pallas" else None,
            })

    device = jax.devices()[0]
    print(f"\n{device.device_kind}, jax {jax.__version__}, {args.dtype}, median of {args.reps}\n")
    print("| cell | T | B | D | H | implementation | fwd ms | fwd+bwd ms | fwd / cuDNN | "
          "fwd+bwd / cuDNN | fwd / scan | fwd+bwd / scan | max err vs scan (out, grad) |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in rows:
        err = r["max_abs_err_vs_scan"]
        err_s = "" if err is None else f"{err['outputs']:.1e}, {err['grads']:.1e}"
        print(f"| {r['cell']} | {r['T']} | {r['B']} | {r['D']} | {r['H']} | {r['impl']} | "
              f"{r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | {fmt(r['fwd_vs_cudnn'])} | "
              f"{fmt(r['fwd_bwd_vs_cudnn'])} | "
              f"{fmt(r['fwd_vs_scan'])} | {fmt(r['fwd_bwd_vs_scan'])} | {err_s} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": device.device_kind, "jax": jax.__version__, "dtype": args.dtype,
                "reps": args.reps, "cells": cells,
                "cudnn": "jax.experimental.rnn.lstm (LSTM only: it has no GRU)"}
        Path(args.json).write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
