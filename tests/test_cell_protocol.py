"""The public cell protocol: the worked example of docs/cells.md, and ``rnn(return_states=...)``.

The IndRNN code block of ``docs/cells.md`` is executed as is: a new cell needs no change
anywhere else in seqjax.
"""

from __future__ import annotations

import pathlib
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax
from seqjax.core.cells import LSTM, Cell
from seqjax.core.layers import stacked
from seqjax.core.memory import NTM, run_with_states

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "cells.md"


@pytest.fixture(scope="module")
def IndRNN():
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "class IndRNN" in b)
    module = types.ModuleType("cells_doc_example")  # a real module: dataclasses looks it up
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    cls = module.IndRNN
    assert issubclass(cls, Cell)
    return cls


def _numpy_indrnn(params, xs, lengths, reverse):
    """h_t = relu(x_t W + u * h_{t-1} + b) within each length; zeros past it."""
    w, u, b = (np.asarray(params[k], np.float64) for k in ("w_x", "u", "b"))
    xs = np.asarray(xs, np.float64)
    batch, steps, _ = xs.shape
    ys = np.zeros((batch, steps, w.shape[1]))
    final = np.zeros((batch, w.shape[1]))
    for i in range(batch):
        h = np.zeros(w.shape[1])
        order = range(lengths[i])
        for t in (reversed(order) if reverse else order):
            h = np.maximum(xs[i, t] @ w + u * h + b, 0.0)
            ys[i, t] = h
        final[i] = h
    return ys, final


@pytest.mark.parametrize("reverse", [False, True])
def test_doc_cell_matches_numpy(IndRNN, reverse):
    cell = IndRNN(input_size=3, hidden_size=5)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (4, 7, 3))
    lengths = np.array([7, 3, 0, 5])
    ys, h_final = seqjax.rnn(cell, params, xs, seq_lengths=lengths, reverse=reverse)
    want_ys, want_final = _numpy_indrnn(params, xs, lengths, reverse)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_final, want_final, rtol=1e-5, atol=1e-5)
    _, _, states = seqjax.rnn(cell, params, xs, seq_lengths=lengths, reverse=reverse,
                              return_states=True)
    np.testing.assert_allclose(states, want_ys, rtol=1e-5, atol=1e-5)


def test_doc_cell_stacked(IndRNN):
    cells = [IndRNN(3, 6), IndRNN(6, 4)]
    params = [c.init(k) for c, k in zip(cells, jax.random.split(jax.random.key(2)))]
    xs = jax.random.normal(jax.random.key(3), (2, 5, 3))
    lengths = np.array([5, 2])
    ys, finals = stacked(cells, params, xs, seq_lengths=lengths)
    h1, _ = _numpy_indrnn(params[0], xs, lengths, False)
    h2, f2 = _numpy_indrnn(params[1], h1, lengths, False)
    np.testing.assert_allclose(ys, h2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(finals[-1], f2, rtol=1e-5, atol=1e-5)
    ys_bi, _ = stacked(cells, [{"fw": p, "bw": p} for p in params], xs, seq_lengths=lengths,
                       bidirectional=True, merge="sum")
    assert ys_bi.shape == (2, 5, 4)


def test_doc_cell_gradients_match_finite_differences(IndRNN):
    cell = IndRNN(3, 4)
    with jax.enable_x64():
        params = jax.tree.map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(4)))
        # a positive bias keeps the pre-activations away from relu's kink
        params["b"] = params["b"] + 0.5
        xs = jax.random.normal(jax.random.key(5), (2, 6, 3), jnp.float64)
        lengths = jnp.array([6, 4])

        def loss(p, x):
            ys, h = seqjax.rnn(cell, p, x, seq_lengths=lengths, reverse=True)
            return jnp.sum(jnp.sin(ys)) + jnp.sum(h ** 2)

        check_grads(loss, (params, xs), order=1, modes=("rev",), eps=1e-6,
                                  atol=1e-6, rtol=1e-6)


def _python_loop(cell, params, xs, carry):
    """Carries of every step by ``cell.step``, batch-major."""
    gx = cell.project(params, xs)
    out = []
    for t in range(xs.shape[1]):
        carry, _ = cell.step(params, carry, gx[:, t])
        out.append(carry)
    return jax.tree.map(lambda *cs: jnp.stack(cs, axis=1), *out)


def test_states_match_python_loop_lstm():
    cell = LSTM(3, 5)
    params = cell.init(jax.random.key(6))
    xs = jax.random.normal(jax.random.key(7), (3, 6, 3))
    want = _python_loop(cell, params, xs, cell.initial_carry(3))
    ys, final, states, res = seqjax.rnn(cell, params, xs, return_states=True,
                                        return_residuals=True)
    for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys, want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final[1], want[1][:, -1], rtol=1e-5, atol=1e-6)
    assert res[0].shape == (3, 6, 4 * 5)  # activated gates, batch-major
    # with lengths: masked to zero past each length, final carry at each length
    lengths = np.array([6, 2, 0])
    ys_l, final_l, states_l = seqjax.rnn(cell, params, xs, seq_lengths=lengths,
                                         return_states=True)
    for b, n in enumerate(lengths):
        for a, w in zip(jax.tree.leaves(states_l), jax.tree.leaves(want)):
            np.testing.assert_allclose(a[b, :n], w[b, :n], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(a[b, n:], 0.0)
    plain_ys, plain_final = seqjax.rnn(cell, params, xs, seq_lengths=lengths)
    np.testing.assert_allclose(ys_l, plain_ys, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(final_l), jax.tree.leaves(plain_final)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_states_match_python_loop_ntm():
    cell = NTM(4, controller_size=8, memory_size=6, word_size=3)
    params = cell.init(jax.random.key(8))
    xs = jax.random.normal(jax.random.key(9), (2, 5, 4))
    want = _python_loop(cell, params, xs, cell.initial_carry(2))
    _, _, states = seqjax.rnn(cell, params, xs, return_states=True)
    ys, carries = run_with_states(cell, params, xs)
    for a, b, c in zip(jax.tree.leaves(states), jax.tree.leaves(want),
                       jax.tree.leaves(carries)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys, cell.carry_hidden(want), rtol=1e-5, atol=1e-6)


def test_states_empty_sequences():
    cell = LSTM(3, 5)
    params = cell.init(jax.random.key(10))
    ys, _, states, res = seqjax.rnn(cell, params, jnp.zeros((2, 0, 3)), return_states=True,
                                    return_residuals=True)
    assert ys.shape == (2, 0, 5) and states[0].shape == (2, 0, 5)
    assert res[0].shape == (2, 0, 20)
