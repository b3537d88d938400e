"""Fused Pallas kernels for recurrent cells (installed as ``seqjax.kernels``).

No kernel is implemented yet (issue #4): :func:`unsupported_reason` says so for every cell, and
``backend="pallas"`` falls back to the scan backend with a warning.
"""

from __future__ import annotations

from typing import Any


def unsupported_reason(cell: Any, *, dtype: Any, batch: int, steps: int) -> str | None:
    """Why no fused kernel can run ``cell`` at this dtype/shape, or ``None`` if one can."""
    return "no fused Pallas kernel is implemented yet"


def run_kernel(cell, rp, gx, carry0, lengths, choice):  # pragma: no cover - unreachable today
    raise RuntimeError(f"no fused kernel for {cell!r} ({choice.reason})")
