"""Flax NNX wrappers of the memory-augmented cells (:mod:`seqjax.core.memory`).

Like :class:`seqjax.nn.Recurrent`, the module holds the cell's param pytree with one
``nnx.Param`` per array (paths such as ``params/controller/w_h``) and calls
:func:`seqjax.rnn`; no maths is written here.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from seqjax.core.cells import Cell
from seqjax.core.memory import DNC as DNCCell
from seqjax.core.memory import NTM as NTMCell
from seqjax.core.recurrent import rnn

__all__ = ["Memory", "NTM", "DNC"]


class Memory(nnx.Module):
    """A memory-augmented cell run over ``[B, T, D]`` inputs.

    Args:
      cell: a :class:`seqjax.core.memory.NTM` or :class:`seqjax.core.memory.DNC` (or any cell).
      remat: recompute each step in the backward pass (memory ``O(T)`` carries only).
      rngs: ``nnx.Rngs`` for init (``params`` stream).
    """

    def __init__(self, cell: Any, *, remat: bool = False, rngs: nnx.Rngs):
        if not isinstance(cell, Cell):
            raise TypeError(f"cell must be a seqjax cell (seqjax.core.memory.NTM, DNC, ...), got "
                            f"{type(cell).__name__}")
        self.cell = cell
        self.remat = remat
        self.params = nnx.data(jax.tree.map(nnx.Param, cell.init(rngs.params())))

    @property
    def output_size(self) -> int:
        """``H + R W``: the controller output and the read vectors."""
        return self.cell.hidden_size

    def param_tree(self) -> dict:
        """The current parameters as the plain pytree :func:`seqjax.rnn` takes."""
        return jax.tree.map(lambda v: v.get_value(), self.params,
                            is_leaf=lambda x: isinstance(x, nnx.Variable))

    def __call__(self, xs: jax.Array, *, seq_lengths: jax.Array | None = None,
                 initial_carry: Any = None, **rnn_kwargs: Any) -> tuple[jax.Array, Any]:
        """``xs [B, T, D]`` -> ``(ys [B, T, output_size], final carry)`` (the carry holds the
        memory, e.g. :class:`seqjax.core.memory.NTMState`)."""
        return rnn(self.cell, self.param_tree(), xs, seq_lengths=seq_lengths,
                   initial_carry=initial_carry, remat=self.remat, backend="scan", **rnn_kwargs)


class NTM(Memory):
    """Neural Turing Machine; keyword arguments as :class:`seqjax.core.memory.NTM`."""

    def __init__(self, input_size: int, *, remat: bool = False, rngs: nnx.Rngs, **kwargs: Any):
        super().__init__(NTMCell(input_size, **kwargs), remat=remat, rngs=rngs)


class DNC(Memory):
    """Differentiable Neural Computer; keyword arguments as :class:`seqjax.core.memory.DNC`."""

    def __init__(self, input_size: int, *, remat: bool = False, rngs: nnx.Rngs, **kwargs: Any):
        super().__init__(DNCCell(input_size, **kwargs), remat=remat, rngs=rngs)
