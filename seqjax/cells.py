"""Pure-functional recurrent cells.

A cell is a frozen, hashable dataclass holding only static configuration, so it can be a
``jax.jit`` static argument. Its parameters are a plain ``dict`` pytree made by ``init``.

Every cell splits its step in two so that the input projection can be hoisted out of the time
loop:

* ``project(params, xs) -> gx``: ``xs [..., D] -> gx [..., G]``, the input-side pre-activations of
  all time steps in one matmul (biases folded in);
* ``step(params, carry, gx_t) -> (carry, h_t)``: one time step, ``gx_t [B, G]``.

Gate order is PyTorch's and cuDNN's: (i, f, g, o) for LSTMs and (r, z, n) for GRUs, so weights
convert both ways (:mod:`seqjax.interop`). Weights are stored input-major (``w_x [D, G]``,
``w_h [H, G]``), i.e. transposed relative to PyTorch's ``weight_ih [G, D]``.

For the scan backend's hand-written VJP (:mod:`seqjax.recurrent`) each cell also has

* ``_fwd(rp, carry, gx_t) -> (carry, res)``: the step, also returning the residuals the backward
  pass needs (activated gates, cell state, ...); ``rp`` are the recurrent params
  (:meth:`recurrent_params`);
* ``_bwd(rp, res, carry_prev, dcarry) -> (dcarry_prev, dgx_t)``: the step's VJP from those
  residuals, without any weight gradient; ``rp`` here also holds ``w_h_t``, the transposed
  recurrent weight, made once outside the loop (a transposed operand inside the loop costs XLA:CPU
  a transpose per step);
* ``_rgrads(rp, res, carry_prev, dgx) -> drp``: the recurrent-weight gradients for all steps at
  once (``res``, ``carry_prev`` and ``dgx`` stacked over time), one big matmul instead of ``T``
  small ones.

``step`` is ``_fwd`` with the residuals dropped, so the forward maths is written once.

State and accumulation are float32 (float64 for float64 inputs, :func:`state_dtype`) whatever
the parameter dtype: ``project`` returns the state dtype and ``step`` casts the recurrent weight
to the dtype of the carry.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Initializer = Callable[..., Array]

__all__ = [
    "Cell",
    "SimpleRNN",
    "LSTM",
    "PeepholeLSTM",
    "GRU",
    "glorot_uniform",
    "orthogonal",
]

glorot_uniform: Initializer = jax.nn.initializers.glorot_uniform()
orthogonal: Initializer = jax.nn.initializers.orthogonal()
_F32 = jnp.float32


def _sigmoid_tanh(x: Array) -> Array:
    """sigmoid(x) through tanh: one transcendental that XLA:CPU vectorises well."""
    return 0.5 + 0.5 * jnp.tanh(0.5 * x)


def _check_positive(cell: Any, *names: str) -> None:
    for name in names:
        value = getattr(cell, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"{type(cell).__name__}.{name} must be a positive int, got {value!r}"
            )


def _recurrent_init(init: Initializer, key: Array, hidden: int, gates: int, dtype: Any) -> Array:
    """Initialise ``w_h [H, gates*H]`` gate block by gate block (each block orthogonal)."""
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, (hidden, hidden), dtype) for k in keys], axis=1)


def state_dtype(dtype: Any) -> Any:
    """The dtype of state and accumulation for inputs of ``dtype``: at least float32."""
    return jnp.promote_types(dtype, _F32)


def _project(xs: Array, w_x: Array, b: Array) -> Array:
    """``xs [..., D] @ w_x [D, G] + b [G]``, accumulated and returned in the state dtype."""
    acc = state_dtype(jnp.promote_types(xs.dtype, w_x.dtype))
    gx = jnp.einsum("...d,dg->...g", xs, w_x, preferred_element_type=acc)
    return gx + b.astype(acc)


def _matmul(h: Array, w: Array) -> Array:
    """``h [B, H] @ w [H, G]`` in the dtype of the state ``h``."""
    return jnp.dot(h, w.astype(h.dtype), preferred_element_type=h.dtype)


def _outer_sum(a: Array, b: Array) -> Array:
    """``sum_{t,b} a[t,b,:]^T b[t,b,:]``: a weight gradient over all steps in one matmul."""
    acc = jnp.promote_types(a.dtype, b.dtype)
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return jnp.dot(a2.T, b2, preferred_element_type=acc)


class Cell(abc.ABC):
    """Interface shared by the cells (documentation and ``isinstance`` checks only)."""

    input_size: int
    hidden_size: int
    #: Number of gate blocks of width ``hidden_size`` in ``gx``.
    num_gates: int = 1
    #: Whether the cell has ``_bwd``/``_rgrads`` for the scan backend's hand-written VJP. Cells
    #: without (the memory cells of :mod:`seqjax.memory`) are differentiated by JAX through the
    #: same ``_fwd`` (``_fwd`` may then return ``None`` residuals).
    hand_written_vjp: bool = True

    @property
    def gate_size(self) -> int:
        return self.num_gates * self.hidden_size

    def initial_carry(self, batch: int, dtype: Any = _F32) -> Any:
        """Zero state: ``h [B, H]`` (LSTMs: ``(h, c)``)."""
        return jnp.zeros((batch, self.hidden_size), dtype)

    def carry_hidden(self, carry: Any) -> Array:
        """The hidden state ``h [B, H]`` inside a carry."""
        return carry

    def with_hidden(self, carry: Any, h: Array) -> Any:
        """``carry`` with its hidden state replaced by ``h``."""
        return h

    def step(self, params: Params, carry: Any, gx_t: Array) -> tuple[Any, Array]:
        """One time step: ``gx_t [B, G]`` -> ``(carry, h_t [B, H])``."""
        new, _ = self._fwd(self.recurrent_params(params), carry, gx_t)
        return new, self.carry_hidden(new)

    def recurrent_params(self, params: Params) -> Params:
        """The params the time loop needs (everything but the input projection)."""
        return {"w_h": params["w_h"]}

    def __call__(self, params: Params, carry: Any, x_t: Array) -> tuple[Any, Array]:
        """Convenience: project one input ``x_t [B, D]`` and step."""
        return self.step(params, carry, self.project(params, x_t))

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter, e.g. LSTM ``{"w_x": (D, 4H), ...}``."""

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError`` naming any missing key or wrongly shaped parameter.

        ``param_shapes`` may nest (a memory cell's ``{"controller": {...}, ...}``); keys are
        named by their path, e.g. ``params['controller']['w_h']``.
        """
        _check_tree(params, self.param_shapes(), "params", self)


def _check_tree(params: Any, expected: dict, where: str, cell: Any) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"{where} must be a dict, got {type(params).__name__}")
    missing = sorted(set(expected) - set(params))
    if missing:
        raise ValueError(f"{where} for {cell!r} lack {missing}; expected keys {sorted(expected)}")
    for name, shape in expected.items():
        if isinstance(shape, dict):
            _check_tree(params[name], shape, f"{where}[{name!r}]", cell)
            continue
        got = tuple(jnp.shape(params[name]))
        if got != tuple(shape):
            raise ValueError(f"{where}[{name!r}].shape={got} must be {tuple(shape)} for {cell!r}")


# --------------------------------------------------------------------------------------------
# Elman RNN
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimpleRNN(Cell):
    r"""Elman RNN: :math:`h_t = \phi(x_t W_x + h_{t-1} W_h + b)`, :math:`\phi` tanh or relu.

    Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]`` (PyTorch's ``b_ih + b_hh``).
    """

    input_size: int
    hidden_size: int
    activation: str = "tanh"
    input_init: Initializer = glorot_uniform
    recurrent_init: Initializer = orthogonal

    num_gates = 1

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, h), "w_h": (h, h), "b": (h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        return {
            "w_x": self.input_init(kx, (d, h), dtype),
            "w_h": self.recurrent_init(kh, (h, h), dtype),
            "b": jnp.zeros((h,), dtype),
        }

    def project(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def _fwd(self, rp, h, gx_t):
        pre = gx_t + _matmul(h, rp["w_h"])
        h_new = jnp.tanh(pre) if self.activation == "tanh" else jax.nn.relu(pre)
        return h_new, h_new

    def _bwd(self, rp, h_new, h_prev, dh):
        if self.activation == "tanh":
            dpre = dh * (1.0 - h_new * h_new)
        else:
            dpre = jnp.where(h_new > 0, dh, 0.0)
        return _matmul(dpre, rp["w_h_t"]), dpre

    def _rgrads(self, rp, res, h_prev, dgx):
        return {"w_h": _outer_sum(h_prev, dgx)}


# --------------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------------


def _lstm_gate_scale(hidden: int) -> Array:
    """Pre-activation scale (1/2 for the sigmoid gates i, f, o; 1 for g) for the one-tanh trick."""
    half = jnp.full((hidden,), 0.5, _F32)
    return jnp.concatenate([half, half, jnp.ones((hidden,), _F32), half])


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch layout.

    .. math::
        (i, f, g, o) &= x_t W_x + h_{t-1} W_h + b \\
        i, f, o &\leftarrow \sigma(i), \sigma(f), \sigma(o); \quad g \leftarrow \tanh(g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        h_t &= o \odot \tanh(c_t)

    Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]`` (PyTorch's ``b_ih + b_hh``); the forget
    block of ``b`` is initialised to ``forget_bias``. Carry: ``(h [B, H], c [B, H])``.
    All four gates are computed with a single ``tanh`` over the ``[B, 4H]`` pre-activations
    (:math:`\sigma(x) = (1 + \tanh(x/2))/2`).
    """

    input_size: int
    hidden_size: int
    forget_bias: float = 1.0
    input_init: Initializer = glorot_uniform
    recurrent_init: Initializer = orthogonal

    num_gates = 4

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, 4 * h), "w_h": (h, 4 * h), "b": (4 * h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        b = jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(self.forget_bias)
        return {
            "w_x": self.input_init(kx, (d, 4 * h), dtype),
            "w_h": _recurrent_init(self.recurrent_init, kh, h, 4, dtype),
            "b": b,
        }

    def initial_carry(self, batch: int, dtype: Any = _F32):
        z = jnp.zeros((batch, self.hidden_size), dtype)
        return (z, z)

    def carry_hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1])

    def project(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def _gates(self, pre):
        """Activated gates ``(i, f, g, o) [B, 4H]`` from pre-activations, with one ``tanh``."""
        scale = _lstm_gate_scale(self.hidden_size)  # 1/2 on sigmoid gates, 1 on g
        shift = 1.0 - scale  # 1/2 on sigmoid gates, 0 on g
        return jnp.tanh(pre * scale) * scale + shift

    def _fwd(self, rp, carry, gx_t):
        h, c = carry
        hid = self.hidden_size
        acts = self._gates(gx_t + _matmul(h, rp["w_h"]))
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        return (h_new, c_new), (acts, tc)

    def _bwd(self, rp, res, carry_prev, dcarry):
        acts, tc = res
        _, c_prev = carry_prev
        dh, dc = dcarry
        hid = self.hidden_size
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        dc = dc + dh * o * (1.0 - tc * tc)
        dpre = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tc * o * (1.0 - o),
            ],
            axis=-1,
        )
        return (_matmul(dpre, rp["w_h_t"]), dc * f), dpre

    def _rgrads(self, rp, res, carry_prev, dgx):
        return {"w_h": _outer_sum(carry_prev[0], dgx)}


@dataclasses.dataclass(frozen=True)
class PeepholeLSTM(LSTM):
    r"""LSTM with diagonal peephole connections (Gers & Schmidhuber 2000).

    .. math::
        i &= \sigma(x_t W_{xi} + h_{t-1} W_{hi} + p_i \odot c_{t-1} + b_i) \\
        f &= \sigma(x_t W_{xf} + h_{t-1} W_{hf} + p_f \odot c_{t-1} + b_f) \\
        g &= \tanh(x_t W_{xg} + h_{t-1} W_{hg} + b_g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(x_t W_{xo} + h_{t-1} W_{ho} + p_o \odot c_t + b_o) \\
        h_t &= o \odot \tanh(c_t)

    Params: the :class:`LSTM` ones plus ``p_i, p_f, p_o [H]`` (initialised to zero, so a fresh
    peephole LSTM computes what a fresh LSTM with the same weights does).
    """

    def param_shapes(self):
        shapes = super().param_shapes()
        h = self.hidden_size
        shapes.update(p_i=(h,), p_f=(h,), p_o=(h,))
        return shapes

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        params = super().init(key, dtype)
        zeros = jnp.zeros((self.hidden_size,), dtype)
        params.update(p_i=zeros, p_f=zeros, p_o=zeros)
        return params

    def recurrent_params(self, params):
        return {k: params[k] for k in ("w_h", "p_i", "p_f", "p_o")}

    def _fwd(self, rp, carry, gx_t):
        h, c = carry
        hid = self.hidden_size
        p_i, p_f, p_o = (rp[k].astype(c.dtype) for k in ("p_i", "p_f", "p_o"))
        pre = gx_t + _matmul(h, rp["w_h"])
        ifg = pre[:, : 3 * hid] + jnp.concatenate([p_i * c, p_f * c, jnp.zeros_like(c)], axis=-1)
        # i, f, g in one tanh (sigmoid via tanh); o needs c_t first.
        t = jnp.tanh(ifg * _lstm_gate_scale(hid)[: 3 * hid])
        i, f = 0.5 + 0.5 * t[:, :hid], 0.5 + 0.5 * t[:, hid : 2 * hid]
        g = t[:, 2 * hid :]
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        o = _sigmoid_tanh(pre[:, 3 * hid :] + p_o * c_new)
        h_new = o * tc
        acts = jnp.concatenate([i, f, g, o], axis=-1)
        return (h_new, c_new), (acts, tc, c_new)

    def _bwd(self, rp, res, carry_prev, dcarry):
        acts, tc, _ = res
        _, c_prev = carry_prev
        dh, dc = dcarry
        hid = self.hidden_size
        p_i, p_f, p_o = (rp[k].astype(dc.dtype) for k in ("p_i", "p_f", "p_o"))
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        dpre_o = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc) + dpre_o * p_o
        dpre_i = dc * g * i * (1.0 - i)
        dpre_f = dc * c_prev * f * (1.0 - f)
        dpre = jnp.concatenate([dpre_i, dpre_f, dc * i * (1.0 - g * g), dpre_o], axis=-1)
        dc_prev = dc * f + dpre_i * p_i + dpre_f * p_f
        return (_matmul(dpre, rp["w_h_t"]), dc_prev), dpre

    def _rgrads(self, rp, res, carry_prev, dgx):
        _, _, c_new = res
        h_prev, c_prev = carry_prev
        hid = self.hidden_size
        sum_tb = lambda a: jnp.sum(a, axis=(0, 1))  # noqa: E731
        return {
            "w_h": _outer_sum(h_prev, dgx),
            "p_i": sum_tb(dgx[..., :hid] * c_prev),
            "p_f": sum_tb(dgx[..., hid : 2 * hid] * c_prev),
            "p_o": sum_tb(dgx[..., 3 * hid :] * c_new),
        }


# --------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRU(Cell):
    r"""Gated recurrent unit (Cho et al. 2014) in both reset variants, gate order (r, z, n).

    ``reset="after"`` (cuDNN, PyTorch ``nn.GRU``):

    .. math::
        r &= \sigma(x_t W_{xr} + b_{xr} + h_{t-1} W_{hr} + b_{hr}) \\
        z &= \sigma(x_t W_{xz} + b_{xz} + h_{t-1} W_{hz} + b_{hz}) \\
        n &= \tanh(x_t W_{xn} + b_{xn} + r \odot (h_{t-1} W_{hn} + b_{hn})) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    ``reset="before"`` (Cho et al. 2014): :math:`n = \tanh(x_t W_{xn} + b_{xn} +
    (r \odot h_{t-1}) W_{hn} + b_{hn})`, the rest unchanged.

    Params: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b_x [3H]``, ``b_h [3H]``.
    """

    input_size: int
    hidden_size: int
    reset: str = "after"
    input_init: Initializer = glorot_uniform
    recurrent_init: Initializer = orthogonal

    num_gates = 3

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.reset not in ("after", "before"):
            raise ValueError(f"reset must be 'after' or 'before', got {self.reset!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, 3 * h), "w_h": (h, 3 * h), "b_x": (3 * h,), "b_h": (3 * h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        return {
            "w_x": self.input_init(kx, (d, 3 * h), dtype),
            "w_h": _recurrent_init(self.recurrent_init, kh, h, 3, dtype),
            "b_x": jnp.zeros((3 * h,), dtype),
            "b_h": jnp.zeros((3 * h,), dtype),
        }

    def project(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b_x"])

    def recurrent_params(self, params):
        return {"w_h": params["w_h"], "b_h": params["b_h"]}

    def _fwd(self, rp, h, gx_t):
        hid = self.hidden_size
        w_h, b_h = rp["w_h"], rp["b_h"].astype(h.dtype)
        if self.reset == "after":
            zh = _matmul(h, w_h) + b_h
            rz = _sigmoid_tanh(gx_t[:, : 2 * hid] + zh[:, : 2 * hid])
            r, u = rz[:, :hid], rz[:, hid:]
            zn = zh[:, 2 * hid :]
            n = jnp.tanh(gx_t[:, 2 * hid :] + r * zn)
            res = (rz, n, zn)
        else:
            zrz = _matmul(h, w_h[:, : 2 * hid]) + b_h[: 2 * hid]
            rz = _sigmoid_tanh(gx_t[:, : 2 * hid] + zrz)
            r, u = rz[:, :hid], rz[:, hid:]
            n = jnp.tanh(gx_t[:, 2 * hid :] + _matmul(r * h, w_h[:, 2 * hid :]) + b_h[2 * hid :])
            res = (rz, n)
        h_new = n + u * (h - n)
        return h_new, res

    def _bwd(self, rp, res, h_prev, dh):
        hid = self.hidden_size
        rz, n = res[0], res[1]
        r, u = rz[:, :hid], rz[:, hid:]
        dpre_n = dh * (1.0 - u) * (1.0 - n * n)
        dpre_u = dh * (h_prev - n) * u * (1.0 - u)
        dh_prev = dh * u
        w_h_t = rp["w_h_t"]
        if self.reset == "after":
            zn = res[2]
            dpre_r = dpre_n * zn * r * (1.0 - r)
            dgx = jnp.concatenate([dpre_r, dpre_u, dpre_n], axis=-1)
            dz = jnp.concatenate([dpre_r, dpre_u, dpre_n * r], axis=-1)
            dh_prev = dh_prev + _matmul(dz, w_h_t)
        else:
            drh = _matmul(dpre_n, w_h_t[2 * hid :])
            dpre_r = drh * h_prev * r * (1.0 - r)
            drz = jnp.concatenate([dpre_r, dpre_u], axis=-1)
            dh_prev = dh_prev + drh * r + _matmul(drz, w_h_t[: 2 * hid])
            dgx = jnp.concatenate([drz, dpre_n], axis=-1)
        return dh_prev, dgx

    def _rgrads(self, rp, res, h_prev, dgx):
        hid = self.hidden_size
        r = res[0][..., :hid]
        if self.reset == "after":
            dz = jnp.concatenate([dgx[..., : 2 * hid], dgx[..., 2 * hid :] * r], axis=-1)
            return {"w_h": _outer_sum(h_prev, dz), "b_h": jnp.sum(dz, axis=(0, 1))}
        dw = jnp.concatenate(
            [_outer_sum(h_prev, dgx[..., : 2 * hid]), _outer_sum(r * h_prev, dgx[..., 2 * hid :])],
            axis=1,
        )
        return {"w_h": dw, "b_h": jnp.sum(dgx, axis=(0, 1))}


CELLS: dict[str, type] = {
    "rnn": SimpleRNN,
    "lstm": LSTM,
    "peephole_lstm": PeepholeLSTM,
    "gru": GRU,
}


def make_cell(kind: str, input_size: int, hidden_size: int, **kwargs: Any) -> Cell:
    """Build a cell by name: ``"rnn"``, ``"rnn_relu"``, ``"lstm"``, ``"peephole_lstm"``,
    ``"gru"`` (reset after) or ``"gru_before"``."""
    aliases = {"rnn_tanh": ("rnn", {}), "rnn_relu": ("rnn", {"activation": "relu"}),
               "gru_before": ("gru", {"reset": "before"})}
    name, extra = aliases.get(kind, (kind, {}))
    if name not in CELLS:
        valid = sorted(set(CELLS) | set(aliases))
        raise ValueError(f"unknown cell kind {kind!r}; valid kinds are {valid}")
    return CELLS[name](input_size, hidden_size, **{**extra, **kwargs})


def fan_in_uniform(scale: float | None = None) -> Initializer:
    """PyTorch's RNN init U(-1/sqrt(H), 1/sqrt(H)) as an initializer (for parity experiments)."""

    def init(key, shape, dtype=_F32):
        bound = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
