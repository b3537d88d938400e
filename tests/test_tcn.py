"""Tests for seqjax.core.tcn and seqjax.nn.tcn.

The oracle is an independent PyTorch re-implementation of locuslab/TCN's ``TemporalBlock`` /
``TemporalConvNet`` (``Conv1d`` + ``Chomp1d``, weight norm, ReLU, dropout, 1x1 downsample), into
which our params are copied.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch import nn

from seqjax.core import tcn as tcn_lib
from seqjax.core.tcn import TCN, causal_conv1d, receptive_field, weight_norm
from seqjax.nn import tcn as nn_tcn

torch.set_num_threads(1)

# --------------------------------------------------------------------------------------------
# PyTorch oracle: locuslab/TCN (tcn.py), written out again.
# --------------------------------------------------------------------------------------------


class Chomp1d(nn.Module):
    def __init__(self, chomp_size: int):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, : -self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    def __init__(self, n_inputs, n_outputs, kernel_size, dilation, dropout):
        super().__init__()
        padding = (kernel_size - 1) * dilation
        wn = nn.utils.parametrizations.weight_norm
        self.conv1 = wn(nn.Conv1d(n_inputs, n_outputs, kernel_size, padding=padding,
                                  dilation=dilation))
        self.conv2 = wn(nn.Conv1d(n_outputs, n_outputs, kernel_size, padding=padding,
                                  dilation=dilation))
        self.net = nn.Sequential(
            self.conv1, Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout),
            self.conv2, Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TemporalConvNet(nn.Module):
    def __init__(self, num_inputs, num_channels, kernel_size, dropout=0.0):
        super().__init__()
        layers = []
        for i, c_out in enumerate(num_channels):
            c_in = num_inputs if i == 0 else num_channels[i - 1]
            layers.append(TemporalBlock(c_in, c_out, kernel_size, 2**i, dropout))
        self.network = nn.Sequential(*layers)

    def forward(self, x):  # [B, C, T]
        return self.network(x)


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float32))


def torch_oracle(cfg: TCN, params) -> TemporalConvNet:
    """A locuslab TemporalConvNet holding a copy of ``params``."""
    model = TemporalConvNet(cfg.input_size, list(cfg.channels), cfg.kernel_size, cfg.dropout)
    model.eval()
    with torch.no_grad():
        for blk, p in zip(model.network, params["blocks"]):
            for name in ("conv1", "conv2"):
                conv = getattr(blk, name)
                v = np.asarray(p[name]["v"])  # [K, Cin, Cout] -> [Cout, Cin, K]
                conv.parametrizations.weight.original0.copy_(_t(p[name]["g"]).reshape(-1, 1, 1))
                conv.parametrizations.weight.original1.copy_(_t(v.transpose(2, 1, 0)))
                conv.bias.copy_(_t(p[name]["b"]))
            if blk.downsample is not None:
                blk.downsample.weight.copy_(_t(p["downsample"]["w"]).T[:, :, None])
                blk.downsample.bias.copy_(_t(p["downsample"]["b"]))
            else:
                assert "downsample" not in p
    return model


def torch_grads(model: TemporalConvNet, params):
    """Gradients of the torch model's params, in our pytree layout."""
    blocks = []
    for blk, p in zip(model.network, params["blocks"]):
        b = {}
        for name in ("conv1", "conv2"):
            conv = getattr(blk, name)
            pw = conv.parametrizations.weight
            b[name] = {
                "v": pw.original1.grad.numpy().transpose(2, 1, 0),
                "g": pw.original0.grad.numpy().reshape(-1),
                "b": conv.bias.grad.numpy(),
            }
        if "downsample" in p:
            b["downsample"] = {
                "w": blk.downsample.weight.grad.numpy()[:, :, 0].T,
                "b": blk.downsample.bias.grad.numpy(),
            }
        blocks.append(b)
    return {"blocks": blocks}


_SHAPE_KEY = jax.random.key(0)


def random_params(cfg: TCN, seed: int, scale: float = 1.0):
    """Params with every leaf N(0, scale^2): far from init scale, so every path is visible.

    Drawn with numpy from the shapes of ``cfg.init`` (no per-shape JAX compiles: fast tests).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(cfg.init, _SHAPE_KEY)
    return jax.tree.map(
        lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes
    )


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# One config for every test that calls the (eager) init: JAX compiles each random op once per
# shape, so sharing the shapes keeps the file fast.
INIT_CFG = (3, (16, 16), 4)

CONFIGS = [
    # input_size, channels, kernel_size
    (3, (5, 5), 2),  # channel change in block 0 only
    (4, (4, 4, 4), 2),  # no channel change: identity residuals
    (3, (6, 4, 4), 3),  # changes in blocks 0 and 1
    (2, (5, 5, 5), 3),
]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def test_receptive_field_formula():
    assert receptive_field(2, 1) == 3
    assert receptive_field(2, 8) == 1 + 2 * 1 * 255
    assert receptive_field(3, 2) == 13
    assert receptive_field(1, 5) == 1
    assert TCN(1, (25,) * 8, kernel_size=7).receptive_field == 1 + 2 * 6 * 255
    with pytest.raises(ValueError, match="levels=0"):
        receptive_field(2, 0)
    with pytest.raises(ValueError, match="kernel_size=-1"):
        receptive_field(-1, 2)


@pytest.mark.parametrize("k,d", [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_causal_conv1d_matches_numpy_loop(k, d):
    rng = np.random.default_rng(k * 10 + d)
    x = rng.normal(size=(2, 9, 3)).astype(np.float32)
    w = rng.normal(size=(k, 3, 4)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(np.float32)
    want = np.tile(b, (2, 9, 1))
    for t in range(9):
        for j in range(k):
            s = t - (k - 1 - j) * d
            if s >= 0:
                want[:, t] += x[:, s] @ w[j]
    got = causal_conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dilation=0"):
        causal_conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), 0)


def test_weight_norm_matches_torch():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 4, 5)).astype(np.float32)
    g = rng.normal(size=(5,)).astype(np.float32)
    want = torch._weight_norm(_t(v.transpose(2, 1, 0)), _t(g).reshape(-1, 1, 1), 0)
    got = weight_norm(jnp.asarray(v), jnp.asarray(g))
    np.testing.assert_allclose(got, want.numpy().transpose(2, 1, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weight_init", ["paper", "locuslab"])
def test_init_structure_and_statistics(weight_init):
    cfg = TCN(INIT_CFG[0], list(INIT_CFG[1]), kernel_size=INIT_CFG[2])
    params = cfg.init(jax.random.key(1), weight_init=weight_init)
    params = jax.tree.map(np.asarray, params)
    blocks = params["blocks"]
    assert len(blocks) == 2
    assert ["downsample" in b for b in blocks] == [True, False]
    for blk, (c_in, c_out) in zip(blocks, [(3, 16), (16, 16)]):
        for name, ci in (("conv1", c_in), ("conv2", c_out)):
            p = blk[name]
            assert p["v"].shape == (4, ci, c_out) and p["g"].shape == (c_out,)
            # g = ||v|| per output channel at init, so the effective weight is v itself.
            np.testing.assert_allclose(p["g"], np.linalg.norm(p["v"], axis=(0, 1)), rtol=1e-5)
            bound = 1.0 / np.sqrt(4 * ci)
            assert np.abs(p["b"]).max() <= bound
            if weight_init == "locuslab":
                assert 0.5 * bound < np.abs(p["v"]).max() <= bound
        if "downsample" in blk:
            assert blk["downsample"]["w"].shape == (c_in, c_out)
            assert np.abs(blk["downsample"]["b"]).max() <= 1.0 / np.sqrt(c_in)
    if weight_init == "paper":
        v = np.concatenate([b[n]["v"].ravel() for b in blocks for n in ("conv1", "conv2")])
        assert abs(v.std() - 0.01) < 0.001  # ~3000 samples
        assert abs(v.mean()) < 0.001
    with pytest.raises(ValueError, match="weight_init='xavier'"):
        cfg.init(jax.random.key(0), weight_init="xavier")


# --------------------------------------------------------------------------------------------
# Against the PyTorch oracle
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "input_size,channels,k,random",
    [(*c, True) for c in CONFIGS] + [(*INIT_CFG, False)],
    ids=[f"random{i}" for i in range(len(CONFIGS))] + ["init"],
)
def test_matches_locuslab_torch(input_size, channels, k, random):
    cfg = TCN(input_size, channels, kernel_size=k)
    if random:
        params = random_params(cfg, 4, scale=0.5)
    else:  # init scale: small weights, the residual path dominates
        params = cfg.init(jax.random.key(3))
    xs = normal(5, (3, 20, input_size))
    got = np.asarray(jax.jit(cfg.apply)(params, xs))
    model = torch_oracle(cfg, params)
    with torch.no_grad():
        want = model(_t(xs).transpose(1, 2)).transpose(1, 2).numpy()
    assert got.shape == (3, 20, channels[-1])
    assert np.abs(want).max() > 0.01 and np.mean(want != 0) > 0.2  # not a comparison of zeros
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_match_locuslab_torch():
    cfg = TCN(3, (6, 4, 4), kernel_size=3)
    params = random_params(cfg, 6, scale=0.5)
    xs = normal(7, (2, 15, 3))
    ct = normal(8, (2, 15, 4))

    @jax.jit
    def fwd_bwd(params, xs, ct):
        ys, vjp = jax.vjp(cfg.apply, params, xs)
        return ys, *vjp(ct)

    ys, g_params, g_xs = fwd_bwd(params, xs, ct)

    model = torch_oracle(cfg, params)
    x_t = _t(xs).requires_grad_(True)
    y_t = model(x_t.transpose(1, 2)).transpose(1, 2)
    y_t.backward(_t(ct))
    np.testing.assert_allclose(ys, y_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_xs, x_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    want = torch_grads(model, params)
    assert jax.tree.structure(want) == jax.tree.structure(g_params)
    for (path, got), w in zip(jax.tree.leaves_with_path(g_params), jax.tree.leaves(want)):
        np.testing.assert_allclose(
            got, w, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path)
        )


# --------------------------------------------------------------------------------------------
# Causality and receptive field
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels,k", [((4, 4), 2), ((4, 4), 3), ((3, 4, 4), 2)])
def test_causal_and_receptive_field_exact(channels, k):
    cfg = TCN(2, channels, kernel_size=k)
    rf = cfg.receptive_field
    steps = rf + 4
    jacobian = jax.jit(jax.jacrev(cfg.apply, argnums=1))  # [B, T, C, B, T, Cin]

    def dependence(params, xs):
        full = np.asarray(jacobian(params, xs))
        # Batch elements do not mix.
        assert np.abs(full[0, :, :, 1]).max() == 0.0
        jac = np.einsum("btcbsd->btcsd", full)  # same batch element only
        return np.sum(np.abs(jac), axis=(0, 2, 4))  # [T(out), T(in)]

    t_out, t_in = np.meshgrid(np.arange(steps), np.arange(steps), indexing="ij")
    inside = (t_in <= t_out) & (t_in > t_out - rf)
    # Signed N(0, 1) weights: exactly zero outside the window [t - rf + 1, t], i.e. nothing from
    # the future and nothing from further back than the receptive field.
    dep = dependence(random_params(cfg, 9), normal(10, (3, steps, 2)))
    assert np.all(dep[~inside] == 0.0)
    # Positive weights, biases and inputs keep every ReLU active and rule out cancellation, so
    # every path counts: the dependence is nonzero on the whole window, which is exactly rf wide
    # (the oldest input t - rf + 1 matters, t - rf does not).
    params = jax.tree.map(lambda a: np.abs(a) + 0.1, random_params(cfg, 9))
    dep = dependence(params, np.abs(normal(10, (3, steps, 2))))
    assert np.all(dep[inside] > 0.0)
    assert np.all(dep[~inside] == 0.0)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


def test_dropout_train_and_eval():
    cfg = TCN(3, (8, 8), kernel_size=2, dropout=0.3)
    cfg0 = TCN(3, (8, 8), kernel_size=2, dropout=0.0)
    params = random_params(cfg, 11, scale=0.5)
    xs = normal(12, (2, 10, 3))
    eval1 = cfg.apply(params, xs)
    eval2 = cfg.apply(params, xs, key=jax.random.key(1))
    np.testing.assert_array_equal(eval1, eval2)
    np.testing.assert_array_equal(eval1, cfg0.apply(params, xs, train=True))
    np.testing.assert_array_equal(eval1, cfg0.apply(params, xs, train=True, key=jax.random.key(2)))
    tr_a = cfg.apply(params, xs, train=True, key=jax.random.key(1))
    tr_a2 = cfg.apply(params, xs, train=True, key=jax.random.key(1))
    tr_b = cfg.apply(params, xs, train=True, key=jax.random.key(2))
    np.testing.assert_array_equal(tr_a, tr_a2)
    assert not np.allclose(tr_a, tr_b)
    assert not np.allclose(tr_a, eval1)
    with pytest.raises(ValueError, match=r"key is required when train=True and dropout=0.3"):
        cfg.apply(params, xs, train=True)


def test_dropout_is_inverted_elementwise():
    x = jnp.ones((200, 50, 4))
    y = tcn_lib._dropout(x, 0.25, jax.random.key(0))
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Validation, dtypes, edge cases
# --------------------------------------------------------------------------------------------


def test_config_is_hashable_and_validated():
    a, b = TCN(2, [3, 4]), TCN(2, (3, 4))
    assert a.channels == (3, 4) and a == b and hash(a) == hash(b)
    with pytest.raises(ValueError, match="input_size=0"):
        TCN(0, (4,))
    with pytest.raises(ValueError, match=r"channels=\(\)"):
        TCN(2, ())
    with pytest.raises(ValueError, match=r"channels\[1\]=-1"):
        TCN(2, (4, -1))
    with pytest.raises(ValueError, match="channels=4"):
        TCN(2, 4)
    with pytest.raises(ValueError, match="kernel_size=0"):
        TCN(2, (4,), kernel_size=0)
    with pytest.raises(ValueError, match="dropout=1.0"):
        TCN(2, (4,), dropout=1.0)
    with pytest.raises(ValueError, match="dropout=-0.1"):
        TCN(2, (4,), dropout=-0.1)


def test_bad_inputs_name_the_problem():
    cfg = TCN(3, (4,))
    params = random_params(cfg, 0)
    with pytest.raises(TypeError, match="xs.dtype=int32 must be floating"):
        cfg.apply(params, jnp.ones((2, 5, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"xs.shape=\(5, 3\) must be \[B, T, input_size\]"):
        cfg.apply(params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"xs.shape=\(2, 5, 7\).*input_size=3, got 7"):
        cfg.apply(params, jnp.ones((2, 5, 7)))
    other = random_params(TCN(3, (4, 4)), 0)
    with pytest.raises(ValueError, match="params must hold 1 blocks"):
        cfg.apply(other, jnp.ones((2, 5, 3)))
    wrong_k = random_params(TCN(3, (4,), kernel_size=3), 0)
    match = r"\['conv1'\]\['v'\].shape=\(3, 3, 4\) must be \(2, 3, 4\)"
    with pytest.raises(ValueError, match=match):
        cfg.apply(wrong_k, jnp.ones((2, 5, 3)))


@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 3), (0, 0, 3)])
def test_empty_inputs(shape):
    cfg = TCN(3, (4, 6))
    ys = cfg.apply(random_params(cfg, 0), jnp.ones(shape, jnp.bfloat16))
    assert ys.shape == shape[:2] + (6,) and ys.dtype == jnp.bfloat16


def test_bfloat16_computes_in_float32():
    cfg = TCN(3, (5, 5), kernel_size=3)
    params = random_params(cfg, 13, scale=0.5)
    xs = jnp.asarray(normal(14, (2, 12, 3)), jnp.bfloat16)
    ys = cfg.apply(params, xs)
    assert ys.dtype == jnp.bfloat16
    ref = cfg.apply(params, xs.astype(jnp.float32))
    # Only the final rounding to bfloat16 differs (8 bits of mantissa).
    np.testing.assert_allclose(ys.astype(jnp.float32), ref, rtol=2**-8, atol=1e-6)
    # bfloat16 params are upcast too.
    params_bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    ys2 = cfg.apply(params_bf16, xs)
    params_up = jax.tree.map(lambda a: a.astype(jnp.float32), params_bf16)
    ref2 = cfg.apply(params_up, xs.astype(jnp.float32))
    np.testing.assert_allclose(ys2.astype(jnp.float32), ref2, rtol=2**-8, atol=1e-6)


def test_jit_with_static_config():
    cfg = TCN(3, [4, 4], kernel_size=2)
    params = random_params(cfg, 0)
    xs = normal(1, (2, 7, 3))
    f = jax.jit(TCN.apply, static_argnums=0)
    np.testing.assert_allclose(f(cfg, params, xs), cfg.apply(params, xs), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# NNX wrapper
# --------------------------------------------------------------------------------------------


def _load(module: nn_tcn.TCN, params) -> None:
    jax.tree.map(
        lambda var, val: var.set_value(val),
        module.blocks,
        params["blocks"],
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def test_nnx_wrapper_matches_functional():
    input_size, channels, k = INIT_CFG
    module = nn_tcn.TCN(input_size, list(channels), kernel_size=k, dropout=0.2, rngs=nnx.Rngs(0))
    cfg = TCN(input_size, channels, kernel_size=k, dropout=0.2)
    assert module.config == cfg and module.receptive_field == cfg.receptive_field
    params = random_params(cfg, 15, scale=0.5)
    _load(module, params)
    xs = normal(16, (2, 9, 3))
    np.testing.assert_array_equal(module(xs), cfg.apply(params, xs))
    key = jax.random.key(17)
    np.testing.assert_array_equal(
        module(xs, train=True, key=key), cfg.apply(params, xs, train=True, key=key)
    )
    # One nnx.Param per array, at the same paths as the functional pytree.
    state = nnx.state(module, nnx.Param)
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(params))
    # Gradients through the module are the functional gradients.
    g_mod = nnx.jit(nnx.grad(lambda m: jnp.sum(m(xs) ** 2)))(module)
    g_fun = jax.jit(jax.grad(lambda p: jnp.sum(cfg.apply(p, xs) ** 2)))(params)
    for a, b in zip(jax.tree.leaves(g_mod), jax.tree.leaves(g_fun["blocks"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Without a key, train=True draws from the module's dropout stream, which advances.
    d1, d2 = module(xs, train=True), module(xs, train=True)
    assert not np.allclose(d1, d2) and not np.allclose(d1, module(xs))


def test_nnx_wrapper_trains_with_optimizer():
    input_size, channels, k = INIT_CFG
    module = nn_tcn.TCN(input_size, channels, kernel_size=k, rngs=nnx.Rngs(1))
    opt = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)
    xs = normal(18, (2, 9, 3))

    @nnx.jit
    def step(module, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - 1.0) ** 2))(module)
        opt.update(module, grads)
        return loss

    losses = [float(step(module, opt)) for _ in range(3)]  # more than one update
    assert losses[2] < losses[0]
    assert jax.tree.structure(module.params) == jax.tree.structure(random_params(module.config, 0))
