r"""Fused linear scan: :math:`h_t = a_t \odot h_{t-1} + b_t` over time in one Pallas kernel.

The recurrence of the cells linear in their state (minGRU, minLSTM: :mod:`seqjax.core.linear`)
for real ``a, b [T, B, N]`` (float32 or bfloat16; the state is carried in float32, ``hs`` comes
back in the dtype of ``b``) and ``h0 [B, N]`` float32. ``reverse=True`` runs
:math:`h_t = a_t \odot h_{t+1} + b_t` from ``t = T-1`` down (``h_T = h0``). Lengths and
``reverse`` within lengths are the caller's business (``a = 1, b = 0`` on padding steps).

The model is RecurrentGemma's Pallas LRU scan (``recurrentgemma/jax/pallas.py``): the features
are independent, so the grid splits the flattened ``B * N`` features into blocks, and each
program runs the whole time loop for its block with the state in registers (GPU) or VMEM
scratch (TPU). There is no cross-program communication at all (unlike the LSTM/GRU kernels),
so the kernel is memory-bound: one read of ``a`` and ``b`` and one write of ``hs`` per element.

The backward pass is the same kernel in the other direction (:func:`jax.custom_vjp`):

.. math::
    g_t = \bar h_t + a_{t+1} g_{t+1}, \qquad \bar a_t = g_t h_{t-1}, \qquad \bar b_t = g_t,
    \qquad \bar h_0 = a_0 g_0

(for ``reverse=True`` the indices ``t+1`` and ``t-1`` swap roles).

Two styles, chosen by :class:`ScanBlockSizes.platform`:

* ``"gpu"`` (Triton, via :class:`jax.experimental.pallas.triton.CompilerParams`): whole-array
  refs ``[T, F]``; program ``i`` owns features ``[i * block, (i+1) * block)`` and loops over
  time loading one ``[block]`` row of ``a`` and ``b`` a step (no ``slice``: rows are
  ``pl.ds`` loads).
* ``"tpu"`` (Mosaic): features as ``[F / 128, 128]`` tiles, grid ``(feature blocks, time
  blocks)`` with time ``"arbitrary"``; ``block_t`` steps of ``[rows, 128]`` stream through VMEM
  (double-buffered by Pallas), the state in VMEM scratch across time blocks.

On CPU the GPU-style kernel runs in interpret mode (as the LSTM and GRU kernels do).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import common

__all__ = ["MAX_HIDDEN", "ScanBlockSizes", "linear_scan", "linear_scan_reference"]

Array = jax.Array
_F32 = jnp.float32
#: No limit from the kernel (features are independent); kept for ``unsupported_reason``.
MAX_HIDDEN = 1 << 30
_LANES = 128


# ------------------------------------------------------------------------------------------
# Static choices
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScanBlockSizes:
    """Static kernel choices (hashable: the op's one non-differentiable argument).

    Attributes:
      platform: ``"gpu"`` (Triton) or ``"tpu"`` (Mosaic).
      block: features per program. GPU: a power of two >= 16. TPU: a multiple of
        ``8 * 128`` (``block // 128`` rows of 128 lanes; a multiple of 16 rows for bfloat16).
      block_t: time steps per grid step (TPU; 1 on GPU, where the loop covers all of T).
      num_warps: Triton warps per program (GPU).
      interpret: run in Pallas interpret mode (CPU).
    """

    platform: str
    block: int
    block_t: int = 1
    num_warps: int = 4
    interpret: bool = False

    def __post_init__(self):
        if self.platform == common.GPU:
            if self.block < 16 or self.block & (self.block - 1):
                raise ValueError(f"block={self.block} must be a power of two >= 16 on GPU")
            if self.block_t != 1:
                raise ValueError(f"block_t={self.block_t} must be 1 on GPU")
        elif self.platform == common.TPU:
            if self.block <= 0 or self.block % (8 * _LANES):
                raise ValueError(f"block={self.block} must be a positive multiple of 1024 on "
                                 "TPU (8 rows of 128 lanes)")
            if self.block_t < 1:
                raise ValueError(f"block_t={self.block_t} must be >= 1")
        else:
            raise ValueError(f"platform={self.platform!r} must be 'gpu' or 'tpu'")

    @classmethod
    def default(cls, shape: tuple[int, int, int], dtype: Any, platform: str) -> ScanBlockSizes:
        """Block sizes for ``shape = (T, B, N)`` and input ``dtype`` on ``platform``
        (``"gpu"``/``"cuda"``/``"rocm"``, ``"tpu"`` or ``"cpu"``: the GPU style, interpreted).

        GPU: 1024 features per program (4 warps, 8 per thread), fewer for small problems so
        that at least ~64 programs run when the features allow. TPU: 8 rows (16 for bfloat16)
        of 128 lanes, up to 64 rows, and 64 time steps per grid step (fewer for short T).
        """
        steps, batch, n = shape
        feats = max(batch * n, 1)
        style, interpret = common.kernel_platform(platform)
        if style == common.GPU:
            block = min(1024, common.next_pow2(feats))
            while block > 128 and common.cdiv(feats, block) < 64:
                block //= 2
            block = max(block, 16)
            return cls(common.GPU, block, 1, 4 if block >= 512 else 2 if block >= 64 else 1,
                       interpret)
        min_rows = 16 if jnp.dtype(dtype).itemsize < 4 else 8
        rows = min(64, common.round_up(common.cdiv(feats, _LANES), min_rows))
        return cls(common.TPU, rows * _LANES, max(1, min(64, steps)), 4, interpret)

    def padded_features(self, feats: int) -> int:
        return common.round_up(max(feats, 1), self.block)


# ------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------


def _kernel_gpu(a_ref, b_ref, h0_ref, hs_ref, *, steps: int, block: int, reverse: bool):
    cols = common.tile(pl.program_id(0), block)
    h = h0_ref[cols].astype(_F32)

    def body(i, h):
        t = steps - 1 - i if reverse else i
        h = a_ref[t, cols].astype(_F32) * h + b_ref[t, cols].astype(_F32)
        hs_ref[t, cols] = h.astype(hs_ref.dtype)
        return h

    lax.fori_loop(0, steps, body, h)


def _kernel_tpu(a_ref, b_ref, h0_ref, hs_ref, h_scr, *, block_t: int, reverse: bool):
    @pl.when(pl.program_id(1) == 0)
    def _():
        h_scr[...] = h0_ref[...].astype(_F32)

    def body(j, h):
        jj = block_t - 1 - j if reverse else j
        h = a_ref[jj].astype(_F32) * h + b_ref[jj].astype(_F32)
        hs_ref[jj] = h.astype(hs_ref.dtype)
        return h

    h_scr[...] = lax.fori_loop(0, block_t, body, h_scr[...])


# ------------------------------------------------------------------------------------------
# pallas_call wrappers
# ------------------------------------------------------------------------------------------


def _call(bs: ScanBlockSizes, a: Array, b: Array, h0: Array, reverse: bool, name: str) -> Array:
    """``a, b [T, F]``, ``h0 [F]`` (any ``F``) -> ``hs [T, F]`` in ``b``'s dtype."""
    steps, feats = b.shape
    out_dtype = b.dtype
    fp = bs.padded_features(feats)
    pad_f = ((0, 0), (0, fp - feats))
    a = jnp.pad(a, pad_f)  # padded features: a = b = 0, state 0
    b = jnp.pad(b, pad_f)
    h0 = jnp.pad(h0.astype(_F32), (0, fp - feats))
    interpret = common.interpret_arg(bs.platform, bs.interpret)
    if bs.platform == common.GPU:
        from jax.experimental.pallas import triton as plgpu

        hs = pl.pallas_call(
            functools.partial(_kernel_gpu, steps=steps, block=bs.block, reverse=reverse),
            grid=(fp // bs.block,),
            out_shape=jax.ShapeDtypeStruct((steps, fp), out_dtype),
            compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=1),
            interpret=interpret,
            name=name,
        )(a, b, h0)
        return hs[:, :feats]
    bt = bs.block_t
    tp = common.round_up(steps, bt)
    if tp != steps:  # padding steps at the end: a = 1, b = 0 carry the state unchanged
        pad_t = ((0, tp - steps), (0, 0))
        a = jnp.pad(a, pad_t, constant_values=1)
        b = jnp.pad(b, pad_t)
    rows_total, rows = fp // _LANES, bs.block // _LANES
    a = a.reshape(tp, rows_total, _LANES)
    b = b.reshape(tp, rows_total, _LANES)
    h0 = h0.reshape(rows_total, _LANES)
    nt = tp // bt
    time_block = (lambda f, s: (nt - 1 - s, f, 0)) if reverse else (lambda f, s: (s, f, 0))
    seq = pl.BlockSpec((bt, rows, _LANES), time_block)
    hs = pl.pallas_call(
        functools.partial(_kernel_tpu, block_t=bt, reverse=reverse),
        grid=(rows_total // rows, nt),
        in_specs=[seq, seq, pl.BlockSpec((rows, _LANES), lambda f, s: (f, 0))],
        out_specs=seq,
        out_shape=jax.ShapeDtypeStruct((tp, rows_total, _LANES), out_dtype),
        scratch_shapes=[pltpu.VMEM((rows, _LANES), _F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
        name=name,
    )(a, b, h0)
    return hs.reshape(tp, fp)[:steps, :feats]


def _flat(x: Array) -> Array:
    return x.reshape(x.shape[0], -1)


def _fwd(a, b, h0, bs: ScanBlockSizes, reverse: bool):
    steps = b.shape[0]
    if steps == 0 or b.size == 0:
        return jnp.zeros(b.shape, b.dtype)
    hs = _call(bs, _flat(a), _flat(b), h0.reshape(-1), reverse, "seqjax_linear_scan_fwd")
    return hs.reshape(b.shape)


# ------------------------------------------------------------------------------------------
# The public op
# ------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _linear_scan(a, b, h0, bs, reverse):
    return _fwd(a, b, h0, bs, reverse)


def _linear_scan_fwd(a, b, h0, bs, reverse):
    hs = _fwd(a, b, h0, bs, reverse)
    return hs, (a, hs, h0)


def _linear_scan_bwd(bs, reverse, res, dhs):
    a, hs, h0 = res
    steps = hs.shape[0]
    if steps == 0 or hs.size == 0:
        return jnp.zeros_like(a), jnp.zeros(hs.shape, hs.dtype), jnp.zeros_like(h0)
    zero = jnp.zeros_like(a[:1])
    h_first = h0[None].astype(hs.dtype)
    if not reverse:  # g_t = dh_t + a_{t+1} g_{t+1}, a reverse scan; h_{t-1} pairs with g_t
        a_bwd = jnp.concatenate([a[1:], zero])
        h_prev = jnp.concatenate([h_first, hs[:-1]])
    else:  # g_t = dh_t + a_{t-1} g_{t-1}, a forward scan; h_{t+1} pairs with g_t
        a_bwd = jnp.concatenate([zero, a[:-1]])
        h_prev = jnp.concatenate([hs[1:], h_first])
    g = _call(bs, _flat(a_bwd), _flat(dhs.astype(_F32)), jnp.zeros(_flat(dhs).shape[1], _F32),
              not reverse, "seqjax_linear_scan_bwd").reshape(hs.shape)
    da = (g * h_prev.astype(_F32)).astype(a.dtype)
    db = g.astype(hs.dtype)
    edge = 0 if not reverse else steps - 1
    dh0 = (a[edge].astype(_F32) * g[edge]).astype(h0.dtype)
    return da, db, dh0


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def linear_scan(a: Array, b: Array, h0: Array | None = None, *, reverse: bool = False,
                block_sizes: ScanBlockSizes | None = None, interpret: bool = False,
                platform: str = "gpu") -> Array:
    r"""All states of :math:`h_t = a_t \odot h_{t-1} + b_t` (``reverse``: :math:`h_t = a_t
    \odot h_{t+1} + b_t`), differentiable in ``a``, ``b`` and ``h0``.

    Args:
      a, b: ``[T, B, N]`` float32 or bfloat16 (real only: a complex recurrence such as the
        LRU's is not the elementwise product of its real and imaginary parts).
      h0: ``[B, N]`` (float32 state), zeros if ``None``.
      reverse: scan from ``t = T-1`` down to 0.
      block_sizes: static choices; by default :meth:`ScanBlockSizes.default` for ``platform``
        (``interpret=True`` or ``platform="cpu"`` runs the GPU-style kernel interpreted).
      interpret, platform: used only without ``block_sizes``.

    Returns:
      ``hs [T, B, N]`` in ``b``'s dtype.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a.shape={a.shape} and b.shape={b.shape} must be equal [T, B, N]")
    for name, x in (("a", a), ("b", b)):
        if jnp.dtype(x.dtype) not in (jnp.dtype(_F32), jnp.dtype(jnp.bfloat16)):
            raise TypeError(f"{name}.dtype={x.dtype} must be float32 or bfloat16")
    if h0 is None:
        h0 = jnp.zeros(b.shape[1:], _F32)
    if tuple(h0.shape) != tuple(b.shape[1:]):
        raise ValueError(f"h0.shape={h0.shape} must be {b.shape[1:]} (b.shape[1:])")
    if block_sizes is None:
        block_sizes = ScanBlockSizes.default(b.shape, b.dtype, platform)
        if interpret and not block_sizes.interpret:
            block_sizes = dataclasses.replace(block_sizes, interpret=True)
    return _linear_scan(a, b, h0.astype(_F32), block_sizes, bool(reverse))


def linear_scan_reference(a: Array, b: Array, h0: Array | None = None, *,
                          reverse: bool = False) -> Array:
    """:func:`linear_scan` in plain ``jnp`` (a :func:`jax.lax.scan`), same signature."""
    if h0 is None:
        h0 = jnp.zeros(b.shape[1:], _F32)

    def body(h, ab):
        h = ab[0].astype(_F32) * h + ab[1].astype(_F32)
        return h, h.astype(b.dtype)

    _, hs = lax.scan(body, h0.astype(_F32), (a, b), reverse=reverse)
    return hs
