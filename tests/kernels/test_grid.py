"""A small grid of edge shapes: ``rnn(..., backend="pallas")`` (the fused kernels in Pallas
interpret mode) against ``rnn(..., backend="scan")``, plus ``check_grads`` on the kernels' custom
VJPs.

Each case compares forward outputs, the final carry and the gradients of a random linear
functional of both (``jax.vjp``) w.r.t. every parameter (``w_x``, ``w_h``, ``b`` for an LSTM;
``w_x``, ``w_h``, ``b_x``, ``b_h`` for a GRU), the inputs ``xs`` and the initial carry, for the
LSTM and both GRU variants: to 1e-5 in float32, to 2e-2 (relative and absolute) in bfloat16.
The grid covers B=1, T=1, hidden sizes that are not multiples of 8 (5, 13), variable lengths
with zeros (and full lengths), reverse direction, a non-zero initial carry and the default zero
one. Each case compiles the pallas and scan sides in one ``jit`` (compiling interpret-mode
kernels is where the time goes; see ``FAST_COMPILE``).
"""

from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CELLS, F32, FAST_COMPILE, assert_close, numpy_problem
from jax.test_util import check_grads
from seqjax.kernels import GRUBlockSizes, LSTMBlockSizes, gru, lstm

TOLS = {"float32": 1e-5, "bfloat16": 2e-2}
problem = numpy_problem


def kernel_inputs(kind, steps, batch, hidden, seed):
    """Random float32 ``(w_h[, b_h], gx [T, B, G], carry0)`` for the kernel ops themselves."""
    cell, params, _, carry0 = problem(kind, steps, batch, hidden, seed=seed)
    rng = np.random.default_rng(seed + 1)
    gx = jnp.asarray(rng.standard_normal((steps, batch, cell.gate_size)), F32)
    return params, gx, carry0


# (T, B, H, lengths, reverse, dtype, non-zero initial carry)
GRID = [
    pytest.param(1, 1, 5, None, False, "float32", True, id="T1-B1-H5"),
    pytest.param(6, 3, 13, [0, 6, 2], True, "float32", True, id="T6-B3-H13-len0-rev"),
    pytest.param(5, 4, 13, [5, 0, 1, 3], False, "bfloat16", False, id="T5-B4-H13-len0-bf16"),
]


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("steps,batch,hidden,lengths,reverse,dtype,carry", GRID)
def test_pallas_matches_scan(kind, steps, batch, hidden, lengths, reverse, dtype, carry):
    cell, params, xs, carry0 = problem(kind, steps, batch, hidden, dtype=dtype, carry=carry,
                                       seed=steps * 100 + hidden)
    lens = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    both = lambda *a: [helpers.rnn_outs_and_grads(cell, b, lens, reverse, *a)  # noqa: E731
                       for b in ("pallas", "scan")]
    traced = jax.jit(both).trace(carry0, params, xs)
    kernel_name = "seqjax_lstm_fwd" if kind == "lstm" else f"seqjax_{kind}_fwd"
    assert kernel_name in str(traced.jaxpr), "the kernel must run, not a fallback"
    ((ys, carry_t), grads), ((ys_s, carry_s), grads_s) = (
        traced.lower().compile(FAST_COMPILE)(carry0, params, xs))
    tol = TOLS[dtype]

    assert ys.shape == (batch, steps, hidden) and ys.dtype == xs.dtype
    assert_close(ys, ys_s, tol, "outputs")
    assert_close(carry_t, carry_s, tol, "final carry")
    # Gradients: every parameter, the inputs and (when given) the initial carry.
    helpers.assert_rnn_grads_close(grads, grads_s, params, carry0, tol)
    if carry0 is not None:
        assert max(np.abs(np.asarray(g)).max() for g in jax.tree.leaves(grads[2])) > 0
    if lens is not None:  # zeros past each length; the carry of a length-0 row is carry0
        helpers.assert_zero_past_lengths(ys, lens, batch_major=True)
        zero = np.asarray(lens) == 0
        h_t = carry_t[0] if kind == "lstm" else carry_t
        h_0 = np.zeros(h_t.shape) if carry0 is None else carry0[0] if kind == "lstm" else carry0
        np.testing.assert_array_equal(np.asarray(h_t)[zero], np.asarray(h_0)[zero])


# ---------------------------------------------------------------------------------------------
# check_grads on the kernels' custom VJPs (float32: the kernels take float32 gx and state only)
# ---------------------------------------------------------------------------------------------

# Central differences in float32 along a random direction over all arguments: at eps=1e-2 the
# truncation error reaches 2e-2 relative (the jnp reference alike); at eps=2e-3 round-off
# (~1e-7/eps) and truncation stay well under the 1e-3 tolerance.
GRAD_CHECK = dict(order=1, modes=["rev"], eps=2e-3, atol=1e-3, rtol=1e-3)


def test_check_grads_lstm_kernel():
    steps, batch, hidden = 3, 2, 5
    params, gx, (h0, c0) = kernel_inputs("lstm", steps, batch, hidden, seed=11)
    lengths = jnp.array([3, 1], jnp.int32)
    bs = LSTMBlockSizes.default((steps, batch, hidden), F32, "cpu")
    f = jax.jit(lambda w, g, h, c: lstm(w, g, (h, c), lengths, bs))
    check_grads(f, (params["w_h"], gx, h0, c0), **GRAD_CHECK)


@pytest.mark.parametrize("reset", ["after", "before"])
def test_check_grads_gru_kernel(reset):
    steps, batch, hidden = 3, 2, 5
    params, gx, h0 = kernel_inputs(f"gru_{reset}", steps, batch, hidden, seed=12)
    lengths = jnp.array([3, 1], jnp.int32)
    bs = GRUBlockSizes.default((steps, batch, hidden), F32, "cpu", reset=reset)
    f = jax.jit(lambda w, b, g, h: gru(w, b, g, h, lengths, bs))
    check_grads(f, (params["w_h"], params["b_h"], gx, h0), **GRAD_CHECK)
