"""Flax NNX wrappers around the functional recurrent core.

The modules hold the param pytree of :func:`seqjax.core.layers.stacked` with one ``nnx.Param`` per
array (state paths read ``layers/0/fw/w_h``; one ``nnx.Param`` holding a pytree with lists breaks
on the second ``nnx.Optimizer`` update) and call the functional core; no maths is written here.
Like :class:`seqjax.nn.TCN`, ``__call__`` takes ``train`` and an optional dropout ``key``.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from seqjax.core.layers import init_stack, stack_cells, stacked

__all__ = ["Recurrent", "RNN", "LSTM", "GRU"]


class Recurrent(nnx.Module):
    """A (stacked, optionally bidirectional) recurrent network over ``[B, T, D]`` inputs.

    Args:
      kind: cell kind for :func:`seqjax.core.cells.make_cell` (``"lstm"``, ``"gru"``, ``"rnn"``,
        ...).
      input_size: ``D``.
      hidden_size: ``H``.
      num_layers: stacked layers.
      bidirectional: run every layer both ways; outputs ``[B, T, 2H]`` with ``merge="concat"``.
      merge: ``"concat"`` or ``"sum"``.
      dropout: dropout between layers (only with ``train=True``).
      backend: ``"auto"``, ``"scan"`` or ``"pallas"`` (see :func:`seqjax.rnn`).
      rngs: ``nnx.Rngs`` for init (``params`` stream) and dropout (``dropout`` stream).
      **cell_kwargs: passed to the cell (``forget_bias``, ``activation``, ``reset``, inits).
    """

    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        merge: str = "concat",
        dropout: float = 0.0,
        backend: str = "auto",
        rngs: nnx.Rngs,
        **cell_kwargs: Any,
    ):
        self.cells = tuple(stack_cells(kind, input_size, hidden_size, num_layers,
                                       bidirectional=bidirectional, merge=merge, **cell_kwargs))
        params = init_stack(self.cells, rngs.params(), bidirectional=bidirectional)
        self.layers = nnx.data(jax.tree.map(nnx.Param, params))
        self.bidirectional = bidirectional
        self.merge = merge
        self.dropout = dropout
        self.backend = backend
        self.rngs = rngs.fork() if dropout > 0 else None

    @property
    def params(self) -> list[dict]:
        """The current parameters as the plain pytree :func:`seqjax.stacked` takes."""
        return jax.tree.map(lambda v: v.get_value(), self.layers,
                            is_leaf=lambda x: isinstance(x, nnx.Variable))

    @property
    def output_size(self) -> int:
        h = self.cells[-1].hidden_size
        return 2 * h if self.bidirectional and self.merge == "concat" else h

    def __call__(
        self,
        xs: jax.Array,
        *,
        seq_lengths: jax.Array | None = None,
        initial_carries: Any = None,
        train: bool = False,
        key: jax.Array | None = None,
        **rnn_kwargs: Any,
    ) -> tuple[jax.Array, list[Any]]:
        """``xs [B, T, D]`` -> ``(ys [B, T, output_size], final carries per layer)``.

        With ``train=True`` and ``dropout > 0``, dropout uses ``key`` or, if ``None``, a key
        drawn from the module's ``dropout`` stream.
        """
        if not train:
            key = None
        elif key is None and self.rngs is not None:
            key = self.rngs.dropout()
        return stacked(
            self.cells, self.params, xs, seq_lengths=seq_lengths,
            initial_carries=initial_carries, bidirectional=self.bidirectional, merge=self.merge,
            dropout=self.dropout, key=key, backend=self.backend, **rnn_kwargs,
        )


class RNN(Recurrent):
    """Elman RNN stack; ``nonlinearity`` is ``"tanh"`` or ``"relu"``."""

    def __init__(self, input_size: int, hidden_size: int, *, nonlinearity: str = "tanh",
                 rngs: nnx.Rngs, **kwargs: Any):
        super().__init__("rnn", input_size, hidden_size, activation=nonlinearity, rngs=rngs,
                         **kwargs)


class LSTM(Recurrent):
    """LSTM stack; ``peephole=True`` for Gers & Schmidhuber's peephole LSTM."""

    def __init__(self, input_size: int, hidden_size: int, *, peephole: bool = False,
                 rngs: nnx.Rngs, **kwargs: Any):
        super().__init__("peephole_lstm" if peephole else "lstm", input_size, hidden_size,
                         rngs=rngs, **kwargs)


class GRU(Recurrent):
    """GRU stack; ``reset`` is ``"after"`` (cuDNN/PyTorch) or ``"before"`` (Cho et al.)."""

    def __init__(self, input_size: int, hidden_size: int, *, reset: str = "after",
                 rngs: nnx.Rngs, **kwargs: Any):
        super().__init__("gru", input_size, hidden_size, reset=reset, rngs=rngs, **kwargs)
