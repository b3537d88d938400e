"""The native CPU LSTM and GRU loops (``backend="native"``, ``seqjax.kernels.cpu``) against the scan
backend (the reference, itself checked against PyTorch and finite differences): values and
gradients of outputs and final carry, with lengths (0, partial, full), reverse, an initial
carry, hidden sizes that do not fill a vector, 1-3 threads, saturated gates (where the tanh
approximation must be XLA's) and NaN inputs; the backend switch; the build's failure modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqjax.kernels import cpu

import seqjax
from seqjax.core import backend as backend_mod
from seqjax.core.cells import LSTM

pytestmark = pytest.mark.skipif(cpu.unavailable_reason() is not None,
                                reason=f"native loop unavailable: {cpu.unavailable_reason()}")


def _value_and_grads(cell, params, xs, lengths, carry0, reverse, backend):
    def loss(params, xs, carry0):
        ys, carry = seqjax.rnn(cell, params, xs, seq_lengths=lengths, initial_carry=carry0,
                               reverse=reverse, backend=backend)
        h, c = carry if isinstance(carry, tuple) else (carry, jnp.cos(carry))
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h * c) + jnp.sum(jnp.sin(c))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, carry0)


@pytest.mark.parametrize("kind,B,T,H,lengths,reverse,shift,threads,dw_h_in_loop", [
    ("lstm", 3, 21, 7, [21, 9, 0], False, 0.0, "1", True),
    ("lstm", 3, 21, 7, [21, 9, 0], True, 0.0, "2", False),
    # w + 0.1: saturated gates, chaotic; the weight gradients in two blocks (32 + 8 steps)
    ("lstm", 4, 40, 37, None, False, 0.1, "3", True),
    ("lstm", 2, 33, 64, [33, 1], True, 0.0, "2", True),
    ("gru", 3, 21, 7, [21, 9, 0], True, 0.0, "1", True),
    ("gru", 3, 21, 7, [21, 9, 0], False, 0.0, "2", False),
    ("gru", 4, 40, 37, None, False, 0.1, "3", True),
])
def test_native_matches_scan(kind, B, T, H, lengths, reverse, shift, threads, dw_h_in_loop,
                             monkeypatch):
    monkeypatch.setenv("SEQJAX_CPU_THREADS", threads)
    if not dw_h_in_loop:  # dW_h left to XLA's matmul, as for a large W_h
        monkeypatch.setattr(cpu, "LOOP_DW_H_BYTES", 0)
    cell = seqjax.make_cell(kind, 5, H)
    params = jax.tree.map(lambda p: p + shift, cell.init(jax.random.PRNGKey(0)))
    if kind == "gru":  # non-zero recurrent biases (r multiplies h W_hn + b_hn)
        params = dict(params, b_h=params["b_h"] + 0.3)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    xs = jax.random.normal(keys[0], (B, T, 5))
    carry0 = (jax.random.normal(keys[1], (B, H)), jax.random.normal(keys[2], (B, H)))
    carry0 = carry0 if kind == "lstm" else carry0[0]
    lengths = None if lengths is None else jnp.array(lengths)
    got = _value_and_grads(cell, params, xs, lengths, carry0, reverse, "native")
    want = _value_and_grads(cell, params, xs, lengths, carry0, reverse, "scan")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
    # a pass not differentiated (no residuals saved) gives the same outputs
    run = {b: jax.jit(lambda p, x, b=b: seqjax.rnn(cell, p, x, seq_lengths=lengths,
                                                 reverse=reverse, backend=b)[0])
           for b in ("native", "scan")}
    ys = run["native"](params, xs)
    np.testing.assert_allclose(ys, run["scan"](params, xs), rtol=2e-5, atol=2e-5)
    if lengths is not None:  # padding outputs are exactly zero
        assert not np.any(np.asarray(ys)[1, int(lengths[1]):])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_nan_input_stays_nan(kind):
    """A NaN input (e.g. the embedding of an out-of-range id under jit) makes its row's outputs
    NaN from that step on, as on the scan, rather than a saturated gate's finite value; the other
    rows are untouched."""
    cell = seqjax.make_cell(kind, 3, 20)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3)).at[1, 2, 0].set(jnp.nan)
    run = {b: jax.jit(lambda p, x, b=b: seqjax.rnn(cell, p, x, backend=b)[0])
           for b in ("native", "scan")}
    ys = np.asarray(run["native"](params, xs))
    np.testing.assert_array_equal(np.isnan(ys), np.isnan(np.asarray(run["scan"](params, xs))))
    assert np.isnan(ys[1, 2:]).all() and np.isfinite(ys[0]).all() and np.isfinite(ys[1, :2]).all()


def test_chunk_loops_match_the_step():
    """One chunk straight through ``lstm_forward``/``lstm_backward`` against a Python loop over
    ``LSTM.step_with_residuals``/``step_vjp`` (the slide equations), from a chunk start t0 > 0."""
    K, B, D, H, t0 = 6, 4, 3, 20, 3
    cell = LSTM(D, H)
    params = cell.init(jax.random.PRNGKey(0))
    params = dict(params, b=params["b"] + 0.5)  # a non-zero bias, added inside the loop
    rp = cell.recurrent_params(params)
    r = np.random.default_rng(0)
    f32 = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    xs, h0, c0, lengths = f32(K, B, D), f32(B, H), f32(B, H), jnp.array([9, 5, 0, 3])
    hs, cs, acts = cpu.lstm_forward(xs, params["w_x"], params["b"], rp["w_h"], h0, c0, t0,
                                    lengths)
    gx = cell.project(params, xs)
    carry, want = (h0, c0), []
    for s in range(K):
        new, res = cell.step_with_residuals(rp, carry, gx[s])
        live = (t0 + s < lengths)[:, None]
        carry = (jnp.where(live, new[0], carry[0]), jnp.where(live, new[1], carry[1]))
        want.append((carry[0], carry[1]) + res)
    for got, ref in zip((hs, cs, acts), zip(*want)):
        np.testing.assert_allclose(got, jnp.stack(ref), atol=2e-6)
    tc = jnp.stack([w[3] for w in want])  # tanh(c_t): the backward recomputes it
    dhs, dh, dc = f32(K, B, H), f32(B, H), f32(B, H)
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    dgx, dh0, dc0, grads = cpu.lstm_backward(dhs, acts, cs, c0, rp["w_h"], dh, dc, t0,
                                             lengths, xs, hs, h0)
    dcarry, want = (dh, dc), [None] * K
    for s in reversed(range(K)):
        dprev, dg = cell.step_vjp(rp, (acts[s], tc[s]), (h_prev[s], c_prev[s]),
                                  (dcarry[0] + dhs[s], dcarry[1]))
        live = (t0 + s < lengths)[:, None]
        dcarry = (jnp.where(live, dprev[0], dcarry[0]), jnp.where(live, dprev[1], dcarry[1]))
        want[s] = jnp.where(live, dg, 0.0)
    np.testing.assert_allclose(dgx, jnp.stack(want), atol=2e-6)
    np.testing.assert_allclose(dh0, dcarry[0], atol=2e-6)
    np.testing.assert_allclose(dc0, dcarry[1], atol=2e-6)
    # the weight gradients summed in the loop: those of pre = xs W_x + b + h_prev W_h
    dp, _ = cell.project_vjp(params, xs, dgx)
    dp["w_h"] = jnp.einsum("kbh,kbg->hg", h_prev, dgx)
    assert sorted(grads) == ["b", "w_h", "w_x"]
    for name, g in grads.items():
        np.testing.assert_allclose(g, dp[name], rtol=1e-5, atol=1e-5)
    assert cpu.lstm_backward(dhs, acts, cs, c0, rp["w_h"], dh, dc, t0, lengths)[3] == {}
    assert list(cpu.lstm_backward(dhs, acts, cs, c0, rp["w_h"], dh, dc, t0, lengths,
                                  hs=hs, h_first=h0)[3]) == ["w_h"]


@dataclasses.dataclass(frozen=True)
class _OtherStep(LSTM):
    """Changes the step: the native LSTM loop must not run it."""

    def step_with_residuals(self, rp, carry, gx_t):
        return super().step_with_residuals(rp, carry, 2.0 * gx_t)


@dataclasses.dataclass(frozen=True)
class _OtherProjection(LSTM):
    """Changes the input projection, which the native LSTM loop computes itself."""

    def input_projection(self, params, xs):
        return super().input_projection(params, 2.0 * xs)


def test_backend_switch():
    pick = lambda cell, backend="auto", dtype=jnp.float32, platform="cpu": (  # noqa: E731
        seqjax.resolve_backend(cell, backend, dtype=dtype, batch=4, steps=9, platform=platform))
    assert pick(LSTM(3, 8)).name == "native"
    assert "measured faster" in pick(LSTM(3, 8)).reason
    assert pick(LSTM(3, 8), dtype=jnp.bfloat16).name == "scan"
    assert pick(LSTM(3, 8), platform="cuda").name == "scan"
    assert pick(seqjax.GRU(3, 8)).name == "native"
    assert pick(seqjax.GRU(3, 8), platform="cuda").name == "scan"
    assert pick(seqjax.GRU(3, 8, reset="before")).name == "scan"
    assert pick(seqjax.make_cell("rnn", 3, 8)).name == "scan"
    assert pick(seqjax.make_cell("peephole_lstm", 3, 8)).name == "scan"
    assert pick(_OtherStep(3, 8)).name == "scan"
    with pytest.warns(RuntimeWarning, match="overrides step_with_residuals"):
        assert pick(_OtherStep(3, 8), "native").name == "scan"
    with pytest.warns(RuntimeWarning, match="overrides input_projection"):
        assert pick(_OtherProjection(3, 8), "native").name == "scan"
    with pytest.warns(RuntimeWarning, match="GRU has no native loop"):
        assert pick(seqjax.GRU(3, 7, reset="before"), "native").name == "scan"


def test_unavailable_library_falls_back_to_the_scan(monkeypatch):
    why = cpu._build("no-such-compiler-for-seqjax")[1]
    assert "no C++ compiler" in why and "CXX" in why
    monkeypatch.setattr(cpu, "unavailable_reason", lambda: why)
    monkeypatch.setattr(backend_mod, "_warn_once", lambda msg: None)
    choice = seqjax.resolve_backend(LSTM(3, 9), "native", dtype=jnp.float32, batch=2, steps=3,
                                    platform="cpu")
    assert choice.name == "scan" and "no C++ compiler" in choice.reason
    assert seqjax.resolve_backend(LSTM(3, 9), "auto", dtype=jnp.float32, batch=2, steps=3,
                                  platform="cpu").name == "scan"


def test_threads_setting(monkeypatch):
    monkeypatch.setenv("SEQJAX_CPU_THREADS", "2")
    assert cpu.threads() == 2
    assert cpu.threads(hidden=32) == 2  # the setting wins
    monkeypatch.setenv("SEQJAX_CPU_THREADS", "zero")
    with pytest.raises(ValueError, match="SEQJAX_CPU_THREADS='zero'"):
        cpu.threads()
    monkeypatch.delenv("SEQJAX_CPU_THREADS")
    assert cpu.threads() >= 1
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    # one thread per 48 units at most: a small layer's steps are too short to share
    assert [cpu.threads(h) for h in (None, 32, 95, 96, 150, 1024)] == [4, 1, 1, 2, 3, 4]


def test_vmap_and_jit_of_the_native_backend():
    cell = LSTM(3, 10)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6, 3))  # a vmapped axis of 2

    def loss(params, xs, backend):
        return jnp.sum(jax.vmap(lambda x: seqjax.rnn(cell, params, x, backend=backend)[0])(xs))

    got = jax.jit(jax.grad(loss), static_argnums=2)(params, xs, "native")
    want = jax.jit(jax.grad(loss), static_argnums=2)(params, xs, "scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gate_gradients_are_written_over_the_residuals(kind):
    """The backward writes ``dgx`` over the forward's gate residuals (``acts`` [T, B, 4H];
    the GRU's ``rzn`` [T, B, 3H]) instead of a buffer of its own: a fwd+bwd's temporaries are
    the residuals, the weight and input gradients, and no second ``[T, B, G]``. With a buffer
    of its own (the GRU's backward before session 19: T B 3H floats more) the bound fails.
    For the T=128 B=32 H=256 GRU layer that is 36 -> 24 MiB of temporaries, under glibc's 32
    MiB ``mmap`` threshold: 47.5 -> 38 ms a fwd+bwd (benchmarks/README.md, session 19)."""
    T, B, D, H = 32, 8, 4, 64
    cell = seqjax.make_cell(kind, D, H)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jnp.ones((B, T, D))
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(seqjax.rnn(cell, p, x, backend="native")[0]),
                            argnums=(0, 1)))
    temp = grad.lower(params, xs).compile().memory_analysis().temp_size_in_bytes
    gates = 4 * H if kind == "lstm" else 3 * H
    residuals = T * B * (gates + 2 * H) * 4  # and hs, cs (LSTM) or hs, zn (GRU)
    weights = 4 * sum(p.size for p in jax.tree.leaves(params))
    assert temp < residuals + T * B * gates * 4 // 2 + weights + xs.size * 4, temp
