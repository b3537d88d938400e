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
from seqjax import GRU, LSTM, rnn


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

F32 = jnp.float32
TOLS = {"float32": 1e-4, "bfloat16": 2e-2}
CELLS = ("lstm", "gru_after", "gru_before")

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


def make_problem(kind, batch, steps, hidden, dtype, carry, seed=0, inputs=64):
    cell = LSTM(inputs, hidden) if kind == "lstm" else GRU(inputs, hidden,
                                                            reset=kind.split("_")[1])
    rng = np.random.default_rng(seed)
    np_dtype = jnp.dtype(dtype).type

    def draw(shape, scale):
        return jnp.asarray((scale * rng.standard_normal(shape)).astype(np.float32).astype(np_dtype))

    params = {name: draw(shape, 0.5 if name.startswith("b") else hidden ** -0.5)
              for name, shape in cell.param_shapes().items()}
    xs = draw((batch, steps, inputs), 1.0)
    carry0 = None
    if carry:
        state = lambda: jnp.asarray(0.5 * rng.standard_normal((batch, hidden)), F32)  # noqa: E731
        carry0 = (state(), state()) if kind == "lstm" else state()
    return cell, params, xs, carry0


def outs_and_grads(cell, backend, lengths, reverse, carry0, params, xs, seed=7):
    def fn(p, x, *c):
        return rnn(cell, p, x, seq_lengths=lengths, initial_carry=c[0] if c else None,
                   reverse=reverse, backend=backend)

    args = (params, xs) + (() if carry0 is None else (carry0,))
    outs, pullback = jax.vjp(fn, *args)
    leaves, treedef = jax.tree.flatten(outs)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    cts = treedef.unflatten([jax.random.normal(k, x.shape, F32).astype(x.dtype)
                             for k, x in zip(keys, leaves)])
    return outs, pullback(cts)


def assert_close(a, b, tol, what):
    def one(x, y):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        assert x.shape == y.shape, (what, x.shape, y.shape)
        err, scale = float(np.max(np.abs(x - y))), max(1.0, float(np.max(np.abs(y))))
        assert err <= tol * scale, f"{what}: max |pallas - scan| = {err:.3g} > {tol} * {scale:.3g}"

    jax.tree.map(one, a, b)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("batch,steps,hidden,dtype,lengths_kind,reverse,carry", SHAPES)
def test_pallas_on_gpu_matches_scan(kind, batch, steps, hidden, dtype, lengths_kind, reverse,
                                    carry):
    cell, params, xs, carry0 = make_problem(kind, batch, steps, hidden, dtype, carry)
    choice = seqjax.resolve_backend(cell, "pallas", dtype=jnp.dtype(dtype), batch=batch,
                                    steps=steps)
    assert choice.name == "pallas", choice.reason
    assert common.kernel_platform(choice.platform) == ("gpu", False)  # compiled, not interpreted
    lens = None
    if lengths_kind == "variable":  # 0 .. T, both ends included
        lens = jnp.asarray(np.linspace(0, steps, batch).round().astype(np.int32))

    both = lambda *a: [outs_and_grads(cell, b, lens, reverse, *a) for b in ("pallas", "scan")]
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
    assert set(grads[0]) == set(params)
    for name in params:
        assert_close(grads[0][name], grads_s[0][name], tol, f"d/d {name}")
    assert_close(grads[1], grads_s[1], tol, "d/d xs")
    if carry0 is not None:
        assert_close(grads[2], grads_s[2], tol, "d/d initial carry")
    if lens is not None:
        mask = np.arange(steps)[None, :] < np.asarray(lens)[:, None]
        assert np.all(np.asarray(ys, np.float32)[~mask] == 0.0)


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
    lens = jnp.asarray(np.linspace(0, steps, batch).round().astype(np.int32))
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
