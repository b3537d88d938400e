"""Where one recurrent layer's time goes on CPU: a per-operation profile of its fwd+bwd.

Runs ``jax.grad`` of one ``seqjax.rnn`` layer (params and inputs, as ``rnn_cpu.py``) under
``jax.profiler``, then sums the XLA:CPU thunk events of the compiled program by operation and
prints the largest, each with the part of the program it belongs to (``fwd``: the forward,
``bwd``: its transpose) and, for matmuls, its rate in GFLOP/s next to a large plain matmul's rate
measured in the same process (the machine's practical peak for one thread). Loops are not
listed themselves: the operations inside them are (``calls`` counts their runs per call).

    python benchmarks/profile_layer.py [--cell lstm] [--T 128] [--B 32] [--D 128] [--H 256]
        [--reps 5] [--top 20] [--backend auto]

Use it before optimising a cell: it says whether a layer spends its time in the recurrent
matmul, in the hoisted matmuls, or in elementwise fusions (issue #19 in ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax.cli import positive_int


def gemm_rate(n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of a plain ``[n, n] @ [n, n]`` float32 matmul (median of ``reps``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times)) / 1e9


def _op_table(hlo: str) -> dict[str, tuple[str, int]]:
    """``{instruction name: (part, flops)}`` from the compiled HLO text: ``part`` is ``bwd`` for
    instructions of the transposed (backward) program, else ``fwd``; ``flops`` is
    ``2 * prod(output) * K`` for a matmul fusion (``K`` from the fused ``dot``), else 0."""
    computations: dict[str, str] = {}
    for m in re.finditer(r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo, re.S | re.M):
        computations[m.group(1)] = m.group(2)
    ops = {}
    # array-valued instructions, and custom calls (the native loops), whose value is a tuple
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (?:(\w+)\[([\d,]*)\]|\(.*?\) "
                         r"custom-call\().*?$", hlo, re.M):
        name, line = m.group(1), m.group(0)
        part = "bwd" if "transpose(" in line else "fwd"
        flops = 0
        called = re.search(r"calls=%([\w.\-]+)", line)
        body = computations.get(called.group(1), "") if called else ""
        dot = re.search(r"dot\((.*?)\), lhs_contracting_dims=\{([\d,]*)\}", body + line)
        if dot and m.group(3) is not None and ("ynn" in name or name.startswith("dot")):
            out = [int(d) for d in m.group(3).split(",") if d]
            lhs = re.search(r"%([\w.\-]+)", dot.group(1)).group(1)
            shape = re.search(rf"%{re.escape(lhs)} = \w+\[([\d,]*)\]", body + hlo)
            if shape:
                dims = [int(d) for d in shape.group(1).split(",") if d]
                k = int(np.prod([dims[int(i)] for i in dot.group(2).split(",") if i]))
                flops = 2 * int(np.prod(out)) * k
        ops[name] = (part, flops)
    return ops


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="lstm", help="a registered cell kind (lstm, gru, mingru...)")
    ap.add_argument("--T", type=positive_int, default=128)
    ap.add_argument("--B", type=positive_int, default=32)
    ap.add_argument("--D", type=positive_int, default=128)
    ap.add_argument("--H", type=positive_int, default=256)
    ap.add_argument("--reps", type=positive_int, default=5)
    ap.add_argument("--top", type=positive_int, default=20)
    ap.add_argument("--backend", default="auto", help="seqjax.rnn's backend (auto, scan, native)")
    args = ap.parse_args(argv)

    cell = seqjax.make_cell(args.cell, args.D, args.H)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (args.B, args.T, args.D))
    def loss(p, x):
        return jnp.sum(seqjax.rnn(cell, p, x, backend=args.backend)[0])

    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    ops = _op_table(fwd_bwd.lower(params, xs).compile().as_text())
    for _ in range(2):
        jax.block_until_ready(fwd_bwd(params, xs))
    peak = gemm_rate()

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            jax.block_until_ready(fwd_bwd(params, xs))
        wall = (time.perf_counter() - t0) / args.reps
        jax.profiler.stop_trace()
        (trace,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        events = json.load(gzip.open(trace))["traceEvents"]

    total = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            total[e["name"]] += e["dur"] / 1e3 / args.reps
            count[e["name"]] += 1
    print(f"{args.cell} ({args.backend}) T={args.T} B={args.B} D={args.D} H={args.H} float32, "
          f"fwd+bwd (params and inputs): {1e3 * wall:.1f} ms per call; a [1024, 1024] matmul "
          f"runs at {peak:.1f} GFLOP/s here (jax {jax.__version__})\n")
    print("| ms per call | part | calls | operation | GFLOP/s (of the matmul's) |")
    print("|---:|---|---:|---|---:|")
    for name, ms in total.most_common(args.top):
        part, flops = ops[name]
        n = count[name] // args.reps
        gflops = flops * n / (ms / 1e3) / 1e9
        rate = f"{gflops:.1f} ({100 * gflops / peak:.0f}%)" if flops else ""
        print(f"| {ms:.1f} | {part} | {n} | {name} | {rate} |")


if __name__ == "__main__":
    main()
