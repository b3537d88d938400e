"""A/B of the native CPU loops: the working tree's ``kernels/cpu_rnn.cc`` against another version,
both in ONE process, interleaved.

The 2-core VMs this project is measured on vary by up to 30% in speed between processes (and
within one, from minute to minute), so two separate benchmark runs cannot resolve a 5-10%
change. This script compiles the old source too (``git show REV:kernels/cpu_rnn.cc``, or a
file), registers its FFI targets under other names, loads that revision's Python glue
(``kernels/cpu.py``: its chunk loops call the old targets, so a changed FFI signature compares
too), compiles the same jitted function against each, and times them alternately; it prints
each one's min / q25 / median and the median of the per-repetition ratio new / old with its
q25-q75 spread (< 1: the working tree is faster). Run two A/Bs of one source against itself
(``--old-source`` a copy with a comment added) to see the noise: ratios within ~3% of 1.

    python benchmarks/ab_native.py                       # against HEAD, LSTM grad, rnn_cpu shape
    python benchmarks/ab_native.py --old HEAD~3 --kind gru --mode fwd --T 600 --D 2 --H 130
    python benchmarks/ab_native.py --old-source /tmp/variant.cc --reps 31
    python benchmarks/ab_native.py --old-source /tmp/v.cc --old-glue /tmp/v.py   # both changed

``--mode grad``: ``jax.grad`` of one ``seqjax.rnn`` layer (params and inputs, as ``rnn_cpu.py``);
``fwd``: the layer's forward alone. Pause other work on the machine while it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from seqjax.kernels import cpu

import seqjax
from seqjax.cli import positive_int

REPO = Path(__file__).resolve().parents[1]


def old_library(source: Path) -> None:
    """Compile ``source`` as :mod:`seqjax.kernels.cpu` would and register its targets as
    ``<target>_old`` (the working tree's library is built and registered first)."""
    why = cpu.unavailable_reason()
    if why is not None:
        sys.exit(f"ab_native.py: the native loop is unavailable: {why}")
    path, why = cpu._build(cpu._compiler(), source)
    if path is None:
        sys.exit(f"ab_native.py: cannot build the old source: {why}")
    if path == cpu.library_path():
        print("ab_native.py: the old source is the working tree's: both sides run the same code")
    cpu.register_library(path, suffix="_old")


def old_glue(path: Path):
    """Load another version of ``kernels/cpu.py`` as a module whose FFI calls go to the
    ``_old`` targets (through the working tree's ``_call``); returns it."""
    spec = importlib.util.spec_from_file_location("seqjax_kernels_cpu_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._call = lambda target, *a, **k: cpu._call(target + "_old", *a, **k)
    return mod


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", default="HEAD", help="git revision of the old cpu_rnn.cc")
    ap.add_argument("--old-source", type=Path, help="a file instead of --old")
    ap.add_argument("--old-glue", type=Path,
                    help="the old side's kernels/cpu.py (default: --old's; the working tree's "
                         "with --old-source)")
    ap.add_argument("--kind", default="lstm", choices=("lstm", "gru"))
    ap.add_argument("--mode", default="grad", choices=("grad", "fwd"))
    ap.add_argument("--T", type=positive_int, default=128)
    ap.add_argument("--B", type=positive_int, default=32)
    ap.add_argument("--D", type=positive_int, default=128)
    ap.add_argument("--H", type=positive_int, default=256)
    ap.add_argument("--reps", type=positive_int, default=21)
    args = ap.parse_args(argv)
    if cpu.unavailable_reason():
        sys.exit(f"ab_native.py: the native library is unavailable: {cpu.unavailable_reason()}")
    with tempfile.TemporaryDirectory() as tmp:
        source = args.old_source
        if source is None:
            text = subprocess.run(["git", "show", f"{args.old}:kernels/cpu_rnn.cc"], cwd=REPO,
                                  capture_output=True, text=True)
            if text.returncode != 0:
                sys.exit(f"ab_native.py: --old {args.old}: {text.stderr.strip()}")
            source = Path(tmp) / "cpu_rnn_old.cc"
            source.write_text(text.stdout)
        glue = args.old_glue or Path(cpu.__file__)
        if args.old_glue is None and args.old_source is None:
            text = subprocess.run(["git", "show", f"{args.old}:kernels/cpu.py"], cwd=REPO,
                                  capture_output=True, text=True, check=True)
            glue = Path(tmp) / "cpu_old.py"
            glue.write_text(text.stdout)
        old_library(source)
        old = old_glue(glue)

    cell = seqjax.make_cell(args.kind, args.D, args.H)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (args.B, args.T, args.D))

    def layer(p, x):
        return seqjax.rnn(cell, p, x, backend="native")[0]

    if args.mode == "grad":
        def fn(p, x):
            return jax.grad(lambda p, x: jnp.sum(layer(p, x) ** 2), argnums=(0, 1))(p, x)
    else:
        fn = layer

    loops = cpu.LOOPS
    fns = {}
    for name in ("old", "new"):
        if name == "old":
            cpu.LOOPS = old.LOOPS
        jax.clear_caches()  # trace again: the cached jaxpr names the other library's targets
        try:
            fns[name] = jax.jit(fn).lower(params, xs).compile()
        finally:
            cpu.LOOPS = loops
        jax.block_until_ready(fns[name](params, xs))
    assert "_old" in fns["old"].as_text() and "_old" not in fns["new"].as_text()
    outs = [jax.tree.leaves(fns[name](params, xs)) for name in ("old", "new")]
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*outs))

    times = {name: [] for name in fns}
    for _ in range(args.reps):
        for name, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(params, xs))
            times[name].append(time.perf_counter() - t)
    print(f"{args.kind} {args.mode} T={args.T} B={args.B} D={args.D} H={args.H}, {args.reps} reps "
          f"interleaved, old = {args.old_source or args.old}; max |new - old| = {diff:.2e}")
    for name, v in times.items():
        ms = 1e3 * np.asarray(v)
        print(f"  {name}: min {ms.min():.1f} q25 {np.percentile(ms, 25):.1f} "
              f"median {np.median(ms):.1f} ms")
    r = np.asarray(times["new"]) / np.asarray(times["old"])
    print(f"  new / old per repetition: median {np.median(r):.3f} "
          f"(q25 {np.percentile(r, 25):.3f}, q75 {np.percentile(r, 75):.3f})")


if __name__ == "__main__":
    main()
