"""CPU benchmark: seqjax (native and scan backends) against Flax NNX and PyTorch, LSTM and GRU.

Forward and forward+backward of a single layer, T=128, B=32, D=128, H=256, float32 (issue #2's
shape). Contenders run interleaved in one process (each repetition times every contender once),
after a warm-up, with ``block_until_ready``; the table gives medians and ratios to PyTorch.
Each timed call follows ``--gap`` seconds idle: PyTorch's OpenMP workers spin on the cores for a
while after each op, and the contender timed right after them paid for it (seqjax's GRU forward
22.7 ms right after PyTorch's against 14.5 ms after 20 ms idle; 2026-12-02, issue #19).

    python benchmarks/rnn_cpu.py [--reps 9] [--threads 2] [--gap 0.05]
        [--json results/bench_rnn_cpu.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import seqjax
from seqjax.cli import non_negative_float, positive_int, tune_allocator
from seqjax.core.backend import native_unsupported_reason


def seqjax_fns(kind, D, H, unroll, backend="scan"):
    cell = seqjax.make_cell(kind, D, H)
    params = cell.init(jax.random.PRNGKey(0))
    run = functools.partial(seqjax.rnn, cell, unroll=unroll, backend=backend)

    @jax.jit
    def fwd(params, xs):
        return run(params, xs)[0]

    @jax.jit
    def fwd_bwd(params, xs):
        return jax.grad(lambda p, x: jnp.sum(run(p, x)[0]), argnums=(0, 1))(params, xs)

    return params, fwd, fwd_bwd


def flax_fns(kind, D, H, B):
    rngs = nnx.Rngs(0)
    cell = (nnx.OptimizedLSTMCell if kind == "lstm" else nnx.GRUCell)(D, H, rngs=rngs)
    carry = cell.initialize_carry((B, D), rngs)  # outside jit: RNG state must not be traced
    model = nnx.RNN(cell)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def fwd(params, xs):
        return nnx.merge(graphdef, params, rest)(xs, initial_carry=carry)

    @jax.jit
    def fwd_bwd(params, xs):
        loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p, rest)(x, initial_carry=carry))  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(params, xs)

    return params, fwd, fwd_bwd


def torch_fns(kind, D, H, T, B):
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(D, H, batch_first=True)
    x = torch.randn(B, T, D, requires_grad=True)

    def fwd():
        with torch.no_grad():
            module(x)

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out, _ = module(x)
        out.sum().backward()

    return fwd, fwd_bwd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=positive_int, default=9)
    ap.add_argument("--threads", type=positive_int, default=2, help="PyTorch intra-op threads")
    ap.add_argument("--T", type=positive_int, default=128)
    ap.add_argument("--B", type=positive_int, default=32)
    ap.add_argument("--D", type=positive_int, default=128)
    ap.add_argument("--H", type=positive_int, default=256)
    ap.add_argument("--kinds", default="lstm,gru", help="comma-separated, from lstm,gru")
    ap.add_argument("--gap", type=non_negative_float, default=0.05,
                    help="idle seconds before each timed call (0: back to back)")
    ap.add_argument("--json", default="results/bench_rnn_cpu.json")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="glibc malloc as the experiment scripts set it (seqjax.cli."
                         "tune_allocator), for every contender of this process")
    args = ap.parse_args(argv)
    if args.tune_malloc and not tune_allocator():
        raise SystemExit("--tune-malloc: not applied (not glibc, SEQJAX_TUNE_MALLOC=0 or "
                         "MALLOC_* set)")
    torch.set_num_threads(args.threads)
    T, B, D, H = args.T, args.B, args.D, args.H
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D))

    rows = []
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"lstm", "gru"}:
        ap.error(f"--kinds {args.kinds!r}: comma-separated, from lstm,gru (what Flax and "
                 "PyTorch both have)")
    for kind in kinds:
        contenders = {}
        cell = seqjax.make_cell(kind, D, H)
        if native_unsupported_reason(cell, jnp.float32, jax.default_backend()) is None:
            p, f, fb = seqjax_fns(kind, D, H, 1, "native")
            contenders["seqjax native"] = (
                lambda f=f, p=p: f(p, xs).block_until_ready(),
                lambda fb=fb, p=p: jax.block_until_ready(fb(p, xs)),
            )
        for unroll in (1, 2, 4):
            p, f, fb = seqjax_fns(kind, D, H, unroll)
            contenders[f"seqjax scan unroll={unroll}"] = (
                lambda f=f, p=p: f(p, xs).block_until_ready(),
                lambda fb=fb, p=p: jax.block_until_ready(fb(p, xs)),
            )
        s, f, fb = flax_fns(kind, D, H, B)
        contenders["flax nnx.RNN"] = (lambda f=f, s=s: f(s, xs).block_until_ready(),
                                      lambda fb=fb, s=s: jax.block_until_ready(fb(s, xs)))
        contenders["pytorch nn." + kind.upper()] = torch_fns(kind, D, H, T, B)
        times = {name: ([], []) for name in contenders}
        for pair in contenders.values():  # warm-up (compiles)
            for fn in pair + pair:
                fn()
        for _ in range(args.reps):
            for name, pair in contenders.items():
                for fn, acc in zip(pair, times[name]):
                    time.sleep(args.gap)
                    t0 = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t0)
        med = {name: (1e3 * np.median(a), 1e3 * np.median(b)) for name, (a, b) in times.items()}
        ref_name = "pytorch nn." + kind.upper()
        for name, (f_ms, fb_ms) in med.items():
            rows.append({
                "kind": kind, "impl": name, "fwd_ms": f_ms, "fwd_bwd_ms": fb_ms,
                "fwd_vs_torch": f_ms / med[ref_name][0],
                "fwd_bwd_vs_torch": fb_ms / med[ref_name][1],
                "fwd_bwd_vs_flax": fb_ms / med["flax nnx.RNN"][1],
            })

    print(f"\nT={T} B={B} D={D} H={H} float32, CPU ({os.cpu_count()} cores), "
          f"jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads), "
          f"median of {args.reps}\n")
    print("| cell | implementation | fwd ms | fwd+bwd ms | fwd / torch | fwd+bwd / torch | "
          "fwd+bwd / flax |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['kind']} | {r['impl']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
              f"{r['fwd_vs_torch']:.2f} | {r['fwd_bwd_vs_torch']:.2f} | "
              f"{r['fwd_bwd_vs_flax']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"T": T, "B": B, "D": D, "H": H, "reps": args.reps, "jax": jax.__version__,
                "torch": torch.__version__, "threads": args.threads, "gap": args.gap,
                "cpu": platform.processor(), "cores": os.cpu_count()}
        Path(args.json).write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
