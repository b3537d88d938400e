"""GPU benchmark: seqjax's fused Pallas LSTM/GRU kernels against the scan backend and cuDNN.

For each cell, dtype and shape, a single layer's forward and forward+backward (gradients w.r.t.
the params and the inputs, through ``sum(ys**2) + sum(final carry)``):

* ``pallas``: ``seqjax.rnn(..., backend="pallas")`` (the fused kernels);
* ``scan``: ``seqjax.rnn(..., backend="scan")``;
* ``jax-cudnn``: ``jax.experimental.rnn.lstm`` (cuDNN; LSTM and float32 only: it has no GRU
  and rejects bfloat16);
* ``torch-cudnn``: PyTorch ``nn.LSTM`` / ``nn.GRU`` on cuDNN, when ``torch`` with CUDA imports
  (cuDNN's GRU is the reset-after variant: ``gru_before`` has no cuDNN contender).

Before timing, the pallas outputs (and gradients) are checked against the scan backend on the
device. Every contender runs in this one process, interleaved (each repetition times each
contender once) after a warm-up, timed with ``block_until_ready`` / ``torch.cuda.synchronize``;
the table gives medians, per-step latency (median / T), achieved TFLOP/s and ratios.

FLOPs count the matmuls only: forward ``2 T B G (D + H)`` for ``G = 4H`` (LSTM) or ``3H`` (GRU),
forward+backward three times that. float32 matmuls run at each framework's default precision
(TF32 on Ampere/Hopper for XLA, Pallas/Triton and cuDNN alike).

    python benchmarks/rnn_gpu.py [--cells lstm,gru,gru_before] [--dtypes float32,bfloat16]
        [--hidden 128,256,512,768,1024] [--batch 16,64,256] [--steps 128,1024]
        [--modes fwd,fwd_bwd] [--impls pallas,scan,jax-cudnn,torch-cudnn] [--input-size D]
        [--reps 20] [--warmup 3] [--json results/bench_rnn_gpu.json] [--markdown PATH]

``--input-size 0`` (the default) uses ``D = H``. On CPU the script still runs, on a tiny default
grid (B=2, T=8, H=16) comparing the scan backend with the kernels in Pallas interpret mode: those
numbers only prove that the script runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# JAX must not take 75% of the GPU up front: PyTorch shares the device in this process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import seqjax  # noqa: E402
from seqjax.cli import non_negative_int, positive_int  # noqa: E402

CELLS = ("lstm", "gru", "gru_before")
DTYPES = ("float32", "bfloat16")
MODES = ("fwd", "fwd_bwd")
IMPLS = ("pallas", "scan", "jax-cudnn", "torch-cudnn")
GPU_GRID = {"hidden": "128,256,512,768,1024", "batch": "16,64,256", "steps": "128,1024"}
CPU_GRID = {"hidden": "16", "batch": "2", "steps": "8"}
CPU_BANNER = (
    "CPU RUN: jax.default_backend() is 'cpu', so the pallas rows run the kernels in Pallas "
    "INTERPRET mode and there is no cuDNN. These numbers only prove the script runs; they say "
    "nothing about kernel speed. Run on a CUDA GPU for the real benchmark."
)


# ------------------------------------------------------------------------------------------
# Contenders: each returns {mode: zero-argument callable that blocks until done}
# ------------------------------------------------------------------------------------------


def _loss_jax(ys, carry):
    return jnp.sum(ys.astype(jnp.float32) ** 2) + sum(
        jnp.sum(c.astype(jnp.float32)) for c in jax.tree.leaves(carry))


def seqjax_contender(backend, cell, params, xs):
    """``(runners, fwd_fn, grad_fn)`` for ``seqjax.rnn`` on ``backend`` (xs ``[B, T, D]``)."""

    def fwd(p, x):
        return seqjax.rnn(cell, p, x, backend=backend)

    fwd_j = jax.jit(fwd)
    grad_j = jax.jit(jax.grad(lambda p, x: _loss_jax(*fwd(p, x)), argnums=(0, 1)))
    runners = {"fwd": lambda: jax.block_until_ready(fwd_j(params, xs)),
               "fwd_bwd": lambda: jax.block_until_ready(grad_j(params, xs))}
    return runners, fwd_j, grad_j


def jax_cudnn_contender(D, H, B, T, xs):
    """``jax.experimental.rnn.lstm`` (cuDNN), float32 LSTM only."""
    from jax.experimental import rnn as jrnn

    weights = jrnn.init_lstm_weight(jax.random.PRNGKey(0), D, H, 1, False)
    h0 = jnp.zeros((1, B, H), jnp.float32)
    lengths = jnp.full((B,), T, jnp.int32)

    def fwd(w, x):
        ys, h, c = jrnn.lstm(x, h0, h0, w, lengths, input_size=D, hidden_size=H, num_layers=1,
                             dropout=0.0, bidirectional=False)[:3]
        return ys, (h, c)

    fwd_j = jax.jit(fwd)
    grad_j = jax.jit(jax.grad(lambda w, x: _loss_jax(*fwd(w, x)), argnums=(0, 1)))
    return {"fwd": lambda: jax.block_until_ready(fwd_j(weights, xs)),
            "fwd_bwd": lambda: jax.block_until_ready(grad_j(weights, xs))}


def torch_cuda():
    """``torch`` if it imports with a CUDA device, else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def torch_contender(torch, kind, D, H, B, T, dtype):
    """PyTorch ``nn.LSTM`` / ``nn.GRU`` on cuDNN, time-major ``[T, B, D]``."""
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(D, H)
    module = module.to(device="cuda", dtype=tdtype)
    module.flatten_parameters()  # one contiguous weight buffer: cuDNN's fast path, no warning
    torch.backends.cudnn.benchmark = True
    x = torch.randn(T, B, D, device="cuda", dtype=tdtype)
    xg = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            module(x)
        torch.cuda.synchronize()

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        xg.grad = None
        ys, carry = module(xg)
        carry = carry if isinstance(carry, tuple) else (carry,)
        loss = ys.float().pow(2).sum() + sum(c.float().sum() for c in carry)
        loss.backward()
        torch.cuda.synchronize()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


# ------------------------------------------------------------------------------------------
# Timing and bookkeeping
# ------------------------------------------------------------------------------------------


def max_abs_diff(a, b) -> float:
    diffs = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(
        jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)))), a, b)
    return max(jax.tree.leaves(diffs))


def max_rel_diff(a, b) -> float:
    """Largest ``max|x - y| / max|y|`` over the leaves (``y`` the reference; 0/0 counts 0)."""
    def rel(x, y):
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        scale = float(jnp.max(jnp.abs(y)))
        err = float(jnp.max(jnp.abs(x - y)))
        return err / scale if scale > 0 else err
    return max(jax.tree.leaves(jax.tree.map(rel, a, b)))


def time_interleaved(runners: dict, modes, reps: int, warmup: int) -> dict:
    """``{(impl, mode): median seconds}``: ``warmup`` untimed calls each (after the compiling
    call already made), then ``reps`` rounds timing every contender once per round."""
    for _ in range(warmup):
        for fns in runners.values():
            for mode in modes:
                fns[mode]()
    samples = {(impl, mode): [] for impl in runners for mode in modes}
    for _ in range(reps):
        for impl, fns in runners.items():
            for mode in modes:
                t0 = time.perf_counter()
                fns[mode]()
                samples[(impl, mode)].append(time.perf_counter() - t0)
    return {key: float(np.median(v)) for key, v in samples.items()}


def flops(kind: str, B: int, T: int, D: int, H: int, mode: str) -> float:
    gates = (4 if kind == "lstm" else 3) * H
    fwd = 2.0 * T * B * gates * (D + H)
    return fwd if mode == "fwd" else 3.0 * fwd


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r} must be comma-separated positive ints") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} {text!r} must be comma-separated positive ints")
    return values


def parse_choice(text: str, flag: str, valid) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in valid for v in values):
        raise SystemExit(f"{flag} {text!r} must be a comma-separated subset of {valid}")
    return values


# ------------------------------------------------------------------------------------------
# One configuration
# ------------------------------------------------------------------------------------------


def bench_config(kind, dtype, B, T, H, D, modes, impls, args, torch, on_gpu) -> list[dict]:
    cell = seqjax.make_cell(kind, D, H)
    jdt = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: a.astype(jdt), cell.init(jax.random.PRNGKey(0)))
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), jdt)
    config = {"cell": kind, "dtype": dtype, "B": B, "T": T, "D": D, "H": H}

    runners, skipped, check = {}, {}, {}
    fns = {}
    for backend in ("pallas", "scan"):
        if backend in impls or (backend == "scan" and "pallas" in impls):
            choice = seqjax.resolve_backend(cell, backend, dtype=jdt, batch=B, steps=T)
            if choice.name != backend:
                skipped[backend] = f"resolved to {choice.name}: {choice.reason}"
                continue
            run, fwd_j, grad_j = seqjax_contender(backend, cell, params, xs)
            fns[backend] = (fwd_j, grad_j)
            if backend in impls:
                runners[backend] = run
    if "pallas" in fns and "scan" in fns:  # correctness on this device before any timing
        out = fns["pallas"][0](params, xs), fns["scan"][0](params, xs)
        check["max_abs_err_out"] = max_abs_diff(*out)
        check["max_rel_err_out"] = max_rel_diff(*out)
        if "fwd_bwd" in modes:
            grad = fns["pallas"][1](params, xs), fns["scan"][1](params, xs)
            check["max_abs_err_grad"] = max_abs_diff(*grad)
            check["max_rel_err_grad"] = max_rel_diff(*grad)
    if "jax-cudnn" in impls:
        if not on_gpu:
            skipped["jax-cudnn"] = "needs a GPU"
        elif kind != "lstm" or dtype != "float32":
            skipped["jax-cudnn"] = "jax.experimental.rnn: LSTM in float32 only"
        else:
            runners["jax-cudnn"] = jax_cudnn_contender(D, H, B, T, xs)
    if "torch-cudnn" in impls:
        if torch is None:
            skipped["torch-cudnn"] = "torch with CUDA not importable"
        elif kind == "gru_before":
            skipped["torch-cudnn"] = "cuDNN's GRU is the reset-after variant"
        else:
            runners["torch-cudnn"] = torch_contender(torch, kind, D, H, B, T, dtype)

    for impl, fns_ in list(runners.items()):  # compile / first call; a failure drops the impl
        try:
            for mode in modes:
                fns_[mode]()
        except Exception as e:  # noqa: BLE001 -- a contender failing must not end the run
            skipped[impl] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            del runners[impl]
    for impl, why in skipped.items():
        print(f"  {kind} {dtype} B={B} T={T} H={H}: {impl} skipped ({why})", file=sys.stderr)

    med = time_interleaved(runners, modes, args.reps, args.warmup)
    rows = []
    for impl in runners:
        row = dict(config, impl=impl)
        for mode in MODES:
            t = med.get((impl, mode))
            row[f"{mode}_ms"] = None if t is None else 1e3 * t
            row[f"{mode}_us_per_step"] = None if t is None else 1e6 * t / T
            row[f"{mode}_tflops"] = None if t is None else flops(kind, B, T, D, H, mode) / t / 1e12
            for ref in ("scan", "jax-cudnn", "torch-cudnn"):
                t_ref = med.get((ref, mode))
                row[f"{mode}_ratio_to_{ref}"] = None if t is None or t_ref is None else t / t_ref
        row["check_vs_scan"] = check if impl == "pallas" and check else None
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def markdown(rows: list[dict], modes, header: str) -> str:
    fmt = lambda x, p=2: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = [header, "",
             "Times are medians in ms; us/step = median / T; ratios are time / time of the "
             "reference (< 1: faster than it).", ""]
    cols = ["cell", "dtype", "B", "T", "H", "impl"]
    for m in modes:
        cols += [f"{m} ms", f"{m} us/step", f"{m} TFLOP/s", f"{m} / scan", f"{m} / torch-cuDNN",
                 f"{m} / jax-cuDNN"]
    cols.append("max abs err vs scan (out, grad)")
    cols.append("max rel err vs scan (out, grad)")
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join(["---"] * 6 + ["---:"] * (6 * len(modes)) + ["---"] * 2) + "|")
    for r in rows:
        cells = [r["cell"], r["dtype"], str(r["B"]), str(r["T"]), str(r["H"]), r["impl"]]
        for m in modes:
            cells += [fmt(r[f"{m}_ms"], 3), fmt(r[f"{m}_us_per_step"], 1),
                      fmt(r[f"{m}_tflops"], 3), fmt(r[f"{m}_ratio_to_scan"]),
                      fmt(r[f"{m}_ratio_to_torch-cudnn"]), fmt(r[f"{m}_ratio_to_jax-cudnn"])]
        chk = r["check_vs_scan"]
        for kind in ("abs", "rel"):
            cells.append("" if not chk else ", ".join(
                f"{chk[k]:.1e}" for k in (f"max_{kind}_err_out", f"max_{kind}_err_grad")
                if k in chk))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--hidden", default=None, help=f"GPU default {GPU_GRID['hidden']}; CPU 16")
    ap.add_argument("--batch", default=None, help=f"GPU default {GPU_GRID['batch']}; CPU 2")
    ap.add_argument("--steps", default=None, help=f"GPU default {GPU_GRID['steps']}; CPU 8")
    ap.add_argument("--input-size", type=non_negative_int, default=0, help="D; 0: D = H")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--reps", type=positive_int, default=None, help="timed rounds (GPU 20, CPU 3)")
    ap.add_argument("--warmup", type=non_negative_int, default=None,
                    help="untimed rounds (GPU 3, CPU 1)")
    ap.add_argument("--json", default=None, help="default docs/results/gpu/bench_rnn_gpu.json "
                    "on a GPU (committed figures), results/bench_rnn_gpu_cpu.json on CPU (so a "
                    "CPU run never overwrites GPU numbers); '' to skip")
    ap.add_argument("--markdown", default=None, help="default: the --json path with .md on a "
                    "GPU, none on CPU; '' to skip")
    args = ap.parse_args(argv)

    backend = jax.default_backend()
    on_gpu = backend in ("gpu", "cuda", "rocm")
    grid = GPU_GRID if on_gpu else CPU_GRID
    cells = parse_choice(args.cells, "--cells", CELLS)
    dtypes = parse_choice(args.dtypes, "--dtypes", DTYPES)
    modes = parse_choice(args.modes, "--modes", MODES)
    impls = parse_choice(args.impls, "--impls", IMPLS)
    hidden = parse_ints(args.hidden or grid["hidden"], "--hidden")
    batch = parse_ints(args.batch or grid["batch"], "--batch")
    steps = parse_ints(args.steps or grid["steps"], "--steps")
    args.reps = args.reps if args.reps is not None else (20 if on_gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    if args.json is None:
        args.json = ("docs/results/gpu/bench_rnn_gpu.json" if on_gpu
                     else "results/bench_rnn_gpu_cpu.json")
    if args.markdown is None:
        args.markdown = str(Path(args.json).with_suffix(".md")) if on_gpu and args.json else ""
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit("--reps must be >= 1 and --warmup >= 0")
    torch = torch_cuda() if on_gpu and "torch-cudnn" in impls else None

    device = jax.devices()[0]
    header = (f"## seqjax RNN benchmark: {device.device_kind} ({backend}), jax {jax.__version__}"
              + (f", torch {torch.__version__}" if torch is not None else "")
              + f", median of {args.reps} after {args.warmup} warm-up rounds")
    if not on_gpu:
        header += "\n\n**" + CPU_BANNER + "**"
        print("\n" + "=" * 100 + "\n" + CPU_BANNER + "\n" + "=" * 100 + "\n")

    rows = []
    for kind in cells:
        for dtype in dtypes:
            for B in batch:
                for T in steps:
                    for H in hidden:
                        D = args.input_size or H
                        print(f"{kind} {dtype} B={B} T={T} D={D} H={H}", file=sys.stderr)
                        rows += bench_config(kind, dtype, B, T, H, D, modes, impls, args, torch,
                                             on_gpu)

    table = markdown(rows, modes, header)
    print("\n" + table)
    if not on_gpu:
        print(CPU_BANNER)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    if args.json:
        meta = {"device": device.device_kind, "platform": backend, "jax": jax.__version__,
                "torch": None if torch is None else torch.__version__,
                "reps": args.reps, "warmup": args.warmup, "cells": cells, "dtypes": dtypes,
                "modes": modes, "impls": impls, "hidden": hidden, "batch": batch, "steps": steps,
                "input_size": args.input_size or "H",
                "flops": "matmuls only: fwd 2*T*B*G*(D+H), fwd_bwd 3x",
                "note": None if on_gpu else CPU_BANNER}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
