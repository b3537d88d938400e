"""Tests for seqjax.analysis: the maths of gradient flow, spectra, gates, clipping and rendering.

References are independent: numpy matrix powers and hand-written numpy cells, ``T`` separate
``jax.grad`` calls, ``jax.grad`` through :func:`seqjax.rnn` (its hand-written VJP) and
``SequenceModel.apply``, ``numpy.linalg`` SVD and eigenvalues, and fit's own logged norms.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import rnn
from seqjax.analysis import (
    LinearRNN,
    by_distance,
    cell_gradient_flow,
    cell_states,
    char_features,
    clipped_norm,
    gate_statistics,
    gate_trajectory,
    geometric_rate,
    grad_norm_history,
    hidden_states,
    html_text,
    jacobian_spectrum,
    model_gate_trajectories,
    model_gradient_flow,
    model_states,
    render_html,
    render_png,
    spectral_radius,
    step_jacobian,
    top_units,
    track_grad_norms,
    unit_correlations,
    weight_spectrum,
)
from seqjax.core.cells import GRU, LSTM, SimpleRNN
from seqjax.core.tcn import receptive_field
from seqjax.models import SequenceModel
from seqjax.train import fit, make_optimizer


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _params(init, seed: int = 0, scale: float = 0.5, dtype=np.float32):
    """Random normal params with the structure of ``init(key)`` (numpy: no init compilations)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init, jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


# --------------------------------------------------------------------------------------------
# Gradient flow: closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0.6, 1.0, 1.4])
def test_linear_rnn_flow_is_transposed_matrix_power(x64, radius):
    """h_t = W h_{t-1} + x_t, L = sum_b <g_b, h_T>: ||dL/dh_t|| = ||(W^T)^(T-t) g|| exactly."""
    rng = np.random.default_rng(0)
    batch, steps, hid = 2, 13, 5
    w = rng.standard_normal((hid, hid))
    w *= radius / np.abs(np.linalg.eigvals(w)).max()  # vanish / hold / explode
    cell = LinearRNN(hid, hid)
    # seqjax is row-major (h_t = h_{t-1} @ w_h + x_t @ w_x), so w_h = W^T and w_x = I.
    params = {"w_x": jnp.eye(hid), "w_h": jnp.asarray(w.T), "b": jnp.zeros(hid)}
    xs = jnp.asarray(rng.standard_normal((batch, steps, hid)))
    g = rng.standard_normal((batch, hid))
    flow = cell_gradient_flow(cell, params, xs, cotangent=g)
    assert flow.dh.dtype == jnp.float64
    expected = np.array([[np.linalg.norm(np.linalg.matrix_power(w.T, steps - 1 - t) @ g[b])
                          for t in range(steps)] for b in range(batch)])
    np.testing.assert_allclose(flow.dh, expected, rtol=1e-12)
    np.testing.assert_allclose(flow.dx, expected, rtol=1e-12)  # dL/dx_t = W_x dL/dh_t, W_x = I
    assert flow.dc is None
    np.testing.assert_allclose(flow.loss, np.sum(g * np.asarray(cell_states(cell, params, xs))
                                                 [:, -1]), rtol=1e-12)
    # by_distance: entry d is the batch mean at t = T-1-d
    np.testing.assert_allclose(by_distance(flow.dh), expected.mean(0)[::-1], rtol=1e-12)


def test_linear_rnn_with_orthogonal_weights_has_rate_exactly_rho(x64):
    rng = np.random.default_rng(1)
    hid, steps = 6, 20
    for rho in (0.5, 1.0, 1.5):
        params = {"w_x": jnp.eye(hid), "w_h": jnp.asarray(rho * _orthogonal(rng, hid)),
                  "b": jnp.zeros(hid)}
        flow = cell_gradient_flow(LinearRNN(hid, hid), params,
                                  jnp.asarray(rng.standard_normal((3, steps, hid))))
        curve = by_distance(flow.dh)
        np.testing.assert_allclose(curve, rho ** np.arange(steps), rtol=1e-12)
        assert geometric_rate(curve) == pytest.approx(rho, rel=1e-10)


def test_tanh_rnn_with_small_weights_decays_geometrically_within_spectral_radius(x64):
    """|tanh'| <= 1, so ||dL/dh_t|| <= ||W||^(T-t) ||g||; for W = rho Q (Q orthogonal) the
    spectral norm is the spectral radius rho, and with small inputs tanh' ~ 1: rate ~ rho."""
    rng = np.random.default_rng(2)
    hid, steps, rho = 8, 25, 0.7
    cell = SimpleRNN(3, hid)
    params = {"w_x": jnp.asarray(0.1 * rng.standard_normal((3, hid))),
              "w_h": jnp.asarray(rho * _orthogonal(rng, hid)), "b": jnp.zeros(hid)}
    assert spectral_radius(params["w_h"]) == pytest.approx(rho)
    g = rng.standard_normal(hid)
    flow = cell_gradient_flow(cell, params, jnp.asarray(rng.standard_normal((4, steps, 3))),
                              cotangent=g)
    dh = np.asarray(flow.dh)
    bound = rho ** np.arange(steps)[::-1] * np.linalg.norm(g)
    assert np.all(dh <= bound * (1 + 1e-12))
    ratios = dh[:, :-1] / dh[:, 1:]  # ||dL/dh_t|| / ||dL/dh_{t+1}||
    assert np.all(ratios <= rho * (1 + 1e-12))
    rate = geometric_rate(by_distance(flow.dh))
    assert 0.9 * rho < rate <= rho
    assert dh[:, 0].max() < 1e-3 * np.linalg.norm(g)


# --------------------------------------------------------------------------------------------
# Gradient flow: one pass equals T separate gradients
# --------------------------------------------------------------------------------------------


def _nonlinear_loss(hs):
    return jnp.sum(jnp.sin(hs[:, -1] @ jnp.arange(1.0, hs.shape[-1] + 1))) + 0.5 * jnp.sum(
        jnp.square(hs[:, hs.shape[1] // 2]))


@pytest.mark.parametrize("cell", [LSTM(3, 4), GRU(3, 4)], ids=["lstm", "gru"])
def test_flow_equals_separate_grads(x64, cell):
    rng = np.random.default_rng(3)
    batch, steps = 2, 7
    params = _params(cell.init, 1, dtype=np.float64)
    xs = jnp.asarray(rng.standard_normal((batch, steps, 3)))
    flow = cell_gradient_flow(cell, params, xs, _nonlinear_loss)

    carries = cell_states(cell, params, xs)  # [B, T, ...]
    hs = cell.carry_hidden(carries)

    def loss_from(t, carry_t):
        """L with the state after step t replaced by carry_t, run on from there (plain steps)."""
        carry, out = None, []
        for s in range(steps):
            fixed = jax.tree.map(lambda c: c[:, s], carries)
            stepped = fixed if carry is None else cell(params, carry, xs[:, s])[0]
            carry = jax.tree.map(lambda a, b, c: jnp.where(s < t, a, jnp.where(s == t, b, c)),
                                 fixed, carry_t, stepped)
            out.append(cell.carry_hidden(carry))
        return _nonlinear_loss(jnp.stack(out, axis=1))

    grad_at = jax.jit(jax.grad(loss_from, argnums=1))  # one compilation, T separate calls
    for t in range(steps):
        carry_t = jax.tree.map(lambda c: c[:, t], carries)
        grad = grad_at(t, carry_t)
        np.testing.assert_allclose(flow.dh[:, t], np.linalg.norm(cell.carry_hidden(grad), axis=-1),
                                   rtol=1e-10, atol=1e-14)
        if isinstance(cell, LSTM):
            np.testing.assert_allclose(flow.dc[:, t], np.linalg.norm(grad[1], axis=-1),
                                       rtol=1e-10, atol=1e-14)
    # dx against jax.grad through seqjax.rnn (the library forward with its hand-written VJP)
    dxs = jax.jit(jax.grad(lambda x: _nonlinear_loss(rnn(cell, params, x, backend="scan")[0])))(
        xs)
    np.testing.assert_allclose(flow.dx, np.linalg.norm(dxs, axis=-1), rtol=1e-10)
    np.testing.assert_allclose(flow.loss, _nonlinear_loss(hs), rtol=1e-12)


@pytest.mark.parametrize("arch,layers", [("lstm", 2), ("gru", 1), ("tcn", 2)])
def test_model_states_and_flow_match_model_apply(arch, layers):
    rng = np.random.default_rng(4)
    model = SequenceModel(arch, 3, 2, 5, num_layers=layers, kernel_size=2)
    params = _params(model.init, 2)
    xs = jnp.asarray(rng.standard_normal((3, 9, 3)), jnp.float32)
    out, states = model_states(model, params, xs)
    np.testing.assert_allclose(out, jax.jit(model.apply)(params, xs), rtol=1e-5, atol=1e-6)
    assert states["h"].shape == (layers, 3, 9, 5)
    assert ("c" in states) == (arch == "lstm")

    def loss(o):
        return jnp.sum(o[:, -1] ** 2)

    flow = model_gradient_flow(model, params, xs, loss)
    dxs = jax.jit(jax.grad(lambda x: loss(model.apply(params, x))))(xs)
    np.testing.assert_allclose(flow.dx, np.linalg.norm(dxs, axis=-1), rtol=1e-4, atol=1e-7)
    assert flow.dh.shape == (layers, 3, 9)
    if arch == "lstm":
        assert flow.dc.shape == (layers, 3, 9)
    # the top layer's state h_t feeds only output t: dL_T/dh_t = 0 for t < T-1
    if arch == "tcn":
        assert np.all(np.asarray(flow.dh[-1, :, :-1]) == 0.0)


@pytest.mark.parametrize("kernel,levels", [(2, 3), (3, 2)])
def test_tcn_gradient_is_exactly_zero_beyond_receptive_field(kernel, levels):
    rf = receptive_field(kernel, levels)
    steps = rf + 9
    model = SequenceModel("tcn", 2, 1, 6, num_layers=levels, kernel_size=kernel)
    params = _params(model.init, 3)
    xs = jnp.asarray(np.random.default_rng(5).random((4, steps, 2)), jnp.float32)
    flow = model_gradient_flow(model, params, xs, lambda o: jnp.sum(o[:, -1]))
    dx = np.asarray(flow.dx)
    assert np.all(dx[:, : steps - rf] == 0.0)  # exactly: no path from x_t to y_T
    assert np.all(dx[:, steps - rf:].mean(axis=0) > 0.0)  # every step inside is reached
    # block l's output reaches y_T through blocks m > l only, at the distances
    # sum_m (a_m + b_m) 2^m with taps a_m, b_m in [0, K): at most 2(K-1)(2^L - 2^(l+1)) steps,
    # and with gaps (the dilated grid): exactly zero elsewhere.
    for layer in range(levels):
        reached = {0}
        for m in range(layer + 1, levels):
            reached = {d + (a + b) * 2**m for d in reached for a in range(kernel)
                       for b in range(kernel)}
        assert max(reached) == 2 * (kernel - 1) * (2**levels - 2 ** (layer + 1))
        curve = by_distance(flow.dh[layer])  # batch mean by distance from T-1
        np.testing.assert_array_equal(np.flatnonzero(curve), sorted(reached))


def test_token_model_flow_is_with_respect_to_embeddings():
    model = SequenceModel("gru", 7, 7, 4, embed_size=3)
    params = _params(model.init, 4)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 7, (2, 6)), jnp.int32)

    def loss(o):
        return jnp.sum(jax.nn.log_softmax(o[:, -1])[:, 0])

    flow = model_gradient_flow(model, params, tokens, loss)
    emb = jnp.take(params["embed"], tokens, axis=0)
    enc = dict(params)

    def via_embeddings(e):
        hs, _ = rnn(model.cells[0], enc["encoder"][0], e, backend="scan")
        return loss(hs @ params["readout"]["w"] + params["readout"]["b"])

    dx = jax.jit(jax.grad(via_embeddings))(emb)
    np.testing.assert_allclose(flow.dx, np.linalg.norm(dx, axis=-1),
                               rtol=1e-4, atol=1e-7)
    with pytest.raises(TypeError, match="token ids"):
        model_gradient_flow(model, params, emb, loss)
    with pytest.raises(TypeError, match="SequenceModel"):
        model_states(object(), params, tokens)


# --------------------------------------------------------------------------------------------
# Spectra
# --------------------------------------------------------------------------------------------


def test_weight_spectrum_equals_numpy():
    cell = LSTM(3, 5)
    params = _params(cell.init, 5)
    spec = weight_spectrum(cell, params, k=3)
    assert list(spec) == ["i", "f", "g", "o"]
    w = np.asarray(params["w_h"], np.float64)
    for k, name in enumerate("ifgo"):
        block = w[:, 5 * k: 5 * (k + 1)]
        np.testing.assert_allclose(spec[name]["singular_values"],
                                   np.linalg.svd(block, compute_uv=False)[:3], rtol=1e-10)
        assert spec[name]["spectral_radius"] == pytest.approx(
            np.abs(np.linalg.eigvals(block)).max(), rel=1e-10)
    rnn_spec = weight_spectrum(SimpleRNN(2, 4), {"w_h": np.diag([0.5, -2.0, 1.0, 0.1])}, k=2)
    np.testing.assert_allclose(rnn_spec["h"]["singular_values"], [2.0, 1.0])
    assert rnn_spec["h"]["spectral_radius"] == pytest.approx(2.0)


def test_step_jacobian_of_tanh_rnn_is_diag_derivative_times_weight(x64):
    rng = np.random.default_rng(7)
    cell = SimpleRNN(2, 4)
    params = _params(cell.init, 6, dtype=np.float64)
    xs = jnp.asarray(rng.standard_normal((2, 5, 2)))
    hs = np.asarray(cell_states(cell, params, xs))
    w = np.asarray(params["w_h"])
    # J_t = diag(1 - h_t^2) W_h^T (column convention)
    expected = np.einsum("bti,ji->btij", 1 - hs**2, w)
    h_prev = np.concatenate([np.zeros((2, 1, 4)), hs[:, :-1]], axis=1)
    jac = jax.jit(step_jacobian, static_argnums=0)(cell, params, jnp.asarray(h_prev[:, 2]),
                                                   xs[:, 2])
    np.testing.assert_allclose(jac, expected[:, 2], rtol=1e-12)
    spec = jacobian_spectrum(cell, params, xs, k=2)
    np.testing.assert_allclose(spec["singular_values"],
                               np.linalg.svd(expected, compute_uv=False)[..., :2], rtol=1e-10)
    np.testing.assert_allclose(spec["spectral_radius"],
                               np.abs(np.linalg.eigvals(expected)).max(-1), rtol=1e-10)


def test_lstm_full_carry_jacobian_cell_block_is_forget_gate(x64):
    cell = LSTM(2, 3)
    params = _params(cell.init, 7, dtype=np.float64)
    xs = jnp.asarray(np.random.default_rng(8).standard_normal((2, 4, 2)))
    h, c = cell_states(cell, params, xs)
    f = np.asarray(gate_trajectory(cell, params, xs)["f"])
    jac = jax.jit(step_jacobian, static_argnums=0, static_argnames="full_carry")(
        cell, params, (h[:, 1], c[:, 1]), xs[:, 2], full_carry=True)
    jac = np.asarray(jac)
    assert jac.shape == (2, 6, 6)
    for b in range(2):  # d c_t / d c_{t-1} = diag(f_t)
        np.testing.assert_allclose(jac[b, 3:, 3:], np.diag(f[b, 2]), rtol=1e-12, atol=1e-15)
    spec = jacobian_spectrum(cell, params, xs, k=6, full_carry=True)
    assert spec["singular_values"].shape == (2, 4, 6)


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_lstm_gates(p, xs):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    b, t, _ = xs.shape
    hid = p["w_h"].shape[0]
    h, c = np.zeros((b, hid)), np.zeros((b, hid))
    out = {k: [] for k in "ifgo"}
    for s in range(t):
        a = xs[:, s] @ p["w_x"] + h @ p["w_h"] + p["b"]
        i, f, g, o = (a[:, k * hid:(k + 1) * hid] for k in range(4))
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
        for k, v in zip("ifgo", (i, f, g, o)):
            out[k].append(v)
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def _numpy_gru_gates(p, xs):
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    b, t, _ = xs.shape
    hid = p["w_h"].shape[0]
    h = np.zeros((b, hid))
    out = {k: [] for k in "rzn"}
    for s in range(t):
        gx = xs[:, s] @ p["w_x"] + p["b_x"]
        gh = h @ p["w_h"] + p["b_h"]
        r = _sigmoid(gx[:, :hid] + gh[:, :hid])
        z = _sigmoid(gx[:, hid:2 * hid] + gh[:, hid:2 * hid])
        n = np.tanh(gx[:, 2 * hid:] + r * gh[:, 2 * hid:])
        h = (1 - z) * n + z * h
        for k, v in zip("rzn", (r, z, n)):
            out[k].append(v)
    return {k: np.stack(v, axis=1) for k, v in out.items()}


def _numpy_stats(v, low, high, tanh):
    u = (v + 1) / 2 if tanh else v
    lo, hi = (u < low).mean(axis=(0, 2)), (u > high).mean(axis=(0, 2))
    return {"mean": v.mean(axis=(0, 2)), "frac_low": lo, "frac_high": hi, "saturated": lo + hi}


@pytest.mark.parametrize("cell,reference", [(LSTM(3, 6), _numpy_lstm_gates),
                                            (GRU(3, 6), _numpy_gru_gates)], ids=["lstm", "gru"])
def test_gate_statistics_equal_numpy_recomputation(cell, reference):
    rng = np.random.default_rng(9)
    params = _params(cell.init, 8, scale=1.5)  # large weights: saturated gates
    xs = rng.standard_normal((4, 10, 3)).astype(np.float32)
    gates = gate_trajectory(cell, params, jnp.asarray(xs))
    ref = reference(params, xs.astype(np.float64))
    assert set(gates) == set(ref)
    for name in ref:
        np.testing.assert_allclose(gates[name], ref[name], rtol=1e-4, atol=1e-5)
    stats = gate_statistics(gates, low=0.05, high=0.95)
    for name, v in ref.items():
        exp = _numpy_stats(v, 0.05, 0.95, tanh=name in ("g", "n"))
        for key, arr in exp.items():
            np.testing.assert_allclose(stats[name][key], arr, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}.{key}")
            assert stats[name][key + "_all"] == pytest.approx(arr.mean(), rel=1e-4, abs=1e-5)
    sat = stats["f" if "f" in stats else "z"]["saturated_all"]
    assert 0.05 < sat < 1.0  # the test exercises saturation
    # a mask restricts the average to the chosen steps
    mask = np.zeros((4, 10), bool)
    mask[:2, :5] = True
    masked = gate_statistics(gates, mask=mask)
    name = next(iter(ref))
    assert masked[name]["mean_all"] == pytest.approx(ref[name][:2, :5].mean(), rel=1e-4)


def test_model_gate_trajectories_feed_each_layer_the_previous_outputs():
    model = SequenceModel("lstm", 2, 1, 4, num_layers=2)
    params = _params(model.init, 9)
    xs = jnp.asarray(np.random.default_rng(10).random((2, 5, 2)), jnp.float32)
    per_layer = model_gate_trajectories(model, params, xs)
    assert len(per_layer) == 2
    h0, _ = jax.jit(rnn, static_argnums=0)(model.cells[0], params["encoder"][0], xs)
    expected = gate_trajectory(model.cells[1], params["encoder"][1], h0)
    np.testing.assert_allclose(per_layer[1]["f"], expected["f"], rtol=1e-5)
    with pytest.raises(TypeError, match="LSTM or GRU"):
        gate_trajectory(SimpleRNN(2, 3), _params(SimpleRNN(2, 3).init), xs)


# --------------------------------------------------------------------------------------------
# Gradient-norm history with and without clipping
# --------------------------------------------------------------------------------------------


def _regression():
    rng = np.random.default_rng(11)
    w_true = rng.standard_normal((4, 1))

    def batches(i):
        x = np.random.default_rng(100 + i).standard_normal((16, 4)).astype(np.float32)
        return {"x": x, "y": (x @ w_true).astype(np.float32)}

    def loss_fn(params, batch, key, train):
        return jnp.mean(jnp.square(batch["x"] @ params["w"] - batch["y"])), {}

    return {"w": jnp.zeros((4, 1))}, loss_fn, batches


def test_track_grad_norms_matches_fit_and_clips():
    params, loss_fn, batches = _regression()
    clip, steps = 0.5, 6
    res = fit(params=params, loss_fn=loss_fn, optimizer=make_optimizer("sgd", 0.1, clip_norm=clip),
              train_batches=batches, num_steps=steps, run_dir=None, log_every=1, progress=False)
    from_fit = grad_norm_history(res.history, clip)
    tracked = track_grad_norms(loss_fn, params, make_optimizer("sgd", 0.1), batches, steps,
                               clip_norm=clip)
    np.testing.assert_array_equal(from_fit["step"], tracked["step"])
    np.testing.assert_allclose(tracked["before"], from_fit["before"], rtol=1e-5)
    np.testing.assert_allclose(tracked["loss"], from_fit["loss"], rtol=1e-5)
    np.testing.assert_allclose(tracked["after"], np.minimum(tracked["before"], clip), rtol=1e-5)
    np.testing.assert_allclose(from_fit["after"], np.minimum(from_fit["before"], clip))
    assert tracked["clipped"].any() and tracked["diverged_at"] is None
    np.testing.assert_allclose(tracked["params"]["w"], res.state.params["w"], rtol=1e-5)
    np.testing.assert_array_equal(clipped_norm([3.0, 0.2, np.nan], None), [3.0, 0.2, np.nan])


def test_track_grad_norms_records_divergence_without_raising():
    params, loss_fn, batches = _regression()
    out = track_grad_norms(loss_fn, params, optax.sgd(1e3), batches, 40)
    assert out["diverged_at"] is not None
    assert np.all(np.isnan(out["loss"][out["diverged_at"]:]))
    assert np.all(out["after"][: out["diverged_at"] - 1] == out["before"][: out["diverged_at"] - 1])
    # the same run, clipped, stays finite (gradients bounded by the clip norm)
    clipped = track_grad_norms(loss_fn, params, optax.sgd(1e-2), batches, 40, clip_norm=1.0)
    assert clipped["diverged_at"] is None and np.all(clipped["after"] <= 1.0 + 1e-6)


# --------------------------------------------------------------------------------------------
# Hidden units: features, correlations, rendering
# --------------------------------------------------------------------------------------------


def test_char_features_by_hand():
    text = 'a "b" (c [d])\nx "y\nz'
    assert len(text) == 20
    f = char_features(text)
    #         a     "  b  "     (  c     [  d  ]  ) \n  x     "  y \n  z
    quotes = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]  # reset at newline
    depth = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    position = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 1, 2, 3, 4, 0, 1]
    np.testing.assert_array_equal(f["inside_quotes"], quotes)
    np.testing.assert_array_equal(f["bracket_depth"], depth)
    np.testing.assert_array_equal(f["inside_brackets"], np.minimum(depth, 1))
    np.testing.assert_array_equal(f["position_in_line"], position)
    assert f["inside_word"].tolist() == [float(ch.isalpha()) for ch in text]
    assert char_features("it's 'a'", quotes="'")["inside_word"].tolist() == [1, 1, 1, 1, 0, 0,
                                                                            1, 0]
    # a quote closes only the kind that opened it; without the reset it runs across lines
    f2 = char_features("\"it's\n\"x", quotes="\"'", reset_at_newline=False)
    assert f2["inside_quotes"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]


def test_unit_correlations_and_top_units():
    rng = np.random.default_rng(12)
    feature = rng.random(200)
    states = rng.standard_normal((200, 6))
    states[:, 4] = -2.0 * feature + 0.01 * rng.standard_normal(200)  # a planted unit
    states[:, 1] = 3.0  # a dead unit
    r = unit_correlations(states, feature)
    for u in (0, 2, 3, 4, 5):
        assert r[u] == pytest.approx(np.corrcoef(states[:, u], feature)[0, 1], rel=1e-10)
    assert r[1] == 0.0
    top = top_units(states, {"f": feature, "constant": np.ones(200)}, k=2)
    assert top["f"][0][0] == 4 and top["f"][0][1] < -0.99
    assert top["constant"] is None


def test_html_and_png_rendering(tmp_path):
    text = 'to be, "or" not\n(to be)'
    values = np.linspace(-1.0, 1.0, len(text))
    frag = html_text(text, values)
    spans = re.findall(r'<span style="background-color:(#[0-9a-f]{6})"', frag)
    assert len(spans) == len(text)
    assert spans[0] != spans[-1]
    assert "&quot;" in frag and "\n" in frag  # escaped quote, newline kept inside the <pre>
    page = render_html(text, values, tmp_path / "unit.html", title="unit 3")
    assert (tmp_path / "unit.html").read_text() == page
    assert page.count("<span ") == len(text)
    n = render_png(text, values, tmp_path / "unit.png", width=10, title="unit 3")
    assert n == len(text)
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "unit.png")
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10
    assert len(np.unique(img.reshape(-1, img.shape[-1])[:, :3], axis=0)) > 10  # coloured cells
    with pytest.raises(ValueError, match="one value per character"):
        html_text(text, values[:-1])


def test_hidden_states_of_char_model():
    model = SequenceModel("lstm", 5, 5, 4, embed_size=3)
    params = _params(model.init, 13)
    tokens = np.array([0, 1, 2, 3, 4, 0, 1])
    _, states = model_states(model, params, jnp.asarray(tokens[None], jnp.int32))
    np.testing.assert_allclose(hidden_states(model, params, tokens),
                               np.tanh(np.asarray(states["c"][0, 0])), rtol=1e-6)
    np.testing.assert_allclose(hidden_states(model, params, tokens, which="h"),
                               states["h"][0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="LSTM"):
        hidden_states(SequenceModel("gru", 5, 5, 4, embed_size=3), params, tokens, which="c")


def test_norms_neither_underflow_nor_overflow_in_float32():
    """||g|| of a vanished (1e-30) or exploded (1e17) gradient: squaring would under/overflow."""
    rng = np.random.default_rng(14)
    hid, steps = 8, 100
    q = _orthogonal(rng, hid)
    xs = jnp.asarray(rng.standard_normal((2, steps, hid)), jnp.float32)
    for rho in (0.5, 1.5):
        params = {"w_x": jnp.eye(hid), "w_h": jnp.asarray(rho * q, jnp.float32),
                  "b": jnp.zeros(hid)}
        curve = by_distance(cell_gradient_flow(LinearRNN(hid, hid), params, xs).dh)
        np.testing.assert_allclose(curve, rho ** np.arange(steps), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# The experiment scripts, at toy size
# --------------------------------------------------------------------------------------------


def _experiment(name):
    import importlib
    import sys
    from pathlib import Path

    path = str(Path(__file__).resolve().parents[1] / "experiments")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


@pytest.mark.slow
def test_gradient_flow_script_writes_figures_and_summary(tmp_path):
    gf = _experiment("gradient_flow")
    summary = gf.main(["--task", "adding", "--models", "gru", "--out", str(tmp_path),
                       "--seq-len", "12", "--batch", "4", "--hidden", "4", "--tcn-hidden", "3",
                       "--tcn-levels", "2", "--tcn-kernel", "2", "--steps", "2",
                       "--clip-steps", "3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clipping.png", "flow.png", "radius.png", "summary.json"]
    import json

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["flow"]) == {"gru"}
    assert len(saved["flow"]["gru"]["init"]["dx_by_distance"]) == 12
    assert "gates" in saved["flow"]["gru"]["trained"]
    linear = saved["radius"]["cells"]["linear"]
    for rho in ("0.5", "1", "1.5"):
        assert linear[rho]["rate"] == pytest.approx(float(rho), rel=1e-4)
    assert set(saved["clipping"]["runs"]) == {"no clipping", "clip 1"}
    assert summary["task"] == "adding"


@pytest.mark.slow
def test_hidden_states_script_writes_html_png_and_units(tmp_path):
    hs = _experiment("hidden_states")
    text = tmp_path / "corpus.txt"
    line = 'say "hello (world)" to [all] of them\nthen stop\n'
    text.write_text(line * 40)
    out = tmp_path / "out"
    summary = hs.main(["--text", str(text), "--out", str(out), "--hidden", "6", "--embed", "4",
                       "--seq-len", "16", "--batch", "4", "--steps", "2", "--excerpt", "150",
                       "--png-chars", "60", "--valid-fraction", "0.2"])
    page = (out / "units.html").read_text()
    features = [k for k, v in summary["top_units"].items() if v is not None]
    assert set(features) == {"inside_quotes", "position_in_line", "inside_brackets",
                             "bracket_depth", "inside_word"}
    # two sections per feature (best unit, indicator), one span per character each
    assert page.count("<span ") == 2 * len(features) * summary["excerpt_chars"]
    for name in features:
        assert (out / f"unit_{name}.png").is_file()
    assert (out / "correlations.png").is_file()
