"""Memory-network benchmark: NTM and DNC training steps, remat, and the DNC's allocation.

Two tables, every contender timed interleaved in one process (each repetition times every
contender once) after a warm-up, with ``block_until_ready``; medians, and ratios measured side
by side:

1. forward and forward+backward of ``experiments/memory_tasks.py``'s models on its copy task
   shape (``B=16``, ``T=41``, 9 inputs, 8 outputs): NTM (100-unit LSTM controller, 128 x 20
   memory), DNC (64-unit controller, 128 x 20 memory, 4 read heads), each with and without
   ``remat``, against the 3 x 256 LSTM baseline;
2. the DNC's allocation weighting, forward and gradient, ``method="sort"`` (sort, cumulative
   product, unsort) against ``method="pairwise"`` (no sort), for several memory sizes ``N``.

    python benchmarks/memory.py [--reps 9] [--json results/bench_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.cli import positive_int
from seqjax.core.memory import DNC, NTM
from seqjax.core.memory.dnc import allocation_weighting
from seqjax.models import MemoryModel, SequenceModel


def _model_fns(model, xs):
    params = model.init(jax.random.PRNGKey(0))
    fwd = jax.jit(lambda p: model.apply(p, xs))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(jax.nn.log_sigmoid(model.apply(p, xs)))))
    return (lambda: fwd(params).block_until_ready(),
            lambda: jax.block_until_ready(grad(params)))


def _alloc_fns(usage, method):
    fwd = jax.jit(lambda u: allocation_weighting(u, method=method))
    grad = jax.jit(jax.grad(lambda u: jnp.sum(allocation_weighting(u, method=method) ** 2)))
    return (lambda: fwd(usage).block_until_ready(), lambda: grad(usage).block_until_ready())


def _time(contenders: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Median milliseconds of each contender's (forward, gradient), interleaved."""
    for pair in contenders.values():  # warm-up: compile and touch the memory twice
        for fn in pair + pair:
            fn()
    times = {name: ([], []) for name in contenders}
    for _ in range(reps):
        for name, pair in contenders.items():
            for fn, acc in zip(pair, times[name]):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    return {n: (1e3 * np.median(a), 1e3 * np.median(b)) for n, (a, b) in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=positive_int, default=9)
    ap.add_argument("--B", type=positive_int, default=16)
    ap.add_argument("--T", type=positive_int, default=41)
    ap.add_argument("--N", type=positive_int, default=128, help="memory rows of the NTM and DNC")
    ap.add_argument("--alloc-sizes", default="32,128,256,512")
    ap.add_argument("--json", default="results/bench_memory.json")
    args = ap.parse_args(argv)
    B, T, N = args.B, args.T, args.N
    xs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (B, T, 9)).astype(jnp.float32)

    models = {"lstm 3x256": SequenceModel("lstm", 9, 8, 256, num_layers=3, backend="scan")}
    for remat in (False, True):
        tag = " remat" if remat else ""
        models["ntm" + tag] = MemoryModel(
            NTM(9, controller_size=100, memory_size=N, word_size=20), 8, remat=remat)
        models["dnc" + tag] = MemoryModel(
            DNC(9, controller_size=64, memory_size=N, word_size=20, num_reads=4), 8, remat=remat)
    med = _time({name: _model_fns(m, xs) for name, m in models.items()}, args.reps)
    base = med["lstm 3x256"]
    model_rows = [{"model": name, "fwd_ms": f, "fwd_bwd_ms": g, "fwd_vs_lstm": f / base[0],
                   "fwd_bwd_vs_lstm": g / base[1]} for name, (f, g) in med.items()]

    alloc_rows = []
    for n in (int(s) for s in args.alloc_sizes.split(",") if s.strip()):
        usage = jax.random.uniform(jax.random.PRNGKey(2), (B, n))
        m = _time({k: _alloc_fns(usage, k) for k in ("sort", "pairwise")}, args.reps)
        alloc_rows.append({"N": n, "sort_fwd_ms": m["sort"][0], "sort_grad_ms": m["sort"][1],
                           "pairwise_fwd_ms": m["pairwise"][0],
                           "pairwise_grad_ms": m["pairwise"][1],
                           "fwd_speedup": m["sort"][0] / m["pairwise"][0],
                           "grad_speedup": m["sort"][1] / m["pairwise"][1]})

    print(f"\nB={B} T={T} N={N} float32, {jax.default_backend()} ({os.cpu_count()} cores), "
          f"jax {jax.__version__}, median of {args.reps}\n")
    print("| model | fwd ms | fwd+bwd ms | fwd / lstm | fwd+bwd / lstm |")
    print("|---|---:|---:|---:|---:|")
    for r in model_rows:
        print(f"| {r['model']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
              f"{r['fwd_vs_lstm']:.2f} | {r['fwd_bwd_vs_lstm']:.2f} |")
    print(f"\nDNC allocation weighting, B={B}: sort vs pairwise (speed-up = sort / pairwise)\n")
    print("| N | sort fwd ms | pairwise fwd ms | speed-up | sort grad ms | pairwise grad ms "
          "| speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in alloc_rows:
        print(f"| {r['N']} | {r['sort_fwd_ms']:.3f} | {r['pairwise_fwd_ms']:.3f} | "
              f"{r['fwd_speedup']:.1f}x | {r['sort_grad_ms']:.3f} | {r['pairwise_grad_ms']:.3f} | "
              f"{r['grad_speedup']:.1f}x |")
    out = {"config": {"B": B, "T": T, "N": N, "reps": args.reps, "jax": jax.__version__,
                      "backend": jax.default_backend(), "cpu": platform.processor(),
                      "cores": os.cpu_count()},
           "models": model_rows, "allocation": alloc_rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
