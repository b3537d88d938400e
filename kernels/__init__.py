"""Fused Pallas kernels for recurrent cells (installed as ``seqjax.kernels``).

:func:`unsupported_reason` says whether a kernel can run a cell at a dtype and shape (the backend
switch in :func:`seqjax.resolve_backend` asks it); :func:`run_kernel` runs it, for
:func:`seqjax.rnn` with ``backend="pallas"``. Kernels: :mod:`seqjax.kernels.lstm` (the plain
:class:`seqjax.LSTM`). GRU, peephole LSTM and Elman RNN run on the scan backend.

Importable without a GPU or TPU: on CPU the kernels run in Pallas interpret mode.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from . import common
from .lstm import MAX_HIDDEN, LSTMBlockSizes, lstm, lstm_reference

__all__ = [
    "LSTMBlockSizes",
    "lstm",
    "lstm_reference",
    "run_kernel",
    "unsupported_reason",
]

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def unsupported_reason(cell: Any, *, dtype: Any, batch: int, steps: int) -> str | None:
    """Why no fused kernel can run ``cell`` at this dtype/shape, or ``None`` if one can.

    Served: :class:`seqjax.LSTM` exactly (not subclasses such as ``PeepholeLSTM``), float32 or
    bfloat16 inputs, ``hidden_size <= 1024`` (the TPU kernel keeps ``w_h`` whole in VMEM), any
    batch and length (the kernels pad the batch and hidden sizes themselves).
    """
    from seqjax.cells import GRU, LSTM, PeepholeLSTM, SimpleRNN

    kind = type(cell)
    if kind is GRU:
        return "GRU kernel not implemented yet"
    if kind is PeepholeLSTM:
        return "PeepholeLSTM has no fused kernel (its gates read the cell state)"
    if kind is SimpleRNN:
        return "SimpleRNN has no fused kernel"
    if kind is not LSTM:
        return f"no fused kernel for {kind.__name__} (only seqjax.LSTM)"
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return f"dtype={dtype!r} is not a dtype"
    if dt not in _DTYPES:
        return f"dtype={dt} not supported by the LSTM kernel (float32 or bfloat16)"
    if cell.hidden_size > MAX_HIDDEN:
        return (f"hidden_size={cell.hidden_size} > {MAX_HIDDEN}: too large for the on-chip "
                "recurrent weight of the LSTM kernel")
    if batch < 1 or steps < 1:
        return f"batch={batch} and steps={steps} must be positive"
    return None


def run_kernel(cell, rp, gx, carry0, lengths, choice):
    """Run ``cell``'s fused kernel for :func:`seqjax.rnn`.

    Args:
      cell: a cell for which :func:`unsupported_reason` returned ``None``.
      rp: its recurrent params (``{"w_h": [H, 4H]}`` for an LSTM).
      gx: time-major input pre-activations ``[T, B, 4H]`` float32 (already reversed within each
        length for ``reverse=True``).
      carry0: ``(h0, c0)`` ``[B, H]`` float32.
      lengths: ``[B]`` int32 or ``None``.
      choice: the :class:`seqjax.BackendChoice`; ``choice.platform == "cpu"`` runs the kernel in
        interpret mode.

    Returns:
      ``(hs [T, B, H] float32, final carry)``, as ``seqjax.recurrent._scan`` does.
    """
    steps, batch, _ = gx.shape
    reason = unsupported_reason(cell, dtype=jnp.float32, batch=batch, steps=steps)
    if reason is not None:
        raise ValueError(f"no fused kernel for {cell!r}: {reason}")
    w_h = rp["w_h"]
    if jnp.dtype(w_h.dtype) not in _DTYPES:  # e.g. float16 params: the scan computes in f32 too
        w_h = w_h.astype(jnp.float32)
    style, interpret = common.kernel_platform(choice.platform)
    block_sizes = LSTMBlockSizes.default(
        (steps, batch, cell.hidden_size), w_h.dtype, style, interpret=interpret
    )
    h0, c0 = (jnp.asarray(x, jnp.float32) for x in carry0)
    return lstm(w_h, gx.astype(jnp.float32), (h0, c0), lengths, block_sizes)
