"""Shared helpers for the fused kernels: platform detection, interpret mode, block-size arithmetic.

Every kernel comes in two styles:

* ``"gpu"``: a Triton kernel (``pallas_call`` with :class:`jax.experimental.pallas.triton.CompilerParams`,
  which selects the Triton lowering instead of Mosaic GPU);
* ``"tpu"``: a Mosaic TPU kernel (VMEM blocks and scratch, ``pltpu.CompilerParams``).

On CPU a kernel runs in interpret mode: ``interpret=True`` for GPU-style kernels and
``interpret=pltpu.InterpretParams()`` for TPU-style ones (:func:`interpret_arg`). Whether to
interpret is a static choice carried in a kernel's block-size dataclass and passed explicitly to
``pallas_call``: it is never derived from :func:`jax.default_backend` inside a kernel, so a kernel
built with ``interpret=False`` can be lowered for ``cuda`` or ``tpu`` on a CPU-only machine.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "GPU",
    "TPU",
    "cdiv",
    "interpret_arg",
    "kernel_platform",
    "largest_divisor_at_most",
    "next_pow2",
    "round_up",
]

GPU = "gpu"
TPU = "tpu"

_GPU_NAMES = ("gpu", "cuda", "rocm")


def kernel_platform(platform: str) -> tuple[str, bool]:
    """Map a JAX platform name to ``(kernel style, interpret)``.

    ``"gpu"``/``"cuda"``/``"rocm"`` -> ``("gpu", False)``; ``"tpu"`` -> ``("tpu", False)``;
    ``"cpu"`` -> ``("gpu", True)`` (the GPU-style kernel in interpret mode: the cheaper one to
    interpret; the TPU-style kernel is interpreted on CPU by asking for it explicitly).

    Raises:
      ValueError: for any other platform name.
    """
    name = platform.lower()
    if name in _GPU_NAMES:
        return GPU, False
    if name == TPU:
        return TPU, False
    if name == "cpu":
        return GPU, True
    raise ValueError(f"platform={platform!r} has no fused kernels (expected cpu, gpu/cuda/rocm or tpu)")


def interpret_arg(style: str, interpret: bool) -> Any:
    """The ``interpret=`` argument for ``pallas_call``: ``False``, ``True`` (GPU style) or
    ``pltpu.InterpretParams()`` (TPU style: simulates VMEM, DMAs and semaphores on CPU)."""
    if not interpret:
        return False
    if style == TPU:
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams()
    if style == GPU:
        return True
    raise ValueError(f"style={style!r} must be {GPU!r} or {TPU!r}")


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative ints."""
    return -(-a // b)


def round_up(x: int, m: int) -> int:
    """The smallest multiple of ``m`` that is ``>= x``."""
    return cdiv(x, m) * m


def next_pow2(x: int) -> int:
    """The smallest power of two ``>= max(x, 1)``."""
    return 1 << max(int(x) - 1, 0).bit_length()


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest ``d <= cap`` dividing ``n`` (``n >= 1``)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1
