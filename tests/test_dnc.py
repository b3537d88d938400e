"""The DNC (:mod:`seqjax.core.memory.dnc`) against plain numpy loops over the equations of Graves et
al. 2016 (Methods), written here independently, plus the ``rnn`` contract and a tiny copy task."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import rnn
from seqjax.core.memory.addressing import read as address_read
from seqjax.core.memory.dnc import (
    DNC,
    EPS_ALLOC,
    DNCState,
    allocation_weighting,
    directional_weightings,
    link_update,
    precedence_update,
    read_weighting,
    usage_update,
    write_weighting,
)

jax.config.update("jax_default_matmul_precision", "highest")

EPS = 1e-6  # the guarded-norm epsilon of the content weighting
ATOL = 2e-5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def oneplus(x):
    return 1.0 + np.log1p(np.exp(x))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------------------------------------
# Plain numpy references: one sample at a time, loops where the paper writes sums and products.
# ---------------------------------------------------------------------------------------------


def np_usage(u, ww, f, wr):
    """u_t = (u + ww - u ww) * prod_i (1 - f_i wr_i)."""
    psi = np.ones_like(u)
    for i in range(len(f)):
        psi = psi * (1.0 - f[i] * wr[i])
    return (u + ww - u * ww) * psi


def np_allocation(u, eps=EPS_ALLOC):
    u = eps + (1.0 - eps) * np.asarray(u, np.float64)
    free_list = sorted(range(len(u)), key=lambda j: (u[j], j))  # ties: lower index first
    a, prod = np.zeros_like(u), 1.0
    for j in free_list:
        a[j] = (1.0 - u[j]) * prod
        prod *= u[j]
    return a


def np_link(L, p, ww):
    n = len(ww)
    new = np.zeros_like(L)
    for i in range(n):
        for j in range(n):
            if i != j:
                new[i, j] = (1.0 - ww[i] - ww[j]) * L[i, j] + ww[i] * p[j]
    return new


def np_precedence(p, ww):
    return (1.0 - ww.sum()) * p + ww


def np_content(M, k, beta):
    """softmax_i(beta cos(k, M_i)) with the guarded norms sqrt(|x|^2 + eps)."""
    sims = np.array([k @ m / (np.sqrt(k @ k + EPS) * np.sqrt(m @ m + EPS)) for m in M])
    return softmax(beta * sims)


def split_xi(xi, R, W):
    """The interface vector, raw, in the paper's order."""
    sizes = [("kr", R * W), ("br", R), ("kw", W), ("bw", 1), ("e", W), ("v", W), ("f", R),
             ("ga", 1), ("gw", 1), ("pi", 3 * R)]
    out, i = {}, 0
    for name, n in sizes:
        out[name] = xi[i:i + n]
        i += n
    assert i == len(xi)
    return out


def np_memory_step(xi, s, R, W):
    """One DNC memory step for one sample: ``s`` a dict of numpy state (no batch axis)."""
    x = split_xi(xi, R, W)
    kr, br = x["kr"].reshape(R, W), oneplus(x["br"])
    kw, bw = x["kw"], oneplus(x["bw"][0])
    e, v, f = sigmoid(x["e"]), x["v"], sigmoid(x["f"])
    ga, gw = sigmoid(x["ga"][0]), sigmoid(x["gw"][0])
    pi = np.stack([softmax(x["pi"][3 * i:3 * i + 3]) for i in range(R)])

    u = np_usage(s["usage"], s["write_weights"], f, s["read_weights"])
    a = np_allocation(u)
    cw = np_content(s["memory"], kw, bw)
    ww = gw * (ga * a + (1.0 - ga) * cw)
    M = s["memory"] * (1.0 - np.outer(ww, e)) + np.outer(ww, v)
    L = np_link(s["link"], s["precedence"], ww)
    p = np_precedence(s["precedence"], ww)
    wr = np.zeros_like(s["read_weights"])
    reads = np.zeros((R, W))
    for i in range(R):
        fwd = L @ s["read_weights"][i]
        bwd = L.T @ s["read_weights"][i]
        cr = np_content(M, kr[i], br[i])
        wr[i] = pi[i, 0] * bwd + pi[i, 1] * cr + pi[i, 2] * fwd
        reads[i] = M.T @ wr[i]
    return dict(memory=M, usage=u, link=L, precedence=p, read_weights=wr, write_weights=ww,
                reads=reads)


MEM_FIELDS = ("memory", "usage", "link", "precedence", "read_weights", "write_weights", "reads")


def sample(state, b):
    return {k: np.asarray(getattr(state, k)[b], np.float64) for k in MEM_FIELDS}


def random_weightings(rng, shape, total=None):
    """Non-negative weightings over the last axis summing to at most 1."""
    w = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    return w * (rng.uniform(0.2, 1.0, shape[:-1] + (1,)) if total is None else total)


# ---------------------------------------------------------------------------------------------
# The pieces
# ---------------------------------------------------------------------------------------------


METHODS = pytest.mark.parametrize("method", ["sort", "pairwise"])


@METHODS
def test_allocation_matches_numpy(method):
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, (4, 9))
    u[1, [2, 5, 7]] = 0.3  # ties
    u[2] = 0.0
    u[3, :4] = 1.0
    got = allocation_weighting(jnp.asarray(u, jnp.float32), method=method)
    want = np.stack([np_allocation(row) for row in u])
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert np.all(np.asarray(got).sum(-1) <= 1 + 1e-6)


@METHODS
def test_allocation_ties_go_to_the_lower_index(method):
    u = np.array([[0.5, 0.2, 0.2, 0.9]])
    a = np.asarray(allocation_weighting(jnp.asarray(u, jnp.float32), method=method))[0]
    np.testing.assert_allclose(a, np_allocation(u[0]), atol=1e-6)
    # free list 1, 2, 0, 3: a = (0.8, 0.8 * 0.2, 0.5 * 0.2 * 0.2, 0.1 * 0.5 * 0.04)
    np.testing.assert_allclose(a, [0.02, 0.8, 0.16, 0.002], atol=1e-5)
    assert a[1] > a[2]


@METHODS
def test_allocation_of_an_empty_memory_is_row_zero(method):
    n = 6
    a = np.asarray(allocation_weighting(jnp.zeros((2, n)), method=method), np.float64)
    want = (1 - EPS_ALLOC) * EPS_ALLOC ** np.arange(n)  # eps form: 1-eps, (1-eps) eps, ...
    np.testing.assert_allclose(a, np.broadcast_to(want, (2, n)), rtol=1e-5, atol=1e-12)
    assert np.all(np.argmax(a, -1) == 0)


@METHODS
@pytest.mark.parametrize("fill", [0.0, 0.5, 1.0])
def test_allocation_gradient_is_finite_on_a_large_uniform_memory(fill, method):
    """32 rows: the exclusive products underflow, the gradient must not turn into NaN."""
    u = jnp.full((2, 32), fill)
    g = jax.grad(lambda u: jnp.sum(allocation_weighting(u, method=method)
                                   * jnp.arange(32.0)))(u)
    assert np.all(np.isfinite(np.asarray(g)))


def test_allocation_methods_agree_with_gradients_on_a_large_memory():
    u = jax.random.uniform(jax.random.PRNGKey(0), (3, 300))
    u = u.at[:, 10].set(u[:, 20])  # a tie
    np.testing.assert_allclose(allocation_weighting(u, method="pairwise"),
                               allocation_weighting(u, method="sort"), atol=1e-7)
    weights = jnp.arange(300.0)
    g_sort, g_pair = (jax.grad(lambda u, m=m: jnp.sum(allocation_weighting(u, method=m)
                                                      * weights))(u)
                      for m in ("sort", "pairwise"))
    np.testing.assert_allclose(g_pair, g_sort, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="method"):
        allocation_weighting(u, method="heap")


def test_usage_update_matches_numpy_and_frees():
    rng = np.random.default_rng(1)
    B, R, N = 3, 2, 7
    u = rng.uniform(0, 1, (B, N))
    ww = random_weightings(rng, (B, N))
    wr = random_weightings(rng, (B, R, N))
    f = rng.uniform(0, 1, (B, R))
    got = usage_update(*(jnp.asarray(a, jnp.float32) for a in (u, ww, f, wr)))
    want = np.stack([np_usage(u[b], ww[b], f[b], wr[b]) for b in range(B)])
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert np.all((np.asarray(got) >= 0) & (np.asarray(got) <= 1))
    # A fully open free gate on a one-hot read frees that row; a closed one frees nothing.
    wr1 = np.zeros((1, 2, N))
    wr1[0, 0, 3] = 1.0
    wr1[0, 1, 5] = 1.0
    out = np.asarray(usage_update(jnp.full((1, N), 0.7), jnp.zeros((1, N)),
                                  jnp.array([[1.0, 0.0]]), jnp.asarray(wr1)))
    np.testing.assert_allclose(out[0], [0.7, 0.7, 0.7, 0.0, 0.7, 0.7, 0.7], atol=1e-6)


def test_usage_has_no_gradient_into_the_previous_write_weights():
    """DeepMind's stop_gradient (documented in :func:`usage_update`)."""
    rng = np.random.default_rng(2)
    u, ww = (jnp.asarray(rng.uniform(0, 1, (2, 5)), jnp.float32) for _ in range(2))
    f = jnp.asarray(rng.uniform(0, 1, (2, 3)), jnp.float32)
    wr = jnp.asarray(random_weightings(rng, (2, 3, 5)), jnp.float32)
    grads = jax.grad(lambda *a: usage_update(*a).sum(), argnums=(0, 1, 2, 3))(u, ww, f, wr)
    assert np.all(np.asarray(grads[1]) == 0)
    assert all(np.any(np.asarray(g) != 0) for g in (grads[0], grads[2], grads[3]))


def test_write_weighting():
    rng = np.random.default_rng(3)
    c, a = random_weightings(rng, (2, 5), 1.0), random_weightings(rng, (2, 5))
    ga, gw = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
    got = write_weighting(*(jnp.asarray(x, jnp.float32) for x in (c, a, ga, gw)))
    want = gw[:, None] * (ga[:, None] * a + (1 - ga[:, None]) * c)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_link_and_precedence_over_several_steps():
    rng = np.random.default_rng(4)
    B, N = 3, 6
    L, p = np.zeros((B, N, N)), np.zeros((B, N))
    jL, jp = jnp.zeros((B, N, N)), jnp.zeros((B, N))
    for t in range(8):
        ww = random_weightings(rng, (B, N))
        if t == 3:
            ww[0] = np.eye(N)[2]  # a hard write
        jww = jnp.asarray(ww, jnp.float32)
        jL, jp = link_update(jL, jp, jww), precedence_update(jp, jww)  # L_t from p_{t-1}
        L = np.stack([np_link(L[b], p[b], ww[b]) for b in range(B)])
        p = np.stack([np_precedence(p[b], ww[b]) for b in range(B)])
        np.testing.assert_allclose(jL, L, atol=ATOL)
        np.testing.assert_allclose(jp, p, atol=ATOL)
        got = np.asarray(jL)
        assert np.all(np.diagonal(got, axis1=1, axis2=2) == 0)
        assert np.all(got >= -1e-7) and np.all(got <= 1 + 1e-6)
        assert np.all(got.sum(1) <= 1 + 1e-5) and np.all(got.sum(2) <= 1 + 1e-5)
        assert np.all(np.asarray(jp).sum(-1) <= 1 + 1e-5)


def test_links_record_the_order_of_hard_writes():
    """Writing rows 2, 0, 3 one-hot: forward from 2 is 0, from 0 is 3; backward reverses."""
    N = 5
    L, p = jnp.zeros((1, N, N)), jnp.zeros((1, N))
    for row in (2, 0, 3):
        w = jnp.eye(N)[row][None]
        L, p = link_update(L, p, w), precedence_update(p, w)
    reads = jnp.eye(N)[jnp.array([2, 0, 3])][None]  # heads at rows 2, 0, 3
    fwd, bwd = directional_weightings(L, reads)
    np.testing.assert_allclose(fwd[0], np.eye(N)[[0, 3]].tolist() + [np.zeros(N)], atol=1e-6)
    np.testing.assert_allclose(bwd[0], [np.zeros(N)] + np.eye(N)[[2, 0]].tolist(), atol=1e-6)


def test_directional_and_read_weightings_match_numpy():
    rng = np.random.default_rng(5)
    B, R, N = 2, 3, 6
    L = rng.uniform(0, 0.2, (B, N, N))
    wr = random_weightings(rng, (B, R, N))
    fwd, bwd = directional_weightings(jnp.asarray(L, jnp.float32), jnp.asarray(wr, jnp.float32))
    for b in range(B):
        for i in range(R):
            np.testing.assert_allclose(fwd[b, i], L[b] @ wr[b, i], atol=1e-6)
            np.testing.assert_allclose(bwd[b, i], L[b].T @ wr[b, i], atol=1e-6)
    modes = softmax(rng.normal(size=(B, R, 3)))
    c = random_weightings(rng, (B, R, N), 1.0)
    got = read_weighting(*(jnp.asarray(x, jnp.float32) for x in (modes, bwd, c, fwd)))
    want = (modes[..., 0:1] * np.asarray(bwd) + modes[..., 1:2] * c
            + modes[..., 2:3] * np.asarray(fwd))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_read_with_a_one_hot_weighting_returns_the_row():
    rng = np.random.default_rng(6)
    M = rng.normal(size=(2, 5, 4))
    w = np.zeros((2, 2, 5))
    w[0, 0, 3] = w[0, 1, 1] = w[1, 0, 0] = w[1, 1, 4] = 1.0
    r = np.asarray(address_read(jnp.asarray(M, jnp.float32), jnp.asarray(w, jnp.float32)))
    np.testing.assert_allclose(r[0], M[0, [3, 1]], atol=1e-6)
    np.testing.assert_allclose(r[1], M[1, [0, 4]], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The cell's memory step
# ---------------------------------------------------------------------------------------------


def small_cell(**kw):
    return DNC(**{**dict(input_size=3, controller_size=8, memory_size=6, word_size=4,
                         num_reads=2), **kw})


def test_interface_layout():
    cell = small_cell()
    R, W = cell.num_reads, cell.word_size
    assert cell.interface_size() == R * W + 3 * W + 5 * R + 3
    xi = jnp.zeros((5, cell.interface_size()))
    p = cell.split_interface(xi)
    shapes = {k: v.shape for k, v in p.items()}
    assert shapes == {"read_keys": (5, R, W), "read_strengths": (5, R), "write_key": (5, W),
                      "write_strength": (5,), "erase": (5, W), "write_vector": (5, W),
                      "free_gates": (5, R), "allocation_gate": (5,), "write_gate": (5,),
                      "read_modes": (5, R, 3)}
    assert cell.hidden_size == cell.controller_size + R * W


def test_initial_carry():
    cell = small_cell(memory_init=0.25)
    c = cell.initial_carry(3)
    assert isinstance(c, DNCState)
    np.testing.assert_array_equal(c.memory, np.full((3, 6, 4), 0.25))
    for name in ("usage", "link", "precedence", "read_weights", "write_weights", "reads"):
        assert not np.any(np.asarray(getattr(c, name))), name
    assert c.link.shape == (3, 6, 6) and c.reads.shape == (3, 2, 4)


def random_state(rng, cell, batch):
    """A valid carry with well separated usage (a sort on near-ties is a discontinuity that
    float32 and float64 may break differently)."""
    N, W, R = cell.memory_size, cell.word_size, cell.num_reads
    link = np.zeros((batch, N, N))
    prec = np.zeros((batch, N))
    for _ in range(3):
        ww = random_weightings(rng, (batch, N))
        link = np.stack([np_link(link[b], prec[b], ww[b]) for b in range(batch)])
        prec = np.stack([np_precedence(prec[b], ww[b]) for b in range(batch)])
    usage = np.stack([rng.permutation(N) for _ in range(batch)]) / N + rng.uniform(0, 0.05)
    fields = dict(memory=rng.normal(size=(batch, N, W)), usage=usage, link=link,
                  precedence=prec, read_weights=random_weightings(rng, (batch, R, N)),
                  write_weights=random_weightings(rng, (batch, N)),
                  reads=rng.normal(size=(batch, R, W)))
    return cell.initial_carry(batch)._replace(
        **{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


@pytest.mark.parametrize("start", ["initial", "random"])
def test_memory_step_matches_numpy_over_a_trajectory(start):
    cell = small_cell()
    R, W, B = cell.num_reads, cell.word_size, 3
    rng = np.random.default_rng(7)
    carry = cell.initial_carry(B) if start == "initial" else random_state(rng, cell, B)
    # From the initial carry every usage is 0, so step 0 allocates row 0 exactly; later steps
    # leave rows 1.. with usages 1e-7 apart, whose order float32 cannot tell: one step only.
    steps = 1 if start == "initial" else 6
    step = jax.jit(cell._memory_step)
    for t in range(steps):
        states = [sample(carry, b) for b in range(B)]  # the reference starts where JAX is
        xi = rng.normal(scale=2.0, size=(B, cell.interface_size()))
        carry = step(carry, carry.controller, jnp.asarray(xi, jnp.float32))
        for b in range(B):
            want = np_memory_step(xi[b], states[b], R, W)
            got = sample(carry, b)
            for k in MEM_FIELDS:
                np.testing.assert_allclose(got[k], want[k], atol=5e-5, err_msg=f"{k} t={t}")


def _slot(cell, name):
    """Offset and length of a raw field in the interface vector (the paper's order)."""
    R, W = cell.num_reads, cell.word_size
    sizes = dict(read_keys=R * W, read_strengths=R, write_key=W, write_strength=1, erase=W,
                 write_vector=W, free_gates=R, allocation_gate=1, write_gate=1,
                 read_modes=3 * R)
    start = 0
    for k, n in sizes.items():
        if k == name:
            return slice(start, start + n)
        start += n
    raise KeyError(name)


def jit_step(cell):
    return jax.jit(cell._memory_step)


def _warm_carry(cell, batch, steps=4, seed=0):
    """A carry after a few steps with random interface vectors (non-trivial state)."""
    rng = np.random.default_rng(seed)
    carry = cell.initial_carry(batch)
    for _ in range(steps):
        xi = jnp.asarray(rng.normal(scale=2.0, size=(batch, cell.interface_size())), jnp.float32)
        carry = jit_step(cell)(carry, carry.controller, xi)
    return carry


def test_closed_write_gate_leaves_memory_usage_and_links_unchanged():
    cell = small_cell()
    rng = np.random.default_rng(8)
    carry = _warm_carry(cell, 2)
    for _ in range(2):
        xi = rng.normal(scale=2.0, size=(2, cell.interface_size()))
        xi[:, _slot(cell, "write_gate")] = -1e4
        xi[:, _slot(cell, "free_gates")] = -1e4
        new = jit_step(cell)(carry, carry.controller, jnp.asarray(xi, jnp.float32))
        np.testing.assert_array_equal(new.write_weights, 0.0)
        for k in ("memory", "link", "precedence"):
            np.testing.assert_allclose(getattr(new, k), getattr(carry, k), atol=1e-7, err_msg=k)
        prev_ww_zero = not np.any(np.asarray(carry.write_weights))
        if prev_ww_zero:  # the second step: the last write was gated off too
            np.testing.assert_allclose(new.usage, carry.usage, atol=1e-7)
        carry = new
    assert prev_ww_zero


def test_content_read_with_a_sharp_key_returns_that_row():
    cell = small_cell(word_size=8)
    B, N, W = 2, cell.memory_size, cell.word_size
    rng = np.random.default_rng(9)
    memory = rng.normal(size=(B, N, W))
    carry = cell.initial_carry(B)._replace(memory=jnp.asarray(memory, jnp.float32))
    rows = np.array([[3, 1], [0, 5]])  # per sample, per read head
    xi = np.zeros((B, cell.interface_size()))
    xi[:, _slot(cell, "write_gate")] = -1e4
    xi[:, _slot(cell, "read_keys")] = memory[np.arange(B)[:, None], rows].reshape(B, -1)
    xi[:, _slot(cell, "read_strengths")] = 1e3  # beta ~ 1000
    modes = np.tile([-1e4, 1e4, -1e4], cell.num_reads)  # content mode only
    xi[:, _slot(cell, "read_modes")] = modes
    new = jit_step(cell)(carry, carry.controller, jnp.asarray(xi, jnp.float32))
    np.testing.assert_allclose(new.memory, memory, atol=1e-6)
    np.testing.assert_allclose(new.read_weights, np.eye(N)[rows], atol=1e-5)
    np.testing.assert_allclose(new.reads, memory[np.arange(B)[:, None], rows], atol=1e-4)


def test_allocation_write_goes_to_the_least_used_row():
    """Allocation gate and write gate open: a full write lands on the least used row."""
    cell = small_cell()
    B = 1
    usage = np.array([[0.9, 0.8, 0.05, 0.7, 0.6, 0.95]])
    carry = cell.initial_carry(B)._replace(usage=jnp.asarray(usage, jnp.float32))
    xi = np.zeros((B, cell.interface_size()))
    xi[:, _slot(cell, "write_gate")] = 1e4
    xi[:, _slot(cell, "allocation_gate")] = 1e4
    xi[:, _slot(cell, "free_gates")] = -1e4
    xi[:, _slot(cell, "erase")] = 1e4
    xi[:, _slot(cell, "write_vector")] = [1.0, 2.0, 3.0, 4.0]
    new = jit_step(cell)(carry, carry.controller, jnp.asarray(xi, jnp.float32))
    np.testing.assert_allclose(new.write_weights, [np_allocation(usage[0])], atol=1e-6)
    assert int(np.argmax(new.write_weights[0])) == 2
    np.testing.assert_allclose(new.memory[0, 2], [0.95, 1.9, 2.85, 3.8], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Through seqjax.rnn
# ---------------------------------------------------------------------------------------------


def test_rnn_matches_a_python_loop_of_step_with_masking():
    cell = small_cell()
    params = cell.init(jax.random.PRNGKey(0))
    B, T = 3, 9
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, cell.input_size))
    lengths = jnp.array([9, 4, 0])
    ys, final = rnn(cell, params, xs, seq_lengths=lengths)
    assert ys.shape == (B, T, cell.hidden_size)

    carry = cell.initial_carry(B)
    step = jax.jit(cell.step)
    outs = []
    for t in range(T):
        new, y = step(params, carry, cell.project(params, xs[:, t]))
        m = np.asarray(t < lengths)
        carry = jax.tree.map(lambda a, b: jnp.where(m.reshape((B,) + (1,) * (a.ndim - 1)), a, b),
                             new, carry)
        outs.append(np.where(m[:, None], np.asarray(y), 0.0))
    want = np.stack(outs, 1)
    np.testing.assert_allclose(ys, want, atol=1e-5)
    assert not np.any(np.asarray(ys[1, 4:])) and not np.any(np.asarray(ys[2]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), final, carry)
    # a zero-length sequence keeps the initial carry
    init = cell.initial_carry(B)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[2], b[2]), final, init)


@pytest.mark.parametrize("remat,sizes", [(False, "small"), (True, "small"), (True, "default")])
def test_grad_is_finite_over_200_steps(remat, sizes):
    cell = small_cell() if sizes == "small" else DNC(input_size=3)  # default: N=32, W=16, R=4
    params = cell.init(jax.random.PRNGKey(2))
    xs = jax.random.normal(jax.random.PRNGKey(3), (2, 200, cell.input_size))
    lengths = jnp.array([200, 150])

    def loss(p):
        ys, final = rnn(cell, p, xs, seq_lengths=lengths, remat=remat)
        return jnp.mean(ys ** 2) + jnp.mean(final.memory ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(np.any(np.asarray(g) != 0) for g in leaves)
    assert np.any(np.asarray(grads["interface"]["w"]) != 0)


def test_check_params_names_wrong_shapes():
    cell = small_cell()
    params = cell.init(jax.random.PRNGKey(0))
    cell.check_params(params)
    bad = dict(params, interface=dict(params["interface"], w=jnp.zeros((8, 7))))
    with pytest.raises(ValueError, match=r"\['interface'\]\['w'\]"):
        cell.check_params(bad)
    xs = jnp.zeros((2, 3, cell.input_size))
    with pytest.raises(ValueError, match="interface"):
        rnn(cell, bad, xs)
    bad_ctrl = dict(params, controller=dict(params["controller"], w_h=jnp.zeros((8, 8))))
    with pytest.raises(ValueError, match="w_h"):
        cell.check_params(bad_ctrl)
    with pytest.raises(ValueError, match="lack"):
        cell.check_params({"controller": params["controller"]})


@pytest.mark.parametrize("field,value", [("input_size", 0), ("controller_size", -1),
                                         ("memory_size", 0), ("word_size", 2.0),
                                         ("num_reads", True), ("clip_value", 0.0)])
def test_bad_fields_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        small_cell(**{field: value})


def test_unknown_controller_kind_raises():
    with pytest.raises(ValueError, match="nope"):
        small_cell(controller="nope")


def test_gru_controller_and_no_clipping_run():
    cell = small_cell(controller="gru", clip_value=None)
    params = cell.init(jax.random.PRNGKey(0))
    ys, final = rnn(cell, params, jnp.ones((2, 5, cell.input_size)))
    assert ys.shape == (2, 5, cell.hidden_size) and np.all(np.isfinite(np.asarray(ys)))
    assert dataclasses.replace(cell, clip_value=5.0).clip_value == 5.0


# ---------------------------------------------------------------------------------------------
# A tiny learning check
# ---------------------------------------------------------------------------------------------


def copy_batch(key, batch, length=3, bits=4):
    """Inputs ``[B, 2L+1, bits+1]``: L random bit vectors, a delimiter, L blanks; targets: the
    bits again during the last L steps."""
    seq = jax.random.bernoulli(key, 0.5, (batch, length, bits)).astype(jnp.float32)
    steps = 2 * length + 1
    xs = jnp.zeros((batch, steps, bits + 1))
    xs = xs.at[:, :length, :bits].set(seq).at[:, length, bits].set(1.0)
    return xs, seq


def test_dnc_learns_a_short_copy_task():
    cell = DNC(input_size=5, controller_size=32, memory_size=8, word_size=8, num_reads=1)
    length, bits = 3, 4
    k_cell, k_out = jax.random.split(jax.random.PRNGKey(0))
    params = {"cell": cell.init(k_cell),
              "out": {"w": jax.random.normal(k_out, (cell.hidden_size, bits)) * 0.1,
                      "b": jnp.zeros((bits,))}}

    def loss_fn(p, xs, seq):
        ys, _ = rnn(cell, p["cell"], xs)
        logits = ys[:, length + 1:] @ p["out"]["w"] + p["out"]["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, seq))

    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def train(p, s, key):
        def body(carry, k):
            p, s = carry
            xs, seq = copy_batch(k, 32, length, bits)
            loss, g = jax.value_and_grad(loss_fn)(p, xs, seq)
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss
        (p, s), losses = jax.lax.scan(body, (p, s), jax.random.split(key, 300))
        return p, s, losses

    params, state, losses = train(params, state, jax.random.PRNGKey(1))
    losses = np.asarray(losses)
    first, last = losses[:10].mean(), losses[-20:].mean()
    print(f"copy loss {first:.4f} -> {last:.4f}")
    assert np.all(np.isfinite(losses))
    assert last < 0.4 * first  # observed 0.15-0.26 over seeds
