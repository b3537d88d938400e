"""Fused Pallas kernels for recurrent cells (installed as ``seqjax.kernels``).

:func:`unsupported_reason` says whether a kernel can run a cell at a dtype and shape (the backend
switch in :func:`seqjax.resolve_backend` asks it); :func:`run_kernel` runs it, for
:func:`seqjax.rnn` with ``backend="pallas"``. Kernels: :mod:`seqjax.kernels.lstm` (the plain
:class:`seqjax.LSTM`) and :mod:`seqjax.kernels.gru` (:class:`seqjax.GRU`, both reset variants).
Peephole LSTM and Elman RNN run on the scan backend.

Importable without a GPU or TPU: on CPU the kernels run in Pallas interpret mode.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import gru as _gru
from . import lstm as _lstm
from .gru import GRUBlockSizes, gru, gru_reference
from .lstm import LSTMBlockSizes, lstm, lstm_reference

__all__ = [
    "GRUBlockSizes",
    "LSTMBlockSizes",
    "gru",
    "gru_reference",
    "lstm",
    "lstm_reference",
    "run_kernel",
    "unsupported_reason",
]

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def unsupported_reason(cell: Any, *, dtype: Any, batch: int, steps: int) -> str | None:
    """Why no fused kernel can run ``cell`` at this dtype/shape, or ``None`` if one can.

    Served: :class:`seqjax.LSTM` and :class:`seqjax.GRU` (either ``reset``) exactly (not
    subclasses such as ``PeepholeLSTM``), float32 or bfloat16 inputs, ``hidden_size <= 1024``
    (the TPU kernels keep ``w_h`` whole in VMEM), any batch and length (the kernels pad the batch
    and hidden sizes themselves).
    """
    from seqjax.cells import PeepholeLSTM, SimpleRNN

    kind = type(cell)
    if kind is PeepholeLSTM:
        return "PeepholeLSTM has no fused kernel (its gates read the cell state)"
    if kind is SimpleRNN:
        return "SimpleRNN has no fused kernel"
    kernels = _kernels()
    if kind not in kernels:
        return f"no fused kernel for {kind.__name__} (only seqjax.LSTM and seqjax.GRU)"
    name, module = kernels[kind]
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return f"dtype={dtype!r} is not a dtype"
    if dt not in _DTYPES:
        return f"dtype={dt} not supported by the {name} kernel (float32 or bfloat16)"
    if cell.hidden_size > module.MAX_HIDDEN:
        return (f"hidden_size={cell.hidden_size} > {module.MAX_HIDDEN}: too large for the on-chip "
                f"recurrent weight of the {name} kernel")
    if batch < 1 or steps < 1:
        return f"batch={batch} and steps={steps} must be positive"
    return None


def _kernels() -> dict:
    """``{cell class: (name, kernel module)}`` (exact classes: subclasses are not served)."""
    from seqjax.cells import GRU, LSTM

    return {LSTM: ("LSTM", _lstm), GRU: ("GRU", _gru)}


def run_kernel(cell, rp, gx, carry0, lengths, choice=None):
    """Run ``cell``'s fused kernel for :func:`seqjax.rnn`.

    The kernel is chosen per platform when the computation is lowered
    (:func:`jax.lax.platform_dependent`): Triton on ``cuda``/``rocm``, Mosaic on ``tpu``, the
    GPU-style kernel in Pallas interpret mode on ``cpu``. So a function lowered ahead of time for
    ``cuda`` or ``tpu`` on a CPU host (``jit(f).trace(...).lower(lowering_platforms=...)``)
    holds the compiled kernel, never the interpret-mode one, and lowering for a platform with no
    kernel raises.

    Args:
      cell: a cell for which :func:`unsupported_reason` returned ``None``.
      rp: its recurrent params (``{"w_h": [H, 4H]}`` for an LSTM, ``{"w_h": [H, 3H],
        "b_h": [3H]}`` for a GRU).
      gx: time-major input pre-activations ``[T, B, G]`` float32 (already reversed within each
        length for ``reverse=True``).
      carry0: ``(h0, c0)`` for an LSTM, ``h0`` for a GRU, ``[B, H]`` float32.
      lengths: ``[B]`` int32 or ``None``.
      choice: the :class:`seqjax.BackendChoice` (for the record; the platform is resolved at
        lowering, not from it).

    Returns:
      ``(hs [T, B, H] float32, final carry)``, as ``seqjax.recurrent._scan`` does.
    """
    from seqjax.cells import GRU

    del choice
    steps, batch, _ = gx.shape
    reason = unsupported_reason(cell, dtype=jnp.float32, batch=batch, steps=steps)
    if reason is not None:
        raise ValueError(f"no fused kernel for {cell!r}: {reason}")
    shape = (steps, batch, cell.hidden_size)
    w_h = _kernel_dtype(rp["w_h"])
    gx = gx.astype(jnp.float32)
    carry0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), carry0)

    if type(cell) is GRU:
        b_h = _kernel_dtype(rp["b_h"])

        def on(platform):
            def run(w_h, b_h, gx, h0, lengths):
                bs = GRUBlockSizes.default(shape, w_h.dtype, platform, reset=cell.reset)
                return gru(w_h, b_h, gx, h0, lengths, bs)
            return run

        args = (w_h, b_h, gx, carry0, lengths)
    else:
        def on(platform):
            def run(w_h, gx, carry0, lengths):
                bs = LSTMBlockSizes.default(shape, w_h.dtype, platform)
                return lstm(w_h, gx, carry0, lengths, bs)
            return run

        args = (w_h, gx, carry0, lengths)
    return jax.lax.platform_dependent(*args, cpu=on("cpu"), cuda=on("cuda"), rocm=on("rocm"),
                                      tpu=on("tpu"))


def _kernel_dtype(x):
    """Params in a kernel dtype as they are; others (e.g. float16) in float32, as the scan
    computes them."""
    return x if jnp.dtype(x.dtype) in _DTYPES else x.astype(jnp.float32)
