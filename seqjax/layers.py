"""Layers built from :func:`seqjax.rnn`: bidirectional, stacked and pyramid (time-reducing).

All take batch-major ``xs [B, T, D]`` and optional ``seq_lengths [B]``; the params of a
bidirectional layer are ``{"fw": ..., "bw": ...}`` (one cell's params per direction), those of
a stack a list with one entry per layer. :func:`init_stack` builds matching cells and params.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seqjax.cells import Cell, make_cell
from seqjax.recurrent import rnn

Array = jax.Array

__all__ = ["bidirectional", "stacked", "pyramid", "reduce_time", "init_stack", "stack_cells"]

_MERGES = ("concat", "sum")


def bidirectional(
    cell: Cell,
    params: dict,
    xs: Array,
    *,
    seq_lengths: Array | None = None,
    initial_carry: tuple[Any, Any] | None = None,
    merge: str = "concat",
    **rnn_kwargs: Any,
) -> tuple[Array, tuple[Any, Any]]:
    """A forward and a backward pass over ``xs [B, T, D]``, merged per step.

    The backward direction reverses each sequence within its own length, so padded batches give
    the same result as running every sequence alone (PyTorch's packed bidirectional RNN).

    Args:
      cell: the cell of both directions.
      params: ``{"fw": params, "bw": params}``.
      xs: ``[B, T, D]``.
      seq_lengths: optional ``[B]``.
      initial_carry: optional ``(carry_fw, carry_bw)``.
      merge: ``"concat"`` (outputs ``[B, T, 2H]``) or ``"sum"`` (``[B, T, H]``).
      **rnn_kwargs: passed to :func:`seqjax.rnn` (backend, unroll, remat).

    Returns:
      ``(ys, (final_carry_fw, final_carry_bw))``.
    """
    if merge not in _MERGES:
        raise ValueError(f"merge={merge!r} must be one of {_MERGES}")
    if not isinstance(params, dict) or set(params) != {"fw", "bw"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"bidirectional params must be a dict with keys ['bw', 'fw'], got {keys}")
    c_fw, c_bw = (None, None) if initial_carry is None else initial_carry
    ys_fw, h_fw = rnn(cell, params["fw"], xs, seq_lengths=seq_lengths, initial_carry=c_fw,
                      **rnn_kwargs)
    ys_bw, h_bw = rnn(cell, params["bw"], xs, seq_lengths=seq_lengths, initial_carry=c_bw,
                      reverse=True, **rnn_kwargs)
    ys = jnp.concatenate([ys_fw, ys_bw], axis=-1) if merge == "concat" else ys_fw + ys_bw
    return ys, (h_fw, h_bw)


_bidirectional = bidirectional  # `stacked` has an argument of the same name


def stacked(
    cells: Sequence[Cell],
    params: Sequence[dict],
    xs: Array,
    *,
    seq_lengths: Array | None = None,
    initial_carries: Sequence[Any] | None = None,
    bidirectional: bool = False,
    merge: str = "concat",
    dropout: float = 0.0,
    key: Array | None = None,
    **rnn_kwargs: Any,
) -> tuple[Array, list[Any]]:
    """A stack of recurrent layers; layer ``l + 1`` reads layer ``l``'s outputs.

    Args:
      cells: one cell per layer (see :func:`stack_cells`).
      params: one params entry per layer (``{"fw", "bw"}`` dicts if ``bidirectional``).
      xs: ``[B, T, D]``.
      seq_lengths: optional ``[B]``.
      initial_carries: optional, one carry per layer (a ``(fw, bw)`` pair if bidirectional).
      bidirectional: run every layer in both directions.
      merge: how a bidirectional layer merges its directions (``"concat"`` or ``"sum"``).
      dropout: dropout rate on the outputs of every layer but the last (as PyTorch); applied
        only when a ``key`` is given (training).
      key: PRNG key for dropout, or ``None`` for none (evaluation).
      **rnn_kwargs: passed to :func:`seqjax.rnn`.

    Returns:
      ``(ys [B, T, H or 2H], final carries: one per layer)``.
    """
    if len(cells) != len(params):
        raise ValueError(f"len(cells)={len(cells)} != len(params)={len(params)}")
    if initial_carries is not None and len(initial_carries) != len(cells):
        raise ValueError(
            f"len(initial_carries)={len(initial_carries)} != number of layers {len(cells)}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1)")
    carries = []
    for layer, (cell, p) in enumerate(zip(cells, params)):
        c0 = None if initial_carries is None else initial_carries[layer]
        if bidirectional:
            xs, carry = _bidirectional(
                cell, p, xs, seq_lengths=seq_lengths, initial_carry=c0, merge=merge, **rnn_kwargs
            )
        else:
            xs, carry = rnn(cell, p, xs, seq_lengths=seq_lengths, initial_carry=c0, **rnn_kwargs)
        carries.append(carry)
        if dropout > 0.0 and key is not None and layer < len(cells) - 1:
            key, sub = jax.random.split(key)
            keep = jax.random.bernoulli(sub, 1.0 - dropout, xs.shape)
            xs = jnp.where(keep, xs / (1.0 - dropout), 0.0).astype(xs.dtype)
    return xs, carries


def reduce_time(
    xs: Array, seq_lengths: Array | None = None, factor: int = 2
) -> tuple[Array, Array | None]:
    """Concatenate ``factor`` neighbouring steps: ``[B, T, D] -> [B, T // factor, factor * D]``.

    A trailing ``T % factor`` steps are dropped; lengths become ``seq_lengths // factor``
    (Listen, Attend and Spell's pyramid, Chan et al. 2016).
    """
    if xs.ndim != 3:
        raise ValueError(f"xs.shape={tuple(xs.shape)} must be [B, T, D] (rank 3)")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor={factor!r} must be a positive int")
    b, t, d = xs.shape
    t2 = t // factor
    ys = xs[:, : t2 * factor].reshape(b, t2, factor * d)
    lengths = None if seq_lengths is None else jnp.asarray(seq_lengths) // factor
    return ys, lengths


def pyramid(
    cell: Cell,
    params: dict,
    xs: Array,
    *,
    seq_lengths: Array | None = None,
    factor: int = 2,
    merge: str = "concat",
    **rnn_kwargs: Any,
) -> tuple[Array, Array | None, tuple[Any, Any]]:
    """One pyramid layer: :func:`reduce_time` then a :func:`bidirectional` layer.

    ``cell.input_size`` must be ``factor * D``. Returns ``(ys [B, T // factor, 2H],
    new_lengths, (carry_fw, carry_bw))``.
    """
    reduced, lengths = reduce_time(xs, seq_lengths, factor)
    ys, carries = bidirectional(cell, params, reduced, seq_lengths=lengths, merge=merge,
                                **rnn_kwargs)
    return ys, lengths, carries


def stack_cells(
    kind: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    merge: str = "concat",
    **cell_kwargs: Any,
) -> list[Cell]:
    """Cells for a stack: the first reads ``input_size``, the others the previous outputs."""
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers={num_layers!r} must be a positive int")
    width = hidden_size * (2 if bidirectional and merge == "concat" else 1)
    return [
        make_cell(kind, input_size if layer == 0 else width, hidden_size, **cell_kwargs)
        for layer in range(num_layers)
    ]


def init_stack(cells: Sequence[Cell], key: Array, *, bidirectional: bool = False) -> list[dict]:
    """Params for :func:`stacked`: one entry per layer, ``{"fw", "bw"}`` if bidirectional."""
    keys = jax.random.split(key, len(cells))
    if not bidirectional:
        return [cell.init(k) for cell, k in zip(cells, keys)]
    out = []
    for cell, k in zip(cells, keys):
        kf, kb = jax.random.split(k)
        out.append({"fw": cell.init(kf), "bw": cell.init(kb)})
    return out
