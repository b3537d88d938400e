"""Layers built from :func:`seqjax.rnn`: bidirectional, stacked and pyramid (time-reducing).

All take batch-major ``xs [B, T, D]`` and optional ``seq_lengths [B]``; the params of a
bidirectional layer are ``{"fw": ..., "bw": ...}`` (one cell's params per direction), those of
a stack a list with one entry per layer. :func:`init_stack` builds matching cells and params.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seqjax.core.cells import Cell, check_key, check_tree, make_cell, shape_of
from seqjax.core.recurrent import check_lengths, rnn

Array = jax.Array

__all__ = ["bidirectional", "stacked", "pyramid", "reduce_time", "init_stack", "stack_cells",
           "dropout"]

_MERGES = ("concat", "sum")


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout: each element kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``; the identity at ``rate == 0`` or without a ``key`` (evaluation)."""
    if rate <= 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


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

    Raises:
      TypeError / ValueError: naming the argument (as :func:`seqjax.rnn`; ``seq_lengths`` may
        be any array-like of ints, its values are checked when not under ``jit``).
    """
    if merge not in _MERGES:
        raise ValueError(f"merge={merge!r} must be one of {_MERGES}")
    if not isinstance(params, dict) or set(params) != {"fw", "bw"}:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"bidirectional params must be a dict with keys ['bw', 'fw'], got {keys}")
    if "reverse" in rnn_kwargs:
        raise TypeError("bidirectional got reverse=...: it runs both directions itself")
    if initial_carry is not None and (not isinstance(initial_carry, (tuple, list))
                                      or len(initial_carry) != 2):
        raise ValueError(f"initial_carry must be a pair (carry_fw, carry_bw), got "
                         f"{type(initial_carry).__name__}"
                         + (f" of length {len(initial_carry)}"
                            if isinstance(initial_carry, (tuple, list)) else ""))
    seq_lengths = _lengths(xs, seq_lengths, rnn_kwargs.get("time_major", False))
    c_fw, c_bw = (None, None) if initial_carry is None else initial_carry
    ys_fw, h_fw = rnn(cell, params["fw"], xs, seq_lengths=seq_lengths, initial_carry=c_fw,
                      **rnn_kwargs)
    ys_bw, h_bw = rnn(cell, params["bw"], xs, seq_lengths=seq_lengths, initial_carry=c_bw,
                      reverse=True, **rnn_kwargs)
    ys = jnp.concatenate([ys_fw, ys_bw], axis=-1) if merge == "concat" else ys_fw + ys_bw
    return ys, (h_fw, h_bw)


_bidirectional = bidirectional  # `stacked` has an argument of the same name


def _lengths(xs: Any, seq_lengths: Any, time_major: bool = False) -> Array | None:
    """``seq_lengths`` validated against ``xs`` (rank 3), as an ``int32 [B]`` array."""
    if seq_lengths is None:
        return None
    shape = shape_of(xs, "xs")
    if len(shape) != 3:
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(f"xs.shape={shape} must be {layout} (rank 3)")
    steps, batch = (shape[0], shape[1]) if time_major else (shape[1], shape[0])
    return check_lengths(seq_lengths, batch, steps)


_dropout = dropout  # ``stacked`` has an argument of that name


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

    Raises:
      TypeError / ValueError: naming the argument: ``cells``/``params`` not one entry per
        layer, ``dropout`` outside ``[0, 1)``, and whatever :func:`seqjax.rnn` rejects
        (``seq_lengths`` is validated once here; its values only when not under ``jit``).
    """
    for name, value in (("cells", cells), ("params", params)):
        if isinstance(value, (dict, str)) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list with one entry per layer, got "
                            f"{type(value).__name__}")
    if not cells:
        raise ValueError("cells=[] must hold at least one layer")
    for i, cell in enumerate(cells):
        if not isinstance(cell, Cell):
            raise TypeError(f"cells[{i}] must be a seqjax cell, got {type(cell).__name__}")
    if len(cells) != len(params):
        raise ValueError(f"len(cells)={len(cells)} != len(params)={len(params)}")
    for layer, (cell, p) in enumerate(zip(cells, params)):  # every layer, before any compute
        if bidirectional:
            if not isinstance(p, dict) or set(p) != {"fw", "bw"}:
                keys = sorted(p) if isinstance(p, dict) else type(p).__name__
                raise ValueError(f"params[{layer}] of a bidirectional stack must be a dict with "
                                 f"keys ['bw', 'fw'], got {keys}")
            for side in ("fw", "bw"):
                check_tree(p[side], cell.param_shapes(), f"params[{layer}][{side!r}]", cell)
        else:
            check_tree(p, cell.param_shapes(), f"params[{layer}]", cell)
    if initial_carries is not None and len(initial_carries) != len(cells):
        raise ValueError(
            f"len(initial_carries)={len(initial_carries)} != number of layers {len(cells)}"
        )
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be a float in [0, 1)")
    if key is not None and dropout > 0.0:
        check_key(key)
    seq_lengths = _lengths(xs, seq_lengths, rnn_kwargs.get("time_major", False))
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
            xs = _dropout(xs, dropout, sub)
    return xs, carries


def reduce_time(
    xs: Array, seq_lengths: Array | None = None, factor: int = 2
) -> tuple[Array, Array | None]:
    """Concatenate ``factor`` neighbouring steps: ``[B, T, D] -> [B, T // factor, factor * D]``.

    A trailing ``T % factor`` steps are dropped; lengths become ``seq_lengths // factor``
    (Listen, Attend and Spell's pyramid, Chan et al. 2016).

    Raises:
      ValueError / TypeError: ``xs`` not ``[B, T, D]``, ``factor`` not a positive int, or
        ``seq_lengths`` not ``[B]`` integers in ``[0, T]`` (values checked when concrete).
    """
    shape = shape_of(xs, "xs")
    if len(shape) != 3:
        raise ValueError(f"xs.shape={shape} must be [B, T, D] (rank 3)")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor={factor!r} must be a positive int")
    xs = jnp.asarray(xs)
    b, t, d = shape
    lengths = check_lengths(seq_lengths, b, t)
    t2 = t // factor
    ys = xs[:, : t2 * factor].reshape(b, t2, factor * d)
    lengths = None if lengths is None else lengths // factor
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

    Raises:
      ValueError / TypeError: as :func:`reduce_time` and :func:`bidirectional`, and if
        ``cell.input_size != factor * D``.
    """
    shape = shape_of(xs, "xs")
    if (isinstance(cell, Cell) and len(shape) == 3 and isinstance(factor, int)
            and cell.input_size != factor * shape[-1]):
        raise ValueError(f"cell.input_size={cell.input_size} must be factor * D = {factor} * "
                         f"{shape[-1]} = {factor * shape[-1]} (xs.shape={shape})")
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
    check_key(key)
    if isinstance(cells, (dict, str)) or not isinstance(cells, Sequence) or not all(
            isinstance(c, Cell) for c in cells):
        raise TypeError(f"cells must be a list of seqjax cells, got {cells!r}")
    keys = jax.random.split(key, len(cells))
    if not bidirectional:
        return [cell.init(k) for cell, k in zip(cells, keys)]
    out = []
    for cell, k in zip(cells, keys):
        kf, kb = jax.random.split(k)
        out.append({"fw": cell.init(kf), "bw": cell.init(kb)})
    return out
