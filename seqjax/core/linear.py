r"""Recurrences linear in the state, and the parallel scan that runs them (issue #21).

Three cells whose state update is :math:`h_t = a_t \odot h_{t-1} + b_t` with ``a_t, b_t``
functions of the input alone:

* :class:`MinGRU` and :class:`MinLSTM` (Feng et al. 2024, "Were RNNs All We Needed?");
* :class:`LRU`, the linear recurrent unit (Orvieto et al. 2023, "Resurrecting Recurrent Neural
  Networks for Long Sequences"), a diagonal complex recurrence.

They are ordinary cells (``step_with_residuals``, differentiated by JAX), so ``rnn``, lengths,
``reverse``, ``stacked`` and the models run them like any other cell with the sequential scan.
They also implement the *linear-recurrence protocol*, which ``rnn(..., backend="parallel")``
uses to run all time steps at once with :func:`jax.lax.associative_scan`:

* ``linear_recurrence = True``;
* ``scan_coefficients(params, xs [T, B, D]) -> (a, b)``, both ``[T, B, N]`` (``N`` the state
  size; complex for the LRU), with :math:`h_t = a_t h_{t-1} + b_t`;
* ``scan_output(params, hs [T, B, N], xs [T, B, D]) -> ys [T, B, H]``;
* ``carry_state(carry) -> h [B, N]`` and ``state_carry(h [B, N], y [B, H]) -> carry``: the scan
  state inside a carry, and the carry made from the last state and the last output;
* optionally ``scan_log_coefficients(params, xs) -> (log a, log b)`` for the paper's log-space
  scan (``parallel_mode="log"`` on the minimal RNNs);
* optionally ``sequential_on_auto = True``: ``backend="auto"`` runs the cell with the
  ``"sequential"`` backend (the coefficients of all steps at once, combined by
  :func:`sequential_linear_scan`) on :data:`seqjax.core.backend.SEQUENTIAL_AUTO_PLATFORMS`.

:func:`linear_recurrence` runs that protocol (the parallel backend and, with a kernel, the
``"pallas"`` backend), over the whole sequence or, on a CPU and a long sequence, in blocks
of :data:`seqjax.core.backend.TIME_BLOCK` steps (a chunked scan: memory traffic, not
arithmetic, sets the time there); :func:`associative_linear_scan` is the scan itself,
:func:`log_linear_scan` the paper's log-space one, and :func:`sequential_linear_scan` the same
recurrence step by step with a hand-written VJP (faster on a CPU with few cores; see
``benchmarks/parallel_scan.py`` and :data:`seqjax.core.backend.PARALLEL_AUTO_PLATFORMS`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from seqjax.core.cells import (
    Cell,
    Initializer,
    _check_positive,
    _project,
    _sigmoid_tanh,
    check_batch,
    check_key,
    check_positive_int,
    glorot_uniform,
    register_cell,
)

Array = jax.Array
Params = dict[str, Array]
_F32 = jnp.float32

__all__ = [
    "LRU",
    "MinGRU",
    "MinLSTM",
    "PARALLEL_MODES",
    "associative_linear_scan",
    "g",
    "is_linear",
    "linear_recurrence",
    "log_g",
    "log_linear_scan",
    "sequential_linear_scan",
]

#: ``parallel_mode`` values of the minimal RNNs: the plain associative scan of ``(a, b)``, or
#: the paper's log-space scan (``cumsum`` + ``logcumsumexp``).
PARALLEL_MODES = ("linear", "log")
#: Input width from which the blocked linear backends keep each block's matmuls (the input
#: projection) for the backward pass instead of recomputing them: recomputing costs
#: ``2 T B D G`` flops, keeping costs writing and reading ``T B G`` values. On a 2-core CPU,
#: minGRU T=1024 B=16 H=128 fwd+bwd: at D=128 keeping them took 0.91x the time of recomputing
#: (111.6 against 122.2 ms, one loaded core); at D=2 recomputing is free.
SAVE_PROJECTION_FROM = 32


def g(x: Array) -> Array:
    r""":math:`g(x) = x + 1/2` for :math:`x \ge 0`, :math:`\sigma(x)` otherwise (Feng et al.,
    appendix: keeps the candidate state positive so that the log-space scan applies)."""
    return jnp.where(x >= 0, x + 0.5, _sigmoid_tanh(x))


def log_g(x: Array) -> Array:
    r""":math:`\log g(x)`: :math:`\log(x + 1/2)` for :math:`x \ge 0`, :math:`-\mathrm{softplus}(-x)`
    otherwise (both branches finite everywhere, so ``where`` has clean gradients)."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def is_linear(cell: Any) -> bool:
    """Whether ``cell`` implements the linear-recurrence protocol."""
    return bool(getattr(cell, "linear_recurrence", False))


# ------------------------------------------------------------------------------------------
# The scans
# ------------------------------------------------------------------------------------------


def _combine(left, right):
    """``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``: first apply step 1, then step 2."""
    a1, b1 = left
    a2, b2 = right
    return a1 * a2, a2 * b1 + b2


@jax.custom_vjp
def _associative(a: Array, b: Array) -> Array:
    return jax.lax.associative_scan(_combine, (a, b), axis=0)[1]


def _associative_fwd(a, b):
    hs = _associative(a, b)
    return hs, (a, hs)


def _associative_bwd(res, dhs):
    """The VJP is the reverse linear scan :math:`g_t = \\bar h_t + a_{t+1} g_{t+1}`, itself an
    associative scan; saves only ``a`` and the states (autodiff through
    :func:`jax.lax.associative_scan` keeps every level's intermediates, and is slower)."""
    a, hs = res
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
    g = jax.lax.associative_scan(_combine, (a_next, dhs), reverse=True, axis=0)[1]
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])
    return g * h_prev, g


_associative.defvjp(_associative_fwd, _associative_bwd)


def associative_linear_scan(a: Array, b: Array, h0: Array | None = None) -> Array:
    r"""All states of :math:`h_t = a_t \odot h_{t-1} + b_t` (``h_{-1} = h0``, zero if ``None``)
    with :func:`jax.lax.associative_scan` over the leading (time) axis: ``O(log T)`` depth.

    Args:
      a, b: ``[T, ...]`` (real or complex, same shape).
      h0: ``[...]`` or ``None``; folded into the first step (:math:`b_0 \mathrel{+}= a_0 h_0`).

    Returns:
      ``hs [T, ...]``.
    """
    if a.shape[0] == 0:
        return b
    if h0 is not None:
        b = b.at[0].add(a[0] * h0)
    return _associative(a, b)


@jax.custom_vjp
def _sequential_scan(a: Array, b: Array, h0: Array) -> Array:
    # The states are written over a copy of ``b`` (read from ``b`` itself, never from the
    # carried buffer, which would make XLA copy it every step): no zero-filled output buffer,
    # 0.88x the time of a ``lax.scan`` with stacked outputs (issue #21: a minGRU layer, T=1024
    # B=16 D=2 H=128 fwd+bwd, 38.4 against 43.9 ms on a quiet core).
    def body(t, carry):
        h, hs = carry
        h = a[t] * h + b[t]
        return h, hs.at[t].set(h)

    return jax.lax.fori_loop(0, a.shape[0], body, (h0, b))[1]


def _sequential_scan_fwd(a, b, h0):
    hs = _sequential_scan(a, b, h0)
    return hs, (a, hs, h0)


def _sequential_scan_bwd(res, dhs):
    a, hs, h0 = res
    steps = a.shape[0]

    def body(i, carry):  # g_t = dh_t + a_{t+1} g_{t+1}, carrying u = a_{t+1} g_{t+1}
        u, gs = carry
        t = steps - 1 - i
        g = dhs[t] + u
        return a[t] * g, gs.at[t].set(g)

    u, g = jax.lax.fori_loop(0, steps, body, (jnp.zeros_like(h0), dhs))
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    return g * h_prev, g, u


_sequential_scan.defvjp(_sequential_scan_fwd, _sequential_scan_bwd)


def sequential_linear_scan(a: Array, b: Array, h0: Array | None = None) -> Array:
    r""":func:`associative_linear_scan` computed step by step (:func:`jax.lax.fori_loop`) with a
    hand-written VJP (the backward is the reverse scan :math:`g_t = \bar h_t + a_{t+1} g_{t+1}`,
    :math:`\bar a_t = g_t h_{t-1}`, :math:`\bar b_t = g_t`). ``T`` steps of ``O(B N)`` work
    each: on a CPU with few cores faster than the ``O(log T)``-depth associative scan (see
    ``benchmarks/parallel_scan.py``). Real or complex ``a, b [T, ...]``."""
    if a.shape[0] == 0:
        return b
    if h0 is None:
        h0 = jnp.zeros(b.shape[1:], b.dtype)
    return _sequential_scan(a, b, h0.astype(b.dtype))


def log_linear_scan(log_a: Array, log_b: Array, h0: Array | None = None) -> Array:
    r"""The log-space scan of Feng et al. (``parallel_scan_log``) for positive ``a`` and ``b``.

    .. math::
        a^*_t = \sum_{s \le t} \log a_s, \qquad
        h_t = \exp\!\big(a^*_t + \operatorname{logcumsumexp}_{s \le t}(\log b_s - a^*_s)\big)
              + e^{a^*_t} h_0

    The initial state enters linearly (the second term), so ``h0`` may be zero or negative.
    """
    if log_a.shape[0] == 0:
        return log_b
    a_star = jnp.cumsum(log_a, axis=0)
    hs = jnp.exp(a_star + jax.lax.cumlogsumexp(log_b - a_star, axis=0))
    if h0 is not None:
        hs = hs + jnp.exp(a_star) * h0
    return hs


def _at_length(xs: Array, lengths: Array | None, fallback: Array) -> Array:
    """``xs [T, B, ...]`` at step ``lengths[b] - 1`` (``fallback [B, ...]`` for length 0)."""
    if lengths is None:
        return xs[-1]
    idx = jnp.clip(lengths - 1, 0, xs.shape[0] - 1)
    idx = idx.reshape((1, -1) + (1,) * (xs.ndim - 2))
    last = jnp.take_along_axis(xs, idx, axis=0)[0]
    keep = (lengths > 0).reshape((-1,) + (1,) * (xs.ndim - 2))
    return jnp.where(keep, last, fallback.astype(last.dtype))


def _states(cell: Cell, params: Params, xs_tm: Array, h0: Array, valid: Array | None,
            mode: str, scan: Callable[[Array, Array, Array], Array] | None) -> Array:
    """The scan states ``[T, B, N]`` of ``xs_tm [T, B, D]`` from ``h0 [B, N]``; ``valid [T, B, 1]``
    (or ``None``) marks the steps inside each length (padding: ``a = 1, b = 0`` in linear mode,
    unmasked in log mode, whose states there the caller never reads)."""
    if mode == "log":
        return log_linear_scan(*cell.scan_log_coefficients(params, xs_tm), h0)
    a, b = cell.scan_coefficients(params, xs_tm)
    if valid is not None:
        a = jnp.where(valid, a, jnp.ones((), a.dtype))
        b = jnp.where(valid, b, jnp.zeros((), b.dtype))
    return (scan or associative_linear_scan)(a, b, h0)


def _valid(start: Array | int, steps: int, lengths: Array | None) -> Array | None:
    """``[steps, B, 1]``: step ``start + t`` lies inside ``lengths[b]`` (``None`` if no lengths)."""
    if lengths is None:
        return None
    return ((start + jnp.arange(steps))[:, None] < lengths[None, :])[..., None]


def linear_recurrence(cell: Cell, params: Params, xs_tm: Array, carry0: Any,
                      lengths: Array | None, *, mode: str = "linear",
                      scan: Callable[[Array, Array, Array], Array] | None = None,
                      time_block: int | None = None):
    """Run a linear-recurrence cell over time-major ``xs_tm [T, B, D]`` all at once, or in
    blocks of about ``time_block`` steps.

    ``xs_tm`` is what :func:`seqjax.rnn` passes its loops: already reversed within each length
    for ``reverse=True`` and with its padding zeroed. Padding steps get ``a = 1, b = 0`` (the
    state passes through unchanged, so the last state is the state at each length) and output
    zero, as in the scan backend.

    With ``time_block`` (and ``T > time_block``), time is cut into ``ceil(T / time_block)``
    equal blocks (the last padded) and a :func:`jax.lax.scan` over them runs, per block, the
    coefficients, the combination (``scan``) from the previous block's last state, and the
    outputs; each block is recomputed in the backward pass (:func:`jax.checkpoint`), so only
    ``xs``, the outputs and one state per block are kept. The same values to float rounding;
    on a CPU, where the passes of ``[T, B, N]`` arrays through memory set the time, ~2x
    faster (:data:`seqjax.core.backend.TIME_BLOCK`), and ``O(T B D + T/K B N)`` memory.

    Args:
      cell: a cell with ``linear_recurrence = True``.
      params, carry0, lengths: as in the scan backend (``lengths`` ``int32 [B]`` or ``None``).
      mode: ``"linear"`` (associative scan) or ``"log"`` (:func:`log_linear_scan`, the
        paper's log-space scan; needs ``cell.scan_log_coefficients``).
      scan: ``(a, b, h0) -> hs`` replacing :func:`associative_linear_scan` in ``"linear"``
        mode (:func:`sequential_linear_scan` for ``backend="sequential"``, the fused kernel of
        ``seqjax.kernels.linear_scan`` for ``backend="pallas"``).
      time_block: steps per block (a positive int), or ``None`` for the whole sequence at once.

    Returns:
      ``(hs [T, B, H], final carry)`` (``hs`` the cell's outputs, in the state dtype).
    """
    if not is_linear(cell):
        raise ValueError(f"{type(cell).__name__} is not a linear recurrence "
                         "(linear_recurrence is not True)")
    if mode not in PARALLEL_MODES:
        raise ValueError(f"mode={mode!r} must be one of {PARALLEL_MODES}")
    if time_block is not None:
        time_block = check_positive_int("time_block", time_block)
    steps = xs_tm.shape[0]
    h0 = cell.carry_state(carry0)
    if time_block is None or steps <= time_block:
        states = _states(cell, params, xs_tm, h0, _valid(0, steps, lengths), mode, scan)
        h_last = _at_length(states, lengths, h0) if steps else h0
        hs = cell.scan_output(params, states, xs_tm)
    else:
        hs, h_last = _blocked(cell, params, xs_tm, h0, lengths, mode, scan, time_block)
    if lengths is not None:
        hs = jnp.where(_valid(0, steps, lengths), hs, jnp.zeros((), hs.dtype))
    y_last = _at_length(hs, lengths, cell.carry_hidden(carry0))
    return hs, cell.state_carry(h_last, y_last)


def _blocked(cell, params, xs_tm, h0, lengths, mode, scan, time_block):
    """:func:`linear_recurrence` in blocks: ``(outputs [T, B, H], state at each length)``."""
    steps, batch = xs_tm.shape[:2]
    n = -(-steps // time_block)
    size = -(-steps // n)  # equal blocks: T=600 with time_block=64 is 10 blocks of 60
    pad = n * size - steps
    xb = jnp.pad(xs_tm, ((0, pad),) + ((0, 0),) * (xs_tm.ndim - 1))
    xb = xb.reshape((n, size) + xs_tm.shape[1:])
    # Where each sequence ends: its length, or T when the last block is padded (its tail's
    # states are never read); None: every block's last state.
    ends = (lengths if lengths is not None or not pad
            else jnp.full((batch,), steps, jnp.int32))

    # The backward pass recomputes each block; its matmuls too only for narrow inputs.
    policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
              if xs_tm.shape[-1] >= SAVE_PROJECTION_FROM else None)

    @functools.partial(jax.checkpoint, policy=policy)
    def block(h, inp):
        x, start = inp
        states = _states(cell, params, x, h, _valid(start, size, lengths), mode, scan)
        h_next = _at_length(states, None if ends is None else jnp.clip(ends - start, 0, size), h)
        return h_next.astype(h.dtype), cell.scan_output(params, states, x)

    h_last, ys = jax.lax.scan(block, h0, (xb, jnp.arange(n) * size))
    return ys.reshape((n * size,) + ys.shape[2:])[:steps], h_last


# ------------------------------------------------------------------------------------------
# The minimal RNNs
# ------------------------------------------------------------------------------------------


class _MinimalRNN(Cell):
    """Shared parts of :class:`MinGRU` and :class:`MinLSTM` (carry ``h [B, H]`` = output)."""

    hand_written_vjp = False
    linear_recurrence = True
    kernel = "linear_scan"
    split_gates_in_loop = True  # forward 0.6-0.7x the time on XLA:CPU (see Cell)
    #: ``auto`` takes the hoisted sequential scan on CPU: fwd+bwd 0.69-1.0x the scan's time
    #: (the LRU's complex coefficients make it slower there; ``benchmarks/README.md``, #21)
    sequential_on_auto = True

    def _validate(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.candidate not in ("g", "linear"):
            raise ValueError(f"candidate must be 'g' or 'linear', got {self.candidate!r}")
        if self.parallel_mode not in PARALLEL_MODES:
            raise ValueError(f"parallel_mode must be one of {PARALLEL_MODES}, got "
                             f"{self.parallel_mode!r}")
        if self.parallel_mode == "log" and self.candidate != "g":
            raise ValueError("parallel_mode='log' needs candidate='g' (the log-space scan takes "
                             "the log of the candidate state, which must be positive)")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, self.num_gates * h), "b": (self.num_gates * h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        check_key(key)
        g_ = self.num_gates * self.hidden_size
        return {"w_x": self.input_init(key, (self.input_size, g_), dtype),
                "b": jnp.zeros((g_,), dtype)}

    def input_projection(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def recurrent_params(self, params: Params) -> Params:
        return {}

    def _candidate(self, pre: Array) -> Array:
        return g(pre) if self.candidate == "g" else pre

    # linear-recurrence protocol
    def scan_output(self, params: Params, hs: Array, xs: Array) -> Array:
        return hs

    def carry_state(self, carry: Array) -> Array:
        return carry

    def state_carry(self, h: Array, y: Array) -> Array:
        return h


@register_cell("mingru")
@dataclasses.dataclass(frozen=True)
class MinGRU(_MinimalRNN):
    r"""minGRU (Feng et al. 2024): a GRU whose gates see only the input.

    .. math::
        z_t &= \sigma(x_t W_z + b_z), \qquad \tilde h_t = g(x_t W_h + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    with :math:`g(x) = x + 1/2` for :math:`x \ge 0` and :math:`\sigma(x)` otherwise, the
    paper's default (its log-space variant; ``candidate="linear"`` gives the plain
    :math:`\tilde h_t = x_t W_h + b_h`). The state is the output. As a linear recurrence,
    :math:`a_t = 1 - z_t`, :math:`b_t = z_t \odot \tilde h_t` (``backend="parallel"``).

    Params: ``w_x [D, 2H]`` (blocks ``z``, ``h``), ``b [2H]``. Carry: ``h [B, H]``.
    ``parallel_mode="log"`` makes ``backend="parallel"`` use the paper's log-space scan.
    """

    input_size: int
    hidden_size: int
    candidate: str = "g"
    parallel_mode: str = "linear"
    input_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)

    num_gates = 2

    def __post_init__(self):
        self._validate()

    def step_with_residuals(self, rp, h, gx_t):
        pre_z, pre_h = self.split_gx(gx_t)
        z = _sigmoid_tanh(pre_z)
        return h + z * (self._candidate(pre_h) - h), None

    def scan_coefficients(self, params, xs):
        pre_z, pre_h = self.split_gx(self.input_projection(params, xs))
        z = _sigmoid_tanh(pre_z)
        return 1.0 - z, z * self._candidate(pre_h)

    def scan_log_coefficients(self, params, xs):
        k, pre_h = self.split_gx(self.input_projection(params, xs))
        # log(1 - sigmoid(k)) = -softplus(k), log sigmoid(k) = -softplus(-k)
        return -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(pre_h)


@register_cell("minlstm")
@dataclasses.dataclass(frozen=True)
class MinLSTM(_MinimalRNN):
    r"""minLSTM (Feng et al. 2024): an LSTM whose gates see only the input, with normalised,
    time-independent forget and input gates and no output gate or cell state.

    .. math::
        f_t &= \sigma(x_t W_f + b_f), \qquad i_t = \sigma(x_t W_i + b_i), \qquad
        \tilde h_t = g(x_t W_h + b_h) \\
        f'_t &= \frac{f_t}{f_t + i_t}, \qquad i'_t = \frac{i_t}{f_t + i_t} \\
        h_t &= f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    :math:`g` as in :class:`MinGRU` (the paper's default; ``candidate="linear"`` for the plain
    projection). The state is the output; :math:`a_t = f'_t`, :math:`b_t = i'_t \odot \tilde
    h_t`. Log space: with :math:`\delta = \mathrm{softplus}(-f^{pre}) -
    \mathrm{softplus}(-i^{pre})`, :math:`\log f' = -\mathrm{softplus}(\delta)`,
    :math:`\log i' = -\mathrm{softplus}(-\delta)`.

    Params: ``w_x [D, 3H]`` (blocks ``f``, ``i``, ``h``), ``b [3H]``. Carry: ``h [B, H]``.
    """

    input_size: int
    hidden_size: int
    candidate: str = "g"
    parallel_mode: str = "linear"
    input_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)

    num_gates = 3

    def __post_init__(self):
        self._validate()

    def _gates(self, gx):
        pre_f, pre_i, pre_h = self.split_gx(gx)
        f = _sigmoid_tanh(pre_f)
        i = _sigmoid_tanh(pre_i)
        s = f + i
        return f / s, i / s, self._candidate(pre_h)

    def step_with_residuals(self, rp, h, gx_t):
        f, i, cand = self._gates(gx_t)
        return f * h + i * cand, None

    def scan_coefficients(self, params, xs):
        f, i, cand = self._gates(self.input_projection(params, xs))
        return f, i * cand

    def scan_log_coefficients(self, params, xs):
        pre_f, pre_i, pre_h = self.split_gx(self.input_projection(params, xs))
        diff = jax.nn.softplus(-pre_f) - jax.nn.softplus(-pre_i)
        return -jax.nn.softplus(diff), -jax.nn.softplus(-diff) + log_g(pre_h)


# ------------------------------------------------------------------------------------------
# LRU
# ------------------------------------------------------------------------------------------


@register_cell("lru")
@dataclasses.dataclass(frozen=True)
class LRU(Cell):
    r"""Linear recurrent unit (Orvieto et al. 2023): a diagonal complex linear recurrence.

    .. math::
        \lambda &= \exp(-e^{\nu_{\log}} + i\, e^{\theta_{\log}}), \qquad
        \gamma = e^{\gamma_{\log}} \\
        h_t &= \lambda \odot h_{t-1} + \gamma \odot (x_t B) \quad (h_t \in \mathbb{C}^N) \\
        y_t &= \mathrm{Re}(h_t C) + D \odot x_t

    Initialisation (the paper's ring init): :math:`|\lambda|` uniform on the ring
    :math:`r_{\min} \le |\lambda| \le r_{\max}` (uniform in area:
    :math:`\nu = -\tfrac12 \log(u_1 (r_{\max}^2 - r_{\min}^2) + r_{\min}^2)`), phase
    :math:`\theta = u_2 \cdot` ``max_phase``; :math:`\gamma = \sqrt{1 - |\lambda|^2}`
    (normalisation); :math:`B \sim \mathcal N(0, 1/(2D))` (real and imaginary parts),
    :math:`C \sim \mathcal N(0, 1/N)`, :math:`D \sim \mathcal N(0, 1)`.

    Params: ``nu_log, theta_log, gamma_log [N]``, ``b_re, b_im [D_in, N]``, ``c_re, c_im
    [N, H]``, and ``d [H]`` (the paper's diagonal skip, when ``input_size == hidden_size``) or
    ``d [D_in, H]`` (a dense skip otherwise). ``N = state_size`` (default ``hidden_size``).

    Carry: ``(y [B, H], h_re [B, N], h_im [B, N])``: the output (what ``carry_hidden``
    returns, as an LSTM's carry holds ``h``) and the complex state as two real arrays (a
    real pytree: ``rnn`` casts carries to the state dtype and masks them leaf by leaf).
    The input projection ``gx [.., 2N + H]`` holds :math:`\gamma \odot xB` (real, imaginary)
    and :math:`D x`.
    """

    input_size: int
    hidden_size: int
    state_size: int | None = None
    r_min: float = 0.0
    r_max: float = 1.0
    max_phase: float = 2 * math.pi

    num_gates = 1
    split_gates_in_loop = True  # forward 0.65-0.7x the time on XLA:CPU (see Cell)
    hand_written_vjp = False
    linear_recurrence = True
    #: its recurrence and output do not depend on the input (a linear time-invariant system):
    #: stacked, it needs a position-wise nonlinearity (``Encoder(glu=True)``)
    time_invariant = True

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.state_size is not None:
            _check_positive(self, "state_size")
        if not 0.0 <= self.r_min < self.r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={self.r_min}, "
                             f"r_max={self.r_max}")
        if not self.max_phase > 0:
            raise ValueError(f"max_phase={self.max_phase} must be > 0")

    @property
    def n(self) -> int:
        return self.state_size or self.hidden_size

    @property
    def gate_size(self) -> int:
        return 2 * self.n + self.hidden_size

    @property
    def diagonal_skip(self) -> bool:
        return self.input_size == self.hidden_size

    def param_shapes(self):
        d, h, n = self.input_size, self.hidden_size, self.n
        return {"nu_log": (n,), "theta_log": (n,), "gamma_log": (n,),
                "b_re": (d, n), "b_im": (d, n), "c_re": (n, h), "c_im": (n, h),
                "d": (h,) if self.diagonal_skip else (d, h)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        check_key(key)
        d, h, n = self.input_size, self.hidden_size, self.n
        k1, k2, kbr, kbi, kcr, kci, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (n,), _F32)
        u2 = jax.random.uniform(k2, (n,), _F32)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2))
        theta_log = jnp.log(self.max_phase * u2)
        mod = jnp.exp(-jnp.exp(nu_log))
        gamma_log = jnp.log(jnp.sqrt(1.0 - mod**2))
        normal = jax.random.normal
        params = {
            "nu_log": nu_log, "theta_log": theta_log, "gamma_log": gamma_log,
            "b_re": normal(kbr, (d, n), _F32) / math.sqrt(2 * d),
            "b_im": normal(kbi, (d, n), _F32) / math.sqrt(2 * d),
            "c_re": normal(kcr, (n, h), _F32) / math.sqrt(n),
            "c_im": normal(kci, (n, h), _F32) / math.sqrt(n),
            "d": normal(kd, (h,) if self.diagonal_skip else (d, h), _F32),
        }
        return {k: v.astype(dtype) for k, v in params.items()}

    @staticmethod
    def eigenvalues(params: Params) -> tuple[Array, Array]:
        """``(Re lambda, Im lambda) [N]`` from ``nu_log`` and ``theta_log``."""
        mod = jnp.exp(-jnp.exp(params["nu_log"]))
        theta = jnp.exp(params["theta_log"])
        return mod * jnp.cos(theta), mod * jnp.sin(theta)

    def initial_carry(self, batch: int, dtype: Any = _F32):
        check_batch(batch)
        zn = jnp.zeros((batch, self.n), dtype)
        return (jnp.zeros((batch, self.hidden_size), dtype), zn, zn)

    def carry_hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1], carry[2])

    def input_projection(self, params: Params, xs: Array) -> Array:
        acc = jnp.promote_types(_F32, jnp.promote_types(xs.dtype, params["b_re"].dtype))
        gamma = jnp.exp(params["gamma_log"].astype(acc))
        blocks = [params["b_re"].astype(acc) * gamma, params["b_im"].astype(acc) * gamma]
        if not self.diagonal_skip:  # one matmul for gamma xB and the dense skip xD
            return _project(xs, jnp.concatenate(blocks + [params["d"].astype(acc)], axis=1)
                            .astype(xs.dtype)).astype(acc)
        bx = _project(xs, jnp.concatenate(blocks, axis=1).astype(xs.dtype)).astype(acc)
        return jnp.concatenate([bx, xs.astype(acc) * params["d"].astype(acc)], axis=-1)

    def recurrent_params(self, params: Params) -> Params:
        return {k: params[k] for k in ("nu_log", "theta_log", "c_re", "c_im")}

    def gx_blocks(self) -> tuple[int, ...]:
        return (self.n, self.n, self.hidden_size)  # gamma xB: real, imaginary; the skip xD

    def _readout(self, rp, h_re, h_im, dx):
        c_re, c_im = rp["c_re"].astype(h_re.dtype), rp["c_im"].astype(h_re.dtype)
        return (jnp.matmul(h_re, c_re, preferred_element_type=h_re.dtype)
                - jnp.matmul(h_im, c_im, preferred_element_type=h_re.dtype) + dx)

    def step_with_residuals(self, rp, carry, gx_t):
        _, h_re, h_im = carry
        bx_re, bx_im, dx = self.split_gx(gx_t)
        lam_re, lam_im = (x.astype(h_re.dtype) for x in self.eigenvalues(rp))
        new_re = lam_re * h_re - lam_im * h_im + bx_re
        new_im = lam_re * h_im + lam_im * h_re + bx_im
        y = self._readout(rp, new_re, new_im, dx)
        return (y, new_re, new_im), None

    # linear-recurrence protocol (complex a, b)
    def scan_coefficients(self, params, xs):
        bx_re, bx_im, _ = self.split_gx(self.input_projection(params, xs))
        lam_re, lam_im = (x.astype(bx_re.dtype) for x in self.eigenvalues(params))
        b = jax.lax.complex(bx_re, bx_im)
        a = jnp.broadcast_to(jax.lax.complex(lam_re, lam_im), b.shape)
        return a, b

    def scan_output(self, params, hs, xs):
        dx = self.split_gx(self.input_projection(params, xs))[2]
        return self._readout(params, jnp.real(hs), jnp.imag(hs), dx)

    def carry_state(self, carry):
        return jax.lax.complex(carry[1], carry[2])

    def state_carry(self, h, y):
        return (y, jnp.real(h), jnp.imag(h))
