"""How many threads the native CPU loops should take: one layer's fwd+bwd with 1 thread against
``--threads`` threads, side by side in one process, per shape.

Times ``jax.grad`` of ``sum(y ** 2)`` for one ``SequenceModel`` layer with ``backend="native"``
(a fresh jit per thread count; ``SEQJAX_CPU_THREADS`` set while it is traced), alternating the
two settings, medians of ``--reps`` calls, each after ``--gap`` seconds idle. The ratio
``many / one`` below 1 means the extra threads pay. ``kernels/cpu.py``'s
``MIN_UNITS_PER_THREAD`` (one thread per 48 hidden units) comes from these figures
(``benchmarks/README.md``, session 18).

    python benchmarks/native_threads.py [--kinds lstm,gru] [--threads 2] [--reps 30]
        [--shapes 50x64x2x32,128x32x2x64,200x32x2x88,128x32x128x96,200x32x2x101,128x32x128x128]

Shapes are ``TxBxDxH``. Run it on idle cores: another process on them makes every barrier wait
for the scheduler, which is the case the rule protects against, not what it measures.
"""

from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from seqjax.kernels import cpu

from seqjax.cli import non_negative_float, positive_int
from seqjax.models import SequenceModel

SHAPES = "50x64x2x32,128x32x2x64,200x32x2x88,128x32x128x96,200x32x2x101,128x32x128x128"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape {text!r} must be TxBxDxH, e.g. 128x32x2x64")
    t, b, d, h = (int(p) for p in parts)
    return t, b, d, h


def grad_fn(kind: str, shape: tuple[int, int, int, int], threads: int):
    """The jitted grad of one layer, traced (and compiled) with ``threads`` threads."""
    t, b, d, h = shape
    model = SequenceModel(kind, d, 1, h, backend="native")
    params = model.init(jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, t, d)), jnp.float32)
    f = jax.jit(jax.grad(lambda p, x: jnp.sum(model.apply(p, x) ** 2)))
    with mock.patch.dict(os.environ, {"SEQJAX_CPU_THREADS": str(threads)}):
        f = f.lower(params, x).compile()
    jax.block_until_ready(f(params, x))
    return lambda: jax.block_until_ready(f(params, x))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="lstm,gru")
    ap.add_argument("--threads", type=positive_int, default=2, help="the count set against 1")
    ap.add_argument("--shapes", default=SHAPES, help="comma-separated TxBxDxH")
    ap.add_argument("--reps", type=positive_int, default=30)
    ap.add_argument("--gap", type=non_negative_float, default=0.02,
                    help="idle seconds before each call")
    args = ap.parse_args(argv)
    if args.threads < 2 or args.reps < 1 or args.gap < 0:
        ap.error("--threads must be >= 2, --reps >= 1 and --gap >= 0")
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in ("lstm", "gru") for k in kinds):
        ap.error(f"--kinds {args.kinds!r}: lstm and/or gru (the native loops)")
    try:
        shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if cpu.unavailable_reason() is not None:
        raise SystemExit(f"the native loops are unavailable: {cpu.unavailable_reason()}")
    print(f"native fwd+bwd, 1 thread vs {args.threads}, medians of {args.reps} "
          f"({len(os.sched_getaffinity(0))} cores usable)")
    rows = []
    for kind in kinds:
        for shape in shapes:
            fns = {n: grad_fn(kind, shape, n) for n in (1, args.threads)}
            times = {n: [] for n in fns}
            for _ in range(args.reps):  # alternate: drifts of the machine hit both alike
                for n, fn in fns.items():
                    time.sleep(args.gap)
                    t0 = time.perf_counter()
                    fn()
                    times[n].append(time.perf_counter() - t0)
            one, many = (1e3 * float(np.median(times[n])) for n in (1, args.threads))
            t, b, d, h = shape
            print(f"{kind} T={t} B={b} D={d} H={h}: 1 thread {one:.2f} ms, {args.threads} "
                  f"{many:.2f} ms, ratio {many / one:.2f} (default now: "
                  f"{min(args.threads, cpu.threads(h))} threads)", flush=True)
            rows.append({"kind": kind, "shape": shape, "one_ms": one, "many_ms": many})
    return rows


if __name__ == "__main__":
    main()
