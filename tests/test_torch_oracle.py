"""seqjax against PyTorch's nn.RNN / nn.LSTM / nn.GRU with copied weights (the independent oracle).

Forward outputs, final carries and gradients (params, inputs, initial carry) must agree to 1e-5
in float32, for variable lengths (``pack_padded_sequence``), reverse direction and 2-layer
bidirectional stacks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from seqjax import stack_cells, stacked
from seqjax.core.interop import from_torch, to_torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.manual_seed(0)

TORCH = {
    "rnn_tanh": lambda d, h, **kw: torch.nn.RNN(d, h, nonlinearity="tanh", **kw),
    "rnn_relu": lambda d, h, **kw: torch.nn.RNN(d, h, nonlinearity="relu", **kw),
    "lstm": lambda d, h, **kw: torch.nn.LSTM(d, h, **kw),
    "gru": lambda d, h, **kw: torch.nn.GRU(d, h, **kw),
}
B, T, D, H = 4, 7, 5, 6
ATOL = 1e-5


def _interop_kind(kind):
    return "rnn" if kind.startswith("rnn") else kind


def _run_torch(module, kind, x, h0, c0, lengths):
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True)
    state = (h0t, c0t) if kind == "lstm" else h0t
    if lengths is None:
        out, hn = module(xt, state)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
        out, hn = module(packed, state)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    return xt, h0t, c0t, out, hn


def _carries_from_torch_state(kind, h0, c0, num_layers, bidi):
    """PyTorch's [L*dirs, B, H] initial state -> seqjax's per-layer carries."""
    dirs = 2 if bidi else 1
    carries = []
    for layer in range(num_layers):
        per_dir = []
        for d in range(dirs):
            idx = layer * dirs + d
            per_dir.append((h0[idx], c0[idx]) if kind == "lstm" else h0[idx])
        carries.append(tuple(per_dir) if bidi else per_dir[0])
    return carries


def _final_h_c(kind, carries, bidi):
    """seqjax's final carries -> PyTorch's (h_n, c_n) layout [L*dirs, B, H]."""
    hs, cs = [], []
    for carry in carries:
        for c in (carry if bidi else (carry,)):
            if kind == "lstm":
                hs.append(c[0])
                cs.append(c[1])
            else:
                hs.append(c)
    return jnp.stack(hs), (jnp.stack(cs) if cs else None)


CASES = [
    # kind, num_layers, bidirectional, variable lengths
    *[(k, 1, False, False) for k in TORCH],
    *[(k, 1, False, True) for k in TORCH],
    *[(k, 2, True, True) for k in TORCH],
    ("lstm", 2, False, True),
    ("gru", 1, True, False),
]


@pytest.mark.parametrize("kind,num_layers,bidi,varlen", CASES)
def test_matches_torch_forward_and_gradients(kind, num_layers, bidi, varlen):
    rng = np.random.default_rng(abs(hash((kind, num_layers, bidi, varlen))) % 2**32)
    module = TORCH[kind](D, H, num_layers=num_layers, bidirectional=bidi, batch_first=True)
    if kind == "rnn_relu":  # keep relu activations away from 0 so the kink does not matter
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.mul_(0.5)
    dirs = 2 if bidi else 1
    x = rng.normal(size=(B, T, D)).astype(np.float32)
    h0 = rng.normal(size=(num_layers * dirs, B, H)).astype(np.float32) * 0.5
    c0 = rng.normal(size=(num_layers * dirs, B, H)).astype(np.float32) * 0.5
    lengths = np.array([T, 3, 1, 5]) if varlen else None
    w_out = rng.normal(size=(B, T, H * dirs)).astype(np.float32)
    w_h = rng.normal(size=(num_layers * dirs, B, H)).astype(np.float32)

    # PyTorch: forward, then the gradient of a random linear functional of (out, h_n, c_n).
    xt, h0t, c0t, out_t, hn_t = _run_torch(module, kind, x, h0, c0, lengths)
    h_n_t, c_n_t = hn_t if kind == "lstm" else (hn_t, None)
    loss_t = (out_t * torch.tensor(w_out)).sum() + (h_n_t * torch.tensor(w_h)).sum()
    if c_n_t is not None:
        loss_t = loss_t + (c_n_t * torch.tensor(w_h)).sum() * 0.5
    loss_t.backward()

    # seqjax with the same weights.
    ikind = _interop_kind(kind)
    params = from_torch(module.state_dict(), ikind)
    cells = stack_cells(kind, D, H, num_layers, bidirectional=bidi)
    carries0 = _carries_from_torch_state(kind, jnp.asarray(h0), jnp.asarray(c0), num_layers, bidi)
    seq_lengths = None if lengths is None else jnp.asarray(lengths)

    def run(params, x, carries0):
        ys, carries = stacked(cells, params, x, seq_lengths=seq_lengths,
                              initial_carries=carries0, bidirectional=bidi)
        return ys, _final_h_c(kind, carries, bidi)

    def loss(params, x, carries0):
        ys, (h_n, c_n) = run(params, x, carries0)
        total = jnp.sum(ys * w_out) + jnp.sum(h_n * w_h)
        if c_n is not None:
            total = total + 0.5 * jnp.sum(c_n * w_h)
        return total

    ys, (h_n, c_n) = jax.jit(run)(params, jnp.asarray(x), carries0)
    np.testing.assert_allclose(ys, out_t.detach().numpy(), atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(h_n, h_n_t.detach().numpy(), atol=ATOL, rtol=1e-5)
    if c_n is not None:
        np.testing.assert_allclose(c_n, c_n_t.detach().numpy(), atol=ATOL, rtol=1e-5)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    g_params, g_x, g_c0 = grad_fn(params, jnp.asarray(x), carries0)
    gtol = dict(atol=1e-4, rtol=1e-5)  # gradients sum T*B terms: allow for summation order
    np.testing.assert_allclose(g_x, xt.grad.numpy(), **gtol)
    g_h0, g_cc0 = _final_h_c(kind, g_c0, bidi)
    np.testing.assert_allclose(g_h0, h0t.grad.numpy(), **gtol)
    if kind == "lstm":
        np.testing.assert_allclose(g_cc0, c0t.grad.numpy(), **gtol)
    # Parameter gradients: PyTorch's grads for weight_* are the transposes of ours; our summed
    # bias b = b_ih + b_hh has the gradient of either.
    torch_grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    ours = to_torch(jax.tree.map(np.asarray, g_params), ikind)
    for name, g in torch_grads.items():
        if name.startswith("bias_hh") and ikind != "gru":
            name_ih = name.replace("bias_hh", "bias_ih")
            np.testing.assert_allclose(ours[name_ih], g, err_msg=name, **gtol)
        else:
            np.testing.assert_allclose(ours[name], g, err_msg=name, **gtol)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_reverse_single_direction_matches_torch_backward_half(kind):
    """``rnn(reverse=True)`` is the backward half of PyTorch's bidirectional layer."""
    from seqjax import make_cell, rnn

    module = TORCH[kind](D, H, bidirectional=True, batch_first=True)
    x = np.random.default_rng(1).normal(size=(B, T, D)).astype(np.float32)
    lengths = np.array([2, T, 4, 1])
    _, _, _, out_t, _ = _run_torch(module, kind, x, np.zeros((2, B, H), np.float32),
                                   np.zeros((2, B, H), np.float32), lengths)
    params = from_torch(module.state_dict(), _interop_kind(kind))[0]["bw"]
    ys, _ = rnn(make_cell(kind, D, H), params, jnp.asarray(x), seq_lengths=jnp.asarray(lengths),
                reverse=True)
    np.testing.assert_allclose(ys, out_t.detach().numpy()[..., H:], atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_interop_round_trip(kind):
    module = TORCH["rnn_tanh" if kind == "rnn" else kind](3, 4, num_layers=2, bidirectional=True)
    sd = module.state_dict()
    params = from_torch(sd, kind)
    back = to_torch(params, kind)
    assert set(back) == set(sd)
    again = from_torch(back, kind)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # to_torch output loads into a fresh module and computes the same thing.
    fresh = TORCH["rnn_tanh" if kind == "rnn" else kind](3, 4, num_layers=2, bidirectional=True)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})
    x = torch.randn(5, 2, 3)
    np.testing.assert_allclose(fresh(x)[0].detach().numpy(), module(x)[0].detach().numpy(),
                               atol=1e-6)


def test_interop_rejects_unknown_keys_and_kind():
    with pytest.raises(ValueError, match="kind='lstmx'"):
        from_torch({}, "lstmx")
    with pytest.raises(ValueError, match="weight_hr_l0"):
        from_torch(torch.nn.LSTM(3, 4, proj_size=2).state_dict(), "lstm")
