"""The one model body (seqjax.models.encoder.Encoder) and the cell registry behind the arch lists.

The residual blocks are checked against a NumPy loop of the minGRU equations (Feng et al. 2024)
with RMSNorm and the skip written out; the presets against the layers they replace.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.core import cells as cells_mod
from seqjax.models import Classifier, Encoder, LanguageModel, SequenceModel, model_archs


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _mingru_numpy(p, xs):
    """``xs [B, T, H]`` -> ``hs [B, T, H]``: h_t = (1 - z) h_{t-1} + z g(x W_h + b_h)."""
    w, b = np.asarray(p["w_x"], np.float64), np.asarray(p["b"], np.float64)
    hid = w.shape[1] // 2
    h = np.zeros((xs.shape[0], hid))
    out = []
    for t in range(xs.shape[1]):
        pre = xs[:, t] @ w + b
        z, cand = _sigmoid(pre[:, :hid]), pre[:, hid:]
        cand = np.where(cand >= 0, cand + 0.5, _sigmoid(cand))
        h = (1 - z) * h + z * cand
        out.append(h)
    return np.stack(out, 1)


def test_residual_blocks_equal_numpy_prenorm_residual_loop():
    enc = Encoder("mingru", input_size=3, hidden_size=5, num_layers=2, residual=True)
    params = enc.init(jax.random.key(0))
    assert set(params) == {"in", "layers"} and len(params["layers"]) == 2
    xs = np.asarray(jax.random.normal(jax.random.key(1), (2, 6, 3)), np.float64)
    ys, carries = jax.jit(enc.apply)(params, jnp.asarray(xs, jnp.float32))

    h = xs @ np.asarray(params["in"]["w"], np.float64) + np.asarray(params["in"]["b"])
    for layer in params["layers"]:
        normed = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-6)
        normed = normed * np.asarray(layer["norm"], np.float64)
        h = h + _mingru_numpy(layer["cell"], normed)
    np.testing.assert_allclose(np.asarray(ys), h, rtol=2e-5, atol=2e-5)
    assert len(carries) == 2


def test_glu_blocks_equal_numpy_gelu_glu_after_the_cell():
    """Orvieto et al.'s block: h <- h + GLU(GELU(cell(RMSNorm(h)))); the other params equal the
    plain residual blocks' (same key)."""
    enc = Encoder("mingru", input_size=3, hidden_size=4, num_layers=2, residual=True, glu=True)
    params = enc.init(jax.random.key(0))
    plain = Encoder("mingru", input_size=3, hidden_size=4, num_layers=2,
                    residual=True).init(jax.random.key(0))
    np.testing.assert_array_equal(params["layers"][1]["cell"]["w_x"],
                                  plain["layers"][1]["cell"]["w_x"])
    xs = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 3)), np.float64)
    ys, _ = jax.jit(enc.apply)(params, jnp.asarray(xs, jnp.float32))

    def gelu(x):  # jax.nn.gelu's tanh form
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    h = xs @ np.asarray(params["in"]["w"], np.float64) + np.asarray(params["in"]["b"])
    for layer in params["layers"]:
        normed = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-6) * np.asarray(
            layer["norm"], np.float64)
        u = gelu(_mingru_numpy(layer["cell"], normed)) @ np.asarray(
            layer["glu"]["w"], np.float64) + np.asarray(layer["glu"]["b"], np.float64)
        h = h + u[..., :4] * _sigmoid(u[..., 4:])
    np.testing.assert_allclose(np.asarray(ys), h, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="glu=True .* needs residual=True"):
        Encoder("lru", input_size=3, hidden_size=4, glu=True)


def test_residual_gradients_match_finite_differences():
    enc = Encoder("minlstm", input_size=2, hidden_size=3, num_layers=2, residual=True)
    params = enc.init(jax.random.key(2))
    xs = jax.random.normal(jax.random.key(3), (2, 5, 2))
    lengths = jnp.array([5, 3])

    def loss(p):
        return jnp.sum(jnp.sin(enc.apply(p, xs, lengths)[0]))

    grads = jax.grad(loss)(params)
    w = params["in"]["w"]
    eps = 1e-2
    for idx in [(0, 0), (1, 2)]:
        up = {**params, "in": {**params["in"], "w": w.at[idx].add(eps)}}
        down = {**params, "in": {**params["in"], "w": w.at[idx].add(-eps)}}
        fd = (loss(up) - loss(down)) / (2 * eps)
        np.testing.assert_allclose(grads["in"]["w"][idx], fd, rtol=2e-2, atol=2e-3)


def test_plain_stack_preset_equals_stacked_layers():
    model = SequenceModel("gru", 3, 2, 4, num_layers=2)
    params = model.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
    cells = seqjax.stack_cells("gru", 3, 4, 2)
    hs, _ = seqjax.stacked(cells, params["encoder"], xs)
    want = hs @ params["readout"]["w"] + params["readout"]["b"]
    np.testing.assert_array_equal(np.asarray(model.apply(params, xs)), np.asarray(want))


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch="tcn", residual=True), "residual=True"),
    (dict(arch="lstm", residual=True, bidirectional=True), "residual=True"),
    (dict(arch="gru", residual=True, last_size=7), "residual=True"),
    (dict(arch="transformer"), r"Encoder.arch='transformer' must be one of"),
    (dict(arch="lstm", backend="cudnn"), r"Encoder.backend='cudnn'"),
    (dict(arch="tcn", bidirectional=True), "bidirectional=True"),
])
def test_bad_encoder_configs_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Encoder(input_size=3, hidden_size=4, **kwargs)


def test_models_refuse_residual_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="residual=True"):
        SequenceModel("tcn", 3, 2, 4, residual=True)
    with pytest.raises(ValueError, match="residual=True"):
        LanguageModel("lstm", 10, 6, 8, tie_weights=True, residual=True)


def test_language_model_of_lru_blocks_with_glu():
    lm = LanguageModel("lru", 9, 6, 6, num_layers=2, residual=True, glu=True)
    params = lm.init(jax.random.key(0))
    layers = params["encoder"]["layers"]
    assert [layer["glu"]["w"].shape for layer in layers] == [(6, 12), (6, 12)]
    logits = lm.apply(params, jnp.zeros((2, 5), jnp.int32))
    logits = logits[0] if isinstance(logits, tuple) else logits
    assert logits.shape == (2, 5, 9) and bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(ValueError, match="glu=True"):
        LanguageModel("lru", 9, 6, 6, glu=True)


def test_a_registered_cell_is_a_choice_of_every_model(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Doubled(seqjax.SimpleRNN):
        """An Elman RNN under another name (what a user's new cell looks like to the models)."""

    monkeypatch.setitem(cells_mod._REGISTRY, "doubled", (Doubled, {}))
    assert "doubled" in seqjax.cell_kinds() and "doubled" in model_archs()
    model = SequenceModel("doubled", 3, 2, 4, num_layers=2)
    assert all(type(c) is Doubled for c in model.cells)
    out = model.apply(model.init(jax.random.key(0)), jnp.ones((2, 5, 3)))
    assert out.shape == (2, 5, 2)
    assert type(Classifier(vocab_size=9, arch="doubled").cells[0]) is Doubled
    assert type(LanguageModel("doubled", 9, 4, 4).cells[0]) is Doubled


def test_register_cell_refuses_a_clash_and_a_non_cell():
    with pytest.raises(ValueError, match="already registered"):
        seqjax.register_cell("lstm", seqjax.GRU)
    with pytest.raises(TypeError, match="needs a Cell subclass"):
        seqjax.register_cell("thing", dict)
    with pytest.raises(ValueError, match="unknown cell kind 'nope'"):
        seqjax.make_cell("nope", 2, 3)


def test_cell_options_reach_the_cells_and_unknown_ones_are_refused():
    model = SequenceModel("lstm", 2, 1, 8, num_layers=2, cell_options={"chrono": 50})
    assert model.cell_options == (("chrono", 50),)
    assert all(c.chrono == 50 for c in model.encoder.cells)
    with pytest.raises(ValueError, match=r"SequenceModel.cell_options: the 'gru' cell has no "
                                         r"argument 'chrono'"):
        SequenceModel("gru", 2, 1, 8, cell_options={"chrono": 50})
    with pytest.raises(ValueError, match=r"Encoder.cell_options=.* not arch='tcn'"):
        Encoder("tcn", 2, 8, cell_options={"chrono": 50})
    with pytest.raises(TypeError, match=r"Encoder.cell_options must be a dict"):
        Encoder("lstm", 2, 8, cell_options=["chrono"])
