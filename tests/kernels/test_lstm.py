"""The fused LSTM kernel in Pallas interpret mode against its jnp reference and the scan backend.

Values and ``jax.vjp`` gradients, over shapes, lengths (including 0 and T), direction, dtype and
both kernel styles (the Triton-style kernel with ``interpret=True``; the Mosaic TPU-style one with
``pltpu.InterpretParams``). ``rnn(..., backend="pallas")`` on CPU runs the kernel in interpret
mode end to end.
"""

import warnings

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F32, TOL, assert_close, lengths_for, outs_and_grads
from seqjax.kernels import LSTMBlockSizes, common, lstm, lstm_reference, unsupported_reason

import seqjax
from seqjax import LSTM, PeepholeLSTM, SimpleRNN, rnn


def problem(steps, batch, hidden, *, seed=0):
    """An LSTM, params (random bias so no gate sits at 1/2), ``xs [B, T, D]`` and a carry."""
    return helpers.keyed_problem("lstm", steps, batch, hidden, seed=seed)


# ---------------------------------------------------------------------------------------------
# The op itself: kernel == jnp reference (autodiff) == scan backend (hand-written VJP)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths_kind", [None, "variable"])
@pytest.mark.parametrize("shape", [(5, 3, 8), (7, 8, 16)], ids=lambda s: "T{}B{}H{}".format(*s))
def test_kernel_matches_reference_and_scan(shape, lengths_kind):
    steps, batch, hidden = shape
    cell, params, xs, carry0 = problem(steps, batch, hidden)
    lengths = lengths_for(lengths_kind, steps, batch)
    bs = LSTMBlockSizes.default(shape, F32, "cpu")
    assert bs.interpret and bs.platform == "gpu"

    args = helpers.kernel_args(cell, params, xs, carry0)
    # Under jit, compiled without LLVM's optimisation passes: one compilation of the
    # interpret-mode kernel instead of one per op (where the time goes).
    out, grads = helpers.compile_fast(
        lambda *a: outs_and_grads(lambda w, g, c: lstm(w, g, c, lengths, bs), *a), *args)
    ref, grads_ref = outs_and_grads(lambda w, g, c: lstm_reference(w, g, c, lengths), *args)
    scan = rnn(cell, params, jnp.swapaxes(xs, 0, 1), seq_lengths=lengths, initial_carry=carry0,
               backend="scan", time_major=True)
    assert_close(out, ref, TOL, "kernel vs reference")
    assert_close(ref, scan, TOL, "reference vs scan backend")
    if lengths is not None:  # zeros past each length; the final carry frozen at the length
        helpers.assert_zero_past_lengths(out[0], lengths)
        zero = np.asarray(lengths) == 0
        np.testing.assert_array_equal(np.asarray(out[1][0])[zero], np.asarray(carry0[0])[zero])

    # Gradients w.r.t. w_h, gx and the initial carry: the kernel's custom VJP vs autodiff through
    # the reference (against the scan backend's VJP: test_rnn_pallas_matches_scan).
    assert_close(grads, grads_ref, TOL, "kernel grads vs autodiff of the reference")


# The GPU (persistent Triton) kernel's two drivers of the same per-step maths: the sequential
# driver (interpret mode, several hidden blocks: grid (T + 1, hidden blocks, batch blocks)) and
# the persistent kernel itself (interpret mode runs it for one hidden block, where its grid
# barrier never waits), here with several batch blocks per program (max_programs below the
# number of batch blocks). (T, B, H, block_b, block_h, max_programs, weight dtype, persistent,
# expected (hidden blocks, K tiles, batch groups, blocks per program)).
GPU_DRIVER_CASES = [
    pytest.param(4, 20, 40, 16, 16, 132, "bfloat16", False, (3, 3, 2, 1), id="seq-3h-3k-2b-bf16"),
    pytest.param(4, 50, 16, 16, 16, 2, "float32", True, (1, 1, 2, 2), id="persistent-2x2-blocks"),
]


@pytest.mark.parametrize(
    "steps,batch,hidden,block_b,block_h,max_programs,dtype,persistent,expect", GPU_DRIVER_CASES)
def test_gpu_kernel_drivers_match_reference_and_scan(steps, batch, hidden, block_b, block_h,
                                                     max_programs, dtype, persistent, expect):
    """Values and ``jax.vjp`` gradients of the GPU-style kernel in interpret mode against the jnp
    reference (w.r.t. ``w_h``, ``gx``, the carry) and the scan backend (w.r.t. every param,
    ``xs`` and the carry), with variable lengths including 0 and T."""
    bs = LSTMBlockSizes("gpu", block_b, block_h, max_programs=max_programs, interpret=True)
    grid = bs.grid(batch, hidden)
    assert (grid.hidden_blocks, grid.k_tiles, grid.batch_groups,
            grid.blocks_per_program) == expect
    assert grid.programs <= max_programs
    assert common.is_persistent(bs.interpret, grid) == persistent
    cell, params, xs, carry0 = problem(steps, batch, hidden, seed=3)
    params = dict(params, w_h=params["w_h"].astype(dtype))
    xs_t = jnp.swapaxes(xs, 0, 1)  # [T, B, D]
    lengths = lengths_for("variable", steps, batch)
    assert 0 in np.asarray(lengths) and steps in np.asarray(lengths)

    def all_sides(*args):  # the ops behind the same input projection as the scan backend
        return [outs_and_grads(f, *args) for f in (
            helpers.projected(cell, lambda *a: lstm(*a, bs), lengths),
            helpers.projected(cell, lstm_reference, lengths), helpers.scan_rnn(cell, lengths))]

    traced = jax.jit(all_sides).trace(params, xs_t, carry0)
    assert "seqjax_lstm_fwd_res" in str(traced.jaxpr) and "seqjax_lstm_bwd" in str(traced.jaxpr)
    (out, grads), (ref, grads_ref), (scan, grads_scan) = (
        traced.lower().compile(helpers.FAST_COMPILE)(params, xs_t, carry0))
    # Gradients w.r.t. every param, xs and the carry. bf16: d/dW_h is rounded to bfloat16 from
    # float32 sums accumulated in a different order.
    grad_tol = TOL if dtype == "float32" else 1e-2
    assert_close(out, ref, TOL, "kernel vs reference")
    assert_close(grads, grads_ref, grad_tol, "kernel grads vs autodiff of the reference")
    assert_close(out, scan, TOL, "kernel vs scan backend")
    assert_close(grads, grads_scan, grad_tol, "kernel grads vs the scan backend's VJP")
    assert max(float(np.abs(np.asarray(g, np.float32)).max()) for g in jax.tree.leaves(grads)) > 0
    helpers.assert_zero_past_lengths(out[0], lengths)
    zero = np.asarray(lengths) == 0
    np.testing.assert_array_equal(np.asarray(out[1][1])[zero], np.asarray(carry0[1])[zero])


def test_tpu_kernel_interpret_matches_reference():
    """The Mosaic kernel under ``pltpu.InterpretParams``: two batch blocks and two time blocks,
    so the VMEM scratch state crosses grid steps and the backward walks time blocks in reverse."""
    steps, batch, hidden = 6, 10, 8
    cell, params, xs, carry0 = problem(steps, batch, hidden, seed=4)
    lengths = lengths_for("variable", steps, batch)
    bs = LSTMBlockSizes("tpu", block_b=8, block_h=128, block_t=3, interpret=True)
    args = helpers.kernel_args(cell, params, xs, carry0)
    out, grads = outs_and_grads(lambda w, g, c: lstm(w, g, c, lengths, bs), *args)
    ref, grads_ref = outs_and_grads(lambda w, g, c: lstm_reference(w, g, c, lengths), *args)
    assert_close(out, ref, TOL)
    assert_close(grads, grads_ref, TOL)


# ---------------------------------------------------------------------------------------------
# End to end through seqjax.rnn(..., backend="pallas")
# ---------------------------------------------------------------------------------------------


def run_both(cell, params, xs, carry0, lengths, reverse, backend):
    return helpers.rnn_outs_and_grads(cell, backend, lengths, reverse, carry0, params, xs)


@pytest.mark.parametrize(
    "shape,lengths_kind,reverse",
    [((5, 3, 8), None, False), ((5, 3, 8), "variable", True),
     ((7, 8, 16), "variable", False), ((7, 8, 16), None, True)],
)
def test_rnn_pallas_matches_scan(shape, lengths_kind, reverse):
    steps, batch, hidden = shape
    cell, params, xs, carry0 = problem(steps, batch, hidden, seed=2)
    lengths = lengths_for(lengths_kind, steps, batch)
    jaxpr = str(jax.make_jaxpr(
        lambda p, x: rnn(cell, p, x, seq_lengths=lengths, reverse=reverse, backend="pallas")
    )(params, xs))
    assert "seqjax_lstm_fwd" in jaxpr  # the kernel ran, not a fallback
    outs, grads = run_both(cell, params, xs, carry0, lengths, reverse, "pallas")
    outs_scan, grads_scan = run_both(cell, params, xs, carry0, lengths, reverse, "scan")
    assert_close(outs, outs_scan, TOL, "outputs and final carry")
    # d/d params (w_x, w_h, b through the projection), d/d xs, d/d initial carry
    assert_close(grads, grads_scan, TOL, "gradients")


def test_rnn_pallas_under_jit():
    cell, params, xs, _ = problem(5, 3, 8, seed=5)
    lengths = jnp.array([5, 0, 3], jnp.int32)
    f = jax.jit(lambda p, x, n: rnn(cell, p, x, seq_lengths=n, backend="pallas"))
    ys, carry = f(params, xs, lengths)
    ys_scan, carry_scan = rnn(cell, params, xs, seq_lengths=lengths, backend="scan")
    assert_close((ys, carry), (ys_scan, carry_scan), TOL)


def test_bfloat16_close_to_float32():
    steps, batch, hidden = 7, 8, 16  # a shape the tests above compiled already
    cell, params, xs, carry0 = problem(steps, batch, hidden, seed=6)
    lengths = jnp.array([7, 2, 0, 5, 7, 1, 3, 6], jnp.int32)
    p16 = jax.tree.map(lambda a: a.astype(BF16), params)
    x16 = xs.astype(BF16)
    outs, grads = run_both(cell, p16, x16, carry0, lengths, False, "pallas")
    assert outs[0].dtype == BF16 and outs[1][0].dtype == F32
    assert grads[0]["w_h"].dtype == BF16 and grads[1].dtype == BF16
    # Same bf16 inputs on the scan backend: the same float32 maths, up to bf16 output rounding.
    outs_scan, grads_scan = run_both(cell, p16, x16, carry0, lengths, False, "scan")
    assert_close(outs, outs_scan, 1e-2)
    assert_close(grads, grads_scan, 2e-2)
    # Against the float32 model: bf16 rounding of params and inputs only.
    outs32, _ = run_both(cell, params, xs, carry0, lengths, False, "pallas")
    assert_close(outs, outs32, 5e-2)


# ---------------------------------------------------------------------------------------------
# What the kernel serves, and the fallback for what it does not
# ---------------------------------------------------------------------------------------------


def test_unsupported_reason():
    lstm_cell = LSTM(4, 8)
    assert (lstm_cell.kernel, SimpleRNN(4, 8).kernel, PeepholeLSTM(4, 8).kernel) == (
        "lstm", None, None)
    why = lambda family, hidden=8, dtype=F32: unsupported_reason(  # noqa: E731
        family, hidden_size=hidden, dtype=dtype, batch=3, steps=5)
    assert why("lstm") is None and why("lstm", dtype=BF16) is None
    assert "declares no fused kernel" in why(None)
    assert "float16" in why("lstm", dtype=jnp.float16)
    assert "1024" in why("lstm", hidden=1025)
    assert "'mingru'" in why("mingru")
    for cell in (SimpleRNN(4, 8), PeepholeLSTM(4, 8)):  # the backend names the cell
        reason = seqjax.resolve_backend(cell, "auto", dtype=F32, batch=3, steps=5,
                                        platform="gpu").reason
        assert type(cell).__name__ in reason and "no fused kernel" in reason
    choice = seqjax.resolve_backend(lstm_cell, "pallas", dtype=F32, batch=3, steps=5)
    assert choice.name == "pallas"
    # auto takes a kernel only where a GPU run measured it faster (seqjax.core.backend): none yet
    assert seqjax.resolve_backend(lstm_cell, "auto", dtype=F32, batch=3, steps=5,
                                  platform="gpu").name == "scan"
    # on a CPU, no Pallas kernel either: the native loop (seqjax.kernels.cpu) where it builds
    assert seqjax.resolve_backend(lstm_cell, "auto", dtype=F32, batch=3, steps=5,
                                  platform="cpu").name in ("native", "scan")


@pytest.mark.parametrize("kind", ["rnn", "peephole_lstm"])
def test_unsupported_cell_warns_once_and_falls_back(kind):
    cell = seqjax.make_cell(kind, 3, 6)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    lengths = jnp.array([5, 2], jnp.int32)
    seqjax.core.backend._warn_once.cache_clear()
    with pytest.warns(RuntimeWarning, match="using the scan backend"):
        out = rnn(cell, params, xs, seq_lengths=lengths, backend="pallas")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call does not warn again
        out2 = rnn(cell, params, xs, seq_lengths=lengths, backend="pallas")
    ref = rnn(cell, params, xs, seq_lengths=lengths, backend="scan")
    jax.tree.map(np.testing.assert_array_equal, out, ref)
    jax.tree.map(np.testing.assert_array_equal, out2, ref)


def test_block_sizes():
    bs = LSTMBlockSizes.default((7, 3, 8), F32, "cuda")
    assert (bs.platform, bs.block_b, bs.block_h, bs.interpret) == ("gpu", 16, 16, False)
    assert hash(bs) == hash(LSTMBlockSizes.default((7, 3, 8), BF16, "gpu"))
    # Persistent GPU kernel: 16 hidden units a program, every program resident (<= 132).
    b16 = LSTMBlockSizes.default((1024, 16, 768), BF16, "gpu")
    grid = b16.grid(16, 768)
    assert (b16.block_b, b16.block_h, b16.max_programs) == (16, 16, 132)
    assert (grid.hidden_blocks, grid.batch_groups, grid.k_tiles, grid.programs) == (48, 1, 3, 48)
    grid = LSTMBlockSizes.default((256, 64, 256), F32, "gpu").grid(64, 256)
    assert (grid.hidden_blocks, grid.batch_groups, grid.blocks_per_program) == (16, 4, 1)
    big = LSTMBlockSizes.default((6, 4096, 1024), F32, "gpu")  # batch blocks looped in-program
    grid = big.grid(4096, 1024)
    assert big.block_b == 128 and grid.programs <= 132 and grid.blocks_per_program == 16
    assert grid.batch_p >= 4096 and big.padded(4096, 1024) == (grid.batch_p, 1024)
    helpers.assert_block_size_rules(LSTMBlockSizes)
