"""Cells and ``seqjax.rnn`` against plain numpy loops over the slide equations, finite
differences, and the bad-input contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from seqjax import GRU, LSTM, PeepholeLSTM, SimpleRNN, make_cell, rnn

jax.config.update("jax_default_matmul_precision", "highest")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------------------------
# Plain numpy references: one sequence at a time, one step at a time, written from the equations.
# ---------------------------------------------------------------------------------------------


def ref_step(cell, p, carry, x):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    H = cell.hidden_size
    if isinstance(cell, SimpleRNN):
        pre = x @ p["w_x"] + carry @ p["w_h"] + p["b"]
        h = np.tanh(pre) if cell.activation == "tanh" else np.maximum(pre, 0.0)
        return h, h
    if isinstance(cell, LSTM):
        h, c = carry
        W = lambda k: (p["w_x"][:, k * H:(k + 1) * H], p["w_h"][:, k * H:(k + 1) * H],  # noqa
                       p["b"][k * H:(k + 1) * H])
        (wxi, whi, bi), (wxf, whf, bf), (wxg, whg, bg), (wxo, who, bo) = (W(k) for k in range(4))
        peep = isinstance(cell, PeepholeLSTM)
        pi, pf, po = (p["p_i"], p["p_f"], p["p_o"]) if peep else (0.0, 0.0, 0.0)
        i = sigmoid(x @ wxi + h @ whi + pi * c + bi)
        f = sigmoid(x @ wxf + h @ whf + pf * c + bf)
        g = np.tanh(x @ wxg + h @ whg + bg)
        c_new = f * c + i * g
        o = sigmoid(x @ wxo + h @ who + po * c_new + bo)
        h_new = o * np.tanh(c_new)
        return (h_new, c_new), h_new
    if isinstance(cell, GRU):
        h = carry
        sl = lambda a, k: a[..., k * H:(k + 1) * H]  # noqa: E731
        r = sigmoid(x @ sl(p["w_x"], 0) + sl(p["b_x"], 0) + h @ sl(p["w_h"], 0) + sl(p["b_h"], 0))
        z = sigmoid(x @ sl(p["w_x"], 1) + sl(p["b_x"], 1) + h @ sl(p["w_h"], 1) + sl(p["b_h"], 1))
        if cell.reset == "after":
            n = np.tanh(x @ sl(p["w_x"], 2) + sl(p["b_x"], 2)
                        + r * (h @ sl(p["w_h"], 2) + sl(p["b_h"], 2)))
        else:
            n = np.tanh(x @ sl(p["w_x"], 2) + sl(p["b_x"], 2)
                        + (r * h) @ sl(p["w_h"], 2) + sl(p["b_h"], 2))
        h_new = (1 - z) * n + z * h
        return h_new, h_new
    raise TypeError(cell)


def ref_rnn(cell, p, xs, lengths=None, reverse=False, carry0=None):
    """Loop over each sequence separately within its own length (no padding logic at all)."""
    xs = np.asarray(xs, np.float64)
    B, T, _ = xs.shape
    H = cell.hidden_size
    ys = np.zeros((B, T, H))
    finals = []
    for b in range(B):
        L = T if lengths is None else int(lengths[b])
        if carry0 is None:
            carry = (np.zeros(H), np.zeros(H)) if isinstance(cell, LSTM) else np.zeros(H)
        else:
            carry = jax.tree.map(lambda a: np.asarray(a[b], np.float64), carry0)
        order = range(L - 1, -1, -1) if reverse else range(L)
        for t in order:
            carry, h = ref_step(cell, p, carry, xs[b, t])
            ys[b, t] = h
        finals.append(carry)
    final = jax.tree.map(lambda *a: np.stack(a), *finals)
    return ys, final


def random_params(cell, seed=0, scale=0.5):
    """Params with every entry random (also biases and peepholes), so each term is exercised."""
    params = cell.init(jax.random.PRNGKey(seed))
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(params))
    return {k: v + scale * jax.random.normal(kk, v.shape)
            for (k, v), kk in zip(sorted(params.items()), keys)}


CELLS = [
    SimpleRNN(3, 5),
    SimpleRNN(3, 5, activation="relu"),
    LSTM(3, 5),
    PeepholeLSTM(3, 5),
    GRU(3, 5),
    GRU(3, 5, reset="before"),
]
IDS = ["rnn_tanh", "rnn_relu", "lstm", "peephole", "gru_after", "gru_before"]


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("steps", [6, 21])
def test_rnn_matches_numpy_loop(cell, reverse, steps):
    p = random_params(cell)
    xs = jax.random.normal(jax.random.PRNGKey(2), (4, steps, 3))
    lengths = np.array([steps, 2, 0, 4])
    carry0 = jax.tree.map(lambda a: 0.3 * jax.random.normal(jax.random.PRNGKey(3), a.shape),
                          cell.initial_carry(4))
    ys, final = rnn(cell, p, xs, seq_lengths=jnp.asarray(lengths), reverse=reverse,
                    initial_carry=carry0)
    ys_ref, final_ref = ref_rnn(cell, p, xs, lengths, reverse, carry0)
    np.testing.assert_allclose(ys, ys_ref, atol=1e-5)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final_ref)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Length 0: the carry is the initial carry untouched, the outputs are zero.
    for a, c0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry0)):
        np.testing.assert_array_equal(a[2], c0[2])
    np.testing.assert_array_equal(ys[2], 0.0)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_step_matches_numpy(cell):
    p = random_params(cell, seed=4)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 3))
    carry = jax.tree.map(lambda a: jax.random.normal(jax.random.PRNGKey(6), a.shape),
                         cell.initial_carry(2))
    new, h = cell(p, carry, x)
    for b in range(2):
        ref_new, ref_h = ref_step(cell, p, jax.tree.map(lambda a: np.asarray(a[b]), carry),
                                  np.asarray(x[b]))
        np.testing.assert_allclose(h[b], ref_h, atol=1e-5)
        for a, r in zip(jax.tree.leaves(new), jax.tree.leaves(ref_new)):
            np.testing.assert_allclose(a[b], r, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_custom_vjp_against_finite_differences(cell):
    p = random_params(cell, seed=7)
    xs = jax.random.normal(jax.random.PRNGKey(8), (3, 5, 3))
    lengths = jnp.array([5, 2, 0])
    carry0 = jax.tree.map(lambda a: 0.3 * jnp.ones_like(a), cell.initial_carry(3))

    def f(p, xs, carry0):
        ys, carry = rnn(cell, p, xs, seq_lengths=lengths, reverse=True, initial_carry=carry0)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    jax.config.update("jax_enable_x64", True)
    try:
        p64, xs64, c64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (p, xs, carry0))
        check_grads(f, (p64, xs64, c64), order=1, modes=["rev"], atol=1e-3, rtol=1e-3)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("steps,varlen", [(9, True), (37, False), (37, True)])
@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_custom_vjp_equals_autodiff_through_the_loop(cell, steps, varlen):
    """The hand-written VJP (hoisted weight gradients) equals JAX's own through the same loop.

    T=37 spans three projection chunks (CHUNK=16) with a padded tail."""
    p = random_params(cell, seed=9)
    xs = jax.random.normal(jax.random.PRNGKey(10), (4, steps, 3))
    lengths = jnp.array([steps, 1, 4, steps - 2]) if varlen else None

    def loss(p, xs, remat, unroll):
        ys, carry = rnn(cell, p, xs, seq_lengths=lengths, remat=remat, unroll=unroll)
        return jnp.sum(ys ** 2) + jnp.sum(cell.carry_hidden(carry) * 3.0)

    g_ref = jax.grad(loss, (0, 1))(p, xs, True, 1)  # remat=True: autodiff of the plain loop
    for unroll in (1, 3):
        g = jax.grad(loss, (0, 1))(p, xs, False, unroll)
        # Gradients up to ~40 in float32, summed over 37 steps: both loops' are 1e-5-5e-5
        # from the float64 gradient, in different elements (other summation orders).
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_lstm_init():
    cell = LSTM(4, 8, forget_bias=2.0)
    p = cell.init(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(p["b"][8:16], 2.0)
    np.testing.assert_array_equal(p["b"][:8], 0.0)
    np.testing.assert_array_equal(p["b"][16:], 0.0)
    for k in range(4):  # each gate's recurrent block is orthogonal
        w = np.asarray(p["w_h"][:, k * 8:(k + 1) * 8])
        np.testing.assert_allclose(w.T @ w, np.eye(8), atol=1e-5)
    bound = np.sqrt(6.0 / (4 + 32))  # Glorot-uniform on [D, 4H]
    assert np.abs(p["w_x"]).max() <= bound
    # overridable initialisers
    cell2 = LSTM(4, 8, recurrent_init=jax.nn.initializers.zeros)
    assert not np.any(cell2.init(jax.random.PRNGKey(0))["w_h"])


def test_peephole_with_zero_peepholes_equals_lstm():
    p = random_params(LSTM(3, 4), seed=11)
    pp = dict(p, p_i=jnp.zeros(4), p_f=jnp.zeros(4), p_o=jnp.zeros(4))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    np.testing.assert_allclose(rnn(LSTM(3, 4), p, xs)[0], rnn(PeepholeLSTM(3, 4), pp, xs)[0],
                               atol=1e-6)


def test_cells_are_hashable_static_config():
    assert hash(LSTM(3, 4)) == hash(LSTM(3, 4))
    assert LSTM(3, 4) != GRU(3, 4)
    f = jax.jit(lambda cell, p, xs: rnn(cell, p, xs)[0], static_argnums=0)
    cell = GRU(3, 4)
    assert f(cell, cell.init(jax.random.PRNGKey(0)), jnp.ones((1, 2, 3))).shape == (1, 2, 4)


def test_bfloat16_inputs_and_params():
    cell = LSTM(3, 8)
    p = random_params(cell, seed=12, scale=0.1)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
    ys32, c32 = rnn(cell, p, xs)
    p16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), p)
    ys16, c16 = rnn(cell, p16, xs.astype(jnp.bfloat16))
    assert ys16.dtype == jnp.bfloat16
    assert c16[0].dtype == jnp.float32  # state stays float32
    np.testing.assert_allclose(ys16.astype(np.float32), ys32, atol=3e-2)
    xs16 = xs.astype(jnp.bfloat16)
    g = jax.grad(lambda p: jnp.sum(rnn(cell, p, xs16)[0].astype(jnp.float32)))(p16)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(g))


def test_jit_with_traced_lengths():
    cell = GRU(3, 4)
    p = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 3))
    lens = jnp.array([5, 3, 1])
    f = jax.jit(lambda p, xs, lens: rnn(cell, p, xs, seq_lengths=lens))
    ys, h = f(p, xs, lens)
    ys_e, h_e = rnn(cell, p, xs, seq_lengths=lens)
    np.testing.assert_allclose(ys, ys_e, atol=1e-6)
    np.testing.assert_allclose(h, h_e, atol=1e-6)


def test_time_major_equals_batch_major():
    cell = LSTM(3, 4)
    p = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    ys, _ = rnn(cell, p, xs)
    ys_tm, _ = rnn(cell, p, jnp.swapaxes(xs, 0, 1), time_major=True)
    np.testing.assert_allclose(jnp.swapaxes(ys_tm, 0, 1), ys, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 3)])
def test_empty_batch_or_time(shape):
    cell = LSTM(3, 4)
    p = cell.init(jax.random.PRNGKey(0))
    carry0 = (jnp.ones((shape[0], 4)), jnp.ones((shape[0], 4)))
    ys, carry = rnn(cell, p, jnp.zeros(shape), initial_carry=carry0)
    assert ys.shape == (shape[0], shape[1], 4)
    np.testing.assert_array_equal(carry[0], carry0[0])


# ---------------------------------------------------------------------------------------------
# Bad input: every error names the argument and the expected and received shape/dtype.
# ---------------------------------------------------------------------------------------------


def _setup():
    cell = LSTM(3, 4)
    return cell, cell.init(jax.random.PRNGKey(0)), jnp.zeros((2, 5, 3))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(xs=jnp.zeros((5, 3))), ValueError, r"xs.shape=\(5, 3\) must be \[B, T, D\]"),
        (dict(xs=jnp.zeros((2, 5, 7))), ValueError, r"feature size 7 != cell.input_size=3"),
        (dict(xs=jnp.zeros((2, 5, 3), jnp.int32)), TypeError, r"xs.dtype=int32 must be floating"),
        (dict(seq_lengths=jnp.array([1, 2, 3])), ValueError,
         r"seq_lengths.shape=\(3,\) must be \(2,\)"),
        (dict(seq_lengths=jnp.array([1.0, 2.0])), TypeError, r"seq_lengths.dtype=float32"),
        (dict(seq_lengths=jnp.array([1, -1])), ValueError, r"seq_lengths must lie in \[0, T=5\]"),
        (dict(seq_lengths=jnp.array([1, 6])), ValueError, r"seq_lengths must lie in \[0, T=5\]"),
        (dict(initial_carry=jnp.zeros((2, 4))), ValueError, r"initial_carry shapes"),
        (dict(initial_carry=(jnp.zeros((3, 4)), jnp.zeros((3, 4)))), ValueError,
         r"initial_carry shapes \(\(3, 4\), \(3, 4\)\) must be \(\(2, 4\), \(2, 4\)\)"),
        (dict(backend="cuda"), ValueError, r"backend='cuda'"),
        (dict(unroll=0), ValueError, r"unroll=0"),
        (dict(params={"w_x": jnp.zeros((3, 16))}), ValueError, r"lack \['b', 'w_h'\]"),
        (dict(params=None), TypeError, r"params must be a dict"),
    ],
)
def test_bad_input(kwargs, exc, match):
    cell, p, xs = _setup()
    args = dict(xs=xs, params=p)
    args.update({k: kwargs.pop(k) for k in ("xs", "params") if k in kwargs})
    with pytest.raises(exc, match=match):
        rnn(cell, args["params"], args["xs"], **kwargs)


def test_bad_param_shape_and_cell_config():
    cell, p, xs = _setup()
    with pytest.raises(ValueError, match=r"params\['w_h'\].shape=\(4, 12\) must be \(4, 16\)"):
        rnn(cell, dict(p, w_h=jnp.zeros((4, 12))), xs)
    with pytest.raises(ValueError, match="hidden_size=0 must be a positive int"):
        LSTM(3, 0)
    with pytest.raises(ValueError, match="reset must be 'after' or 'before'"):
        GRU(3, 4, reset="middle")
    with pytest.raises(ValueError, match="activation must be 'tanh' or 'relu'"):
        SimpleRNN(3, 4, activation="gelu")
    with pytest.raises(ValueError, match="unknown cell kind 'transformer'"):
        make_cell("transformer", 3, 4)
    with pytest.raises(TypeError, match="cell must be a seqjax cell"):
        rnn("lstm", p, xs)


def test_lstm_chrono_init_spreads_memory_times_over_1_to_T():
    """Tallec & Ollivier (2018): forget bias log U(1, T-1), input bias its negative, the other
    gates zero; the weights are those of the default init (same key)."""
    h, t_max = 512, 600  # small: the orthogonal init of a wide w_h costs minutes
    plain = LSTM(3, h).init(jax.random.PRNGKey(0))
    chrono = LSTM(3, h, chrono=t_max).init(jax.random.PRNGKey(0))
    b = np.asarray(chrono["b"])
    b_i, b_f, rest = b[:h], b[h:2 * h], b[2 * h:]
    np.testing.assert_array_equal(b_i, -b_f)
    np.testing.assert_array_equal(rest, 0.0)
    # memory time 1/(1 - sigmoid(b_f)) = 1 + exp(b_f) = 1 + u, u uniform on [1, T-1]
    u = np.exp(b_f.astype(np.float64))
    assert 1.0 <= u.min() and u.max() <= t_max - 1
    # Kolmogorov-Smirnov distance to U(1, T-1): 0.06 is its 5 % critical value at n=512
    cdf = (np.sort(u) - 1.0) / (t_max - 2.0)
    steps = np.arange(1, h + 1) / h
    assert max(np.max(steps - cdf), np.max(cdf - (steps - 1 / h))) < 0.06
    for k in ("w_x", "w_h"):
        np.testing.assert_array_equal(chrono[k], plain[k])
    for bad in (2, 600.0, True):
        with pytest.raises(ValueError, match="LSTM.chrono"):
            LSTM(3, 4, chrono=bad)


@pytest.mark.parametrize("d", [1, 2, 8, 9])
def test_input_projection_small_and_large_d(d):
    """``_project`` (broadcast multiply-adds up to ``SMALL_PROJECTION_D`` input features, a 2-D
    matmul above) equals ``numpy``'s ``xs @ w + b`` in value, in both modes of derivative and
    under ``vmap``, for float32 and bfloat16 inputs."""
    from seqjax.core.cells import SMALL_PROJECTION_D, _project

    assert (d <= SMALL_PROJECTION_D) == (d < 9)
    rng = np.random.default_rng(d)
    xs, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 5, d), (d, 7), (7,)))
    np.testing.assert_allclose(_project(xs, w, b), xs @ w + b, rtol=1e-5, atol=1e-5)
    out16 = _project(jnp.asarray(xs, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), b)
    assert out16.dtype == jnp.float32
    x16, w16 = (np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32) for a in (xs, w))
    np.testing.assert_allclose(out16, x16 @ w16 + b, rtol=1e-5, atol=1e-5)

    def loss(xs, w, b):
        return jnp.sum(jnp.sin(_project(xs, w, b)))

    dxs, dw, db = jax.grad(loss, (0, 1, 2))(xs, w, b)
    c = np.cos(xs @ w + b)  # d loss / d out
    np.testing.assert_allclose(dxs, c @ w.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, xs.reshape(-1, d).T @ c.reshape(-1, 7), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, c.sum((0, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.grad(loss, 1)(xs, w, b), dw, rtol=1e-6)  # xs constant
    tx, tw = rng.standard_normal(xs.shape), rng.standard_normal(w.shape)
    _, jvp = jax.jvp(loss, (xs, w, b), (tx.astype(np.float32), tw.astype(np.float32),
                                        np.zeros(7, np.float32)))
    np.testing.assert_allclose(jvp, np.sum(c * (tx @ w + xs @ tw)), rtol=1e-4)
    np.testing.assert_allclose(jax.vmap(_project, (0, None, None))(xs, w, b), xs @ w + b,
                               rtol=1e-5, atol=1e-5)
