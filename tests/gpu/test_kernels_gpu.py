"""The fused kernels on a real CUDA GPU, NOT in interpret mode: ``rnn(..., backend="pallas")``
(the persistent Triton kernels: grid barriers, atomics and all) against
``rnn(..., backend="scan")``.

Forward outputs, the final carry and the gradients of a random linear functional of both
(``jax.vjp``) w.r.t. every parameter, the inputs and the initial carry, for the LSTM and both GRU
variants, at the shapes of issue #16 (B=16 T=64 H=768 bfloat16: 48 programs; B=64 T=64 H=256
float32: 16 hidden blocks x 4 batch groups) plus one odd small shape (padding on both axes),
with variable lengths (0 and T included), reverse direction and a non-zero initial carry in
some cases. ``test_batch_groups_loop_on_gpu`` runs the kernels with several batch blocks per
program (``max_programs`` below the batch blocks). A barrier that deadlocks (programs not all
resident) would hang: every test here is bounded by a watchdog that dumps the stacks and exits.

Skipped unless JAX runs on a CUDA GPU. ``tests/conftest.py`` defaults ``JAX_PLATFORMS`` to
``cpu``, so on a GPU machine run::

    JAX_PLATFORMS=cuda python -m pytest -q tests/gpu

Tolerances: float32 runs under ``jax.default_matmul_precision("highest")`` (IEEE float32 on both
sides: Triton's default for float32 ``dot`` is TF32); the sides still differ in accumulation
order, so values and gradients must agree to 1e-4 of ``max(1, max |scan|)`` per array. bfloat16
params and inputs: 2e-2 of the same scale (the maths is float32 on both sides; outputs and
gradients are rounded to bfloat16).
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqjax.kernels import (
    GRUBlockSizes,
    LSTMBlockSizes,
    common,
    gru,
    gru_reference,
    lstm,
    lstm_reference,
)

import seqjax

# The kernel tests' shared helpers (tests/kernels/helpers.py; pytest puts that folder on
# sys.path only for the tests inside it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
import helpers  # noqa: E402
from helpers import CELLS, F32, lengths_for  # noqa: E402
from helpers import assert_close_scaled as assert_close  # noqa: E402


def _no_gpu_reason() -> str | None:
    backend = jax.default_backend()
    if backend in ("gpu", "cuda") and any(d.platform == "gpu" for d in jax.devices()):
        return None
    forced = os.environ.get("JAX_PLATFORMS")
    hint = (f" (JAX_PLATFORMS={forced!r}; tests/conftest.py defaults it to cpu: run "
            "`JAX_PLATFORMS=cuda python -m pytest tests/gpu` on a GPU machine)" if forced else "")
    return f"needs a CUDA GPU; jax.default_backend() is {backend}{hint}"


NO_GPU = _no_gpu_reason()
pytestmark = pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")

TOLS = {"float32": 1e-4, "bfloat16": 2e-2}

# (B, T, H, dtype, lengths, reverse, non-zero initial carry)
SHAPES = [
    pytest.param(16, 64, 768, "bfloat16", "variable", True, True, id="B16-T64-H768-bf16-len-rev"),
    pytest.param(64, 64, 256, "float32", None, False, True, id="B64-T64-H256-f32-carry"),
    pytest.param(17, 3, 13, "float32", "variable", True, True, id="B17-T3-H13-f32-len-rev"),
]
WATCHDOG_S = 300  # per test; compilation included


@pytest.fixture(autouse=True)
def watchdog():
    """Exit the process with every thread's stack if a test runs past WATCHDOG_S: a grid
    barrier whose programs are not all resident never returns."""
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("batch,steps,hidden,dtype,lengths_kind,reverse,carry", SHAPES)
def test_pallas_on_gpu_matches_scan(kind, batch, steps, hidden, dtype, lengths_kind, reverse,
                                    carry):
    cell, params, xs, carry0 = helpers.numpy_problem(kind, steps, batch, hidden, dtype=dtype,
                                                     carry=carry, inputs=64)
    choice = seqjax.resolve_backend(cell, "pallas", dtype=jnp.dtype(dtype), batch=batch,
                                    steps=steps)
    assert choice.name == "pallas", choice.reason
    assert common.kernel_platform(choice.platform) == ("gpu", False)  # compiled, not interpreted
    lens = lengths_for(lengths_kind, steps, batch)  # "variable": 0 .. T, both ends included

    both = lambda *a: [helpers.rnn_outs_and_grads(cell, b, lens, reverse, *a)  # noqa: E731
                       for b in ("pallas", "scan")]
    with jax.default_matmul_precision("highest"):
        traced = jax.jit(both).trace(carry0, params, xs)
        kernel = "seqjax_lstm_fwd" if kind == "lstm" else f"seqjax_{kind}_fwd"
        assert kernel in str(traced.jaxpr), "the kernel must run, not a fallback"
        ((ys, carry_t), grads), ((ys_s, carry_s), grads_s) = traced.lower().compile()(
            carry0, params, xs)
    tol = TOLS[dtype]

    assert ys.dtype == xs.dtype and ys.shape == (batch, steps, hidden)
    assert_close(ys, ys_s, tol, "outputs")
    assert_close(carry_t, carry_s, tol, "final carry")
    helpers.assert_rnn_grads_close(grads, grads_s, params, carry0, tol, close=assert_close)
    if lens is not None:
        helpers.assert_zero_past_lengths(ys, lens, batch_major=True)


@pytest.mark.parametrize("kind", CELLS)
def test_batch_groups_loop_on_gpu(kind):
    """B=64, H=256 in hidden blocks of 64 (4 programs per batch row) with ``max_programs=8``:
    2 batch groups of 2 batch blocks each, so every program loops over two batch blocks per
    phase and four programs meet at each barrier. The op against its jnp reference, values and
    gradients (w.r.t. the recurrent params, ``gx`` and the initial carry), float32."""
    steps, batch, hidden = 32, 64, 256
    rng = np.random.default_rng(3)
    gates = 4 if kind == "lstm" else 3
    w = jnp.asarray(rng.standard_normal((hidden, gates * hidden)) * hidden ** -0.5, F32)
    b = jnp.asarray(0.5 * rng.standard_normal((gates * hidden,)), F32)
    gx = jnp.asarray(rng.standard_normal((steps, batch, gates * hidden)), F32)
    h0 = jnp.asarray(0.5 * rng.standard_normal((batch, hidden)), F32)
    lens = lengths_for("variable", steps, batch)
    if kind == "lstm":
        bs = LSTMBlockSizes("gpu", 16, 64, num_warps=8, max_programs=8)
        args = (w, gx, (h0, 0.5 * h0))
        kernel = lambda *a: lstm(*a, lens, bs)  # noqa: E731
        reference = lambda *a: lstm_reference(*a, lens)  # noqa: E731
    else:
        reset = kind.split("_")[1]
        bs = GRUBlockSizes("gpu", 16, 64, reset=reset, num_warps=8, max_programs=8)
        args = (w, b, gx, h0)
        kernel = lambda *a: gru(*a, lens, bs)  # noqa: E731
        reference = lambda *a: gru_reference(*a, lens, reset)  # noqa: E731
    grid = bs.grid(batch, hidden)
    assert (grid.hidden_blocks, grid.batch_groups, grid.blocks_per_program) == (4, 2, 2)

    def outs_and_vjp(fn, *a):
        outs, pullback = jax.vjp(fn, *a)
        cts = jax.tree.map(lambda x: jnp.cos(3.0 * x + 1.0), outs)
        return outs, pullback(cts)

    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda *a: outs_and_vjp(kernel, *a))(*args)
        want = jax.jit(lambda *a: outs_and_vjp(reference, *a))(*args)
    assert_close(got, want, TOLS["float32"], f"{kind}: kernel vs reference")
