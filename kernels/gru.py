r"""Fused GRU: the whole time loop in one Pallas kernel, forward and backward, both reset variants.

The op computes what ``seqjax.core.recurrent._scan(GRU(..., reset=...), 1, ...)`` computes for
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
zero-pad (batch and hidden to the sizes :meth:`GRUBlockSizes.padded` gives); zero padding is
exact (padded units stay 0, padded rows have length 0). The forward saves ``(r, z, n)`` and,
for "after", :math:`h_{t-1} W_{hn} + b_{hn}` as a fourth "gate", plus the states.

Two kernel styles, chosen by :class:`GRUBlockSizes.platform`:

* ``"gpu"``: the **persistent** Triton kernel of :mod:`seqjax.kernels.lstm` (read its
  docstring for the design and for why Triton rather than Mosaic GPU). Grid ``(hidden blocks,
  batch groups)``; program ``(n, p)`` owns ``block_h`` hidden units (their r, z, n columns),
  keeps its slice of ``w_h`` on-chip for the whole sequence, and the programs of a batch group
  meet at a grid barrier (:func:`seqjax.kernels.common.grid_barrier`) where values cross hidden
  blocks. Forward: one barrier a step for "after" (the exchange buffer is the state output
  ``hcar [T+1, B, H]``, each row written once); two for "before" (phase 1: r and z, publishing
  :math:`r \odot h_{t-1}`; phase 2: n, which needs all of it, then :math:`h_t`; the one-row
  exchange buffer of :math:`r \odot h_{t-1}` is rewritten each step only after the barrier that
  ends the previous step, which every reader of it has passed). Backward, reverse time: the
  pointwise gate gradients, a barrier, ("before": :math:`\overline{(rh)} = \bar a_n W_{hn}^\top`
  and :math:`\bar a_r`, a barrier,) then each tile's :math:`\bar h_{t-1}` from all of the
  step's gate gradients (the ``dgx`` output is the exchange buffer: each step's slot written
  once, so no barrier ends the step). A tile's own carries (``h_{t-1}``, ``z``, the state
  cotangent) are re-read from the outputs. In interpret mode the same phase functions run under
  a sequential driver, grid ``(1 + phases * T, hidden blocks, batch blocks)``, phase outermost
  (or, for one hidden block, the persistent kernel itself).
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
      max_programs: GPU only: the most programs the persistent kernel may launch; all must be
        resident at once (see :class:`seqjax.kernels.LSTMBlockSizes`; default 132, an
        H100/H200 SXM; :meth:`default` uses the SM count of the local GPU when there is one).
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
    max_programs: int = common.DEFAULT_MAX_PROGRAMS

    def __post_init__(self):
        common.check_block_sizes(self.platform, self.block_b, self.block_h, self.block_t)
        if self.reset not in RESETS:
            raise ValueError(f"reset={self.reset!r} must be 'after' or 'before'")
        if self.max_programs < 1:
            raise ValueError(f"max_programs={self.max_programs} must be positive")

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
        kernel in interpret mode). GPU: as :meth:`seqjax.kernels.LSTMBlockSizes.default`
        (persistent kernel, ``block_h = 16``, ``block_b`` the smallest of 16 to 128 whose batch
        blocks fit beside the hidden blocks in ``max_programs`` programs (the local GPU's SMs,
        else 132), ``num_warps`` from the resident weight slice ``3 * Hp * block_h``). TPU:
        ``block_h`` is ``H`` rounded up to 128; ``block_b`` up to 128 rows and ``block_t`` the
        largest divisor of ``T`` up to 16, halved until the VMEM estimate fits 48 MiB.
        """
        steps, batch, hidden = (int(s) for s in shape)
        if jnp.dtype(dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"dtype={jnp.dtype(dtype)} must be float32 or bfloat16")
        style, on_cpu = common.kernel_platform(platform)
        interpret = bool(interpret or on_cpu)
        if style == common.GPU:
            cap = common.default_max_programs()
            block_b, block_h, grid = common.default_persistent_blocks(batch, hidden, cap)
            weight_bytes = 3 * grid.hidden_p * block_h * jnp.dtype(dtype).itemsize
            return cls(common.GPU, block_b, block_h, reset,
                       num_warps=common.resident_num_warps(weight_bytes), interpret=interpret,
                       max_programs=cap)
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

    def grid(self, batch: int, hidden: int) -> common.PersistentGrid:
        """The GPU kernel's :class:`~seqjax.kernels.common.PersistentGrid` for ``[B, H]``."""
        if self.platform != common.GPU:
            raise ValueError("grid() is for the GPU kernel")
        return common.persistent_grid(batch, hidden, self.block_b, self.block_h,
                                      self.max_programs)

    def padded(self, batch: int, hidden: int) -> tuple[int, int]:
        """``(B_pad, H_pad)``: the batch and hidden sizes the kernel runs at."""
        if self.platform == common.GPU:
            grid = self.grid(batch, hidden)
            return grid.batch_p, grid.hidden_p
        if hidden > self.block_h:
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


# GPU (Triton), persistent. Refs are whole arrays in global memory; a program addresses its
# tiles with ``pl.ds``: ``rows`` (a batch block), ``cols`` (its hidden block), K tiles of
# ``block_k``. The carries a tile needs from its own previous phase (``h_{t-1}``, ``z``, the
# state cotangent) are re-read from the outputs; what other programs wrote is read after a
# grid barrier.

_tile = common.tile


def _fwd_weights(w_ref, cols, grid: common.PersistentGrid):
    """A program's resident forward weight slice: ``w[g][k] = w_ref[g, K tile k, cols]``."""
    return [[w_ref[g, _tile(k, grid.block_k), cols] for k in range(grid.k_tiles)]
            for g in range(3)]


def _bwd_weights(w_ref, cols, grid: common.PersistentGrid):
    """A program's resident backward weight slice: ``w[g][k] = w_ref[g, cols, K tile k]``."""
    return [[w_ref[g, cols, _tile(k, grid.block_k)] for k in range(grid.k_tiles)]
            for g in range(3)]


def _contract(src, w, gates, grid: common.PersistentGrid, transposed: bool = False):
    """``[sum_k src(g, k) @ w[g][k] for g in gates]`` (``@ w[g][k]^T`` when ``transposed``),
    float32; ``src(g, k)`` loads the ``[rows, block_k]`` K tile ``k`` for gate ``g``."""
    acc = [None] * len(gates)
    for k in range(grid.k_tiles):
        for i, g in enumerate(gates):
            w_gk = w[g][k].astype(_F32)
            term = (_dot_nt(src(g, k), w_gk) if transposed
                    else jnp.dot(src(g, k), w_gk, preferred_element_type=_F32))
            acc[i] = term if acc[i] is None else acc[i] + term
    return acc


def _fwd_gates(t, rows, cols, w, len_ref, gx_ref, b_ref, hcar_ref, tmp_ref, acts_ref,
               grid: common.PersistentGrid, reset: str):
    """Forward phase 1 of step ``t`` for one tile. "after": the whole step (writes
    ``hcar[t + 1]``). "before": ``r`` and ``z``; publishes ``r * h_{t-1}`` (``tmp[0]``, read by
    every program in phase 2) and ``z`` (``tmp[1]``)."""
    h_prev = hcar_ref[t, rows, cols]
    gates = (0, 1, 2) if reset == "after" else (0, 1)
    acc = _contract(lambda g, k: hcar_ref[t, rows, _tile(k, grid.block_k)], w, gates, grid)
    r = _sigmoid(gx_ref[t, 0, rows, cols] + acc[0])
    z = _sigmoid(gx_ref[t, 1, rows, cols] + acc[1])
    if reset == "after":
        live = (t < len_ref[rows])[:, None]
        hn = acc[2] + b_ref[cols][None, :]
        n = jnp.tanh(gx_ref[t, 2, rows, cols] + r * hn)
        hcar_ref[t + 1, rows, cols] = jnp.where(live, _new_state(n, z, h_prev), h_prev)
        acts = (r, z, n, hn)
    else:
        tmp_ref[0, rows, cols] = r * h_prev
        tmp_ref[1, rows, cols] = z
        acts = (r, z)
    if acts_ref is not None:
        for g, a in enumerate(acts):
            acts_ref[t, g, rows, cols] = a


def _fwd_new(t, rows, cols, w, len_ref, gx_ref, b_ref, hcar_ref, tmp_ref, acts_ref,
             grid: common.PersistentGrid):
    """Forward phase 2 of step ``t`` ("before"): ``n`` from ``(r * h_{t-1}) W_hn`` (all of
    ``tmp[0]``), then ``h_t``."""
    live = (t < len_ref[rows])[:, None]
    (rhn,) = _contract(lambda g, k: tmp_ref[0, rows, _tile(k, grid.block_k)], w, (2,), grid)
    n = jnp.tanh(gx_ref[t, 2, rows, cols] + rhn + b_ref[cols][None, :])
    h_prev = hcar_ref[t, rows, cols]
    hcar_ref[t + 1, rows, cols] = jnp.where(live, _new_state(n, tmp_ref[1, rows, cols], h_prev),
                                            h_prev)
    if acts_ref is not None:
        acts_ref[t, 2, rows, cols] = n


def _fwd_split(refs, reset: str, save: bool):
    """``(len, gx, b, hcar, tmp | None, acts | None)`` from the forward refs after ``w``/``h0``."""
    len_ref, gx_ref, b_ref, hcar_ref, *rest = refs
    tmp_ref = rest.pop(0) if reset == "before" else None
    acts_ref = rest.pop(0) if save else None
    return (len_ref, gx_ref, b_ref, hcar_ref, tmp_ref, acts_ref), rest


def _fwd_kernel_gpu(len_ref, gx_ref, w_ref, b_ref, h0_ref, count_in_ref, hcar_ref, *rest,
                    grid: common.PersistentGrid, steps: int, reset: str, save: bool,
                    interpret: bool):
    """The persistent forward: program ``(n, p)``, time loop inside; one grid barrier a step
    ("after") or two ("before": ``n`` needs all of ``r * h_{t-1}``).

    Refs (whole arrays): ``len [Bp]``, ``gx [T, 3, Bp, Hp]`` (``b_hr``, ``b_hz`` folded in),
    ``w [3, Hp, Hp]``, ``b [Hp]`` (``b_hn``), ``h0 [Bp, Hp]``, ``count [groups]`` -> ``hcar
    [T+1, Bp, Hp]`` (row ``t`` the state step ``t`` reads), for "before" ``tmp [2, Bp, Hp]``
    (``r * h_{t-1}`` and ``z`` of the current step), optionally ``acts [T, G, Bp, Hp]``
    (``G = 4`` after, 3 before), then ``count``.
    """
    del count_in_ref
    refs, (count_ref,) = _fwd_split((len_ref, gx_ref, b_ref, hcar_ref, *rest), reset, save)
    n, p = pl.program_id(0), pl.program_id(1)
    cols = _tile(n, grid.block_h)
    w = _fwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence
    per_program = grid.blocks_per_program
    phases = 1 if reset == "after" else 2

    def rows(j):
        return _tile(p * per_program + j, grid.block_b)

    def barrier(k):
        common.grid_barrier(count_ref, p, (k + 1) * grid.hidden_blocks, interpret=interpret)

    def each_block(fn):
        lax.fori_loop(0, per_program, lambda j, _: fn(rows(j)), None)

    def init(r):
        hcar_ref[0, r, cols] = h0_ref[r, cols]

    each_block(init)
    barrier(0)

    def step(t, _):
        each_block(lambda r: _fwd_gates(t, r, cols, w, *refs, grid, reset))
        barrier(phases * t + 1)
        if reset == "before":
            each_block(lambda r: _fwd_new(t, r, cols, w, *refs, grid))
            barrier(phases * t + 2)

    lax.fori_loop(0, steps, step, None)


def _fwd_kernel_seq(len_ref, gx_ref, w_ref, b_ref, h0_ref, hcar_ref, *rest,
                    grid: common.PersistentGrid, reset: str, save: bool):
    """The sequential driver (interpret mode): grid ``(1 + phases * T, hidden blocks, batch
    blocks)``, phase outermost; phase 0 writes ``h0``. Same refs as :func:`_fwd_kernel_gpu`,
    without the counter."""
    refs, _ = _fwd_split((len_ref, gx_ref, b_ref, hcar_ref, *rest), reset, save)
    s, n, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, cols = _tile(b, grid.block_b), _tile(n, grid.block_h)
    phases = 1 if reset == "after" else 2
    t, phase = (s - 1) // phases, (s - 1) % phases

    @pl.when(s == 0)
    def _():
        hcar_ref[0, rows, cols] = h0_ref[rows, cols]

    @pl.when((s > 0) & (phase == 0))
    def _():
        _fwd_gates(t, rows, cols, _fwd_weights(w_ref, cols, grid), *refs, grid, reset)

    if reset == "before":
        @pl.when((s > 0) & (phase == 1))
        def _():
            _fwd_new(t, rows, cols, _fwd_weights(w_ref, cols, grid), *refs, grid)


def _bwd_cell(t, rows, cols, len_ref, acts_ref, hcar_ref, dhs_ref, dgx_ref, dh_ref, tmp_ref,
              reset: str):
    """Backward phase 1 of step ``t`` for one tile: the gate gradients that need no matmul,
    ``da_z``, ``da_n`` (and ``da_r`` for "after"), from the tile's state cotangent ``dh``."""
    del tmp_ref
    live = (t < len_ref[rows])[:, None]
    dh = dh_ref[rows, cols] + dhs_ref[t, rows, cols]
    z, n = acts_ref[t, 1, rows, cols], acts_ref[t, 2, rows, cols]
    da_n, da_z = _pointwise_vjp(dh, z, n, hcar_ref[t, rows, cols])
    dgx_ref[t, 1, rows, cols] = jnp.where(live, da_z, 0.0)
    dgx_ref[t, 2, rows, cols] = jnp.where(live, da_n, 0.0)
    if reset == "after":
        r, hn = acts_ref[t, 0, rows, cols], acts_ref[t, 3, rows, cols]
        dgx_ref[t, 0, rows, cols] = jnp.where(live, da_n * hn * r * (1.0 - r), 0.0)


def _bwd_reset(t, rows, cols, w, len_ref, acts_ref, hcar_ref, dhs_ref, dgx_ref, dh_ref, tmp_ref,
               grid: common.PersistentGrid):
    """Backward phase 2 of step ``t`` ("before"): ``d(r h) = da_n W_hn^T`` (all of
    ``da_n``), then ``da_r``; keeps ``d(r h) * r`` in ``tmp`` for phase 3."""
    del dhs_ref, dh_ref
    live = (t < len_ref[rows])[:, None]
    (drh,) = _contract(lambda g, k: dgx_ref[t, 2, rows, _tile(k, grid.block_k)], w, (2,), grid,
                       transposed=True)
    r = acts_ref[t, 0, rows, cols]
    da_r = drh * hcar_ref[t, rows, cols] * r * (1.0 - r)
    dgx_ref[t, 0, rows, cols] = jnp.where(live, da_r, 0.0)
    tmp_ref[rows, cols] = drh * r


def _bwd_dh(t, rows, cols, w, len_ref, acts_ref, hcar_ref, dhs_ref, dgx_ref, dh_ref, tmp_ref,
            grid: common.PersistentGrid, reset: str):
    """Backward last phase of step ``t``: the tile's cotangent of ``h_{t-1}``, ``dh z`` plus
    ``[da_r, da_z, da_n r] W_h^T`` ("after"; all of step ``t``'s gate gradients) or ``d(r h) r
    + [da_r, da_z] [W_hr, W_hz]^T`` ("before"), where step ``t`` is live."""
    del hcar_ref
    live = (t < len_ref[rows])[:, None]
    dh_in = dh_ref[rows, cols]
    dh = (dh_in + dhs_ref[t, rows, cols]) * acts_ref[t, 1, rows, cols]
    if reset == "after":
        def src(g, k):
            kt = _tile(k, grid.block_k)
            da = dgx_ref[t, g, rows, kt]
            return da * acts_ref[t, 0, rows, kt] if g == 2 else da

        gates = (0, 1, 2)
    else:
        dh = dh + tmp_ref[rows, cols]

        def src(g, k):
            return dgx_ref[t, g, rows, _tile(k, grid.block_k)]

        gates = (0, 1)
    for term in _contract(src, w, gates, grid, transposed=True):
        dh = dh + term
    dh_ref[rows, cols] = jnp.where(live, dh, dh_in)


def _bwd_phases(t, phase, rows, cols, w, refs, grid, reset: str, when):
    """Run backward phase ``phase`` of step ``t`` (``when(cond)`` guards each)."""
    last = 1 if reset == "after" else 2

    @when(phase == 0)
    def _():
        _bwd_cell(t, rows, cols, *refs, reset)

    if reset == "before":
        @when(phase == 1)
        def _():
            _bwd_reset(t, rows, cols, w, *refs, grid)

    @when(phase == last)
    def _():
        _bwd_dh(t, rows, cols, w, *refs, grid, reset)


def _bwd_kernel_gpu(len_ref, w_ref, acts_ref, hcar_ref, dhs_ref, dht_ref, count_in_ref,
                    dgx_ref, dh_ref, *rest, grid: common.PersistentGrid, steps: int, reset: str,
                    interpret: bool):
    """The persistent backward, reverse time: per step the pointwise gate gradients, a grid
    barrier, ("before": ``d(r h)`` and ``da_r``, a grid barrier,) then the tile's ``dh_{t-1}``
    from all of step ``t``'s gate gradients (each step's ``dgx`` slot is written once, so the
    next step needs no barrier before it starts).

    Refs: ``len [Bp]``, ``w [3, Hp, Hp]``, ``acts [T, G, Bp, Hp]``, ``hcar [T+1, Bp, Hp]``,
    ``dhs [T, Bp, Hp]``, ``dht [Bp, Hp]``, ``count [groups]`` -> ``dgx [T, 3, Bp, Hp]`` (the
    gate pre-activation gradients ``da``), ``dh [Bp, Hp]`` (the state cotangent: ``dh0`` at the
    end), for "before" ``tmp [Bp, Hp]``, then ``count``.
    """
    del count_in_ref
    *tmp_ref, count_ref = rest
    refs = (len_ref, acts_ref, hcar_ref, dhs_ref, dgx_ref, dh_ref, tmp_ref[0] if tmp_ref else None)
    n, p = pl.program_id(0), pl.program_id(1)
    cols = _tile(n, grid.block_h)
    w = _bwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence
    per_program = grid.blocks_per_program

    def rows(j):
        return _tile(p * per_program + j, grid.block_b)

    def barrier(k):
        common.grid_barrier(count_ref, p, (k + 1) * grid.hidden_blocks, interpret=interpret)

    def each_block(fn):
        lax.fori_loop(0, per_program, lambda j, _: fn(rows(j)), None)

    def init(r):
        dh_ref[r, cols] = dht_ref[r, cols]

    each_block(init)  # tile-private: no barrier

    def step(s, _):
        t = steps - 1 - s
        each_block(lambda r: _bwd_cell(t, r, cols, *refs, reset))
        if reset == "after":
            barrier(s)
        else:
            barrier(2 * s)
            each_block(lambda r: _bwd_reset(t, r, cols, w, *refs, grid))
            barrier(2 * s + 1)
        each_block(lambda r: _bwd_dh(t, r, cols, w, *refs, grid, reset))

    lax.fori_loop(0, steps, step, None)


def _bwd_kernel_seq(len_ref, w_ref, acts_ref, hcar_ref, dhs_ref, dht_ref, dgx_ref, dh_ref,
                    *tmp_ref, grid: common.PersistentGrid, steps: int, reset: str):
    """The sequential driver (interpret mode): grid ``(1 + phases * T, hidden blocks, batch
    blocks)``; phase 0 copies ``dht`` into ``dh``, then each step's phases in reverse time.
    Same refs as :func:`_bwd_kernel_gpu`, without the counter."""
    refs = (len_ref, acts_ref, hcar_ref, dhs_ref, dgx_ref, dh_ref, tmp_ref[0] if tmp_ref else None)
    s, n, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    rows, cols = _tile(b, grid.block_b), _tile(n, grid.block_h)
    phases = 2 if reset == "after" else 3
    t, phase = steps - 1 - (s - 1) // phases, (s - 1) % phases

    @pl.when(s == 0)
    def _():
        dh_ref[rows, cols] = dht_ref[rows, cols]

    def when(cond):
        return pl.when((s > 0) & cond)

    _bwd_phases(t, phase, rows, cols, _bwd_weights(w_ref, cols, grid), refs, grid, reset, when)


# TPU (Mosaic)


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


def _fwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int, save: bool,
              grid: common.PersistentGrid | None = None):
    """The forward ``pallas_call``: ``(len, gx3, w3, b_hn, h0) -> (hcar[, tmp][, acts])`` on GPU,
    ``-> (hs[, acts])`` on TPU (see the kernels for shapes)."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    name = f"seqjax_gru_{bs.reset}_fwd" + ("_res" if save else "")
    ng = bs.saved_gates
    if bs.platform == common.GPU:
        out_shape = [f32(steps + 1, batch_p, hidden_p)]
        if bs.reset == "before":
            out_shape.append(f32(2, batch_p, hidden_p))
        if save:
            out_shape.append(f32(steps, ng, batch_p, hidden_p))
        statics = dict(reset=bs.reset, save=save)
        return common.persistent_call(
            bs, grid, 1 + (1 if bs.reset == "after" else 2) * steps,
            functools.partial(_fwd_kernel_gpu, steps=steps, **statics),
            functools.partial(_fwd_kernel_seq, **statics), out_shape, name)
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


def _bwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int,
              grid: common.PersistentGrid | None = None):
    """The backward ``pallas_call``. GPU: ``(len, w3, acts, hcar, dhs, dhT) -> (dgx, dh0[,
    tmp])``; TPU:
    ``(len, w3, acts, hprev, dhs, dhT) -> (dgx, dh0)``."""
    bb, interpret = bs.block_b, common.interpret_arg(bs.platform, bs.interpret)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, _F32)  # noqa: E731
    name = f"seqjax_gru_{bs.reset}_bwd"
    ng = bs.saved_gates
    if bs.platform == common.GPU:
        out_shape = [f32(steps, 3, batch_p, hidden_p), f32(batch_p, hidden_p)]
        if bs.reset == "before":
            out_shape.append(f32(batch_p, hidden_p))
        return common.persistent_call(
            bs, grid, 1 + (2 if bs.reset == "after" else 3) * steps,
            functools.partial(_bwd_kernel_gpu, steps=steps, reset=bs.reset),
            functools.partial(_bwd_kernel_seq, steps=steps, reset=bs.reset), out_shape, name)
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
    grid = bs.grid(batch, hidden) if bs.platform == common.GPU else None
    call = _fwd_call(bs, steps, batch_p, hidden_p, save, grid)
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
    grid = bs.grid(batch, hidden) if bs.platform == common.GPU else None
    call = _bwd_call(bs, steps, batch_p, hidden_p, grid)
    if bs.platform == common.GPU:
        da, dh0, *_ = call(lens, w3, acts, hcar, dhs_p, dht_p)
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
