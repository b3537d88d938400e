"""The scan backend's hand-written backward: the cells' fast ``project_vjp`` path against JAX's
autodiff through the same loop (``remat=True`` takes the autodiff path), and the guard that
falls back to ``jax.vjp`` when a subclass changes the input projection."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.core.cells import LSTM


def _grads(cell, params, xs, lengths, remat):
    def loss(p, x):
        ys = seqjax.rnn(cell, p, x, seq_lengths=lengths, backend="scan", remat=remat)[0]
        return jnp.sum(ys * jnp.cos(ys))
    return jax.grad(loss, argnums=(0, 1))(params, xs)


def _assert_close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=2e-4, atol=2e-5)


@dataclasses.dataclass(frozen=True)
class _ScaledInputLSTM(LSTM):
    """An LSTM whose projection differs from its parent's: project_vjp must not be used."""

    def input_projection(self, params, xs):
        return super().input_projection(params, 2.0 * xs + 1.0)


@pytest.mark.parametrize("cell", [seqjax.make_cell("lstm", 5, 7), seqjax.make_cell("gru", 5, 7),
                                  _ScaledInputLSTM(5, 7)], ids=["lstm", "gru", "subclass"])
def test_scan_backward_matches_autodiff(cell):
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 21, 5))  # T not a multiple of the chunk
    lengths = jnp.array([21, 9, 0])
    _assert_close(_grads(cell, params, xs, lengths, False), _grads(cell, params, xs, lengths, True))


@pytest.mark.parametrize("kind,options", [("lstm", {}), ("peephole_lstm", {}),
                                          ("gru", {"reset": "after"}),
                                          ("gru", {"reset": "before"}), ("rnn", {})],
                         ids=["lstm", "peephole", "gru-after", "gru-before", "rnn"])
def test_transposed_recurrent_matmul_form(kind, options, monkeypatch):
    """Both forms of the recurrent matmul (``_recurrent_matmul``: through ``w_h_t`` for weights of
    at least ``TRANSPOSED_MATMUL_BYTES``, the plain one below) give the same outputs and
    gradients, forward and hand-written backward alike; the small cells of the other tests
    take only the plain form."""
    from seqjax.core import cells
    cell = seqjax.make_cell(kind, 5, 7, **options)
    params = cell.init(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda p: p + 0.1, params)  # peepholes and biases non-zero
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 21, 5))
    lengths = jnp.array([21, 9, 0])
    plain = _grads(cell, params, xs, lengths, False)
    ys_plain = seqjax.rnn(cell, params, xs, seq_lengths=lengths)[0]
    monkeypatch.setattr(cells, "TRANSPOSED_MATMUL_BYTES", 0)  # read when the step is traced
    _assert_close(_grads(cell, params, xs, lengths, False), plain)
    _assert_close(seqjax.rnn(cell, params, xs, seq_lengths=lengths)[0], ys_plain)


@pytest.mark.parametrize("kind,options", [("gru", {"reset": "after"}), ("gru", {"reset": "before"}),
                                          ("lstm", {}), ("minlstm", {}),
                                          ("lru", {"state_size": 3})],
                         ids=["gru-after", "gru-before", "lstm", "minlstm", "lru"])
def test_gate_blocks_in_loop(kind, options, monkeypatch):
    """``split_gates_in_loop`` (the loops scan ``gx`` as its blocks, ``gx_blocks()``, and join
    them per step; on by default for the GRU, the minimal RNNs and the LRU) changes no value:
    outputs, final carry, per-step states and gradients equal with it off and on, through the
    hand-written VJP, the remat/autodiff path (the minLSTM's and LRU's only one) and
    ``return_states``."""
    cell = seqjax.make_cell(kind, 5, 7, **options)
    params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.PRNGKey(0)))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 21, 5))
    lengths = jnp.array([21, 9, 0])

    def run():
        outs = (seqjax.rnn(cell, params, xs, seq_lengths=lengths)[:2],
                seqjax.rnn(cell, params, xs, seq_lengths=lengths, return_states=True)[2])
        grads = [_grads(cell, params, xs, lengths, remat) for remat in (False, True)]
        return outs, grads

    results = []
    for on in (False, True):
        monkeypatch.setattr(type(cell), "split_gates_in_loop", on)  # read when the loop is traced
        results.append(run())
    _assert_close(*results)
