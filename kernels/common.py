"""Shared helpers for the fused kernels: platform detection, interpret mode, block-size arithmetic.

Every kernel comes in two styles:

* ``"gpu"``: a Triton kernel (``pallas_call`` with
  :class:`jax.experimental.pallas.triton.CompilerParams`,
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

import jax.numpy as jnp
from jax import lax

__all__ = [
    "GPU",
    "TPU",
    "cdiv",
    "check_block_sizes",
    "dot_nt",
    "gpu_barrier",
    "interpret_arg",
    "kernel_platform",
    "largest_divisor_at_most",
    "next_pow2",
    "pad_bh",
    "round_up",
    "sigmoid",
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
    raise ValueError(
        f"platform={platform!r} has no fused kernels (expected cpu, gpu/cuda/rocm or tpu)")


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


# ------------------------------------------------------------------------------------------
# Helpers shared by the kernel modules (block-size validation, in-kernel maths, padding)
# ------------------------------------------------------------------------------------------


def check_block_sizes(platform: str, block_b: int, block_h: int, block_t: int) -> None:
    """Validate the block sizes every recurrent kernel takes.

    GPU (Triton): ``block_b`` and ``block_h`` powers of two ``>= 16`` (the minimum ``tl.dot``
    size), ``block_t == 1`` (the time loop is in-kernel). TPU (Mosaic): ``block_b`` a positive
    multiple of 8, ``block_h`` a positive multiple of 128, ``block_t >= 1``.

    Raises:
      ValueError: naming the offending field.
    """
    pow2 = lambda x: x > 0 and x & (x - 1) == 0  # noqa: E731
    if platform == GPU:
        for name, value in (("block_b", block_b), ("block_h", block_h)):
            if not (pow2(value) and value >= 16):
                raise ValueError(f"{name}={value} must be a power of two >= 16 on GPU")
        if block_t != 1:
            raise ValueError(f"block_t={block_t} must be 1 on GPU (the loop is in-kernel)")
    elif platform == TPU:
        if block_b <= 0 or block_b % 8:
            raise ValueError(f"block_b={block_b} must be a positive multiple of 8 on TPU")
        if block_h <= 0 or block_h % 128:
            raise ValueError(f"block_h={block_h} must be a positive multiple of 128 on TPU")
        if block_t <= 0:
            raise ValueError(f"block_t={block_t} must be positive")
    else:
        raise ValueError(f"platform={platform!r} must be 'gpu' or 'tpu'")


def sigmoid(x):
    r""":math:`\sigma(x) = (1 + \tanh(x/2))/2`: one transcendental, as the scan backend does it."""
    return 0.5 + 0.5 * jnp.tanh(0.5 * x)


def dot_nt(a, b):
    """``a @ b.T`` accumulated in float32 (no transpose materialised)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def gpu_barrier(interpret: bool):
    """A block-wide barrier for Triton kernels (global-memory writes become visible to the whole
    program); a no-op in interpret mode, where a program runs sequentially."""
    if interpret:
        return lambda: None
    from jax.experimental.pallas import triton as plgpu

    return plgpu.debug_barrier


def pad_bh(x, batch_p: int, hidden_p: int):
    """Zero-pad the last two axes ``[..., B, H]`` to ``[..., Bp, Hp]``."""
    pad = [(0, 0)] * (x.ndim - 2) + [(0, batch_p - x.shape[-2]), (0, hidden_p - x.shape[-1])]
    return jnp.pad(x, pad)
