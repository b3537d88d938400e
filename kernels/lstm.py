r"""Fused LSTM: the whole time loop in one Pallas kernel, forward and backward.

The op computes what ``seqjax.recurrent._scan(LSTM(...), 1, {"w_h": w_h}, gx, carry0, lengths)``
computes, for time-major pre-projected inputs ``gx [T, B, 4H]`` (gate order i, f, g, o, input
bias already added):

.. math::
    (z_i, z_f, z_g, z_o) &= gx_t + h_{t-1} W_h \\
    i, f, o &= \sigma(z_i), \sigma(z_f), \sigma(z_o); \quad g = \tanh(z_g) \\
    c_t &= f \odot c_{t-1} + i \odot g \\
    h_t &= o \odot \tanh(c_t)

with :math:`\sigma(x) = (1 + \tanh(x/2))/2`. A step ``t >= lengths[b]`` leaves row ``b`` of the
carry unchanged and outputs zero, so the final carry is the carry at each sequence's length.

The backward recurrence, from the cotangents :math:`\bar h_t` of the outputs and
:math:`(\bar h_T, \bar c_T)` of the final carry (for steps inside the length; a padding step
passes the carry cotangent through and gives zero gate gradients):

.. math::
    \delta h &= \bar h_t + (\text{carry cotangent})_h, \quad
    \delta c = (\text{carry cotangent})_c + \delta h \odot o \odot (1 - \tanh^2 c_t) \\
    \bar z_i &= \delta c \odot g \odot i (1 - i), \quad
    \bar z_f = \delta c \odot c_{t-1} \odot f (1 - f) \\
    \bar z_g &= \delta c \odot i \odot (1 - g^2), \quad
    \bar z_o = \delta h \odot \tanh(c_t) \odot o (1 - o) \\
    \bar h_{t-1} &= \bar z W_h^\top, \quad \bar c_{t-1} = \delta c \odot f

and, outside the kernel, :math:`\bar W_h = \sum_t h_{t-1}^\top \bar z_t` as one matmul over all
steps; :math:`\bar{gx}_t = \bar z_t`.

Layout: inside the kernels gates live on their own leading axis (``gx [T, 4, B, H]``,
``w_h [4, H, H]``): the Triton lowering has no ``slice``, and on TPU a gate block is then a whole
``[block_b, H]`` tile. The wrappers relayout and zero-pad (batch to a multiple of ``block_b``,
hidden to a multiple of ``block_h``); zero padding is exact (padded units stay 0, padded rows
have length 0).

Two kernel styles, chosen by :class:`LSTMBlockSizes.platform`:

* ``"gpu"`` (Triton): the grid splits the batch; each program runs the time loop for
  ``block_b`` rows. The hidden dimension is processed in ``block_h`` tiles; the recurrent weight
  is streamed tile by tile from global memory (L2-resident) every step, the carries are written
  to the residual outputs and read back after a block-wide barrier, so any hidden size fits.
* ``"tpu"`` (Mosaic): grid ``(batch blocks, time blocks)`` with the time axis sequential
  (``"arbitrary"``); ``w_h`` sits whole in VMEM, ``h``/``c`` in VMEM scratch across grid steps,
  ``gx`` and the outputs stream through ``block_t``-step blocks that Pallas double-buffers.
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
from jax.experimental.pallas import triton as plgpu

from . import common

__all__ = ["MAX_HIDDEN", "LSTMBlockSizes", "lstm", "lstm_reference"]

Array = jax.Array
_F32 = jnp.float32

#: Largest hidden size served (the TPU kernel keeps ``w_h`` whole in VMEM).
MAX_HIDDEN = 1024
#: Supported dtypes of the recurrent weight (state and accumulation are always float32).
WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_TPU_VMEM_BUDGET = 48 * 2**20  # what default() plans for (v7x has 64 MiB per core)
_TPU_VMEM_CAP = 60 * 2**20


# ------------------------------------------------------------------------------------------
# Static choices
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LSTMBlockSizes:
    """Static kernel choices (hashable: it travels as the op's one non-differentiable argument).

    Attributes:
      platform: ``"gpu"`` (Triton kernel) or ``"tpu"`` (Mosaic kernel).
      block_b: batch rows per program (GPU: a power of two >= 16, the minimum ``tl.dot`` size;
        TPU: a multiple of 8).
      block_h: hidden tile (GPU: a power of two >= 16; TPU: the whole padded hidden size, a
        multiple of 128).
      block_t: time steps per grid step (TPU only; divides ``T``). 1 on GPU.
      num_warps, num_stages: Triton launch parameters (GPU only). ``num_stages=1`` (no software
        pipelining) by default: each step reads through global memory what the previous step
        wrote behind a barrier, and Triton's pipeliner does no alias analysis, so prefetching the
        next step's loads across that barrier would race.
      vmem_limit_bytes: Mosaic scoped-VMEM limit (TPU only; ``None``: the compiler's default).
      interpret: run in Pallas interpret mode (CPU tests); ``False`` to lower for the device.
    """

    platform: str
    block_b: int
    block_h: int
    block_t: int = 1
    num_warps: int = 4
    num_stages: int = 1
    vmem_limit_bytes: int | None = None
    interpret: bool = False

    def __post_init__(self):
        pow2 = lambda x: x > 0 and x & (x - 1) == 0  # noqa: E731
        if self.platform == common.GPU:
            for name in ("block_b", "block_h"):
                value = getattr(self, name)
                if not (pow2(value) and value >= 16):
                    raise ValueError(f"{name}={value} must be a power of two >= 16 on GPU")
            if self.block_t != 1:
                raise ValueError(f"block_t={self.block_t} must be 1 on GPU (the loop is in-kernel)")
        elif self.platform == common.TPU:
            if self.block_b <= 0 or self.block_b % 8:
                raise ValueError(f"block_b={self.block_b} must be a positive multiple of 8 on TPU")
            if self.block_h <= 0 or self.block_h % 128:
                raise ValueError(
                    f"block_h={self.block_h} must be a positive multiple of 128 on TPU")
            if self.block_t <= 0:
                raise ValueError(f"block_t={self.block_t} must be positive")
        else:
            raise ValueError(f"platform={self.platform!r} must be 'gpu' or 'tpu'")

    @classmethod
    def default(
        cls, shape: tuple[int, int, int], dtype: Any, platform: str, *, interpret: bool = False
    ) -> LSTMBlockSizes:
        """Block sizes for ``shape = (T, B, H)`` and weight ``dtype`` on ``platform``.

        ``platform`` is ``"gpu"``/``"cuda"``/``"rocm"``, ``"tpu"`` or ``"cpu"`` (the GPU-style
        kernel in interpret mode). GPU: ``block_h = min(64, next_pow2(max(H, 16)))``;
        ``block_b`` 16 up to B = 2048 (one program per SM on an H100), then 32 up to 8192, then
        64; 8 warps when a tile has more than 1024 elements. TPU: ``block_h`` is ``H`` rounded up
        to 128; ``block_b`` up to 128 rows and ``block_t`` the largest divisor of ``T`` up to 16,
        halved until the VMEM estimate fits 48 MiB.
        """
        steps, batch, hidden = (int(s) for s in shape)
        if jnp.dtype(dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"dtype={jnp.dtype(dtype)} must be float32 or bfloat16")
        style, on_cpu = common.kernel_platform(platform)
        interpret = bool(interpret or on_cpu)
        if style == common.GPU:
            block_h = min(64, common.next_pow2(max(hidden, 16)))
            block_b = 16 if batch <= 2048 else 32 if batch <= 8192 else 64
            num_warps = 4 if block_b * block_h <= 1024 else 8
            return cls(common.GPU, block_b, block_h, num_warps=num_warps, interpret=interpret)
        block_h = common.round_up(hidden, 128)
        block_b = min(common.round_up(batch, 8), 128)
        block_t = common.largest_divisor_at_most(steps, 16)
        while _tpu_vmem_bytes(block_b, 1, block_h) > _TPU_VMEM_BUDGET and block_b > 8:
            block_b = max(8, common.round_up(block_b // 2, 8))
        while _tpu_vmem_bytes(block_b, block_t, block_h) > _TPU_VMEM_BUDGET and block_t > 1:
            block_t = common.largest_divisor_at_most(steps, block_t // 2)
        need = _tpu_vmem_bytes(block_b, block_t, block_h)
        limit = min(max(32 * 2**20, int(need * 1.25) + 4 * 2**20), _TPU_VMEM_CAP)
        return cls(common.TPU, block_b, block_h, block_t, vmem_limit_bytes=limit,
                   interpret=interpret)

    def padded(self, batch: int, hidden: int) -> tuple[int, int]:
        """``(B_pad, H_pad)``: the batch and hidden sizes the kernel runs at."""
        if self.platform == common.TPU and hidden > self.block_h:
            raise ValueError(
                f"hidden={hidden} > block_h={self.block_h}: on TPU block_h is all of H")
        return common.round_up(batch, self.block_b), common.round_up(hidden, self.block_h)


def _tpu_vmem_bytes(block_b: int, block_t: int, hidden_p: int) -> int:
    """VMEM the TPU kernels need (the larger of forward and backward), double-buffered blocks."""
    tile = block_b * hidden_p * 4
    weight = 2 * 4 * hidden_p * hidden_p * 4  # f32 [4, H, H], double-buffered
    per_step = 11 * tile  # backward: acts 4 + c 1 + c_prev 1 + dhs 1 + dgates 4 (forward: 10)
    state = 10 * tile  # scratch (2), the (bb, H) in/out blocks double-buffered (8)
    return weight + 2 * block_t * per_step + state


# ------------------------------------------------------------------------------------------
# Kernel bodies
# ------------------------------------------------------------------------------------------


def _cell(z_i, z_f, z_g, z_o, c_prev):
    """One LSTM step from pre-activations: ``((i, f, g, o), c, h)``."""
    i, f, g, o = common.sigmoid(z_i), common.sigmoid(z_f), jnp.tanh(z_g), common.sigmoid(z_o)
    c = f * c_prev + i * g
    return (i, f, g, o), c, o * jnp.tanh(c)


def _cell_vjp(acts, tanh_c, c_prev, dh, dc):
    """The step's VJP without the matmul: ``((dz_i, dz_f, dz_g, dz_o), dc_prev)``."""
    i, f, g, o = acts
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dz = (dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
          dh * tanh_c * o * (1.0 - o))
    return dz, dc * f


def _fwd_kernel_gpu(len_ref, gx_ref, w_ref, h0_ref, c0_ref, hcar_ref, ccar_ref, *acts_ref,
                    steps: int, tiles: int, block_h: int, interpret: bool):
    """Triton forward for one batch block.

    Refs (one batch block): ``len [bb]``, ``gx [T, 4, bb, Hp]``, ``w [4, Hp, Hp]``,
    ``h0, c0 [bb, Hp]`` -> ``hcar, ccar [T+1, bb, Hp]`` (row ``t`` is the carry step ``t``
    reads; row 0 the initial carry), optionally ``acts [T, 4, bb, Hp]``.
    """
    acts_ref = acts_ref[0] if acts_ref else None
    barrier = common.gpu_barrier(interpret)

    def tile(n):
        return pl.ds(pl.multiple_of(n * block_h, block_h), block_h)

    def init(n, _):
        cols = tile(n)
        hcar_ref[0, :, cols] = h0_ref[:, cols]
        ccar_ref[0, :, cols] = c0_ref[:, cols]

    lax.fori_loop(0, tiles, init, None)
    barrier()
    lengths = len_ref[...]

    def step(t, _):
        live = (t < lengths)[:, None]

        def out_tile(n, _):
            cols = tile(n)

            def contract(k, z):
                rows = tile(k)
                h = hcar_ref[t, :, rows]
                return tuple(
                    z[g]
                    + jnp.dot(h, w_ref[g, rows, cols].astype(_F32), preferred_element_type=_F32)
                    for g in range(4)
                )

            z = lax.fori_loop(0, tiles, contract, tuple(gx_ref[t, g, :, cols] for g in range(4)))
            h_prev, c_prev = hcar_ref[t, :, cols], ccar_ref[t, :, cols]
            acts, c, h = _cell(*z, c_prev)
            hcar_ref[t + 1, :, cols] = jnp.where(live, h, h_prev)
            ccar_ref[t + 1, :, cols] = jnp.where(live, c, c_prev)
            if acts_ref is not None:
                for g in range(4):
                    acts_ref[t, g, :, cols] = acts[g]

        lax.fori_loop(0, tiles, out_tile, None)
        barrier()  # step t+1 reads all of h_t

    lax.fori_loop(0, steps, step, None)


def _bwd_kernel_gpu(len_ref, w_ref, acts_ref, ccar_ref, dhs_ref, dht_ref, dct_ref,
                    dz_ref, dh_ref, dc_ref, *, steps: int, tiles: int, block_h: int,
                    interpret: bool):
    """Triton backward for one batch block, reverse time.

    Refs: ``len [bb]``, ``w [4, Hp, Hp]``, ``acts [T, 4, bb, Hp]``, ``ccar [T+1, bb, Hp]``,
    ``dhs [T, bb, Hp]``, ``dht, dct [bb, Hp]`` -> ``dz [T, 4, bb, Hp]`` (gate gradients),
    ``dh, dc [2, bb, Hp]``: ping-pong carry cotangents, row ``t % 2`` holding the cotangent of
    the carry step ``t`` reads once step ``t`` is done (row 0 at the end: ``dh0, dc0``).
    """
    barrier = common.gpu_barrier(interpret)

    def tile(n):
        return pl.ds(pl.multiple_of(n * block_h, block_h), block_h)

    def init(n, _):
        cols = tile(n)
        dh_ref[steps % 2, :, cols] = dht_ref[:, cols]
        dc_ref[steps % 2, :, cols] = dct_ref[:, cols]

    lax.fori_loop(0, tiles, init, None)
    barrier()
    lengths = len_ref[...]

    def step(s, _):
        t = steps - 1 - s
        src, dst = lax.rem(t + 1, 2), lax.rem(t, 2)
        live = (t < lengths)[:, None]

        def gate_tile(n, _):
            cols = tile(n)
            dh_in, dc_in = dh_ref[src, :, cols], dc_ref[src, :, cols]
            acts = tuple(acts_ref[t, g, :, cols] for g in range(4))
            dz, dc_prev = _cell_vjp(acts, jnp.tanh(ccar_ref[t + 1, :, cols]), ccar_ref[t, :, cols],
                                    dh_in + dhs_ref[t, :, cols], dc_in)
            for g in range(4):
                dz_ref[t, g, :, cols] = jnp.where(live, dz[g], 0.0)
            dc_ref[dst, :, cols] = jnp.where(live, dc_prev, dc_in)

        lax.fori_loop(0, tiles, gate_tile, None)
        barrier()  # the matmul below reads every gate tile of step t

        def hidden_tile(n, _):
            cols = tile(n)

            def contract(k, acc):
                rows = tile(k)
                for g in range(4):
                    w = w_ref[g, cols, rows].astype(_F32)
                    acc = acc + common.dot_nt(dz_ref[t, g, :, rows], w)
                return acc

            zeros = jnp.zeros(dh_ref.shape[1:2] + (block_h,), _F32)
            dh_prev = lax.fori_loop(0, tiles, contract, zeros)
            dh_ref[dst, :, cols] = jnp.where(live, dh_prev, dh_ref[src, :, cols])

        lax.fori_loop(0, tiles, hidden_tile, None)
        barrier()  # step t-1 reads all of dh

    lax.fori_loop(0, steps, step, None)


def _fwd_kernel_tpu(len_ref, gx_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, *rest, block_t: int):
    """Mosaic forward for one (batch block, time block) grid step.

    Refs: ``len [bb, 1]``, ``gx [bt, 4, bb, Hp]``, ``w [4, Hp, Hp]`` (f32), ``h0, c0 [bb, Hp]``
    -> ``hs, cs [bt, bb, Hp]`` (carries after each step), optionally ``acts [bt, 4, bb, Hp]``;
    scratch ``h, c [bb, Hp]`` carry the state across time blocks.
    """
    *acts_ref, h_sc, c_sc = rest
    acts_ref = acts_ref[0] if acts_ref else None

    @pl.when(pl.program_id(1) == 0)
    def _():
        h_sc[...] = h0_ref[...]
        c_sc[...] = c0_ref[...]

    lengths = len_ref[...]
    t0 = pl.program_id(1) * block_t

    def step(j, carry):
        h, c = carry
        z = [gx_ref[j, g] + jnp.dot(h, w_ref[g], preferred_element_type=_F32) for g in range(4)]
        acts, c_new, h_new = _cell(*z, c)
        live = t0 + j < lengths
        h, c = jnp.where(live, h_new, h), jnp.where(live, c_new, c)
        hs_ref[j] = h
        cs_ref[j] = c
        if acts_ref is not None:
            for g in range(4):
                acts_ref[j, g] = acts[g]
        return h, c

    h, c = lax.fori_loop(0, block_t, step, (h_sc[...], c_sc[...]))
    h_sc[...] = h
    c_sc[...] = c


def _bwd_kernel_tpu(len_ref, w_ref, acts_ref, cs_ref, cprev_ref, dhs_ref, dht_ref, dct_ref,
                    dz_ref, dh0_ref, dc0_ref, dh_sc, dc_sc, *, block_t: int, time_blocks: int):
    """Mosaic backward for one (batch block, time block) grid step; time blocks run last to
    first (the index maps reverse them), steps inside a block likewise.

    Refs: ``len [bb, 1]``, ``w [4, Hp, Hp]``, ``acts [bt, 4, bb, Hp]``, ``cs, cprev, dhs
    [bt, bb, Hp]``, ``dht, dct [bb, Hp]`` -> ``dz [bt, 4, bb, Hp]``, ``dh0, dc0 [bb, Hp]``;
    scratch ``dh, dc [bb, Hp]``.
    """
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
        dh_sc[...] = dht_ref[...]
        dc_sc[...] = dct_ref[...]

    lengths = len_ref[...]
    t0 = (time_blocks - 1 - s) * block_t

    def step(jj, carry):
        dh, dc = carry
        j = block_t - 1 - jj
        acts = tuple(acts_ref[j, g] for g in range(4))
        dz, dc_prev = _cell_vjp(acts, jnp.tanh(cs_ref[j]), cprev_ref[j], dh + dhs_ref[j], dc)
        live = t0 + j < lengths
        dz = [jnp.where(live, d, 0.0) for d in dz]
        for g in range(4):
            dz_ref[j, g] = dz[g]
        dh_prev = common.dot_nt(dz[0], w_ref[0])
        for g in range(1, 4):
            dh_prev = dh_prev + common.dot_nt(dz[g], w_ref[g])
        return jnp.where(live, dh_prev, dh), jnp.where(live, dc_prev, dc)

    dh, dc = lax.fori_loop(0, block_t, step, (dh_sc[...], dc_sc[...]))
    dh_sc[...] = dh
    dc_sc[...] = dc
    dh0_ref[...] = dh
    dc0_ref[...] = dc


# ------------------------------------------------------------------------------------------
# pallas_call wrappers
# ------------------------------------------------------------------------------------------


def _check_args(w_h, gx, carry0, lengths):
    if gx.ndim != 3 or gx.shape[-1] % 4:
        raise ValueError(f"gx.shape={tuple(gx.shape)} must be [T, B, 4H]")
    steps, batch, gates = gx.shape
    hidden = gates // 4
    if tuple(w_h.shape) != (hidden, gates):
        raise ValueError(
            f"w_h.shape={tuple(w_h.shape)} must be ({hidden}, {gates}) for gx {gx.shape}")
    if jnp.dtype(w_h.dtype) not in WEIGHT_DTYPES:
        raise TypeError(f"w_h.dtype={w_h.dtype} must be float32 or bfloat16")
    if gx.dtype != _F32:
        raise TypeError(f"gx.dtype={gx.dtype} must be float32 (state and accumulation are float32)")
    h0, c0 = carry0
    for name, x in (("h0", h0), ("c0", c0)):
        if tuple(x.shape) != (batch, hidden) or x.dtype != _F32:
            raise ValueError(
                f"carry0 {name}: {x.shape} {x.dtype} must be ({batch}, {hidden}) float32")
    if lengths is not None and tuple(jnp.shape(lengths)) != (batch,):
        raise ValueError(f"lengths.shape={tuple(jnp.shape(lengths))} must be ({batch},)")
    if steps == 0 or batch == 0:
        raise ValueError(f"gx.shape={tuple(gx.shape)}: T and B must be positive")


def _kernel_weights(bs: LSTMBlockSizes, w_h: Array, hidden_p: int) -> Array:
    """``w_h [H, 4H]`` -> ``[4, Hp, Hp]`` (``w[k] = w_h[:, kH:(k+1)H]``), f32 on TPU."""
    hidden = w_h.shape[0]
    w = w_h.reshape(hidden, 4, hidden).transpose(1, 0, 2)
    w = jnp.pad(w, ((0, 0), (0, hidden_p - hidden), (0, hidden_p - hidden)))
    return w.astype(_F32) if bs.platform == common.TPU else w


def _fwd_call(bs: LSTMBlockSizes, steps: int, batch_p: int, hidden_p: int, save: bool):
    """The forward ``pallas_call``: ``(len, gx4, w4, h0, c0) -> (hcar, ccar[, acts])`` on GPU,
    ``-> (hs, cs[, acts])`` on TPU (see the kernels for shapes)."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    name = "seqjax_lstm_fwd" + ("_res" if save else "")
    if bs.platform == common.GPU:
        kernel = functools.partial(_fwd_kernel_gpu, steps=steps, tiles=hidden_p // bs.block_h,
                                   block_h=bs.block_h, interpret=bs.interpret)
        out_shape = [f32(steps + 1, batch_p, hidden_p)] * 2
        out_specs = [pl.BlockSpec((steps + 1, bb, hidden_p), lambda b: (0, b, 0))] * 2
        if save:
            out_shape.append(f32(steps, 4, batch_p, hidden_p))
            out_specs.append(pl.BlockSpec((steps, 4, bb, hidden_p), lambda b: (0, 0, b, 0)))
        return pl.pallas_call(
            kernel,
            grid=(batch_p // bb,),
            in_specs=[
                pl.BlockSpec((bb,), lambda b: (b,)),
                pl.BlockSpec((steps, 4, bb, hidden_p), lambda b: (0, 0, b, 0)),
                pl.BlockSpec((4, hidden_p, hidden_p), lambda b: (0, 0, 0)),
                pl.BlockSpec((bb, hidden_p), lambda b: (b, 0)),
                pl.BlockSpec((bb, hidden_p), lambda b: (b, 0)),
            ],
            out_specs=out_specs,
            out_shape=out_shape,
            compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
            interpret=interpret,
            name=name,
        )
    bt = bs.block_t
    kernel = functools.partial(_fwd_kernel_tpu, block_t=bt)
    out_shape = [f32(steps, batch_p, hidden_p)] * 2
    out_specs = [pl.BlockSpec((bt, bb, hidden_p), lambda b, s: (s, b, 0))] * 2
    if save:
        out_shape.append(f32(steps, 4, batch_p, hidden_p))
        out_specs.append(pl.BlockSpec((bt, 4, bb, hidden_p), lambda b, s: (s, 0, b, 0)))
    return pl.pallas_call(
        kernel,
        grid=(batch_p // bb, steps // bt),
        in_specs=[
            pl.BlockSpec((bb, 1), lambda b, s: (b, 0)),
            pl.BlockSpec((bt, 4, bb, hidden_p), lambda b, s: (s, 0, b, 0)),
            pl.BlockSpec((4, hidden_p, hidden_p), lambda b, s: (0, 0, 0)),
            pl.BlockSpec((bb, hidden_p), lambda b, s: (b, 0)),
            pl.BlockSpec((bb, hidden_p), lambda b, s: (b, 0)),
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((bb, hidden_p), _F32)] * 2,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=bs.vmem_limit_bytes
        ),
        interpret=interpret,
        name=name,
    )


def _bwd_call(bs: LSTMBlockSizes, steps: int, batch_p: int, hidden_p: int):
    """The backward ``pallas_call``. GPU: ``(len, w4, acts, ccar, dhs, dhT, dcT) -> (dz, dh, dc)``
    with ping-pong ``dh, dc [2, Bp, Hp]``; TPU: ``(len, w4, acts, cs, cprev, dhs, dhT, dcT)
    -> (dz, dh0, dc0)``."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    if bs.platform == common.GPU:
        kernel = functools.partial(_bwd_kernel_gpu, steps=steps, tiles=hidden_p // bs.block_h,
                                   block_h=bs.block_h, interpret=bs.interpret)
        seq = lambda n: pl.BlockSpec((n, bb, hidden_p), lambda b: (0, b, 0))  # noqa: E731
        gates = pl.BlockSpec((steps, 4, bb, hidden_p), lambda b: (0, 0, b, 0))
        state = pl.BlockSpec((bb, hidden_p), lambda b: (b, 0))
        return pl.pallas_call(
            kernel,
            grid=(batch_p // bb,),
            in_specs=[
                pl.BlockSpec((bb,), lambda b: (b,)),
                pl.BlockSpec((4, hidden_p, hidden_p), lambda b: (0, 0, 0)),
                gates, seq(steps + 1), seq(steps), state, state,
            ],
            out_specs=[gates, seq(2), seq(2)],
            out_shape=[f32(steps, 4, batch_p, hidden_p), f32(2, batch_p, hidden_p),
                       f32(2, batch_p, hidden_p)],
            compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
            interpret=interpret,
            name="seqjax_lstm_bwd",
        )
    bt, nt = bs.block_t, steps // bs.block_t
    kernel = functools.partial(_bwd_kernel_tpu, block_t=bt, time_blocks=nt)
    seq = pl.BlockSpec((bt, bb, hidden_p), lambda b, s: (nt - 1 - s, b, 0))
    gates = pl.BlockSpec((bt, 4, bb, hidden_p), lambda b, s: (nt - 1 - s, 0, b, 0))
    state = pl.BlockSpec((bb, hidden_p), lambda b, s: (b, 0))
    return pl.pallas_call(
        kernel,
        grid=(batch_p // bb, nt),
        in_specs=[
            pl.BlockSpec((bb, 1), lambda b, s: (b, 0)),
            pl.BlockSpec((4, hidden_p, hidden_p), lambda b, s: (0, 0, 0)),
            gates, seq, seq, seq, state, state,
        ],
        out_specs=[gates, state, state],
        out_shape=[f32(steps, 4, batch_p, hidden_p), f32(batch_p, hidden_p),
                   f32(batch_p, hidden_p)],
        scratch_shapes=[pltpu.VMEM((bb, hidden_p), _F32)] * 2,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=bs.vmem_limit_bytes
        ),
        interpret=interpret,
        name="seqjax_lstm_bwd",
    )


def _fwd(w_h, gx, carry0, lengths, block_sizes: LSTMBlockSizes, save: bool = True):
    """Forward: relayout, run the kernel, unpad. Returns ``((hs, (h_T, c_T)), residuals)``."""
    bs = block_sizes
    _check_args(w_h, gx, carry0, lengths)
    steps, batch, gates = gx.shape
    hidden = gates // 4
    if bs.platform == common.TPU and steps % bs.block_t:
        raise ValueError(f"block_t={bs.block_t} must divide T={steps}")
    batch_p, hidden_p = bs.padded(batch, hidden)
    lens = jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    lens = jnp.pad(lens, (0, batch_p - batch))  # padding rows: length 0
    gates_first = gx.reshape(steps, batch, 4, hidden).transpose(0, 2, 1, 3)
    gx4 = common.pad_bh(gates_first, batch_p, hidden_p)
    w4 = _kernel_weights(bs, w_h, hidden_p)
    h0, c0 = (common.pad_bh(x, batch_p, hidden_p) for x in carry0)
    call = _fwd_call(bs, steps, batch_p, hidden_p, save)
    if bs.platform == common.GPU:
        hcar, ccar, *acts = call(lens, gx4, w4, h0, c0)
    else:
        hs, cs, *acts = call(lens[:, None], gx4, w4, h0, c0)
        hcar, ccar = jnp.concatenate([h0[None], hs]), jnp.concatenate([c0[None], cs])
    live = (jnp.arange(steps)[:, None] < lens[None, :batch])[..., None]
    hs = jnp.where(live, hcar[1:, :batch, :hidden], 0.0)
    out = (hs, (hcar[steps, :batch, :hidden], ccar[steps, :batch, :hidden]))
    return out, ((w_h, lens, hcar, ccar, acts[0]) if save else None)


def _bwd(block_sizes: LSTMBlockSizes, res, cts):
    """Backward: the reverse-time kernel gives the gate gradients and ``(dh0, dc0)``;
    ``dW_h = sum_t h_{t-1}^T dz_t`` is one einsum over all steps."""
    bs = block_sizes
    w_h, lens, hcar, ccar, acts = res
    dhs, (dht, dct) = cts
    steps, batch, hidden = dhs.shape
    batch_p, hidden_p = hcar.shape[1:]
    w4 = _kernel_weights(bs, w_h, hidden_p)
    dhs_p, dht_p, dct_p = (common.pad_bh(x.astype(_F32), batch_p, hidden_p)
                           for x in (dhs, dht, dct))
    call = _bwd_call(bs, steps, batch_p, hidden_p)
    if bs.platform == common.GPU:
        dz, dh, dc = call(lens, w4, acts, ccar, dhs_p, dht_p, dct_p)
        dh0, dc0 = dh[0], dc[0]
    else:
        dz, dh0, dc0 = call(lens[:, None], w4, acts, ccar[1:], ccar[:-1], dhs_p, dht_p, dct_p)
    dz = dz[:, :, :batch, :hidden]  # [T, 4, B, H]
    dgx = dz.transpose(0, 2, 1, 3).reshape(steps, batch, 4 * hidden)
    dw = jnp.einsum("tbh,tkbj->hkj", hcar[:-1, :batch, :hidden], dz, preferred_element_type=_F32)
    dw = dw.reshape(hidden, 4 * hidden).astype(w_h.dtype)
    return dw, dgx, (dh0[:batch, :hidden], dc0[:batch, :hidden]), None


# ------------------------------------------------------------------------------------------
# The public op
# ------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm(w_h: Array, gx: Array, carry0: tuple[Array, Array], lengths: Array | None,
         block_sizes: LSTMBlockSizes) -> tuple[Array, tuple[Array, Array]]:
    """Run an LSTM over time-major pre-projected inputs in one fused kernel.

    Args:
      w_h: recurrent weight ``[H, 4H]``, float32 or bfloat16 (used in float32), gates i, f, g, o.
      gx: input pre-activations ``[T, B, 4H]`` float32 (``x_t W_x + b``), ``T, B >= 1``.
      carry0: ``(h0, c0)``, each ``[B, H]`` float32.
      lengths: ``[B]`` ints in ``[0, T]``, or ``None`` (all ``T``).
      block_sizes: static kernel choices (:meth:`LSTMBlockSizes.default`).

    Returns:
      ``(hs [T, B, H], (h_T, c_T))`` float32: ``hs`` zero at ``t >= lengths[b]``, the final carry
      the carry at each length. Differentiable w.r.t. ``w_h``, ``gx`` and ``carry0``.
    """
    return _fwd(w_h, gx, carry0, lengths, block_sizes, save=False)[0]


lstm.defvjp(_fwd, _bwd)


def lstm_reference(w_h: Array, gx: Array, carry0: tuple[Array, Array], lengths: Array | None,
                   block_sizes: LSTMBlockSizes | None = None) -> tuple[Array, tuple[Array, Array]]:
    """:func:`lstm` in plain ``jnp`` (a ``lax.scan``; ``block_sizes`` is ignored)."""
    del block_sizes
    steps, batch, gates = gx.shape
    hidden = gates // 4
    w = w_h.astype(_F32)
    lens = jnp.full((batch,), steps, jnp.int32) if lengths is None else jnp.asarray(lengths)

    def body(carry, inp):
        t, gx_t = inp
        h, c = carry
        z = gx_t + jnp.dot(h, w, preferred_element_type=_F32)
        _, c_new, h_new = _cell(*(z[:, k * hidden:(k + 1) * hidden] for k in range(4)), c)
        live = (t < lens)[:, None]
        h, c = jnp.where(live, h_new, h), jnp.where(live, c_new, c)
        return (h, c), jnp.where(live, h, 0.0)

    carry, hs = lax.scan(body, tuple(jnp.asarray(x, _F32) for x in carry0),
                         (jnp.arange(steps), gx.astype(_F32)))
    return hs, carry
