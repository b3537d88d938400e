"""The NNX wrappers compute exactly what the functional core computes, and train."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import seqjax
import seqjax.nn as snn


@pytest.mark.parametrize("module,kind,kwargs", [
    (snn.LSTM, "lstm", {}),
    (snn.LSTM, "peephole_lstm", {"peephole": True}),
    (snn.GRU, "gru_before", {"reset": "before"}),
    (snn.RNN, "rnn_relu", {"nonlinearity": "relu"}),
])
def test_module_equals_functional_stack(module, kind, kwargs):
    m = module(3, 5, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0), **kwargs)
    assert m.cells == tuple(seqjax.stack_cells(kind, 3, 5, 2, bidirectional=True))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
    lens = jnp.array([6, 2])
    ys, carries = m(xs, seq_lengths=lens)
    ys_f, carries_f = seqjax.stacked(m.cells, m.params, xs, seq_lengths=lens, bidirectional=True)
    np.testing.assert_array_equal(ys, ys_f)
    assert ys.shape == (2, 6, m.output_size) == (2, 6, 10)


def test_module_trains_with_optimizer_several_steps_and_dropout():
    m = snn.LSTM(2, 8, num_layers=2, dropout=0.2, rngs=nnx.Rngs(0, dropout=1))
    head = nnx.Linear(8, 1, rngs=nnx.Rngs(2))
    model = nnx.List([m, head])
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    xs = jax.random.normal(jax.random.PRNGKey(3), (16, 5, 2))
    target = jnp.sum(xs[:, :, 0], axis=1, keepdims=True)

    def loss(model, key):
        ys, _ = model[0](xs, train=True, key=key)
        return jnp.mean((model[1](ys[:, -1]) - target) ** 2)

    @nnx.jit
    def step(model, opt, key):
        value, grads = nnx.value_and_grad(loss)(model, key)
        opt.update(model, grads)
        return value

    losses = [float(step(model, opt, jax.random.PRNGKey(i))) for i in range(60)]
    assert losses[-1] < 0.5 * losses[0]
    # Dropout only with train=True; evaluation is deterministic.
    a, _ = m(xs)
    b, _ = m(xs)
    np.testing.assert_array_equal(a, b)
    c, _ = m(xs, train=True, key=jax.random.PRNGKey(0))
    assert not np.allclose(a, c)


@pytest.mark.parametrize("module, kwargs", [
    (snn.NTM, dict(controller_size=8, memory_size=6, word_size=4, num_reads=2)),
    (snn.DNC, dict(controller_size=8, memory_size=6, word_size=4, num_reads=2)),
])
def test_memory_modules_equal_the_functional_cell_and_train(module, kwargs):
    m = module(3, rngs=nnx.Rngs(0), **kwargs)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    lens = jnp.array([5, 2])
    ys, carry = m(xs, seq_lengths=lens)
    ys_f, carry_f = seqjax.rnn(m.cell, m.param_tree(), xs, seq_lengths=lens)
    np.testing.assert_array_equal(ys, ys_f)
    np.testing.assert_array_equal(carry.memory, carry_f.memory)
    assert ys.shape == (2, 5, m.output_size) == (2, 5, 8 + 2 * 4)

    head = nnx.Linear(m.output_size, 1, rngs=nnx.Rngs(2))
    model = nnx.List([m, head])
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    target = jnp.sum(xs[:, :, 0], axis=1, keepdims=True)

    def loss(model):
        ys, _ = model[0](xs)
        return jnp.mean((model[1](ys[:, -1]) - target) ** 2)

    @nnx.jit
    def step(model, opt):
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    losses = [float(step(model, opt)) for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0]
