"""The one place where the recurrent backend is chosen.

``"scan"`` is the reference (:func:`jax.lax.scan` with a hand-written VJP); ``"pallas"`` is the
fused kernels of :mod:`seqjax.kernels`; ``"auto"`` takes a kernel where one exists for the cell,
dtype and shape and the platform is GPU or TPU, the scan otherwise. Nothing else in seqjax
branches on the platform. A request for ``"pallas"`` that cannot be served falls back to the
scan with a one-time warning saying why: never silently, never wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax

__all__ = ["BackendChoice", "resolve_backend"]


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """The resolved backend (``"scan"`` or ``"pallas"``), the platform, and why."""

    name: str
    platform: str
    reason: str


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def resolve_backend(
    cell: Any, backend: str, *, dtype: Any, batch: int, steps: int, platform: str | None = None
) -> BackendChoice:
    """Resolve ``backend`` for one call.

    Args:
      cell: the cell to run.
      backend: ``"auto"``, ``"scan"`` or ``"pallas"``.
      dtype: the input dtype.
      batch, steps: the batch size and sequence length.
      platform: ``jax.default_backend()`` unless given (tests pass it).
    """
    platform = platform or jax.default_backend()
    if backend == "scan":
        return BackendChoice("scan", platform, "requested")
    from seqjax import kernels  # local import: the kernels package imports Pallas

    why_not = kernels.unsupported_reason(cell, dtype=dtype, batch=batch, steps=steps)
    if backend == "pallas":
        if why_not is None:
            return BackendChoice("pallas", platform, "requested")
        _warn_once(f"backend='pallas' unavailable for {cell!r}: {why_not}; using the scan backend")
        return BackendChoice("scan", platform, f"pallas unavailable: {why_not}")
    if platform not in ("gpu", "cuda", "rocm", "tpu"):
        return BackendChoice("scan", platform, f"auto: platform {platform!r} has no fused kernels")
    if why_not is not None:
        return BackendChoice("scan", platform, f"auto: {why_not}")
    return BackendChoice("pallas", platform, f"auto: fused kernel on {platform}")
