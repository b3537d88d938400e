"""The fused GRU kernel in Pallas interpret mode against its jnp reference and the scan backend.

Both reset variants (``"after"``: cuDNN/PyTorch; ``"before"``: Cho et al.). Values and
``jax.vjp`` gradients, over shapes (several batch blocks and hidden tiles included), lengths
(including 0 and T), direction, dtype and both kernel styles (the Triton-style kernel with
``interpret=True``; the Mosaic TPU-style one with ``pltpu.InterpretParams``).
``rnn(..., backend="pallas")`` on CPU runs the kernel in interpret mode end to end.
"""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import BF16, F32, RESETS, TOL, assert_close, lengths_for, outs_and_grads
from seqjax.kernels import GRUBlockSizes, common, gru, gru_reference, unsupported_reason

import seqjax
from seqjax import GRU, rnn


def problem(steps, batch, hidden, reset, *, seed=0):
    """A GRU, params (random biases so no gate sits at 1/2 and ``b_hn`` matters), ``xs [B, T,
    D]`` and an initial state."""
    return helpers.keyed_problem(f"gru_{reset}", steps, batch, hidden, seed=seed)


def check_kernel(bs, args, lengths):
    """Kernel (custom VJP) == autodiff through the reference: outputs and gradients w.r.t.
    ``w_h``, ``b_h``, ``gx`` and ``h0``. The kernel side runs under ``jit``: one compilation
    instead of one per wrapper op (compiling interpret-mode kernels is where the time goes),
    without LLVM's optimisation passes (same maths, about half the compile time)."""
    out, grads = helpers.compile_fast(
        lambda *a: outs_and_grads(lambda *b: gru(*b, lengths, bs), *a), *args)
    ref, grads_ref = outs_and_grads(lambda *a: gru_reference(*a, lengths, bs), *args)
    assert_close(out, ref, TOL, "kernel vs reference")
    assert_close(grads, grads_ref, TOL, "kernel grads vs autodiff of the reference")
    return out, ref


# ---------------------------------------------------------------------------------------------
# The op itself: kernel == jnp reference (autodiff) == scan backend (hand-written VJP)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", RESETS)
def test_kernel_matches_reference_and_scan(reset):
    """B=20 in two batch blocks of 16, H=40 in three hidden tiles of 16 (padding on both axes):
    the values that cross tiles within a step (the state; ``r * h`` for "before"; the gate
    gradients in the backward) go through the kernel's phases correctly. Lengths span 0 .. T."""
    steps, batch, hidden = 4, 20, 40
    cell, params, xs, h0 = problem(steps, batch, hidden, reset)
    args = helpers.kernel_args(cell, params, xs, h0)
    lengths = lengths_for("variable", steps, batch)
    bs = GRUBlockSizes("gpu", block_b=16, block_h=16, reset=reset, interpret=True)
    assert bs.padded(batch, hidden) == (32, 48)

    out, ref = check_kernel(bs, args, lengths)
    # The reference against the scan backend, for this variant and for the other one (so the
    # two variants are told apart: a reference ignoring `reset` fails here).
    scan = {r: rnn(GRU(cell.input_size, hidden, reset=r), params, jnp.swapaxes(xs, 0, 1),
                   seq_lengths=lengths, initial_carry=h0, backend="scan", time_major=True)
            for r in RESETS}
    assert_close(ref, scan[reset], TOL, "reference vs scan backend")
    other = scan["before" if reset == "after" else "after"]
    assert float(jnp.max(jnp.abs(other[0] - ref[0]))) > 1e-3, "the variants must differ"
    # Zeros past each length; the final state frozen at the length.
    lens = np.asarray(lengths)
    assert lens.min() == 0 and lens.max() == steps
    helpers.assert_zero_past_lengths(out[0], lengths)
    np.testing.assert_array_equal(np.asarray(out[1])[lens == 0], np.asarray(h0)[lens == 0])


@pytest.mark.parametrize("reset,dtype", [("after", "bfloat16"), ("before", "float32")])
def test_persistent_kernel_matches_reference_and_scan(reset, dtype):
    """The persistent GPU kernel itself (interpret mode runs it for one hidden block, where its
    grid barrier never waits) with two batch groups of two batch blocks each (``max_programs=2``
    < 4 batch blocks: each program loops over its blocks every phase), B=50 padded to 64.
    Values and ``jax.vjp`` gradients against the reference (w.r.t. ``w_h``, ``b_h``, ``gx``,
    ``h0``) and the scan backend (w.r.t. every param, ``xs`` and ``h0``); lengths span 0 .. T.
    (The sequential driver, several hidden blocks: test_kernel_matches_reference_and_scan.)"""
    steps, batch, hidden = 4, 50, 16
    bs = GRUBlockSizes("gpu", block_b=16, block_h=16, reset=reset, max_programs=2,
                       interpret=True)
    grid = bs.grid(batch, hidden)
    assert (grid.hidden_blocks, grid.batch_groups, grid.blocks_per_program) == (1, 2, 2)
    assert common.is_persistent(bs.interpret, grid) and grid.batch_p == 64
    cell, params, xs, h0 = problem(steps, batch, hidden, reset, seed=5)
    params = dict(params, w_h=params["w_h"].astype(dtype), b_h=params["b_h"].astype(dtype))
    xs_t = jnp.swapaxes(xs, 0, 1)
    lengths = lengths_for("variable", steps, batch)

    def all_sides(*args):  # the ops behind the same input projection as the scan backend
        return [outs_and_grads(f, *args) for f in (
            helpers.projected(cell, lambda *a: gru(*a, bs), lengths),
            helpers.projected(cell, lambda *a: gru_reference(*a, reset), lengths),
            helpers.scan_rnn(cell, lengths))]

    traced = jax.jit(all_sides).trace(params, xs_t, h0)
    assert f"seqjax_gru_{reset}_bwd" in str(traced.jaxpr)
    (out, grads), (ref, grads_ref), (scan, grads_scan) = (
        traced.lower().compile(helpers.FAST_COMPILE)(params, xs_t, h0))
    grad_tol = TOL if dtype == "float32" else 1e-2  # bf16 d/dW_h, d/db_h: rounding of f32 sums
    assert_close(out, ref, TOL, "kernel vs reference")
    assert_close(grads, grads_ref, grad_tol, "kernel grads vs autodiff of the reference")
    assert_close(out, scan, TOL, "kernel vs scan backend")
    assert_close(grads, grads_scan, grad_tol, "kernel grads vs the scan backend's VJP")
    helpers.assert_zero_past_lengths(out[0], lengths)


@pytest.mark.parametrize("reset", RESETS)
def test_tpu_kernel_interpret_matches_reference(reset):
    """The Mosaic kernel under ``pltpu.InterpretParams``: two batch blocks and two time blocks,
    so the VMEM scratch state crosses grid steps and the backward walks time blocks in reverse."""
    steps, batch, hidden = 4, 10, 8
    cell, params, xs, h0 = problem(steps, batch, hidden, reset, seed=4)
    bs = GRUBlockSizes("tpu", block_b=8, block_h=128, reset=reset, block_t=2, interpret=True)
    check_kernel(bs, helpers.kernel_args(cell, params, xs, h0),
                 lengths_for("variable", steps, batch))


# ---------------------------------------------------------------------------------------------
# End to end through seqjax.rnn(..., backend="pallas")
# ---------------------------------------------------------------------------------------------


def run_both(cell, params, xs, h0, lengths, reverse, backend):
    """Outputs and VJP of ``rnn`` on ``backend`` (pallas under ``jit``: see check_kernel)."""

    run = lambda *a: helpers.rnn_outs_and_grads(cell, backend, lengths, reverse, *a)  # noqa: E731
    return (jax.jit(run) if backend == "pallas" else run)(h0, params, xs)


@pytest.mark.parametrize(
    "reset,shape,lengths_kind", [("after", (7, 8, 16), "variable"), ("before", (5, 3, 8), None)]
)
def test_rnn_pallas_reverse_matches_scan(reset, shape, lengths_kind):
    """Reverse direction through ``rnn`` under ``jit``: over variable lengths (0 and T included;
    ``rnn`` reverses each sequence within its length around the kernel) and over
    ``seq_lengths=None``."""
    steps, batch, hidden = shape
    cell, params, xs, h0 = problem(steps, batch, hidden, reset, seed=2)
    lengths = lengths_for(lengths_kind, steps, batch)
    jaxpr = str(jax.make_jaxpr(
        lambda p, x: rnn(cell, p, x, seq_lengths=lengths, reverse=True, backend="pallas")
    )(params, xs))
    assert f"seqjax_gru_{reset}_fwd" in jaxpr  # the kernel ran, not a fallback
    outs, grads = run_both(cell, params, xs, h0, lengths, True, "pallas")
    outs_scan, grads_scan = run_both(cell, params, xs, h0, lengths, True, "scan")
    assert_close(outs, outs_scan, TOL, "outputs and final state")
    # d/d params (w_x, b_x through the projection; w_h, b_h through the kernel), d/d xs, d/d h0
    assert set(grads[0]) == {"w_x", "w_h", "b_x", "b_h"}
    assert_close(grads, grads_scan, TOL, "gradients")
    if lengths is None:  # reversed: the final state is the output at t = 0
        np.testing.assert_array_equal(np.asarray(outs[1]), np.asarray(outs[0][:, 0]))


@pytest.mark.parametrize("reset", RESETS)
def test_bfloat16_close_to_float32(reset):
    steps, batch, hidden = 7, 8, 16
    cell, params, xs, h0 = problem(steps, batch, hidden, reset, seed=6)
    lengths = jnp.array([7, 2, 0, 5, 7, 1, 3, 6], jnp.int32)
    p16 = jax.tree.map(lambda a: a.astype(BF16), params)
    x16 = xs.astype(BF16)
    outs, grads = run_both(cell, p16, x16, h0, lengths, False, "pallas")
    assert outs[0].dtype == BF16 and outs[1].dtype == F32
    assert grads[0]["w_h"].dtype == BF16 and grads[0]["b_h"].dtype == BF16
    assert grads[1].dtype == BF16
    # Same bf16 inputs on the scan backend: the same float32 maths, up to bf16 output rounding.
    outs_scan, grads_scan = run_both(cell, p16, x16, h0, lengths, False, "scan")
    assert_close(outs, outs_scan, 1e-2)
    assert_close(grads, grads_scan, 2e-2)
    # Against the float32 model: bf16 rounding of params and inputs only.
    outs32 = rnn(cell, params, xs, seq_lengths=lengths, initial_carry=h0, backend="scan")
    assert_close(outs, outs32, 5e-2)


# ---------------------------------------------------------------------------------------------
# What the kernel serves, and its static choices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset", RESETS)
def test_unsupported_reason(reset):
    cell = GRU(4, 8, reset=reset)
    assert (cell.kernel, cell.kernel_options()) == ("gru", {"reset": reset})
    why = lambda hidden=8, dtype=F32: unsupported_reason(  # noqa: E731
        "gru", hidden_size=hidden, dtype=dtype, batch=3, steps=5)
    assert why() is None and why(dtype=BF16) is None
    assert "float16" in why(dtype=jnp.float16)
    assert "1024" in why(hidden=1025)
    assert seqjax.resolve_backend(cell, "pallas", dtype=F32, batch=3, steps=5).name == "pallas"
    # auto takes a kernel only where a GPU run measured it faster (seqjax.core.backend): none yet
    assert seqjax.resolve_backend(cell, "auto", dtype=F32, batch=3, steps=5,
                                  platform="gpu").name == "scan"
    # on a CPU, no Pallas kernel either: the native loop (seqjax.kernels.cpu) where it builds
    assert seqjax.resolve_backend(cell, "auto", dtype=F32, batch=3, steps=5,
                                  platform="cpu").name in ("native", "scan")


def test_block_sizes():
    cpu = GRUBlockSizes.default((7, 3, 8), F32, "cpu", reset="before")
    assert (cpu.platform, cpu.interpret, cpu.reset) == ("gpu", True, "before")
    bs = GRUBlockSizes.default((7, 3, 8), F32, "cuda")
    assert (bs.platform, bs.block_b, bs.block_h, bs.reset, bs.interpret) == (
        "gpu", 16, 16, "after", False)
    assert hash(bs) == hash(GRUBlockSizes.default((7, 3, 8), BF16, "gpu"))
    before = GRUBlockSizes.default((7, 3, 8), F32, "cuda", reset="before")
    assert before.reset == "before" and before != bs  # the variant is part of the static key
    assert (bs.saved_gates, before.saved_gates) == (4, 3)
    # Persistent GPU kernel: 16 hidden units a program, every program resident (<= 132).
    b16 = GRUBlockSizes.default((1024, 16, 768), BF16, "gpu", reset="before")
    grid = b16.grid(16, 768)
    assert (b16.block_b, b16.block_h, b16.max_programs, b16.reset) == (16, 16, 132, "before")
    assert (grid.hidden_blocks, grid.batch_groups, grid.k_tiles) == (48, 1, 3)
    big = GRUBlockSizes.default((6, 9000, 200), F32, "gpu")
    grid = big.grid(9000, 200)
    assert big.block_b == 128 and grid.programs <= 132 and grid.blocks_per_program > 1
    with pytest.raises(ValueError, match="reset='sideways'"):
        GRUBlockSizes("gpu", block_b=16, block_h=16, reset="sideways")
    for reset in RESETS:
        helpers.assert_block_size_rules(GRUBlockSizes, reset=reset)


def test_argument_errors_name_the_argument():
    cell, params, xs, h0 = problem(3, 2, 8, "after")
    w_h, b_h, gx, h0 = helpers.kernel_args(cell, params, xs, h0)
    bs = GRUBlockSizes.default((3, 2, 8), F32, "cpu")
    with pytest.raises(ValueError, match="b_h.shape"):
        gru(w_h, b_h[:-1], gx, h0, None, bs)
    with pytest.raises(ValueError, match="w_h.shape"):
        gru(w_h[:, :-3], b_h, gx, h0, None, bs)
    with pytest.raises(ValueError, match="lengths.shape"):
        gru(w_h, b_h, gx, h0, jnp.array([1, 2, 3]), bs)
