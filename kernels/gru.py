r"""Fused GRU: the whole time loop in one Pallas kernel, forward and backward, both reset variants.

The op computes what ``seqjax.recurrent._scan(GRU(..., reset=...), 1, ...)`` computes for
time-major pre-projected inputs ``gx [T, B, 3H]`` (gate order r, z, n; input bias ``b_x`` already
added) and the recurrent params ``w_h [H, 3H]``, ``b_h [3H]``:

.. math::
    r &= \sigma(gx_r + h_{t-1} W_{hr} + b_{hr}), \quad
    z = \sigma(gx_z + h_{t-1} W_{hz} + b_{hz}) \\
    n &= \tanh(gx_n + r \odot (h_{t-1} W_{hn} + b_{hn}))
        \quad \text{(reset="after": cuDNN, PyTorch)} \\
    n &= \tanh(gx_n + (r \odot h_{t-1}) W_{hn} + b_{hn})
        \quad \text{(reset="before": Cho et al. 2014)} \\
    h_t &= (1 - z) \odot n + z \odot h_{t-1}

with :math:`\sigma(x) = (1 + \tanh(x/2))/2`. A step ``t >= lengths[b]`` leaves row ``b`` of
the state unchanged and outputs zero, so the final state is the state at each sequence's length.

The backward recurrence, from the cotangents :math:`\bar h_t` of the outputs and :math:`\bar h_T`
of the final state (:math:`\delta h = \bar h_t + \text{carry cotangent}` inside the length; a
padding step passes the carry cotangent through and gives zero gate gradients):

.. math::
    \bar a_n &= \delta h \odot (1 - z) \odot (1 - n^2), \quad
    \bar a_z = \delta h \odot (h_{t-1} - n) \odot z (1 - z) \\
    \text{after:}\quad \bar a_r &= \bar a_n \odot (h_{t-1} W_{hn} + b_{hn}) \odot r (1 - r),
    \quad \bar h_{t-1} = \delta h \odot z + [\bar a_r, \bar a_z, \bar a_n \odot r] W_h^\top \\
    \text{before:}\quad \bar{(rh)} &= \bar a_n W_{hn}^\top, \quad
    \bar a_r = \bar{(rh)} \odot h_{t-1} \odot r (1 - r), \\
    \bar h_{t-1} &= \delta h \odot z + \bar{(rh)} \odot r + [\bar a_r, \bar a_z]
    [W_{hr}, W_{hz}]^\top

where :math:`\bar a = \bar{gx}_t` are the gradients of the gate pre-activations. Outside the
kernel, as one matmul over all steps: after, :math:`\bar W_h = \sum_t h_{t-1}^\top
[\bar a_r, \bar a_z, \bar a_n \odot r]` and :math:`\bar b_h` the sum of the same rows; before,
:math:`\bar W_{h\{r,z\}} = \sum_t h_{t-1}^\top [\bar a_r, \bar a_z]`,
:math:`\bar W_{hn} = \sum_t (r \odot h_{t-1})^\top \bar a_n` and :math:`\bar b_h = \sum_t \bar a`.

Layout: inside the kernels gates live on their own leading axis (``gx [T, 3, B, H]``,
``w_h [3, H, H]``): the Triton lowering has no ``slice``, and on TPU a gate block is then a whole
``[block_b, H]`` tile. ``b_hr`` and ``b_hz`` are folded into ``gx`` by the wrapper; ``b_hn`` goes
into the kernel (for "after" it sits inside the reset product). The wrappers relayout and
zero-pad (batch to a multiple of ``block_b``, hidden to a multiple of ``block_h``); zero padding
is exact (padded units stay 0, padded rows have length 0). The forward saves ``(r, z, n)`` and,
for "after", :math:`h_{t-1} W_{hn} + b_{hn}` as a fourth "gate", plus the states.

Two kernel styles, chosen by :class:`GRUBlockSizes.platform`:

* ``"gpu"`` (Triton): the grid splits the batch; each program runs the time loop for ``block_b``
  rows, ``block_h`` hidden tiles at a time, streaming the recurrent weight tile by tile from
  global memory (L2-resident) every step. A step is one phase for "after"; for "before" two (r and
  z, then n, which needs all of :math:`r \odot h_{t-1}`), and values that cross tiles go through
  global memory behind a block-wide barrier. The backward has two phases ("after") or three.
* ``"tpu"`` (Mosaic): grid ``(batch blocks, time blocks)`` with the time axis sequential
  (``"arbitrary"``); ``w_h`` sits whole in VMEM, ``h`` in VMEM scratch across grid steps, ``gx``
  and the outputs stream through ``block_t``-step blocks that Pallas double-buffers.
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

__all__ = ["MAX_HIDDEN", "RESETS", "GRUBlockSizes", "gru", "gru_reference"]

Array = jax.Array
_F32 = jnp.float32

#: Largest hidden size served (the TPU kernel keeps ``w_h`` whole in VMEM).
MAX_HIDDEN = 1024
#: The reset variants: ``"after"`` (cuDNN/PyTorch) and ``"before"`` (Cho et al. 2014).
RESETS = ("after", "before")
#: Supported dtypes of the recurrent params (state and accumulation are always float32).
WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_TPU_VMEM_BUDGET = 48 * 2**20  # what default() plans for (v7x has 64 MiB per core)
_TPU_VMEM_CAP = 60 * 2**20

_sigmoid = common.sigmoid
_dot_nt = common.dot_nt


# ------------------------------------------------------------------------------------------
# Static choices
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRUBlockSizes:
    """Static kernel choices (hashable: it travels as the op's one non-differentiable argument).

    Attributes:
      platform: ``"gpu"`` (Triton kernel) or ``"tpu"`` (Mosaic kernel).
      block_b: batch rows per program (GPU: a power of two >= 16, the minimum ``tl.dot`` size;
        TPU: a multiple of 8).
      block_h: hidden tile (GPU: a power of two >= 16; TPU: the whole padded hidden size, a
        multiple of 128).
      reset: ``"after"`` (cuDNN/PyTorch) or ``"before"`` (Cho et al.); see the module docstring.
      block_t: time steps per grid step (TPU only; divides ``T``). 1 on GPU.
      num_warps, num_stages: Triton launch parameters (GPU only). ``num_stages=1`` (no software
        pipelining): each step reads through global memory what the previous phase wrote behind
        a barrier, and Triton's pipeliner does no alias analysis.
      vmem_limit_bytes: Mosaic scoped-VMEM limit (TPU only; ``None``: the compiler's default).
      interpret: run in Pallas interpret mode (CPU tests); ``False`` to lower for the device.
    """

    platform: str
    block_b: int
    block_h: int
    reset: str = "after"
    block_t: int = 1
    num_warps: int = 4
    num_stages: int = 1
    vmem_limit_bytes: int | None = None
    interpret: bool = False

    def __post_init__(self):
        common.check_block_sizes(self.platform, self.block_b, self.block_h, self.block_t)
        if self.reset not in RESETS:
            raise ValueError(f"reset={self.reset!r} must be 'after' or 'before'")

    @property
    def saved_gates(self) -> int:
        """Rows of the saved activations: ``(r, z, n, h W_hn + b_hn)`` for "after",
        ``(r, z, n)`` for "before"."""
        return 4 if self.reset == "after" else 3

    @classmethod
    def default(
        cls, shape: tuple[int, int, int], dtype: Any, platform: str, *, reset: str = "after",
        interpret: bool = False,
    ) -> GRUBlockSizes:
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
            return cls(common.GPU, block_b, block_h, reset, num_warps=num_warps,
                       interpret=interpret)
        block_h = common.round_up(hidden, 128)
        block_b = min(common.round_up(batch, 8), 128)
        block_t = common.largest_divisor_at_most(steps, 16)
        while _tpu_vmem_bytes(block_b, 1, block_h) > _TPU_VMEM_BUDGET and block_b > 8:
            block_b = max(8, common.round_up(block_b // 2, 8))
        while _tpu_vmem_bytes(block_b, block_t, block_h) > _TPU_VMEM_BUDGET and block_t > 1:
            block_t = common.largest_divisor_at_most(steps, block_t // 2)
        need = _tpu_vmem_bytes(block_b, block_t, block_h)
        limit = min(max(32 * 2**20, int(need * 1.25) + 4 * 2**20), _TPU_VMEM_CAP)
        return cls(common.TPU, block_b, block_h, reset, block_t, vmem_limit_bytes=limit,
                   interpret=interpret)

    def padded(self, batch: int, hidden: int) -> tuple[int, int]:
        """``(B_pad, H_pad)``: the batch and hidden sizes the kernel runs at."""
        if self.platform == common.TPU and hidden > self.block_h:
            raise ValueError(
                f"hidden={hidden} > block_h={self.block_h}: on TPU block_h is all of H")
        return common.round_up(batch, self.block_b), common.round_up(hidden, self.block_h)


def _tpu_vmem_bytes(block_b: int, block_t: int, hidden_p: int) -> int:
    """VMEM the TPU kernels need (the larger of forward and backward, either variant),
    double-buffered blocks."""
    tile = block_b * hidden_p * 4
    weight = 2 * 3 * hidden_p * hidden_p * 4  # f32 [3, H, H], double-buffered
    per_step = 9 * tile  # backward: acts 4 + h_prev 1 + dhs 1 + dgx 3 (forward: 8)
    state = 8 * tile  # scratch (1), b_hn, the (bb, H) in/out blocks double-buffered
    return weight + 2 * block_t * per_step + state


# ------------------------------------------------------------------------------------------
# Kernel bodies
# ------------------------------------------------------------------------------------------


def _new_state(n: Array, z: Array, h_prev: Array) -> Array:
    """:math:`(1 - z) n + z h_{t-1}`, written as the scan backend writes it."""
    return n + z * (h_prev - n)


def _pointwise_vjp(dh: Array, z: Array, n: Array, h_prev: Array) -> tuple[Array, Array]:
    """``(da_n, da_z)``: the gate gradients that need no matmul (both variants)."""
    da_n = dh * (1.0 - z) * (1.0 - n * n)
    da_z = dh * (h_prev - n) * z * (1.0 - z)
    return da_n, da_z


def _fwd_kernel_gpu(len_ref, gx_ref, w_ref, b_ref, h0_ref, hcar_ref, *rest, steps: int,
                    tiles: int, block_h: int, reset: str, save: bool, interpret: bool):
    """Triton forward for one batch block.

    Refs (one batch block): ``len [bb]``, ``gx [T, 3, bb, Hp]`` (``b_hr``, ``b_hz`` folded in),
    ``w [3, Hp, Hp]``, ``b [Hp]`` (``b_hn``), ``h0 [bb, Hp]`` -> ``hcar [T+1, bb, Hp]`` (row
    ``t`` is the state step ``t`` reads; row 0 the initial state), for "before" ``tmp [2, bb,
    Hp]`` (``r * h_{t-1}`` and ``z`` of the current step, shared across tiles), optionally
    ``acts [T, G, bb, Hp]`` (``G = 4`` after, 3 before).
    """
    rest = list(rest)
    tmp_ref = rest.pop(0) if reset == "before" else None
    acts_ref = rest.pop(0) if save else None
    barrier = common.gpu_barrier(interpret)
    bb = h0_ref.shape[0]

    def tile(n):
        return pl.ds(pl.multiple_of(n * block_h, block_h), block_h)

    def init(n, _):
        cols = tile(n)
        hcar_ref[0, :, cols] = h0_ref[:, cols]

    lax.fori_loop(0, tiles, init, None)
    barrier()
    lengths = len_ref[...]
    zeros = jnp.zeros((bb, block_h), _F32)

    def contract(src_ref, src_idx, gates, cols):
        """``sum_k src[:, k-tile] @ w[g, k-tile, cols]`` for each gate ``g`` in ``gates``."""

        def body(k, acc):
            rows = tile(k)
            x = src_ref[src_idx + (slice(None), rows)]
            return tuple(a + jnp.dot(x, w_ref[g, rows, cols].astype(_F32),
                                     preferred_element_type=_F32)
                         for a, g in zip(acc, gates))

        return lax.fori_loop(0, tiles, body, (zeros,) * len(gates))

    def step_after(t, live):
        def out_tile(j, _):
            cols = tile(j)
            hr, hz, hn = contract(hcar_ref, (t,), (0, 1, 2), cols)
            hn = hn + b_ref[cols][None, :]
            r = _sigmoid(gx_ref[t, 0, :, cols] + hr)
            z = _sigmoid(gx_ref[t, 1, :, cols] + hz)
            n = jnp.tanh(gx_ref[t, 2, :, cols] + r * hn)
            h_prev = hcar_ref[t, :, cols]
            hcar_ref[t + 1, :, cols] = jnp.where(live, _new_state(n, z, h_prev), h_prev)
            if acts_ref is not None:
                for g, a in enumerate((r, z, n, hn)):
                    acts_ref[t, g, :, cols] = a

        lax.fori_loop(0, tiles, out_tile, None)

    def step_before(t, live):
        def gate_tile(j, _):  # phase 1: r, z; publish r * h_{t-1} and z
            cols = tile(j)
            hr, hz = contract(hcar_ref, (t,), (0, 1), cols)
            r = _sigmoid(gx_ref[t, 0, :, cols] + hr)
            z = _sigmoid(gx_ref[t, 1, :, cols] + hz)
            tmp_ref[0, :, cols] = r * hcar_ref[t, :, cols]
            tmp_ref[1, :, cols] = z
            if acts_ref is not None:
                acts_ref[t, 0, :, cols] = r
                acts_ref[t, 1, :, cols] = z

        lax.fori_loop(0, tiles, gate_tile, None)
        barrier()  # phase 2 reads all of r * h_{t-1}

        def out_tile(j, _):  # phase 2: n from (r * h_{t-1}) W_hn, then h_t
            cols = tile(j)
            (rhn,) = contract(tmp_ref, (0,), (2,), cols)
            n = jnp.tanh(gx_ref[t, 2, :, cols] + rhn + b_ref[cols][None, :])
            h_prev = hcar_ref[t, :, cols]
            hcar_ref[t + 1, :, cols] = jnp.where(live, _new_state(n, tmp_ref[1, :, cols], h_prev),
                                                 h_prev)
            if acts_ref is not None:
                acts_ref[t, 2, :, cols] = n

        lax.fori_loop(0, tiles, out_tile, None)

    def step(t, _):
        live = (t < lengths)[:, None]
        (step_after if reset == "after" else step_before)(t, live)
        barrier()  # step t+1 reads all of h_t (and overwrites tmp)

    lax.fori_loop(0, steps, step, None)


def _bwd_kernel_gpu(len_ref, w_ref, acts_ref, hcar_ref, dhs_ref, dht_ref, dgx_ref, dh_ref, *,
                    steps: int, tiles: int, block_h: int, reset: str, interpret: bool):
    """Triton backward for one batch block, reverse time.

    Refs: ``len [bb]``, ``w [3, Hp, Hp]``, ``acts [T, G, bb, Hp]``, ``hcar [T+1, bb, Hp]``,
    ``dhs [T, bb, Hp]``, ``dht [bb, Hp]`` -> ``dgx [T, 3, bb, Hp]`` (gate pre-activation
    gradients ``da``), ``dh [R, bb, Hp]``: rows 0 and 1 ping-pong state cotangents, row ``t % 2``
    holding the cotangent of the state step ``t`` reads once step ``t`` is done (row 0 at the
    end: ``dh0``); for "before" row 2 holds ``(da_n W_hn^T) * r`` between phases.
    """
    barrier = common.gpu_barrier(interpret)
    bb = dht_ref.shape[0]

    def tile(n):
        return pl.ds(pl.multiple_of(n * block_h, block_h), block_h)

    def init(n, _):
        cols = tile(n)
        dh_ref[steps % 2, :, cols] = dht_ref[:, cols]

    lax.fori_loop(0, tiles, init, None)
    barrier()
    lengths = len_ref[...]
    zeros = jnp.zeros((bb, block_h), _F32)

    def contract_t(t, gates, cols, scale_n=False):
        """``sum_k sum_g dgx[t, g][:, k-tile] @ w[g, cols, k-tile]^T`` (the n-gate rows times
        ``r`` when ``scale_n``)."""

        def body(k, acc):
            rows = tile(k)
            for g in gates:
                dz = dgx_ref[t, g, :, rows]
                if scale_n and g == 2:
                    dz = dz * acts_ref[t, 0, :, rows]
                acc = acc + _dot_nt(dz, w_ref[g, cols, rows].astype(_F32))
            return acc

        return lax.fori_loop(0, tiles, body, zeros)

    def pointwise_tile(t, src, live):
        def body(j, _):  # phase 1: da_z, da_n (and da_r for "after")
            cols = tile(j)
            dh = dh_ref[src, :, cols] + dhs_ref[t, :, cols]
            z, n = acts_ref[t, 1, :, cols], acts_ref[t, 2, :, cols]
            da_n, da_z = _pointwise_vjp(dh, z, n, hcar_ref[t, :, cols])
            dgx_ref[t, 1, :, cols] = jnp.where(live, da_z, 0.0)
            dgx_ref[t, 2, :, cols] = jnp.where(live, da_n, 0.0)
            if reset == "after":
                r, hn = acts_ref[t, 0, :, cols], acts_ref[t, 3, :, cols]
                dgx_ref[t, 0, :, cols] = jnp.where(live, da_n * hn * r * (1.0 - r), 0.0)

        lax.fori_loop(0, tiles, body, None)

    def finish_tile(t, src, dst, live, gates, scale_n, extra):
        def body(j, _):  # last phase: dh_{t-1} = dh z (+ extra) + matmul
            cols = tile(j)
            dh_src = dh_ref[src, :, cols]
            dh = (dh_src + dhs_ref[t, :, cols]) * acts_ref[t, 1, :, cols]
            if extra:
                dh = dh + dh_ref[2, :, cols]
            dh = dh + contract_t(t, gates, cols, scale_n)
            dh_ref[dst, :, cols] = jnp.where(live, dh, dh_src)

        lax.fori_loop(0, tiles, body, None)

    def step(s, _):
        t = steps - 1 - s
        src, dst = lax.rem(t + 1, 2), lax.rem(t, 2)
        live = (t < lengths)[:, None]
        pointwise_tile(t, src, live)
        barrier()  # the matmuls below read every gate tile of step t
        if reset == "after":
            finish_tile(t, src, dst, live, (0, 1, 2), True, False)
        else:

            def reset_tile(j, _):  # phase 2: d(r h) = da_n W_hn^T, then da_r
                cols = tile(j)
                drh = contract_t(t, (2,), cols)
                r = acts_ref[t, 0, :, cols]
                da_r = drh * hcar_ref[t, :, cols] * r * (1.0 - r)
                dgx_ref[t, 0, :, cols] = jnp.where(live, da_r, 0.0)
                dh_ref[2, :, cols] = drh * r

            lax.fori_loop(0, tiles, reset_tile, None)
            barrier()  # phase 3 reads every da_r tile
            finish_tile(t, src, dst, live, (0, 1), False, True)
        barrier()  # step t-1 reads all of dh

    lax.fori_loop(0, steps, step, None)


def _fwd_kernel_tpu(len_ref, gx_ref, w_ref, b_ref, h0_ref, hs_ref, *rest, block_t: int,
                    reset: str):
    """Mosaic forward for one (batch block, time block) grid step.

    Refs: ``len [bb, 1]``, ``gx [bt, 3, bb, Hp]``, ``w [3, Hp, Hp]`` (f32), ``b [1, Hp]``
    (``b_hn``), ``h0 [bb, Hp]`` -> ``hs [bt, bb, Hp]`` (states after each step), optionally
    ``acts [bt, G, bb, Hp]``; scratch ``h [bb, Hp]`` carries the state across time blocks.
    """
    *acts_ref, h_sc = rest
    acts_ref = acts_ref[0] if acts_ref else None

    @pl.when(pl.program_id(1) == 0)
    def _():
        h_sc[...] = h0_ref[...]

    lengths = len_ref[...]
    b = b_ref[...]
    t0 = pl.program_id(1) * block_t

    def step(j, h):
        r = _sigmoid(gx_ref[j, 0] + jnp.dot(h, w_ref[0], preferred_element_type=_F32))
        z = _sigmoid(gx_ref[j, 1] + jnp.dot(h, w_ref[1], preferred_element_type=_F32))
        if reset == "after":
            hn = jnp.dot(h, w_ref[2], preferred_element_type=_F32) + b
            n = jnp.tanh(gx_ref[j, 2] + r * hn)
            acts = (r, z, n, hn)
        else:
            n = jnp.tanh(gx_ref[j, 2] + jnp.dot(r * h, w_ref[2], preferred_element_type=_F32) + b)
            acts = (r, z, n)
        h = jnp.where(t0 + j < lengths, _new_state(n, z, h), h)
        hs_ref[j] = h
        if acts_ref is not None:
            for g, a in enumerate(acts):
                acts_ref[j, g] = a
        return h

    h_sc[...] = lax.fori_loop(0, block_t, step, h_sc[...])


def _bwd_kernel_tpu(len_ref, w_ref, acts_ref, hprev_ref, dhs_ref, dht_ref, dgx_ref, dh0_ref,
                    dh_sc, *, block_t: int, time_blocks: int, reset: str):
    """Mosaic backward for one (batch block, time block) grid step; time blocks run last to
    first (the index maps reverse them), steps inside a block likewise.

    Refs: ``len [bb, 1]``, ``w [3, Hp, Hp]``, ``acts [bt, G, bb, Hp]``, ``hprev, dhs
    [bt, bb, Hp]``, ``dht [bb, Hp]`` -> ``dgx [bt, 3, bb, Hp]``, ``dh0 [bb, Hp]``; scratch
    ``dh [bb, Hp]``.
    """
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
        dh_sc[...] = dht_ref[...]

    lengths = len_ref[...]
    t0 = (time_blocks - 1 - s) * block_t

    def step(jj, dh_carry):
        j = block_t - 1 - jj
        live = t0 + j < lengths
        dh = dh_carry + dhs_ref[j]
        r, z, n = acts_ref[j, 0], acts_ref[j, 1], acts_ref[j, 2]
        h_prev = hprev_ref[j]
        da_n, da_z = _pointwise_vjp(dh, z, n, h_prev)
        da_n, da_z = jnp.where(live, da_n, 0.0), jnp.where(live, da_z, 0.0)
        dh_prev = dh * z + _dot_nt(da_z, w_ref[1])
        if reset == "after":
            da_r = jnp.where(live, da_n * acts_ref[j, 3] * r * (1.0 - r), 0.0)
            dh_prev = dh_prev + _dot_nt(da_n * r, w_ref[2])
        else:
            drh = _dot_nt(da_n, w_ref[2])
            da_r = jnp.where(live, drh * h_prev * r * (1.0 - r), 0.0)
            dh_prev = dh_prev + drh * r
        dh_prev = dh_prev + _dot_nt(da_r, w_ref[0])
        dgx_ref[j, 0] = da_r
        dgx_ref[j, 1] = da_z
        dgx_ref[j, 2] = da_n
        return jnp.where(live, dh_prev, dh_carry)

    dh = lax.fori_loop(0, block_t, step, dh_sc[...])
    dh_sc[...] = dh
    dh0_ref[...] = dh


# ------------------------------------------------------------------------------------------
# pallas_call wrappers
# ------------------------------------------------------------------------------------------


def _check_args(w_h, b_h, gx, h0, lengths):
    if gx.ndim != 3 or gx.shape[-1] % 3:
        raise ValueError(f"gx.shape={tuple(gx.shape)} must be [T, B, 3H]")
    steps, batch, gates = gx.shape
    hidden = gates // 3
    if tuple(w_h.shape) != (hidden, gates):
        raise ValueError(
            f"w_h.shape={tuple(w_h.shape)} must be ({hidden}, {gates}) for gx {gx.shape}")
    if tuple(b_h.shape) != (gates,):
        raise ValueError(f"b_h.shape={tuple(b_h.shape)} must be ({gates},) for gx {gx.shape}")
    for name, x in (("w_h", w_h), ("b_h", b_h)):
        if jnp.dtype(x.dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"{name}.dtype={x.dtype} must be float32 or bfloat16")
    if gx.dtype != _F32:
        raise TypeError(f"gx.dtype={gx.dtype} must be float32 (state and accumulation are float32)")
    if tuple(h0.shape) != (batch, hidden) or h0.dtype != _F32:
        raise ValueError(f"h0: {h0.shape} {h0.dtype} must be ({batch}, {hidden}) float32")
    if lengths is not None and tuple(jnp.shape(lengths)) != (batch,):
        raise ValueError(f"lengths.shape={tuple(jnp.shape(lengths))} must be ({batch},)")
    if steps == 0 or batch == 0:
        raise ValueError(f"gx.shape={tuple(gx.shape)}: T and B must be positive")


def _kernel_weights(bs: GRUBlockSizes, w_h: Array, hidden_p: int) -> Array:
    """``w_h [H, 3H]`` -> ``[3, Hp, Hp]`` (``w[k] = w_h[:, kH:(k+1)H]``), f32 on TPU."""
    hidden = w_h.shape[0]
    w = w_h.reshape(hidden, 3, hidden).transpose(1, 0, 2)
    w = jnp.pad(w, ((0, 0), (0, hidden_p - hidden), (0, hidden_p - hidden)))
    return w.astype(_F32) if bs.platform == common.TPU else w


def _fwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int, save: bool):
    """The forward ``pallas_call``: ``(len, gx3, w3, b_hn, h0) -> (hcar[, tmp][, acts])`` on GPU,
    ``-> (hs[, acts])`` on TPU (see the kernels for shapes)."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    name = f"seqjax_gru_{bs.reset}_fwd" + ("_res" if save else "")
    ng = bs.saved_gates
    if bs.platform == common.GPU:
        kernel = functools.partial(_fwd_kernel_gpu, steps=steps, tiles=hidden_p // bs.block_h,
                                   block_h=bs.block_h, reset=bs.reset, save=save,
                                   interpret=bs.interpret)
        out_shape = [f32(steps + 1, batch_p, hidden_p)]
        out_specs = [pl.BlockSpec((steps + 1, bb, hidden_p), lambda b: (0, b, 0))]
        if bs.reset == "before":
            out_shape.append(f32(2, batch_p, hidden_p))
            out_specs.append(pl.BlockSpec((2, bb, hidden_p), lambda b: (0, b, 0)))
        if save:
            out_shape.append(f32(steps, ng, batch_p, hidden_p))
            out_specs.append(pl.BlockSpec((steps, ng, bb, hidden_p), lambda b: (0, 0, b, 0)))
        return pl.pallas_call(
            kernel,
            grid=(batch_p // bb,),
            in_specs=[
                pl.BlockSpec((bb,), lambda b: (b,)),
                pl.BlockSpec((steps, 3, bb, hidden_p), lambda b: (0, 0, b, 0)),
                pl.BlockSpec((3, hidden_p, hidden_p), lambda b: (0, 0, 0)),
                pl.BlockSpec((hidden_p,), lambda b: (0,)),
                pl.BlockSpec((bb, hidden_p), lambda b: (b, 0)),
            ],
            out_specs=out_specs,
            out_shape=out_shape,
            compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
            interpret=interpret,
            name=name,
        )
    bt = bs.block_t
    kernel = functools.partial(_fwd_kernel_tpu, block_t=bt, reset=bs.reset)
    out_shape = [f32(steps, batch_p, hidden_p)]
    out_specs = [pl.BlockSpec((bt, bb, hidden_p), lambda b, s: (s, b, 0))]
    if save:
        out_shape.append(f32(steps, ng, batch_p, hidden_p))
        out_specs.append(pl.BlockSpec((bt, ng, bb, hidden_p), lambda b, s: (s, 0, b, 0)))
    return pl.pallas_call(
        kernel,
        grid=(batch_p // bb, steps // bt),
        in_specs=[
            pl.BlockSpec((bb, 1), lambda b, s: (b, 0)),
            pl.BlockSpec((bt, 3, bb, hidden_p), lambda b, s: (s, 0, b, 0)),
            pl.BlockSpec((3, hidden_p, hidden_p), lambda b, s: (0, 0, 0)),
            pl.BlockSpec((1, hidden_p), lambda b, s: (0, 0)),
            pl.BlockSpec((bb, hidden_p), lambda b, s: (b, 0)),
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((bb, hidden_p), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=bs.vmem_limit_bytes
        ),
        interpret=interpret,
        name=name,
    )


def _bwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int):
    """The backward ``pallas_call``. GPU: ``(len, w3, acts, hcar, dhs, dhT) -> (dgx, dh)`` with
    ``dh [R, Bp, Hp]`` (ping-pong rows, plus a row between phases for "before"); TPU:
    ``(len, w3, acts, hprev, dhs, dhT) -> (dgx, dh0)``."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    name = f"seqjax_gru_{bs.reset}_bwd"
    ng = bs.saved_gates
    if bs.platform == common.GPU:
        kernel = functools.partial(_bwd_kernel_gpu, steps=steps, tiles=hidden_p // bs.block_h,
                                   block_h=bs.block_h, reset=bs.reset, interpret=bs.interpret)
        seq = lambda n: pl.BlockSpec((n, bb, hidden_p), lambda b: (0, b, 0))  # noqa: E731
        gates = lambda g: pl.BlockSpec((steps, g, bb, hidden_p), lambda b: (0, 0, b, 0))  # noqa: E731
        rows = 2 if bs.reset == "after" else 3
        return pl.pallas_call(
            kernel,
            grid=(batch_p // bb,),
            in_specs=[
                pl.BlockSpec((bb,), lambda b: (b,)),
                pl.BlockSpec((3, hidden_p, hidden_p), lambda b: (0, 0, 0)),
                gates(ng), seq(steps + 1), seq(steps),
                pl.BlockSpec((bb, hidden_p), lambda b: (b, 0)),
            ],
            out_specs=[gates(3), seq(rows)],
            out_shape=[f32(steps, 3, batch_p, hidden_p), f32(rows, batch_p, hidden_p)],
            compiler_params=plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages),
            interpret=interpret,
            name=name,
        )
    bt, nt = bs.block_t, steps // bs.block_t
    kernel = functools.partial(_bwd_kernel_tpu, block_t=bt, time_blocks=nt, reset=bs.reset)
    seq = pl.BlockSpec((bt, bb, hidden_p), lambda b, s: (nt - 1 - s, b, 0))
    gates = lambda g: pl.BlockSpec((bt, g, bb, hidden_p), lambda b, s: (nt - 1 - s, 0, b, 0))  # noqa: E731
    state = pl.BlockSpec((bb, hidden_p), lambda b, s: (b, 0))
    return pl.pallas_call(
        kernel,
        grid=(batch_p // bb, nt),
        in_specs=[
            pl.BlockSpec((bb, 1), lambda b, s: (b, 0)),
            pl.BlockSpec((3, hidden_p, hidden_p), lambda b, s: (0, 0, 0)),
            gates(ng), seq, seq, state,
        ],
        out_specs=[gates(3), state],
        out_shape=[f32(steps, 3, batch_p, hidden_p), f32(batch_p, hidden_p)],
        scratch_shapes=[pltpu.VMEM((bb, hidden_p), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=bs.vmem_limit_bytes
        ),
        interpret=interpret,
        name=name,
    )


def _fwd(w_h, b_h, gx, h0, lengths, block_sizes: GRUBlockSizes, save: bool = True):
    """Forward: fold ``b_hr, b_hz`` into ``gx``, relayout, run the kernel, unpad.
    Returns ``((hs, h_T), residuals)``."""
    bs = block_sizes
    _check_args(w_h, b_h, gx, h0, lengths)
    steps, batch, gates = gx.shape
    hidden = gates // 3
    if bs.platform == common.TPU and steps % bs.block_t:
        raise ValueError(f"block_t={bs.block_t} must divide T={steps}")
    batch_p, hidden_p = bs.padded(batch, hidden)
    lens = jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    lens = jnp.pad(lens, (0, batch_p - batch))  # padding rows: length 0
    b3 = b_h.astype(_F32).reshape(3, hidden)
    gx3 = gx.reshape(steps, batch, 3, hidden) + jnp.concatenate(
        [b3[:2], jnp.zeros((1, hidden), _F32)])  # b_hn stays out: it sits inside r * (...)
    gx3 = common.pad_bh(gx3.transpose(0, 2, 1, 3), batch_p, hidden_p)
    b_hn = jnp.pad(b3[2], (0, hidden_p - hidden))
    w3 = _kernel_weights(bs, w_h, hidden_p)
    h0_p = common.pad_bh(h0, batch_p, hidden_p)
    call = _fwd_call(bs, steps, batch_p, hidden_p, save)
    if bs.platform == common.GPU:
        hcar, *rest = call(lens, gx3, w3, b_hn, h0_p)
        acts = rest[-1] if save else None
    else:
        hs, *rest = call(lens[:, None], gx3, w3, b_hn[None], h0_p)
        acts = rest[0] if save else None
        hcar = jnp.concatenate([h0_p[None], hs])
    live = (jnp.arange(steps)[:, None] < lens[None, :batch])[..., None]
    hs = jnp.where(live, hcar[1:, :batch, :hidden], 0.0)
    out = (hs, hcar[steps, :batch, :hidden])
    return out, ((w_h, b_h, lens, hcar, acts) if save else None)


def _bwd(block_sizes: GRUBlockSizes, res, cts):
    """Backward: the reverse-time kernel gives the gate gradients ``da`` and ``dh0``; ``dW_h`` and
    ``db_h`` are one einsum / sum over all steps."""
    bs = block_sizes
    w_h, b_h, lens, hcar, acts = res
    dhs, dht = cts
    steps, batch, hidden = dhs.shape
    batch_p, hidden_p = hcar.shape[1:]
    w3 = _kernel_weights(bs, w_h, hidden_p)
    dhs_p, dht_p = (common.pad_bh(x.astype(_F32), batch_p, hidden_p) for x in (dhs, dht))
    call = _bwd_call(bs, steps, batch_p, hidden_p)
    if bs.platform == common.GPU:
        da, dh = call(lens, w3, acts, hcar, dhs_p, dht_p)
        dh0 = dh[0]
    else:
        da, dh0 = call(lens[:, None], w3, acts, hcar[:-1], dhs_p, dht_p)
    da = da[:, :, :batch, :hidden]  # [T, 3, B, H]: d gx
    h_prev = hcar[:-1, :batch, :hidden]
    r = acts[:, 0, :batch, :hidden]
    if bs.reset == "after":  # the gradient of h W_h + b_h: [da_r, da_z, da_n * r]
        dzh = jnp.concatenate([da[:, :2], (da[:, 2] * r)[:, None]], axis=1)
        dw = jnp.einsum("tbh,tkbj->hkj", h_prev, dzh, preferred_element_type=_F32)
        db = jnp.sum(dzh, axis=(0, 2))
    else:  # W_hr, W_hz see h_{t-1}; W_hn sees r * h_{t-1}
        dw_rz = jnp.einsum("tbh,tkbj->hkj", h_prev, da[:, :2], preferred_element_type=_F32)
        dw_n = jnp.einsum("tbh,tbj->hj", r * h_prev, da[:, 2], preferred_element_type=_F32)
        dw = jnp.concatenate([dw_rz, dw_n[:, None]], axis=1)
        db = jnp.sum(da, axis=(0, 2))
    dw = dw.reshape(hidden, 3 * hidden).astype(w_h.dtype)
    db = db.reshape(3 * hidden).astype(b_h.dtype)
    dgx = da.transpose(0, 2, 1, 3).reshape(steps, batch, 3 * hidden)
    return dw, db, dgx, dh0[:batch, :hidden], None


# ------------------------------------------------------------------------------------------
# The public op
# ------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def gru(w_h: Array, b_h: Array, gx: Array, h0: Array, lengths: Array | None,
        block_sizes: GRUBlockSizes) -> tuple[Array, Array]:
    """Run a GRU over time-major pre-projected inputs in one fused kernel.

    Args:
      w_h: recurrent weight ``[H, 3H]``, float32 or bfloat16 (used in float32), gates r, z, n.
      b_h: recurrent bias ``[3H]``, float32 or bfloat16 (used in float32).
      gx: input pre-activations ``[T, B, 3H]`` float32 (``x_t W_x + b_x``), ``T, B >= 1``.
      h0: initial state ``[B, H]`` float32.
      lengths: ``[B]`` ints in ``[0, T]``, or ``None`` (all ``T``).
      block_sizes: static kernel choices, the reset variant included
        (:meth:`GRUBlockSizes.default`).

    Returns:
      ``(hs [T, B, H], h_T [B, H])`` float32: ``hs`` zero at ``t >= lengths[b]``, ``h_T`` the
      state at each length. Differentiable w.r.t. ``w_h``, ``b_h``, ``gx`` and ``h0``.
    """
    return _fwd(w_h, b_h, gx, h0, lengths, block_sizes, save=False)[0]


gru.defvjp(_fwd, _bwd)


def gru_reference(w_h: Array, b_h: Array, gx: Array, h0: Array, lengths: Array | None,
                  block_sizes: GRUBlockSizes | str = "after") -> tuple[Array, Array]:
    """:func:`gru` in plain ``jnp`` (a ``lax.scan``). ``block_sizes`` is a
    :class:`GRUBlockSizes` (only its ``reset`` is read) or the reset variant itself."""
    reset = block_sizes if isinstance(block_sizes, str) else block_sizes.reset
    if reset not in RESETS:
        raise ValueError(f"reset={reset!r} must be 'after' or 'before'")
    steps, batch, gates = gx.shape
    hid = gates // 3
    w, b = w_h.astype(_F32), b_h.astype(_F32)
    lens = jnp.full((batch,), steps, jnp.int32) if lengths is None else jnp.asarray(lengths)

    def body(h, inp):
        t, gx_t = inp
        if reset == "after":
            zh = jnp.dot(h, w, preferred_element_type=_F32) + b
            r = _sigmoid(gx_t[:, :hid] + zh[:, :hid])
            z = _sigmoid(gx_t[:, hid:2 * hid] + zh[:, hid:2 * hid])
            n = jnp.tanh(gx_t[:, 2 * hid:] + r * zh[:, 2 * hid:])
        else:
            zrz = jnp.dot(h, w[:, :2 * hid], preferred_element_type=_F32) + b[:2 * hid]
            r = _sigmoid(gx_t[:, :hid] + zrz[:, :hid])
            z = _sigmoid(gx_t[:, hid:2 * hid] + zrz[:, hid:])
            n = jnp.tanh(gx_t[:, 2 * hid:] + jnp.dot(r * h, w[:, 2 * hid:],
                                                     preferred_element_type=_F32) + b[2 * hid:])
        live = (t < lens)[:, None]
        h = jnp.where(live, (1.0 - z) * n + z * h, h)
        return h, jnp.where(live, h, 0.0)

    h_t, hs = lax.scan(body, jnp.asarray(h0, _F32), (jnp.arange(steps), gx.astype(_F32)))
    return hs, h_t
