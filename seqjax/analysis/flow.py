r"""Gradient flow through time, measured with one backward pass.

For a loss :math:`L` (typically :math:`L_T`, a loss on the last step's output) we want, for every
step :math:`t`, the norm of the gradient with respect to the hidden state and to the input,

.. math::

    \left\lVert \frac{\partial L}{\partial h_t} \right\rVert_2, \qquad
    \left\lVert \frac{\partial L}{\partial x_t} \right\rVert_2, \qquad t = 0, \dots, T-1.

Differentiating with respect to each :math:`h_t` separately would take ``T`` backward passes. The
trick used here: run the recurrence with an additive perturbation :math:`\delta_t` on the state
after every step,

.. math::

    \tilde c_t = \mathrm{step}(\tilde c_{t-1}, x_t) + \delta_t, \qquad \delta_t = 0,

so the forward pass is unchanged, and :math:`\partial L / \partial \delta_t = \partial L /
\partial h_t` is the *total* derivative of :math:`L` with respect to the state at step ``t``
(through every later step). One ``jax.grad`` with respect to the stacked zeros
:math:`\delta_{0..T-1}` gives all of them at once; the same pass gives :math:`\partial L /
\partial x_t`.

What exactly is measured:

* recurrent cells: ``dh[t] = ||dL/dh_t||`` with :math:`h_t` the hidden output of step ``t``
  (for LSTMs the cell state :math:`c_t` is held fixed: :math:`\partial L/\partial h_t` is the
  partial through the ``h`` path only) and, for LSTMs, ``dc[t] = ||dL/dc_t||`` likewise;
* TCNs: ``dh[l, t]`` is the gradient with respect to the output of residual block ``l`` at step
  ``t`` (the perturbation is added after the block);
* ``dx[t] = ||dL/dx_t||`` with :math:`x_t` the encoder input: the input features, or the
  embedding vector :math:`E[\mathrm{token}_t]` for token models.

Norms are taken per example over the feature axis. A loss that is a *sum* over examples gives
exactly the per-example gradients (example ``b``'s state only reaches example ``b``'s loss); a
mean scales them all by ``1/B``.

Plain JAX autodiff through :meth:`Cell.step` is used (not the hand-written VJP of
:func:`seqjax.rnn`); tests check the result against ``T`` separate ``jax.grad`` calls and against
closed forms.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import Cell, _project, glorot_uniform, orthogonal, state_dtype
from seqjax.core.recurrent import rnn
from seqjax.core.tcn import _temporal_block
from seqjax.models.sequence import SequenceModel, check_token_ids, embed_tokens

Array = jax.Array

__all__ = [
    "GradientFlow",
    "LinearRNN",
    "by_distance",
    "cell_gradient_flow",
    "cell_states",
    "geometric_rate",
    "model_gradient_flow",
    "model_states",
]


# --------------------------------------------------------------------------------------------
# A linear cell: the textbook case h_t = W h_{t-1} + x_t
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearRNN(Cell):
    r"""Linear recurrence :math:`h_t = x_t W_x + h_{t-1} W_h + b` (no nonlinearity).

    In column-vector notation with :math:`W = W_h^\top` this is :math:`h_t = W h_{t-1} + W_x^\top
    x_t + b`, so :math:`\partial h_T / \partial h_t = W^{T-t}` and, for a loss with
    :math:`g = \partial L/\partial h_T`, :math:`\partial L/\partial h_t = (W^\top)^{T-t} g`
    exactly: the gradient vanishes or explodes with the spectral radius of :math:`W`. For
    analysis and teaching; it works with :func:`seqjax.rnn` too.

    Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]``.
    """

    input_size: int
    hidden_size: int
    input_init: Any = glorot_uniform
    recurrent_init: Any = orthogonal

    num_gates = 1

    def __post_init__(self):
        for name in ("input_size", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LinearRNN.{name} must be a positive int, got {value!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, h), "w_h": (h, h), "b": (h,)}

    def init(self, key: Array, dtype: Any = jnp.float32) -> dict:
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        return {"w_x": self.input_init(kx, (d, h), dtype),
                "w_h": self.recurrent_init(kh, (h, h), dtype),
                "b": jnp.zeros((h,), dtype)}

    def input_projection(self, params: dict, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def step_with_residuals(self, rp, h, gx_t):
        h_new = gx_t + jnp.dot(h, rp["w_h"].astype(h.dtype))
        return h_new, None

    def step_vjp(self, rp, res, h_prev, dh):
        return jnp.dot(dh, rp["w_h_t"].astype(dh.dtype)), dh

    def recurrent_grads(self, rp, res, h_prev, dgx):
        a = h_prev.reshape(-1, h_prev.shape[-1])
        return {"w_h": a.T @ dgx.reshape(-1, dgx.shape[-1])}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class GradientFlow(NamedTuple):
    """Per-step gradient norms (a pytree of arrays).

    Attributes:
      loss: the scalar loss :math:`L` at the unperturbed point.
      dh: :math:`\\lVert\\partial L/\\partial h_t\\rVert`; ``[B, T]`` for a cell, ``[L, B, T]``
        for a model (one row per recurrent layer or TCN block).
      dx: :math:`\\lVert\\partial L/\\partial x_t\\rVert`, ``[B, T]`` (encoder inputs:
        features or embeddings).
      dc: LSTM cell state :math:`\\lVert\\partial L/\\partial c_t\\rVert`, shaped like ``dh``;
        ``None`` for other models.
    """

    loss: Array
    dh: Array
    dx: Array
    dc: Array | None = None


def by_distance(norms: Any) -> np.ndarray:
    """Batch-mean norms indexed by distance ``d = T - 1 - t`` from the last step.

    Args:
      norms: ``[..., B, T]`` (e.g. ``GradientFlow.dh``).

    Returns:
      ``[..., T]`` numpy: entry ``d`` is the mean over the batch of the norm at ``t = T-1-d``.
    """
    try:
        arr = np.asarray(norms, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"norms must be a numeric array [..., B, T], got "
                        f"{type(norms).__name__}") from None
    if arr.ndim < 2:
        raise ValueError(f"norms.shape={arr.shape} must be [..., B, T]")
    return arr.mean(axis=-2)[..., ::-1]


def geometric_rate(curve: Any, *, start: int = 0, stop: int | None = None,
                   floor: float = 1e-30) -> float:
    r"""Per-step factor :math:`\rho` of a least-squares fit :math:`\log n_d = a + d \log\rho`.

    Args:
      curve: ``[D]`` norms by distance (:func:`by_distance`).
      start, stop: the distance range fitted.
      floor: entries ``<= floor`` (vanished, or exact zeros) and non-finite ones are left out.

    Returns:
      :math:`\rho` (< 1: vanishing, > 1: exploding), ``nan`` with fewer than two usable points.
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"curve.shape={y.shape} must be [D] (norms by distance)")
    y = y[start:stop]
    d = np.arange(start, start + len(y))
    ok = np.isfinite(y) & (y > floor)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(d[ok], np.log(y[ok]), 1)[0]
    return float(np.exp(slope))


# --------------------------------------------------------------------------------------------
# Recurrent cells
# --------------------------------------------------------------------------------------------


def _unroll(cell: Cell, params: dict, xs: Array, carry0: Any, deltas: Any) -> Any:
    """Carries of every step, time-major, with ``deltas`` (a carry stacked over T) added.

    ``xs [B, T, D]``; returns the stacked carries ``[T, B, H]`` (a tuple for LSTMs).
    """
    gx = cell.project(params, jnp.swapaxes(xs, 0, 1))  # [T, B, G]

    def body(carry, inp):
        gx_t, d_t = inp
        carry, _ = cell.step(params, carry, gx_t)
        carry = jax.tree.map(jnp.add, carry, d_t)
        return carry, carry

    _, carries = jax.lax.scan(body, carry0, (gx, deltas))
    return carries


def _zeros_over_time(carry0: Any, steps: int) -> Any:
    return jax.tree.map(lambda c: jnp.zeros((steps,) + c.shape, c.dtype), carry0)


def _check_xs(cell: Cell, xs: Array) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax cell, got {type(cell).__name__}")
    if getattr(xs, "ndim", None) != 3 or xs.shape[-1] != cell.input_size:
        raise ValueError(f"xs.shape={getattr(xs, 'shape', None)} must be [B, T, "
                         f"{cell.input_size}] (cell.input_size={cell.input_size})")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs.dtype={xs.dtype} must be floating")


def _initial_carry(cell: Cell, xs: Array, initial_carry: Any) -> Any:
    """The checked initial carry, in the state dtype (zeros when ``None``)."""
    batch, acc = xs.shape[0], state_dtype(xs.dtype)
    if initial_carry is None:
        return cell.initial_carry(batch, acc)
    want = jax.eval_shape(lambda: cell.initial_carry(batch))
    got = [tuple(jnp.shape(c)) for c in jax.tree.leaves(initial_carry)]
    exp = [tuple(c.shape) for c in jax.tree.leaves(want)]
    if jax.tree.structure(initial_carry) != jax.tree.structure(want) or got != exp:
        raise ValueError(f"initial_carry shapes {got} must be {exp} (cell.initial_carry("
                         f"{batch}) of {cell!r})")
    return jax.tree.map(lambda c: jnp.asarray(c, acc), initial_carry)


def _norm(g: Array) -> Array:
    """L2 norm over the last axis, scaled by the largest entry so that tiny (vanished) and huge
    (exploded) gradients neither underflow nor overflow when squared."""
    m = jnp.max(jnp.abs(g), axis=-1, keepdims=True)
    safe = jnp.where(m > 0, m, 1.0)
    return jnp.where(m[..., 0] > 0, m[..., 0] * jnp.sqrt(jnp.sum(jnp.square(g / safe), axis=-1)),
                     0.0)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _cell_flow(cell, params, xs, carry0, loss_fn, cotangent):
    steps = xs.shape[1]

    def total(xs, deltas):
        carries = _unroll(cell, params, xs, carry0, deltas)
        hs = jnp.swapaxes(cell.carry_hidden(carries), 0, 1)
        if loss_fn is None:  # L = sum_b <g, h_{T-1}>: the cotangent is data, not a constant
            return jnp.sum(hs[:, -1] * cotangent)
        return loss_fn(hs)

    deltas = _zeros_over_time(carry0, steps)
    loss, (gxs, gd) = jax.value_and_grad(total, argnums=(0, 1))(xs, deltas)
    leaves = [jnp.swapaxes(_norm(g), 0, 1) for g in jax.tree.leaves(gd)]  # each [B, T]
    dh = jnp.swapaxes(_norm(cell.carry_hidden(gd)), 0, 1)
    dc = leaves[1] if isinstance(carry0, tuple) and len(leaves) == 2 else None
    return GradientFlow(loss=loss, dh=dh, dx=_norm(gxs), dc=dc)


def cell_gradient_flow(
    cell: Cell,
    params: dict,
    xs: Array,
    loss_fn: Callable[[Array], Array] | None = None,
    *,
    cotangent: Array | None = None,
    initial_carry: Any = None,
) -> GradientFlow:
    r"""``||dL/dh_t||``, ``||dL/dx_t||`` (and LSTM ``||dL/dc_t||``) for every step, one pass.

    Args:
      cell: a seqjax cell (or :class:`LinearRNN`).
      params: its params.
      xs: inputs ``[B, T, D]`` (full length; no padding).
      loss_fn: ``loss_fn(hs [B, T, H]) -> scalar`` (a ``jit`` static argument: pass the same
        object to reuse the compilation). Default: :math:`L = \sum_b \langle g,
        h^{(b)}_{T-1} \rangle`, linear in the last hidden state, so that
        :math:`\partial L/\partial h_{T-1} = g` for every example.
      cotangent: ``g``, ``[H]`` or ``[B, H]``, for the default loss; default
        :math:`\mathbf{1}/\sqrt{H}` (unit norm).
      initial_carry: the carry before step 0 (zeros by default).

    Returns:
      :class:`GradientFlow` with ``dh [B, T]``, ``dx [B, T]``, ``dc [B, T]`` (LSTMs) or ``None``.
    """
    _check_xs(cell, xs)
    cell.check_params(params)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (hs -> scalar), got {type(loss_fn).__name__}")
    batch = xs.shape[0]
    acc = state_dtype(xs.dtype)
    carry0 = _initial_carry(cell, xs, initial_carry)
    g = None
    if loss_fn is None:
        hid = cell.hidden_size
        g = (jnp.ones((hid,), acc) / np.sqrt(hid)) if cotangent is None else jnp.asarray(
            cotangent, acc)
        if g.shape not in ((hid,), (batch, hid)):
            raise ValueError(f"cotangent.shape={g.shape} must be ({hid},) or ({batch}, {hid})")
    elif cotangent is not None:
        raise ValueError("cotangent is for the default loss; pass either loss_fn or cotangent")
    return _cell_flow(cell, params, xs, carry0, loss_fn, g)


def cell_states(cell: Cell, params: dict, xs: Array, initial_carry: Any = None) -> Any:
    """The carry after every step, batch-major: ``h [B, T, H]`` (LSTMs ``(h, c)``)."""
    _check_xs(cell, xs)
    cell.check_params(params)
    carry0 = _initial_carry(cell, xs, initial_carry)
    return rnn(cell, params, xs, initial_carry=carry0, return_states=True)[2]


# --------------------------------------------------------------------------------------------
# Models: seqjax.models.SequenceModel (recurrent stacks and TCNs)
# --------------------------------------------------------------------------------------------


def _features(model: Any, params: dict, inputs: Array) -> Array:
    """The encoder inputs ``[B, T, F]``: embeddings of token ids, or the float inputs."""
    if model.embed_size:
        return embed_tokens(params["embed"], inputs)
    return jnp.asarray(inputs)


def _check_inputs(model: Any, params: dict, inputs: Any) -> Any:
    """Static checks (and the token range where concrete) of a model's params and inputs."""
    _check_model(model)
    model.check_params(params)
    if not hasattr(inputs, "dtype"):
        inputs = np.asarray(inputs)
    dtype = inputs.dtype
    if model.embed_size:
        if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"inputs.dtype={dtype} must be integer token ids ([B, T]) for a "
                            f"model with embed_size={model.embed_size}")
        return check_token_ids(inputs, model.input_size, name="inputs")
    if jnp.ndim(inputs) != 3 or jnp.shape(inputs)[-1] != model.input_size:
        raise ValueError(f"inputs.shape={tuple(jnp.shape(inputs))} must be [B, T, "
                         f"{model.input_size}]")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"inputs.dtype={dtype} must be floating")
    return inputs


def _zero_deltas(model: Any, feats: Array) -> list:
    batch, steps = feats.shape[:2]
    if model.arch == "tcn":
        dt = jnp.promote_types(feats.dtype, jnp.float32)
        return [jnp.zeros((batch, steps, c), dt) for c in model.tcn.channels]
    acc = state_dtype(feats.dtype)
    return [_zeros_over_time(cell.initial_carry(batch, acc), steps) for cell in model.cells]


def _encode(model: Any, params: dict, feats: Array, deltas: list) -> tuple[Array, dict]:
    """Encoder with perturbations; returns ``(top [B, T, H], states)``.

    ``states``: ``{"h": [L, B, T, H]}`` (plus ``"c"`` for LSTMs) for recurrent stacks, ``{"h":
    [L, B, T, C]}`` block outputs for TCNs. Evaluation mode (no dropout).
    """
    if model.arch == "tcn":
        dt = jnp.promote_types(feats.dtype, jnp.float32)
        blocks = jax.tree.map(lambda a: jnp.asarray(a, dt), params["encoder"]["blocks"])
        h = feats.astype(dt)
        outs = []
        for i, (block, d) in enumerate(zip(blocks, deltas)):
            h = _temporal_block(block, h, 2**i, 0.0, None) + d
            outs.append(h)
        return h, {"h": jnp.stack(outs)}
    h = feats
    hs_all, cs_all = [], []
    for cell, p, d in zip(model.cells, params["encoder"], deltas):
        carry0 = cell.initial_carry(h.shape[0], state_dtype(h.dtype))
        carries = _unroll(cell, p, h, carry0, d)
        h = jnp.swapaxes(cell.carry_hidden(carries), 0, 1).astype(feats.dtype)
        hs_all.append(h)
        if isinstance(carries, tuple):
            cs_all.append(jnp.swapaxes(carries[1], 0, 1))
    states = {"h": jnp.stack(hs_all)}
    if cs_all:
        states["c"] = jnp.stack(cs_all)
    return h, states


def _readout(params: dict, top: Array) -> Array:
    return top @ params["readout"]["w"] + params["readout"]["b"]


def _check_model(model: Any) -> None:
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a seqjax.models.SequenceModel, got {type(model).__name__}")


@functools.partial(jax.jit, static_argnums=(0,))
def _model_states(model, params, inputs):
    feats = _features(model, params, inputs)
    top, states = _encode(model, params, feats, _zero_deltas(model, feats))
    return _readout(params, top), states


def model_states(model: Any, params: dict, inputs: Array) -> tuple[Array, dict]:
    """Outputs and the hidden states of every layer of a ``SequenceModel`` (evaluation mode).

    Args:
      model: a :class:`seqjax.models.SequenceModel`.
      params: its params.
      inputs: ``[B, T, D]`` floats, or ``[B, T]`` token ids for models with an embedding.

    Returns:
      ``(outputs [B, T, O], states)``, the outputs equal to ``model.apply(params, inputs)``;
      ``states["h"]`` is ``[L, B, T, H]`` (recurrent: hidden states of each layer; TCN: output
      of each residual block) and, for LSTMs, ``states["c"]`` the cell states.

    Raises:
      TypeError: not a ``SequenceModel``; float token ids or integer features.
      ValueError: params of another model, inputs of the wrong shape, ids out of range.
    """
    inputs = _check_inputs(model, params, inputs)
    return _model_states(model, params, inputs)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _model_flow(model, params, inputs, loss_fn):
    feats = _features(model, params, inputs)

    def total(feats, deltas):
        top, _ = _encode(model, params, feats, deltas)
        return loss_fn(_readout(params, top))

    loss, (gf, gd) = jax.value_and_grad(total, argnums=(0, 1))(feats, _zero_deltas(model, feats))
    if model.arch == "tcn":
        dh = jnp.stack([_norm(g) for g in gd])  # [L, B, T]
        dc = None
    else:
        cells = model.cells
        dh = jnp.stack([jnp.swapaxes(_norm(c.carry_hidden(g)), 0, 1) for c, g in zip(cells, gd)])
        dc = None
        if isinstance(gd[0], tuple):
            dc = jnp.stack([jnp.swapaxes(_norm(g[1]), 0, 1) for g in gd])
    return GradientFlow(loss=loss, dh=dh, dx=_norm(gf), dc=dc)


def model_gradient_flow(
    model: Any,
    params: dict,
    inputs: Array,
    loss_fn: Callable[[Array], Array],
) -> GradientFlow:
    """Per-step gradient norms of a ``SequenceModel`` for ``loss_fn(outputs)``, one pass.

    Args:
      model: a :class:`seqjax.models.SequenceModel` (any arch; evaluation mode, no dropout).
      params: its params.
      inputs: ``[B, T, D]`` floats, or ``[B, T]`` token ids (then ``dx`` is with respect to the
        embedding vectors).
      loss_fn: ``loss_fn(outputs [B, T, O]) -> scalar``; use a sum over examples to get exact
        per-example norms, and a loss on the last step only for :math:`L_T`. It is a ``jit``
        static argument: pass the same object to reuse the compilation.

    Returns:
      :class:`GradientFlow` with ``dh [L, B, T]`` (recurrent layers' hidden states, or TCN
      block outputs), ``dx [B, T]``, ``dc [L, B, T]`` for LSTMs.

    Raises:
      TypeError: not a ``SequenceModel``; float token ids or integer features; a ``loss_fn``
        that is not callable.
      ValueError: params of another model, inputs of the wrong shape, ids out of range.
    """
    inputs = _check_inputs(model, params, inputs)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs -> scalar), got "
                        f"{type(loss_fn).__name__}")
    return _model_flow(model, params, inputs, loss_fn)
