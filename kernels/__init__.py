"""Fused Pallas kernels for recurrent cells (installed as ``seqjax.kernels``).

The kernels know nothing of the cells above them: a cell declares the kernel family that
computes it (``Cell.kernel``: ``"lstm"`` or ``"gru"``, ``None`` for none) and its options
(``Cell.kernel_options()``, e.g. a GRU's ``{"reset": "after"}``), and the backend switch
(:func:`seqjax.core.backend.resolve_backend`) asks :func:`unsupported_reason` and runs
:func:`run_kernel` with them. Kernels: :mod:`seqjax.kernels.lstm` and :mod:`seqjax.kernels.gru`
(both reset variants); :mod:`seqjax.kernels.linear_scan` (``"linear_scan"``: the elementwise
linear recurrence of minGRU/minLSTM, run by :func:`run_linear_scan`).

Importable without a GPU or TPU: on CPU the kernels run in Pallas interpret mode.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from . import gru as _gru
from . import linear_scan as _linear_scan
from . import lstm as _lstm
from .gru import GRUBlockSizes, gru, gru_reference
from .linear_scan import ScanBlockSizes, linear_scan, linear_scan_reference
from .lstm import LSTMBlockSizes, lstm, lstm_reference

__all__ = [
    "FAMILIES",
    "GRUBlockSizes",
    "LSTMBlockSizes",
    "ScanBlockSizes",
    "gru",
    "gru_reference",
    "linear_scan",
    "linear_scan_reference",
    "lstm",
    "lstm_reference",
    "run_kernel",
    "run_linear_scan",
    "unsupported_reason",
]

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
#: The kernel families and their modules.
FAMILIES = {"lstm": _lstm, "gru": _gru, "linear_scan": _linear_scan}


def unsupported_reason(family: str | None, *, hidden_size: int, dtype: Any, batch: int,
                       steps: int) -> str | None:
    """Why no fused kernel of ``family`` can run at this size/dtype/shape, or ``None``.

    Served: the families of :data:`FAMILIES`, float32 or bfloat16 inputs,
    ``hidden_size <= MAX_HIDDEN`` (1024: the TPU kernels keep ``w_h`` whole in VMEM), any batch
    and length (the kernels pad the batch and hidden sizes themselves).
    """
    if family is None:
        return "it declares no fused kernel (Cell.kernel is None)"
    if family not in FAMILIES:
        return f"no fused kernel family {family!r} (families: {', '.join(FAMILIES)})"
    module = FAMILIES[family]
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        return f"dtype={dtype!r} is not a dtype"
    if dt not in _DTYPES:
        return f"dtype={dt} not supported by the {family} kernel (float32 or bfloat16)"
    if hidden_size > module.MAX_HIDDEN:
        return (f"hidden_size={hidden_size} > {module.MAX_HIDDEN}: too large for the on-chip "
                f"recurrent weight of the {family} kernel")
    if batch < 1 or steps < 1:
        return f"batch={batch} and steps={steps} must be positive"
    return None


def run_kernel(family: str, rp, gx, carry0, lengths, *, hidden_size: int, **options):
    """Run the fused kernel of ``family`` (for :func:`seqjax.rnn` with ``backend="pallas"``).

    The kernel is chosen per platform when the computation is lowered
    (:func:`jax.lax.platform_dependent`): Triton on ``cuda``/``rocm``, Mosaic on ``tpu``, the
    GPU-style kernel in Pallas interpret mode on ``cpu``. So a function lowered ahead of time for
    ``cuda`` or ``tpu`` on a CPU host (``jit(f).trace(...).lower(lowering_platforms=...)``)
    holds the compiled kernel, never the interpret-mode one, and lowering for a platform with no
    kernel raises.

    Args:
      family: ``"lstm"`` or ``"gru"`` (a cell's ``kernel``).
      rp: the recurrent params (``{"w_h": [H, 4H]}`` for an LSTM, ``{"w_h": [H, 3H],
        "b_h": [3H]}`` for a GRU).
      gx: time-major input pre-activations ``[T, B, G]`` float32 (already reversed within each
        length for ``reverse=True``).
      carry0: ``(h0, c0)`` for an LSTM, ``h0`` for a GRU, ``[B, H]`` float32.
      lengths: ``[B]`` int32 or ``None``.
      hidden_size: ``H``.
      **options: the family's options (a cell's ``kernel_options()``): GRU ``reset``.

    Returns:
      ``(hs [T, B, H] float32, final carry)``, as the scan backend computes them.
    """
    steps, batch, _ = gx.shape
    reason = unsupported_reason(family, hidden_size=hidden_size, dtype=jnp.float32, batch=batch,
                                steps=steps)
    if reason is not None:
        raise ValueError(f"no fused kernel: {reason}")
    shape = (steps, batch, hidden_size)
    w_h = _kernel_dtype(rp["w_h"])
    gx = gx.astype(jnp.float32)
    carry0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), carry0)

    if family == "gru":
        b_h = _kernel_dtype(rp["b_h"])
        reset = options.get("reset", "after")

        def on(platform):
            def run(w_h, b_h, gx, h0, lengths):
                bs = GRUBlockSizes.default(shape, w_h.dtype, platform, reset=reset)
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


def run_linear_scan(a, b, h0):
    """The fused linear scan (:func:`seqjax.kernels.linear_scan.linear_scan`) for
    ``rnn(..., backend="pallas")`` on a linear-recurrence cell: ``a, b [T, B, N]``, ``h0 [B, N]``
    -> ``hs [T, B, N]`` float32, the kernel chosen per platform when lowered, as in
    :func:`run_kernel` (Triton on ``cuda``/``rocm``, Mosaic on ``tpu``, the GPU-style kernel
    interpreted on ``cpu``)."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    h0 = jnp.asarray(h0, jnp.float32)

    def on(platform):
        def run(a, b, h0):
            return linear_scan(a, b, h0, block_sizes=ScanBlockSizes.default(b.shape, b.dtype,
                                                                            platform))
        return run

    return jax.lax.platform_dependent(a, b, h0, cpu=on("cpu"), cuda=on("cuda"), rocm=on("rocm"),
                                      tpu=on("tpu"))
