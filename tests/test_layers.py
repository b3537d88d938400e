"""Layers built on rnn: bidirectional merges, stacked dropout, pyramid time reduction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import GRU, LSTM, bidirectional, pyramid, reduce_time, rnn, stacked


def test_reduce_time_concatenates_neighbours_and_halves_lengths():
    xs = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    ys, lens = reduce_time(xs, jnp.array([5, 2]), factor=2)
    assert ys.shape == (2, 2, 6)
    np.testing.assert_array_equal(ys[0, 1], jnp.concatenate([xs[0, 2], xs[0, 3]]))
    np.testing.assert_array_equal(lens, [2, 1])
    with pytest.raises(ValueError, match="factor=0"):
        reduce_time(xs, None, factor=0)


def test_pyramid_is_bidirectional_over_reduced_sequence():
    cell = LSTM(6, 4)
    params = {"fw": cell.init(jax.random.PRNGKey(0)), "bw": cell.init(jax.random.PRNGKey(1))}
    xs = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 3))
    lens = jnp.array([9, 4])
    ys, new_lens, _ = pyramid(cell, params, xs, seq_lengths=lens)
    reduced = xs[:, :8].reshape(2, 4, 6)
    fw, _ = rnn(cell, params["fw"], reduced, seq_lengths=lens // 2)
    bw, _ = rnn(cell, params["bw"], reduced, seq_lengths=lens // 2, reverse=True)
    np.testing.assert_allclose(ys, jnp.concatenate([fw, bw], -1), atol=1e-6)
    np.testing.assert_array_equal(new_lens, [4, 2])


def test_bidirectional_sum_and_param_errors():
    cell = GRU(3, 4)
    params = {"fw": cell.init(jax.random.PRNGKey(0)), "bw": cell.init(jax.random.PRNGKey(1))}
    xs = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3))
    cat, _ = bidirectional(cell, params, xs)
    summed, _ = bidirectional(cell, params, xs, merge="sum")
    np.testing.assert_allclose(summed, cat[..., :4] + cat[..., 4:], atol=1e-6)
    with pytest.raises(ValueError, match="merge='max'"):
        bidirectional(cell, params, xs, merge="max")
    with pytest.raises(ValueError, match=r"keys \['bw', 'fw'\]"):
        bidirectional(cell, params["fw"], xs)


def test_stacked_dropout_only_with_key_and_layer_count_checks():
    cells = seqjax.stack_cells("lstm", 3, 4, 3)
    params = seqjax.init_stack(cells, jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    plain, _ = stacked(cells, params, xs)
    no_key, _ = stacked(cells, params, xs, dropout=0.5)
    np.testing.assert_array_equal(plain, no_key)
    k1, _ = stacked(cells, params, xs, dropout=0.5, key=jax.random.PRNGKey(3))
    k2, _ = stacked(cells, params, xs, dropout=0.5, key=jax.random.PRNGKey(4))
    assert not np.allclose(k1, plain) and not np.allclose(k1, k2)
    # By hand: layer outputs between layers are dropped, the last layer's are not.
    ys0, _ = rnn(cells[0], params[0], xs)
    key, sub = jax.random.split(jax.random.PRNGKey(3))
    keep = jax.random.bernoulli(sub, 0.5, ys0.shape)
    ys1, _ = rnn(cells[1], params[1], jnp.where(keep, ys0 / 0.5, 0.0))
    _, sub = jax.random.split(key)
    keep = jax.random.bernoulli(sub, 0.5, ys1.shape)
    ys2, _ = rnn(cells[2], params[2], jnp.where(keep, ys1 / 0.5, 0.0))
    np.testing.assert_allclose(k1, ys2, atol=1e-6)
    with pytest.raises(ValueError, match="len\\(cells\\)=3 != len\\(params\\)=2"):
        stacked(cells, params[:2], xs)
    with pytest.raises(ValueError, match="num_layers=0"):
        seqjax.stack_cells("lstm", 3, 4, 0)
