"""Helpers shared by the kernel tests (``tests/kernels/test_*.py`` and ``tests/gpu``).

Imported as a plain module (``import helpers``): pytest's default ``prepend`` import mode puts
``tests/kernels`` on ``sys.path`` for the tests here (``tests/gpu/test_kernels_gpu.py`` puts it
there itself). Not a ``conftest.py``: tests import ``conftest`` by name (``tests/test_data.py``),
so a second one would shadow ``tests/conftest.py``. Inputs, the kernels' argument builders,
value and gradient comparisons and the lowering helpers live here once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqjax.kernels import gru, lstm

from seqjax import GRU, LSTM, rnn

F32, BF16 = jnp.float32, jnp.bfloat16
TOL = 1e-5
RESETS = ("after", "before")
#: The three kernel variants: the LSTM and both GRU reset variants.
CELLS = ("lstm", "gru_after", "gru_before")
# Compile the interpret-mode kernels (and the scan) without LLVM's optimisation passes: the same
# float32 maths (both sides alike), less than half the compile time, which dominates these tests.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def lengths_for(kind, steps, batch):
    """``None`` or ``[B]`` int32 lengths spanning ``0 .. T`` (both ends included)."""
    if kind is None:
        return None
    return jnp.asarray(np.linspace(0, steps, batch).round().astype(np.int32))


def make_cell(kind: str, inputs: int, hidden: int):
    """``"lstm"``, ``"gru_after"`` or ``"gru_before"``."""
    if kind == "lstm":
        return LSTM(inputs, hidden)
    return GRU(inputs, hidden, reset=kind.split("_")[1])


def keyed_problem(kind, steps, batch, hidden, *, inputs=4, seed=0):
    """A cell, params with random biases (so no gate sits at 1/2 and a GRU's ``b_hn``
    matters), ``xs [B, T, D]`` and an initial carry (``(h0, c0)`` for an LSTM), drawn with
    ``jax.random``."""
    cell = make_cell(kind, inputs, hidden)
    biases = ("b",) if kind == "lstm" else ("b_x", "b_h")
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = cell.init(k[0])
    for key, name in zip(k[1:], biases):
        params[name] = 0.5 * jax.random.normal(key, params[name].shape)
    xs = jax.random.normal(k[1 + len(biases)], (batch, steps, inputs))
    states = [0.5 * jax.random.normal(key, (batch, hidden)) for key in k[2 + len(biases):]]
    return cell, params, xs, tuple(states) if kind == "lstm" else states[0]


def numpy_problem(kind, steps, batch, hidden, *, dtype="float32", carry=True, inputs=3, seed=0):
    """A cell, params with random biases, inputs ``xs [B, T, D]`` in ``dtype`` and a non-zero
    float32 initial carry (or ``None``: the default zeros).

    Drawn with NumPy: eager JAX ops would each compile, which costs more than these tests."""
    cell = make_cell(kind, inputs, hidden)
    rng = np.random.default_rng(seed)
    np_dtype = jnp.dtype(dtype).type  # bfloat16: the ml_dtypes NumPy type, no JAX op

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


def kernel_args(cell, params, xs, carry0):
    """What the op takes before ``lengths``: ``(w_h, gx [T, B, 4H], carry0)`` for :func:`lstm`,
    ``(w_h, b_h, gx [T, B, 3H], h0)`` for :func:`gru` (``gx`` the scan backend's projection)."""
    gx = cell.project(params, jnp.swapaxes(xs, 0, 1))
    rp = cell.recurrent_params(params)
    return (rp["w_h"], *(() if cell.kernel == "lstm" else (rp["b_h"],)), gx, carry0)


def projected(cell, op, lengths):
    """``op`` (:func:`lstm`/:func:`gru` or a reference, without ``lengths``) behind the scan
    backend's input projection: ``f(params, xs [T, B, D], carry0)``."""
    def fn(p, x, c):
        rp = [p["w_h"]] + ([] if cell.kernel == "lstm" else [p["b_h"]])
        return op(*rp, cell.project(p, x).astype(F32), c, lengths)

    return fn


def scan_rnn(cell, lengths):
    """The scan backend, time-major: ``f(params, xs [T, B, D], carry0)``."""
    def fn(p, x, c):
        return rnn(cell, p, x, seq_lengths=lengths, initial_carry=c, backend="scan",
                   time_major=True)

    return fn


# ---------------------------------------------------------------------------------------------
# Values and gradients
# ---------------------------------------------------------------------------------------------


def cotangents(tree, seed=1):
    """Random cotangents shaped like ``tree`` (a random linear functional of the outputs)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten(
        [jax.random.normal(key, x.shape, F32).astype(x.dtype) for key, x in zip(keys, leaves)]
    )


def outs_and_grads(fn, *args, seed=1):
    """``(fn(*args), vjp of fn at args with random cotangents)``."""
    outs, pullback = jax.vjp(fn, *args)
    return outs, pullback(cotangents(outs, seed))


def rnn_outs_and_grads(cell, backend, lengths, reverse, carry0, params, xs, seed=7):
    """``rnn`` outputs and final carry, and the VJP of a random functional of both w.r.t.
    ``(params, xs[, carry0])`` (no ``carry0`` when it is ``None``: the default zeros)."""

    def fn(p, x, *c):
        return rnn(cell, p, x, seq_lengths=lengths, initial_carry=c[0] if c else None,
                   reverse=reverse, backend=backend)

    args = (params, xs) + (() if carry0 is None else (carry0,))
    return outs_and_grads(fn, *args, seed=seed)


def compile_fast(fn, *args):
    """``fn(*args)`` under ``jit``, compiled with :data:`FAST_COMPILE`."""
    return jax.jit(fn).trace(*args).lower().compile(FAST_COMPILE)(*args)


def assert_close(a, b, tol, what=""):
    """Every leaf of ``a`` and ``b`` equal to ``tol`` (relative and absolute), in float32."""
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol, err_msg=what
        ),
        a, b,
    )


def assert_close_scaled(a, b, tol, what):
    """Every leaf: ``max |a - b| <= tol * max(1, max |b|)`` (shapes equal)."""
    def one(x, y):
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        assert x.shape == y.shape, (what, x.shape, y.shape)
        err, scale = float(np.max(np.abs(x - y))), max(1.0, float(np.max(np.abs(y))))
        assert err <= tol * scale, f"{what}: max |pallas - scan| = {err:.3g} > {tol} * {scale:.3g}"

    jax.tree.map(one, a, b)


def assert_zero_past_lengths(ys, lengths, *, batch_major=False):
    """``ys`` (``[T, B, H]``, or ``[B, T, H]`` with ``batch_major``) is exactly zero at
    ``t >= lengths[b]``."""
    lens = np.asarray(lengths)
    ys = np.asarray(ys, np.float32)
    steps = ys.shape[1] if batch_major else ys.shape[0]
    mask = np.arange(steps)[:, None] < lens[None, :]
    assert np.all((ys.swapaxes(0, 1) if batch_major else ys)[~mask] == 0.0), (
        f"non-zero outputs past the lengths {lens}")


def assert_rnn_grads_close(grads, grads_s, params, carry0, tol, close=assert_close):
    """``rnn`` gradients (w.r.t. every param, ``xs`` and, when given, the initial carry)
    against the scan backend's (``close(a, b, tol, what)``), and each param's gradient in that
    param's dtype."""
    assert set(grads[0]) == set(params), (sorted(grads[0]), sorted(params))
    for name in params:
        assert grads[0][name].dtype == params[name].dtype, (
            f"d/d {name}: {grads[0][name].dtype} != {params[name].dtype}")
        close(grads[0][name], grads_s[0][name], tol, f"d/d {name}")
    close(grads[1], grads_s[1], tol, "d/d xs")
    if carry0 is not None:
        close(grads[2], grads_s[2], tol, "d/d initial carry")


# ---------------------------------------------------------------------------------------------
# Block sizes
# ---------------------------------------------------------------------------------------------


def assert_block_size_rules(block_sizes, **options):
    """The rules every family's block sizes (``LSTMBlockSizes``, ``GRUBlockSizes``, built with
    ``options``) follow: padding, the program cap, the TPU defaults, the validation errors."""
    default = lambda shape, dtype, platform: block_sizes.default(  # noqa: E731
        shape, dtype, platform, **options)
    assert default((7, 3, 8), F32, "cuda").padded(3, 8) == (16, 16)
    assert default((7, 3, 200), F32, "gpu").padded(3, 200) == (16, 224)
    with pytest.raises(ValueError, match="larger block_h"):
        block_sizes("gpu", block_b=16, block_h=16, max_programs=2, **options).padded(3, 40)
    with pytest.raises(ValueError, match="max_programs"):
        block_sizes("gpu", block_b=16, block_h=16, max_programs=0, **options)
    tpu = default((12, 3, 200), F32, "tpu")
    assert (tpu.block_b, tpu.block_h, tpu.block_t) == (8, 256, 12)
    big = default((100, 512, 1024), F32, "tpu")
    assert 100 % big.block_t == 0 and big.vmem_limit_bytes <= 60 * 2**20
    with pytest.raises(ValueError, match="power of two"):
        block_sizes("gpu", block_b=8, block_h=16, **options)
    with pytest.raises(ValueError, match="multiple of 128"):
        block_sizes("tpu", block_b=8, block_h=64, **options)
    with pytest.raises(TypeError, match="float16"):
        default((7, 3, 8), jnp.float16, "gpu")
    with pytest.raises(ValueError, match="no fused kernels"):
        default((7, 3, 8), F32, "metal")


# ---------------------------------------------------------------------------------------------
# Lowering for cuda / tpu on a CPU host
# ---------------------------------------------------------------------------------------------

S = jax.ShapeDtypeStruct


def lowering_args(family, shape, dtype):
    """``ShapeDtypeStruct`` arguments of :func:`lstm` / :func:`gru` (``lengths`` included)."""
    steps, batch, hidden = shape
    gates = 4 if family == "lstm" else 3
    weights = (S((hidden, gates * hidden), dtype),)
    if family == "gru":
        weights += (S((gates * hidden,), dtype),)
    state = S((batch, hidden), F32)
    return (*weights, S((steps, batch, gates * hidden), F32),
            (state, state) if family == "lstm" else state, S((batch,), jnp.int32))


def lower(fn, args, platform):
    """The module text of ``jit(fn)`` lowered for ``platform``."""
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def lower_op(family, bs, shape, dtype, platform):
    """``(forward text, backward text)``: the op (no residuals) and ``jax.grad`` of a loss of
    all its outputs w.r.t. every differentiable argument, lowered for ``platform``; checks that
    each holds the kernels it must (``seqjax_<name>_fwd`` alone; ``_fwd_res`` and ``_bwd``)."""
    op = lstm if family == "lstm" else gru
    args = lowering_args(family, shape, dtype)
    diff = tuple(range(len(args) - 1))  # everything but lengths

    def forward(*a):
        return op(*a, bs)

    def grads(*a):
        def loss(*d):
            hs, carry = op(*d, a[-1], bs)
            return jnp.sum(hs * hs) + sum(jnp.sum(x) for x in jax.tree.leaves(carry))

        return jax.grad(loss, argnums=diff)(*a[:-1])

    name = "seqjax_lstm" if family == "lstm" else f"seqjax_gru_{bs.reset}"
    fwd_text = lower(forward, args, platform)
    assert f"{name}_fwd" in fwd_text and f"{name}_bwd" not in fwd_text
    bwd_text = lower(grads, args, platform)
    assert f"{name}_fwd_res" in bwd_text and f"{name}_bwd" in bwd_text
    return fwd_text, bwd_text
