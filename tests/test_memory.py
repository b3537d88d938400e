"""The NTM (seqjax.core.memory) against plain numpy loops over the paper's equations (Graves, Wayne
&
Danihelka 2014, section 3), through seqjax.rnn, and its model/experiment plumbing."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax
from seqjax.core.memory import NTM, addressing, run_with_states
from seqjax.models import MemoryModel

EPS = addressing.EPS


# ------------------------------------------------------------------------------------------
# numpy references, one memory (no batch), loops where the paper writes sums
# ------------------------------------------------------------------------------------------


def np_cosine(u, v):
    return float(u @ v) / (math.sqrt(u @ u + EPS) * math.sqrt(v @ v + EPS))


def np_content(memory, key, beta):
    scores = np.array([beta * np_cosine(key, row) for row in memory])
    e = np.exp(scores - scores.max())
    return e / e.sum()


def np_shift(w, s):
    n, r = len(w), len(s) // 2
    out = np.zeros(n)
    for i in range(n):
        for j in range(n):
            offset = (i - j) % n  # the paper's s(i - j), offsets -r..r stored at index r + k
            for k in range(-r, r + 1):
                if k % n == offset:
                    out[i] += w[j] * s[r + k]
    return out


def np_sharpen(w, gamma):
    p = (w + EPS) ** gamma
    return p / p.sum()


def np_address(memory, w_prev, key, beta, g, s, gamma):
    wc = np_content(memory, key, beta)
    wg = g * wc + (1 - g) * w_prev
    return np_sharpen(np_shift(wg, s), gamma)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(x))


def np_lstm(x, h, c, p):
    z = x @ p["w_x"] + h @ p["w_h"] + p["b"]
    i, f, g, o = np.split(z, 4)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def np_ntm_step(cell, p, x, state):
    """One NTM step for one sequence, written from the paper with the cell's documented
    non-linearities; ``state = (h, c, memory, w_read [R, N], w_write [E, N], reads [R, W])``."""
    h, c, memory, w_read, w_write, reads = state
    h, c = np_lstm(np.concatenate([x, reads.reshape(-1)]), h, c, p["controller"])
    xi = np.clip(h @ p["interface"]["w"] + p["interface"]["b"], -cell.clip_value,
                 cell.clip_value)
    r, e, w, s = cell.num_reads, cell.num_writes, cell.word_size, 2 * cell.shift_range + 1
    k = r + e
    sizes = [k * w, k, k, k * s, k, e * w, e * w]
    keys, betas, gates, shifts, gammas, erase, add = np.split(xi, np.cumsum(sizes)[:-1])
    keys, shifts = np.tanh(keys.reshape(k, w)), shifts.reshape(k, s)
    shifts = np.exp(shifts) / np.exp(shifts).sum(-1, keepdims=True)
    betas, gates, gammas = softplus(betas), sigmoid(gates), 1 + softplus(gammas)
    erase, add = sigmoid(erase.reshape(e, w)), np.tanh(add.reshape(e, w))

    def addr(mem, prev, j):
        return np_address(mem, prev, keys[j], betas[j], gates[j], shifts[j], gammas[j])

    new_write = np.stack([addr(memory, w_write[j], r + j) for j in range(e)])
    keep = np.ones_like(memory)
    for j in range(e):  # erase every head, then add every head (section 3.2)
        keep *= 1 - np.outer(new_write[j], erase[j])
    memory = memory * keep + sum(np.outer(new_write[j], add[j]) for j in range(e))
    new_read = np.stack([addr(memory, w_read[j], j) for j in range(r)])
    reads = np.stack([sum(new_read[j, i] * memory[i] for i in range(len(memory)))
                      for j in range(r)])
    return (h, c, memory, new_read, new_write, reads), np.concatenate([h, reads.reshape(-1)])


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ------------------------------------------------------------------------------------------
# addressing
# ------------------------------------------------------------------------------------------


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_content_weighting_matches_cosine_softmax(rng):
    memory = rng.normal(size=(2, 7, 5))
    memory[1, 3] = 0.0  # a zero row: the guarded norm keeps it finite
    keys, betas = rng.normal(size=(2, 3, 5)), rng.uniform(0, 5, size=(2, 3))
    got = addressing.content_weighting(jnp.asarray(memory), jnp.asarray(keys), jnp.asarray(betas))
    for b in range(2):
        for k in range(3):
            np.testing.assert_allclose(got[b, k], np_content(memory[b], keys[b, k], betas[b, k]),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, s", [(6, 3), (5, 5), (9, 1)])
def test_circular_shift_matches_the_papers_convolution(rng, n, s):
    w = rng.dirichlet(np.ones(n), size=(2, 2))
    shift = rng.dirichlet(np.ones(s), size=(2, 2))
    got = addressing.circular_shift(jnp.asarray(w), jnp.asarray(shift))
    for b in range(2):
        for k in range(2):
            np.testing.assert_allclose(got[b, k], np_shift(w[b, k], shift[b, k]), atol=1e-6)


def test_shift_plus_one_moves_a_one_hot_forward_with_wraparound():
    w = jnp.zeros((1, 1, 4)).at[0, 0, 3].set(1.0)
    forward = jnp.array([[[0.0, 0.0, 1.0]]])  # all mass on offset +1
    np.testing.assert_array_equal(addressing.circular_shift(w, forward)[0, 0], [1, 0, 0, 0])


def test_sharpen_and_full_addressing_match_numpy(rng):
    n, w_size = 8, 4
    memory = rng.normal(size=(3, n, w_size))
    w_prev = rng.dirichlet(np.ones(n), size=(3, 2))
    keys = rng.normal(size=(3, 2, w_size))
    betas, gates = rng.uniform(0, 4, (3, 2)), rng.uniform(0, 1, (3, 2))
    shifts, gammas = rng.dirichlet(np.ones(3), size=(3, 2)), 1 + rng.uniform(0, 3, (3, 2))
    np.testing.assert_allclose(
        addressing.sharpen(jnp.asarray(w_prev), jnp.asarray(gammas))[1, 0],
        np_sharpen(w_prev[1, 0], gammas[1, 0]), rtol=1e-5)
    got = addressing.ntm_address(*map(jnp.asarray, (memory, w_prev, keys, betas, gates, shifts,
                                                    gammas)))
    for b in range(3):
        for k in range(2):
            want = np_address(memory[b], w_prev[b, k], keys[b, k], betas[b, k], gates[b, k],
                              shifts[b, k], gammas[b, k])
            np.testing.assert_allclose(got[b, k], want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_one_hot_read_returns_that_row(rng):
    memory = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
    weights = jax.nn.one_hot(jnp.array([[4], [1]]), 6)  # [B, 1, N]
    np.testing.assert_array_equal(addressing.read(memory, weights)[:, 0],
                                  np.asarray(memory)[[0, 1], [4, 1]])


def test_erase_and_add_matches_the_papers_write(rng):
    memory = rng.normal(size=(1, 5, 3))
    w = rng.dirichlet(np.ones(5), size=(1, 2))
    erase, add = rng.uniform(size=(1, 2, 3)), rng.normal(size=(1, 2, 3))
    got = addressing.erase_and_add(*map(jnp.asarray, (memory, w, erase, add)))
    want = memory[0].copy()
    for i in range(5):
        for j in range(3):
            keep = (1 - w[0, 0, i] * erase[0, 0, j]) * (1 - w[0, 1, i] * erase[0, 1, j])
            want[i, j] = want[i, j] * keep + w[0, 0, i] * add[0, 0, j] + w[0, 1, i] * add[0, 1, j]
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


# ------------------------------------------------------------------------------------------
# the cell
# ------------------------------------------------------------------------------------------

SMALL = dict(controller_size=12, memory_size=10, word_size=6)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_reads=2, num_writes=2, shift_range=2)])
def test_ntm_steps_match_numpy_paper_equations(kwargs):
    cell = NTM(5, **SMALL, **kwargs)
    params = cell.init(jax.random.PRNGKey(1))
    # a larger interface bias spread so that every head does something visible
    params["interface"]["b"] = jax.random.normal(jax.random.PRNGKey(2), params["interface"]["b"]
                                                 .shape)
    xs = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 5))
    ys, carries = run_with_states(cell, params, xs)
    p, x = f64(params), np.asarray(xs, np.float64)
    c0 = cell.initial_carry(2)
    for b in range(2):
        state = (np.zeros(12), np.zeros(12), np.asarray(c0.memory[b], np.float64),
                 np.asarray(c0.read_weights[b], np.float64),
                 np.asarray(c0.write_weights[b], np.float64), np.asarray(c0.reads[b], np.float64))
        for t in range(6):
            state, y = np_ntm_step(cell, p, x[b, t], state)
            np.testing.assert_allclose(ys[b, t], y, rtol=2e-4, atol=2e-5)
            np.testing.assert_allclose(carries.memory[b, t], state[2], rtol=2e-4, atol=2e-5)
            np.testing.assert_allclose(carries.read_weights[b, t], state[3], rtol=2e-4,
                                       atol=2e-5)
            np.testing.assert_allclose(carries.write_weights[b, t], state[4], rtol=2e-4,
                                       atol=2e-5)


def test_initial_carry_is_the_documented_constant():
    cell = NTM(3, **SMALL)
    c = cell.initial_carry(2)
    np.testing.assert_array_equal(c.memory, np.full((2, 10, 6), 1e-6, np.float32))
    np.testing.assert_array_equal(c.read_weights[:, 0], jax.nn.one_hot(jnp.zeros(2, int), 10))
    assert cell.hidden_size == 12 + 6 and c.reads.shape == (2, 1, 6)


def test_memory_unchanged_when_nothing_is_erased_or_added():
    cell = NTM(4, **SMALL)
    params = cell.init(jax.random.PRNGKey(0))
    p = cell.interface_size()
    w_size, e = cell.word_size, cell.num_writes
    erase = slice(p - 2 * e * w_size, p - e * w_size)
    add = slice(p - e * w_size, p)
    params["interface"]["w"] = params["interface"]["w"].at[:, erase].set(0).at[:, add].set(0)
    params["interface"]["b"] = params["interface"]["b"].at[erase].set(-1e4).at[add].set(0)
    memory0 = jax.random.normal(jax.random.PRNGKey(5), (3, 10, 6))
    carry0 = cell.initial_carry(3)._replace(memory=memory0)
    xs = jax.random.normal(jax.random.PRNGKey(6), (3, 9, 4))
    _, carry = seqjax.rnn(cell, params, xs, initial_carry=carry0)
    np.testing.assert_array_equal(carry.memory, memory0)
    assert not np.allclose(carry.read_weights, carry0.read_weights)  # the heads still moved


def test_rnn_with_lengths_matches_a_loop_of_steps():
    cell = NTM(4, **SMALL, num_reads=2)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 4))
    lengths = jnp.array([7, 4, 0])
    ys, final = seqjax.rnn(cell, params, xs, seq_lengths=lengths)
    step = jax.jit(lambda carry, x: cell(params, carry, x))
    for b, n in enumerate([7, 4, 0]):
        carry = cell.initial_carry(1)
        for t in range(7):
            if t < n:
                carry, y = step(carry, xs[b:b + 1, t])
                np.testing.assert_allclose(ys[b, t], y[0], rtol=1e-5, atol=1e-6)
            else:
                np.testing.assert_array_equal(ys[b, t], 0.0)
        for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-5, atol=1e-6)
    # reverse runs each sequence backwards within its length, like any cell
    ys_r, _ = seqjax.rnn(cell, params, xs, seq_lengths=lengths, reverse=True)
    flipped = seqjax.reverse_padded(jnp.swapaxes(xs, 0, 1), lengths)
    ys_f, _ = seqjax.rnn(cell, params, jnp.swapaxes(flipped, 0, 1), seq_lengths=lengths)
    np.testing.assert_allclose(ys_r, jnp.swapaxes(seqjax.reverse_padded(
        jnp.swapaxes(ys_f, 0, 1), lengths), 0, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("controller", ["gru", "rnn"])
def test_other_controllers_run(controller):
    cell = NTM(3, **SMALL, controller=controller)
    params = cell.init(jax.random.PRNGKey(0))
    ys, _ = seqjax.rnn(cell, params, jnp.ones((2, 4, 3)))
    ys2, _ = run_with_states(cell, params, jnp.ones((2, 4, 3)))
    np.testing.assert_allclose(ys, ys2, rtol=1e-6)


def test_gradients_finite_on_long_sequences_and_remat_agrees():
    cell = NTM(9, controller_size=32, memory_size=32, word_size=8)
    model = MemoryModel(cell, 8)
    params = model.init(jax.random.PRNGKey(0))
    xs = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (2, 200, 9)).astype(jnp.float32)

    def loss(p, m):
        return jnp.mean(jax.nn.sigmoid(m.apply(p, xs)) ** 2)

    g = jax.grad(loss)(params, model)
    g_remat = jax.grad(loss)(params, MemoryModel(cell, 8, remat=True))
    leaves = jax.tree.leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    for a, b in zip(leaves, jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_gradient_matches_finite_differences():
    cell = NTM(3, controller_size=5, memory_size=6, word_size=3, num_reads=2)
    params = cell.init(jax.random.PRNGKey(0))
    params["interface"]["b"] = jax.random.normal(jax.random.PRNGKey(4),
                                                 params["interface"]["b"].shape)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    lengths = jnp.array([5, 3])

    def f(p, xs):
        ys, carry = seqjax.rnn(cell, p, xs, seq_lengths=lengths)
        return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(jnp.sin(carry.memory))

    jax.config.update("jax_enable_x64", True)
    try:
        p64, xs64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, xs))
        check_grads(f, (p64, xs64), order=1, modes=["rev"], atol=1e-3, rtol=1e-3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_bad_fields_and_params_name_the_problem():
    with pytest.raises(ValueError, match="memory_size"):
        NTM(3, memory_size=0)
    with pytest.raises(ValueError, match="shift_range"):
        NTM(3, memory_size=4, shift_range=4)
    with pytest.raises(ValueError, match="unknown cell kind"):
        NTM(3, controller="transformer")
    cell = NTM(3, **SMALL)
    params = cell.init(jax.random.PRNGKey(0))
    params["controller"]["w_h"] = params["controller"]["w_h"][:, :5]
    with pytest.raises(ValueError, match=r"params\['controller'\]\['w_h'\]"):
        seqjax.rnn(cell, params, jnp.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="feature size"):
        seqjax.rnn(cell, cell.init(jax.random.PRNGKey(0)), jnp.ones((1, 2, 4)))


def test_backend_auto_and_pallas_fall_back_to_scan_for_memory_cells():
    cell = NTM(3, **SMALL)
    choice = seqjax.resolve_backend(cell, "auto", dtype=jnp.float32, batch=2, steps=3,
                                    platform="gpu")
    assert choice.name == "scan" and "NTM" in choice.reason


def test_truncated_bptt_carries_the_memory_across_chunks():
    from seqjax.train.tbptt import truncated_forward

    cell = NTM(3, **SMALL)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 3))

    def apply_fn(x, carry, part):
        return seqjax.rnn(cell, params, x, initial_carry=carry)

    full, final = seqjax.rnn(cell, params, xs)
    first, carry = truncated_forward(apply_fn, cell.initial_carry(2), xs[:, :5])
    second, carry = truncated_forward(apply_fn, carry, xs[:, 5:])
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.memory, final.memory, rtol=1e-5, atol=1e-6)

    def chunk_loss(xs):  # the loss of the second chunk, the first chunk's memory carried in
        _, c = truncated_forward(apply_fn, cell.initial_carry(2), xs[:, :5])
        ys, _ = truncated_forward(apply_fn, c, xs[:, 5:])
        return jnp.sum(ys ** 2)

    g = jax.jit(jax.grad(chunk_loss))(xs)
    np.testing.assert_array_equal(g[:, :5], 0.0)  # no gradient into the earlier chunk
    assert float(jnp.abs(g[:, 5:]).sum()) > 0
