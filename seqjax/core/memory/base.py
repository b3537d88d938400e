"""What every memory-augmented cell shares: a controller cell from :mod:`seqjax.core.cells`, the
read vectors fed back into it, and the carry as a pytree with the memory inside.

A memory cell is a :class:`seqjax.core.cells.Cell`, so :func:`seqjax.rnn` runs it like any other
(``lax.scan``, ``seq_lengths`` masking, ``reverse``, ``initial_carry``, ``remat``) and truncated
BPTT carries its memory across chunks. Its step:

1. the controller reads ``[x_t, r_{t-1}]``: the ``x_t`` part of its input projection is hoisted
   out of the time loop by :meth:`MemoryCell.project` (the controller's own ``w_x[:D]`` and bias),
   the ``r_{t-1}`` part (``w_x[D:]``) is added inside the step;
2. the controller's output ``h_t [B, H]`` gives the interface vector ``h_t W_i + b_i`` (clipped
   to ``[-clip_value, clip_value]``) that parameterises the heads;
3. the heads write to and read from the memory (subclasses);
4. the cell emits ``[h_t, r_t] [B, H + R W]`` (:meth:`MemoryCell.carry_hidden`): a linear readout
   on top gives the NTM's and the DNC's output layer ``y_t = W_y h_t + W_r r_t``.

The memory cells have no hand-written VJP (``hand_written_vjp = False``): JAX differentiates the
scan through ``step_with_residuals`` (``rnn(..., remat=True)`` keeps only the carries and
recomputes the steps).
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.core.cells import (
    Cell,
    check_array,
    check_carry,
    check_key,
    glorot_uniform,
    make_cell,
)

Array = jax.Array

__all__ = ["MemoryCell", "run_with_states", "oneplus"]


def oneplus(x: Array) -> Array:
    """``1 + softplus(x)``: a strength or sharpening exponent in ``[1, inf)``."""
    return 1.0 + jax.nn.softplus(x)


def _positive(cell: Any, name: str) -> None:
    value = getattr(cell, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{type(cell).__name__}.{name} must be a positive int, got {value!r}")


class MemoryCell(Cell):
    """Base of :class:`~seqjax.core.memory.NTM` and :class:`~seqjax.core.memory.DNC` (a mixin; the
    subclasses are frozen dataclasses with the fields below).

    Fields a subclass defines: ``input_size`` (``D``), ``controller_size`` (``H``),
    ``memory_size`` (``N`` rows), ``word_size`` (``W``), ``num_reads`` (``R``), ``controller``
    (a :func:`seqjax.core.cells.make_cell` kind, ``"lstm"`` by default), ``memory_init`` (the
    constant every memory cell starts at), ``clip_value`` (interface clipping, ``None`` for
    none).

    Subclasses implement :meth:`_sizes` (the interface layout), :meth:`initial_carry` and
    :meth:`_memory_step`.
    """

    hand_written_vjp = False
    num_gates = 1

    def _check_fields(self) -> None:
        for name in ("input_size", "controller_size", "memory_size", "word_size", "num_reads"):
            _positive(self, name)
        if self.clip_value is not None and not self.clip_value > 0:
            raise ValueError(f"{type(self).__name__}.clip_value={self.clip_value!r} must be > 0")
        self.controller_cell  # noqa: B018  (validates the controller kind now, not at init)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:  # type: ignore[override]
        """Width of the cell's output ``[h_t, r_t]``: ``H + R W``."""
        return self.controller_size + self.num_reads * self.word_size

    @property
    def gate_size(self) -> int:
        return self.controller_cell.gate_size

    @functools.cached_property
    def controller_cell(self) -> Cell:
        """The controller: input ``D + R W`` (input and previous reads), hidden ``H``."""
        return make_cell(self.controller, self.input_size + self.num_reads * self.word_size,
                         self.controller_size)

    @abc.abstractmethod
    def _sizes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The interface vector's fields in order, with their shapes (without the batch)."""

    def interface_size(self) -> int:
        """Length ``P`` of the interface vector the heads read from."""
        return sum(math.prod(shape) for _, shape in self._sizes())

    def _split_raw(self, xi: Array) -> dict[str, Array]:
        """``xi [B, P]`` -> ``{field: [B, *shape]}`` in the order of :meth:`_sizes`, not yet
        activated."""
        check_array(xi, "xi", ("B", self.interface_size()))
        out, i = {}, 0
        for name, shape in self._sizes():
            n = math.prod(shape)
            out[name] = xi[:, i:i + n].reshape((xi.shape[0],) + shape)
            i += n
        return out

    def param_shapes(self) -> dict:
        return {
            "controller": self.controller_cell.param_shapes(),
            "interface": {"w": (self.controller_size, self.interface_size()),
                          "b": (self.interface_size(),)},
        }

    def init(self, key: Array, dtype: Any = jnp.float32) -> dict:
        """``{"controller": controller params, "interface": {"w": [H, P], "b": [P]}}``."""
        check_key(key)
        kc, ki = jax.random.split(key)
        p = self.interface_size()
        return {
            "controller": self.controller_cell.init(kc, dtype),
            "interface": {"w": glorot_uniform(ki, (self.controller_size, p), dtype),
                          "b": self.interface_bias(dtype)},
        }

    def interface_bias(self, dtype: Any) -> Array:
        """Initial interface bias ``[P]`` (zeros; subclasses may bias gates)."""
        return jnp.zeros((self.interface_size(),), dtype)

    # -- the Cell interface ------------------------------------------------------------------

    def input_projection(self, params: dict, xs: Array) -> Array:
        """``xs [..., D] -> [..., G]``: the controller's input projection of ``x`` alone."""
        ctrl = params["controller"]
        return self.controller_cell.input_projection(
            dict(ctrl, w_x=ctrl["w_x"][: self.input_size]), xs)

    def recurrent_params(self, params: dict) -> dict:
        return params

    def carry_hidden(self, carry: Any) -> Array:
        """The cell output ``[h_t, r_t]``: ``[B, H + R W]``."""
        h = self.controller_cell.carry_hidden(carry.controller)
        reads = carry.reads
        return jnp.concatenate([h, reads.reshape(reads.shape[:-2] + (-1,)).astype(h.dtype)], -1)

    def with_hidden(self, carry: Any, h: Array) -> Any:
        raise TypeError(f"{type(self).__name__} has no single hidden state to replace")

    def step_with_residuals(self, rp: dict, carry: Any, gx_t: Array) -> tuple[Any, None]:
        ctrl_cell, ctrl = self.controller_cell, rp["controller"]
        reads = carry.reads.reshape(carry.reads.shape[0], -1)
        w_r = ctrl["w_x"][self.input_size:].astype(gx_t.dtype)
        gx = gx_t + jnp.dot(reads.astype(gx_t.dtype), w_r, preferred_element_type=gx_t.dtype)
        ctrl_carry, _ = ctrl_cell.step_with_residuals(
            ctrl_cell.recurrent_params(ctrl), carry.controller, gx)
        h = ctrl_cell.carry_hidden(ctrl_carry)
        w_i, b_i = rp["interface"]["w"], rp["interface"]["b"]
        xi = jnp.dot(h, w_i.astype(h.dtype), preferred_element_type=h.dtype) + b_i.astype(h.dtype)
        if self.clip_value is not None:
            xi = jnp.clip(xi, -self.clip_value, self.clip_value)
        return self._memory_step(carry, ctrl_carry, xi), None

    @abc.abstractmethod
    def _memory_step(self, carry: Any, controller_carry: Any, xi: Array) -> Any:
        """The heads: the new carry from the old one, the new controller carry and the
        interface vector ``xi [B, P]``."""


def run_with_states(cell: Cell, params: dict, xs: Array, *, initial_carry: Any = None) -> tuple:
    """Run ``cell`` over ``xs [B, T, D]`` and keep every step's carry (for plots and tests).

    Returns:
      ``(ys [B, T, H_out], carries)``: ``carries`` is the carry pytree with a time axis after
      the batch axis, e.g. an NTM's ``memory [B, T, N, W]`` and ``read_weights [B, T, R, N]``.
      No masking: pass unpadded sequences.

    Raises:
      TypeError / ValueError: ``cell`` not a seqjax cell, ``xs`` not floating ``[B, T, D]``
        with ``D = cell.input_size``, ``params`` or ``initial_carry`` of the wrong shapes (each
        named, with the expected and received shapes).
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax cell (NTM, DNC, LSTM, ...), got {type(cell)}")
    batch = check_array(xs, "xs", ("B", "T", cell.input_size), floating=True)[0]
    cell.check_params(params)
    if initial_carry is not None:
        check_carry(cell, initial_carry, batch, "initial_carry")
    from seqjax.core.recurrent import rnn  # lazily: recurrent imports the cells

    xs = jnp.asarray(xs)
    _, _, carries = rnn(cell, params, xs, initial_carry=initial_carry, return_states=True)
    ys = jax.vmap(cell.carry_hidden, in_axes=1, out_axes=1)(carries)  # over time, state dtype
    return ys, carries
