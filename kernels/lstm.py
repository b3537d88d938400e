r"""Fused LSTM: the whole time loop in one Pallas kernel, forward and backward.

The op computes what ``seqjax.core.recurrent._scan(LSTM(...), 1, {"w_h": w_h}, gx, carry0,
lengths)``
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
``[block_b, H]`` tile. The wrappers relayout and zero-pad (batch and hidden to the sizes
:meth:`LSTMBlockSizes.padded` gives); zero padding is exact (padded units stay 0, padded rows
have length 0).

Two kernel styles, chosen by :class:`LSTMBlockSizes.platform`:

* ``"gpu"``: a **persistent** Triton kernel (the persistent-RNN design of Diamos et al. 2016,
  as in FlashRNN's fused CUDA kernel). The grid is ``(hidden blocks, batch groups)``; program
  ``(n, p)`` owns ``block_h`` hidden units, i.e. the four gate columns of those units. It loads
  its slice of the recurrent weight, ``w[:, :, n-th block] [4, Hp, block_h]``, once and keeps
  it on-chip for the whole sequence (a loop-invariant Triton tensor: Triton decides between
  registers and shared memory, where it stages dot operands; how well that works at each size
  is unmeasured: no GPU has run this kernel yet); its ``c`` slice stays in registers. Per
  step it reads the full ``h_{t-1}`` of its batch rows from global memory, computes its gate
  slice ``gx_t[slice] + h_{t-1} W[:, slice]`` (K-tiled, float32 accumulation), updates ``c`` and
  writes its ``h_t`` slice; then all programs of the batch group meet at **one grid barrier**
  (:func:`seqjax.kernels.common.grid_barrier`: an atomic counter per group in global memory
  and a spin wait on a monotonically growing target ``(k + 1) * hidden_blocks``). The exchange
  buffer is the carry output ``hcar [T+1, B, H]`` itself: step ``t`` reads row ``t`` and writes
  row ``t + 1``, every row is written once, so no program can overwrite what a slower one has
  yet to read (the role double-buffering plays when the buffer is reused). The backward kernel
  is the same pattern in reverse time: program ``n`` owns the gate gradients ``dz[..., n]`` of
  its units and the slice ``dh[:, n] = dz_{t+1} W[n-th block, :]^T`` of the carry cotangent; the
  exchange buffer is the ``dz [T, 4, B, H]`` output (each step's slot written once) and its
  weight slice ``w[:, n-th block, :] [4, block_h, Hp]`` is the one on-chip. All programs must be
  resident at once or the barrier deadlocks, so the grid is capped at
  :attr:`LSTMBlockSizes.max_programs` (default 132, the SMs of an H100/H200 SXM): batch blocks
  beyond the cap are looped over inside each program (``blocks_per_program`` of
  :class:`seqjax.kernels.common.PersistentGrid`), with the carries then kept in the outputs.

  **Triton, not Mosaic GPU**: Pallas' Triton lowering has the global-memory atomics
  (``plgpu.atomic_add``, acquire-release at GPU scope) and the ``while`` loop a grid barrier
  needs, lowers a plain ``jnp.dot`` at any power-of-two tile of at least 16, and is the
  backend these kernels were already verified on (an H200 with JAX 0.11). Mosaic GPU (the
  default for ``cuda`` in JAX 0.10) rejects a plain ``jnp.dot`` inside a loop ("Unimplemented
  primitive dot_general"): it wants warpgroup-style Hopper kernels (64-row ``wgmma`` tiles,
  which a 16-row batch block does not fill), a rewrite that cannot be checked without a GPU.

  Interpret mode runs grid programs one after another, so a spin barrier would wait for
  ever there. The per-step maths of one program (``_fwd_step``; ``_bwd_dh`` and
  ``_bwd_cell``) is therefore written once and driven two ways: by the persistent kernel
  (time loop inside, grid barrier per step) and by a sequential driver with grid
  ``(T + 1, hidden blocks, batch blocks)``, time outermost, no barrier: the state a program
  needs from the previous step is in the outputs by then. Interpret mode uses the sequential
  driver, except for a grid of one hidden block, where the barrier never waits and the
  persistent kernel itself runs, its spin loop left out (so the CPU tests execute its loops,
  counter increments and batch-group loop too).
* ``"tpu"`` (Mosaic): grid ``(batch blocks, time blocks)`` with the time axis sequential
  (``"arbitrary"``); ``w_h`` sits whole in VMEM, ``h``/``c`` in VMEM scratch across grid steps,
  ``gx`` and the outputs stream through ``block_t``-step blocks that Pallas double-buffers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from . import common

__all__ = ["MAX_HIDDEN", "LSTMBlockSizes", "lstm", "lstm_reference"]

Array = jax.Array
_F32 = jnp.float32

#: Largest hidden size served (the TPU kernel keeps ``w_h`` whole in VMEM).
MAX_HIDDEN = 1024
#: Supported dtypes of the recurrent weight (state and accumulation are always float32).
WEIGHT_DTYPES = common.WEIGHT_DTYPES


# ------------------------------------------------------------------------------------------
# Static choices
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LSTMBlockSizes(common.BlockSizes):
    """Static kernel choices (hashable: it travels as the op's one non-differentiable argument).

    The fields, their validation, :meth:`grid`, :meth:`padded` and :meth:`plan` are those of
    :class:`seqjax.kernels.common.BlockSizes` (``platform``, ``block_b``, ``block_h``,
    ``block_t``, ``num_warps``, ``num_stages``, ``vmem_limit_bytes``, ``interpret``,
    ``max_programs``); on GPU each program owns the four gate columns of its ``block_h`` units.
    """

    GATES: ClassVar[int] = 4
    # backward per step: acts 4 + c 1 + c_prev 1 + dhs 1 + dgates 4 (forward: 10); state:
    # scratch (2), the (bb, H) in/out blocks double-buffered (8)
    TPU_STEP_TILES: ClassVar[int] = 11
    TPU_STATE_TILES: ClassVar[int] = 10

    @classmethod
    def default(
        cls, shape: tuple[int, int, int], dtype: Any, platform: str, *, interpret: bool = False
    ) -> LSTMBlockSizes:
        """Block sizes for ``shape = (T, B, H)`` and weight ``dtype`` on ``platform``.

        ``platform`` is ``"gpu"``/``"cuda"``/``"rocm"``, ``"tpu"`` or ``"cpu"`` (the GPU-style
        kernel in interpret mode). GPU (persistent kernel, at most ``max_programs`` programs:
        :func:`~seqjax.kernels.common.default_max_programs`, the SMs of the local GPU, else
        132): ``block_h = 16`` (the most programs per batch row: ``Hp / 16`` of them, e.g. 48
        for ``H = 768``; doubled only if that alone exceeded the cap); ``block_b`` the smallest
        of 16, 32, 64, 128 whose batch blocks fit the programs left (``max_programs //
        hidden_blocks`` groups), else 128 with several blocks per program;
        ``num_warps`` so that the resident weight slice ``4 * Hp * block_h`` takes about 96
        registers a thread (4 to 16 warps). TPU: ``block_h`` is ``H`` rounded up to 128;
        ``block_b`` up to 128 rows and ``block_t`` the largest divisor of ``T`` up to 16, halved
        until the VMEM estimate fits 48 MiB.
        """
        return cls._default(shape, dtype, platform, interpret=interpret)


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


# GPU (Triton). Refs are whole arrays in global memory; a program addresses its tiles with
# ``pl.ds``: ``rows`` (its batch block), ``cols`` (its hidden block), K tiles of ``block_k``.


_tile = common.tile


def _fwd_weights(w_ref, cols, grid: common.PersistentGrid):
    """A program's resident forward weight slice: ``w[g][k] = w_ref[g, K tile k, cols]``."""
    return common.resident_weights(w_ref, cols, grid, 4, transposed=False)


def _bwd_weights(w_ref, cols, grid: common.PersistentGrid):
    """A program's resident backward weight slice: ``w[g][k] = w_ref[g, cols, K tile k]``."""
    return common.resident_weights(w_ref, cols, grid, 4, transposed=True)


def _fwd_step(t, rows, cols, w, carry, len_ref, gx_ref, hcar_ref, ccar_ref, acts_ref,
              grid: common.PersistentGrid):
    """One program's forward step ``t`` for one (batch block, hidden block) tile.

    Reads the whole ``h_{t-1} = hcar[t, rows, :]`` (the exchange buffer) K tile by K tile,
    computes the tile's four gate pre-activations, the cell update, and writes
    ``hcar[t + 1, rows, cols]``, ``ccar[t + 1, rows, cols]`` (and the activations). ``carry`` is
    the tile's ``(h_{t-1}, c_{t-1})``; returns ``(h_t, c_t)`` (the carry at ``t >= length``).
    """
    h_prev, c_prev = carry
    live = (t < len_ref[rows])[:, None]
    z = [gx_ref[t, g, rows, cols] for g in range(4)]
    for k in range(grid.k_tiles):
        h_k = hcar_ref[t, rows, _tile(k, grid.block_k)]
        for g in range(4):
            z[g] = z[g] + jnp.dot(h_k, w[g][k].astype(_F32), preferred_element_type=_F32)
    acts, c, h = _cell(*z, c_prev)
    h, c = jnp.where(live, h, h_prev), jnp.where(live, c, c_prev)
    hcar_ref[t + 1, rows, cols] = h
    ccar_ref[t + 1, rows, cols] = c
    if acts_ref is not None:
        for g in range(4):
            acts_ref[t, g, rows, cols] = acts[g]
    return h, c


def _fwd_init(rows, cols, h0_ref, c0_ref, hcar_ref, ccar_ref):
    """Write a tile's initial carry to row 0 of the carry outputs; return it."""
    h, c = h0_ref[rows, cols], c0_ref[rows, cols]
    hcar_ref[0, rows, cols] = h
    ccar_ref[0, rows, cols] = c
    return h, c


def _bwd_dh(t_next, rows, cols, w, dh, len_ref, dz_ref, grid: common.PersistentGrid,
            steps: int):
    """The tile's cotangent of ``h_{t_next - 1}`` as a carry: ``dz_{t_next} W^T [:, cols]``
    (all four gates, every K tile of the exchange buffer ``dz``) where step ``t_next`` is live,
    else ``dh`` unchanged (a padding step passes it through; ``t_next = T`` always does, its
    clamped read is discarded)."""
    live = (t_next < len_ref[rows])[:, None]
    src = jnp.minimum(t_next, steps - 1)
    acc = None
    for k in range(grid.k_tiles):
        for g in range(4):
            term = common.dot_nt(dz_ref[src, g, rows, _tile(k, grid.block_k)],
                                 w[g][k].astype(_F32))
            acc = term if acc is None else acc + term
    return jnp.where(live, acc, dh)


def _bwd_cell(t, rows, cols, dh, dc, len_ref, acts_ref, ccar_ref, dhs_ref, dz_ref):
    """The tile's pointwise backward of step ``t``: writes ``dz[t, :, rows, cols]`` (zero past
    the length) and returns the cotangent of ``c_{t-1}``."""
    live = (t < len_ref[rows])[:, None]
    acts = tuple(acts_ref[t, g, rows, cols] for g in range(4))
    dz, dc_prev = _cell_vjp(acts, jnp.tanh(ccar_ref[t + 1, rows, cols]), ccar_ref[t, rows, cols],
                            dh + dhs_ref[t, rows, cols], dc)
    for g in range(4):
        dz_ref[t, g, rows, cols] = jnp.where(live, dz[g], 0.0)
    return jnp.where(live, dc_prev, dc)


def _fwd_kernel_gpu(len_ref, gx_ref, w_ref, h0_ref, c0_ref, count_in_ref, hcar_ref, ccar_ref,
                    *rest, grid: common.PersistentGrid, steps: int, interpret: bool):
    """The persistent forward: program ``(n, p)``, time loop inside, one grid barrier a step.

    Refs (whole arrays): ``len [Bp]``, ``gx [T, 4, Bp, Hp]``, ``w [4, Hp, Hp]``, ``h0, c0
    [Bp, Hp]``, ``count [groups]`` int32 zeros (aliased to the last output) -> ``hcar, ccar
    [T+1, Bp, Hp]`` (row ``t`` is the carry step ``t`` reads; row 0 the initial carry),
    optionally ``acts [T, 4, Bp, Hp]``, then ``count``.
    """
    del count_in_ref  # the same buffer as count_ref
    *acts_ref, count_ref = rest
    acts_ref = acts_ref[0] if acts_ref else None
    prog = common.PersistentProgram(grid, count_ref, interpret=interpret)
    rows, cols, barrier = prog.rows, prog.cols, prog.barrier
    w = _fwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence
    outs = (len_ref, gx_ref, hcar_ref, ccar_ref, acts_ref)

    if prog.per_program == 1:  # the carry (h, c) of the tile stays in registers
        carry = _fwd_init(rows(0), cols, h0_ref, c0_ref, hcar_ref, ccar_ref)
        barrier(0)

        def step(t, carry):
            carry = _fwd_step(t, rows(0), cols, w, carry, *outs, grid)
            barrier(t + 1)
            return carry

        lax.fori_loop(0, steps, step, carry)
        return

    # Several batch blocks per program: each block's carry is re-read from the outputs.
    prog.each_block(lambda r: _fwd_init(r, cols, h0_ref, c0_ref, hcar_ref, ccar_ref))
    barrier(0)

    def step(t, _):
        prog.each_block(lambda r: _fwd_step(t, r, cols, w, (hcar_ref[t, r, cols],
                                                             ccar_ref[t, r, cols]), *outs, grid))
        barrier(t + 1)

    lax.fori_loop(0, steps, step, None)


def _fwd_kernel_seq(len_ref, gx_ref, w_ref, h0_ref, c0_ref, hcar_ref, ccar_ref, *acts_ref,
                    grid: common.PersistentGrid):
    """The sequential driver of :func:`_fwd_step` (interpret mode): grid ``(T + 1, hidden
    blocks, batch blocks)``, time outermost, no barrier. Phase 0 writes the initial carry;
    phase ``s`` runs step ``s - 1`` with the carry read back from the outputs. Same refs as
    :func:`_fwd_kernel_gpu`, without the counter."""
    acts_ref = acts_ref[0] if acts_ref else None
    s, rows, cols = common.sequential_program(grid)

    @pl.when(s == 0)
    def _():
        _fwd_init(rows, cols, h0_ref, c0_ref, hcar_ref, ccar_ref)

    @pl.when(s > 0)
    def _():
        t = s - 1
        _fwd_step(t, rows, cols, _fwd_weights(w_ref, cols, grid),
                  (hcar_ref[t, rows, cols], ccar_ref[t, rows, cols]),
                  len_ref, gx_ref, hcar_ref, ccar_ref, acts_ref, grid)


def _bwd_kernel_gpu(len_ref, w_ref, acts_ref, ccar_ref, dhs_ref, dht_ref, dct_ref, count_in_ref,
                    dz_ref, dh0_ref, dc0_ref, count_ref, *, grid: common.PersistentGrid,
                    steps: int, interpret: bool):
    """The persistent backward, reverse time: step ``t`` takes the tile's ``dh`` from the
    exchange buffer ``dz_{t+1}`` (:func:`_bwd_dh`), writes ``dz_t`` (:func:`_bwd_cell`), then
    one grid barrier; after the loop ``dh0 = dz_0 W^T`` (where step 0 is live).

    Refs: ``len [Bp]``, ``w [4, Hp, Hp]``, ``acts [T, 4, Bp, Hp]``, ``ccar [T+1, Bp, Hp]``,
    ``dhs [T, Bp, Hp]``, ``dht, dct [Bp, Hp]``, ``count [groups]`` -> ``dz [T, 4, Bp, Hp]``,
    ``dh0, dc0 [Bp, Hp]`` (also the carries' home when a program has several batch blocks),
    ``count``.
    """
    del count_in_ref
    prog = common.PersistentProgram(grid, count_ref, interpret=interpret)
    rows, cols, barrier = prog.rows, prog.cols, prog.barrier
    w = _bwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence
    cell_refs = (len_ref, acts_ref, ccar_ref, dhs_ref, dz_ref)

    def tile_step(t, r, dh, dc):
        dh = _bwd_dh(t + 1, r, cols, w, dh, len_ref, dz_ref, grid, steps)
        return dh, _bwd_cell(t, r, cols, dh, dc, *cell_refs)

    if prog.per_program == 1:  # the carry (dh, dc) of the tile stays in registers
        r = rows(0)

        def step(s, carry):
            carry = tile_step(steps - 1 - s, r, *carry)
            barrier(s)
            return carry

        dh, dc = lax.fori_loop(0, steps, step, (dht_ref[r, cols], dct_ref[r, cols]))
        dh0_ref[r, cols] = _bwd_dh(0, r, cols, w, dh, len_ref, dz_ref, grid, steps)
        dc0_ref[r, cols] = dc
        return

    def init(r):
        dh0_ref[r, cols] = dht_ref[r, cols]
        dc0_ref[r, cols] = dct_ref[r, cols]

    prog.each_block(init)

    def step(s, _):
        def block(r):
            dh0_ref[r, cols], dc0_ref[r, cols] = tile_step(steps - 1 - s, r, dh0_ref[r, cols],
                                                           dc0_ref[r, cols])

        prog.each_block(block)
        barrier(s)

    lax.fori_loop(0, steps, step, None)

    def finish(r):
        dh0_ref[r, cols] = _bwd_dh(0, r, cols, w, dh0_ref[r, cols], len_ref, dz_ref, grid, steps)

    prog.each_block(finish)


def _bwd_kernel_seq(len_ref, w_ref, acts_ref, ccar_ref, dhs_ref, dht_ref, dct_ref, dz_ref,
                    dh0_ref, dc0_ref, *, grid: common.PersistentGrid, steps: int):
    """The sequential driver of :func:`_bwd_dh` / :func:`_bwd_cell` (interpret mode): grid
    ``(T + 1, hidden blocks, batch blocks)``; phase ``s < T`` runs step ``T - 1 - s`` with the
    tile's carry in ``dh0, dc0`` (``dht, dct`` at ``s = 0``), phase ``T`` the final
    ``dh0 = dz_0 W^T``. Same refs as :func:`_bwd_kernel_gpu`, without the counter."""
    s, rows, cols = common.sequential_program(grid)
    w = _bwd_weights(w_ref, cols, grid)

    @pl.when(s < steps)
    def _():
        t = steps - 1 - s
        first = s == 0
        dh = jnp.where(first, dht_ref[rows, cols], dh0_ref[rows, cols])
        dc = jnp.where(first, dct_ref[rows, cols], dc0_ref[rows, cols])
        dh = _bwd_dh(t + 1, rows, cols, w, dh, len_ref, dz_ref, grid, steps)
        dc0_ref[rows, cols] = _bwd_cell(t, rows, cols, dh, dc, len_ref, acts_ref, ccar_ref,
                                        dhs_ref, dz_ref)
        dh0_ref[rows, cols] = dh

    @pl.when(s == steps)
    def _():
        dh0_ref[rows, cols] = _bwd_dh(0, rows, cols, w, dh0_ref[rows, cols], len_ref, dz_ref,
                                      grid, steps)


# TPU (Mosaic)


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


def _fwd_call(bs: LSTMBlockSizes, steps: int, batch_p: int, hidden_p: int, save: bool,
              grid: common.PersistentGrid | None = None):
    """The forward ``pallas_call``: ``(len, gx4, w4, h0, c0) -> (hcar, ccar[, acts])`` on GPU,
    ``-> (hs, cs[, acts])`` on TPU (see the kernels for shapes)."""
    f32 = common.f32
    name = "seqjax_lstm_fwd" + ("_res" if save else "")
    if bs.platform == common.GPU:
        out_shape = [f32(steps + 1, batch_p, hidden_p)] * 2
        if save:
            out_shape.append(f32(steps, 4, batch_p, hidden_p))
        return common.persistent_call(bs, grid, steps + 1,
                                      functools.partial(_fwd_kernel_gpu, steps=steps),
                                      _fwd_kernel_seq, out_shape, name)
    specs = common.TpuSpecs(bs.block_b, bs.block_t, hidden_p, steps // bs.block_t)
    out_shape = [f32(steps, batch_p, hidden_p)] * 2
    out_specs = [specs.seq()] * 2
    if save:
        out_shape.append(f32(steps, 4, batch_p, hidden_p))
        out_specs.append(specs.gates(4))
    return common.tpu_call(
        bs, functools.partial(_fwd_kernel_tpu, block_t=bs.block_t), specs, batch_p=batch_p,
        in_specs=[specs.lengths(), specs.gates(4), specs.weight(4), specs.state(),
                  specs.state()],
        out_specs=out_specs, out_shape=out_shape, scratch=2, name=name)


def _bwd_call(bs: LSTMBlockSizes, steps: int, batch_p: int, hidden_p: int,
              grid: common.PersistentGrid | None = None):
    """The backward ``pallas_call``. GPU: ``(len, w4, acts, ccar, dhs, dhT, dcT) -> (dz, dh0,
    dc0)``; TPU: ``(len, w4, acts, cs, cprev, dhs, dhT, dcT) -> (dz, dh0, dc0)``."""
    f32 = common.f32
    out_shape = [f32(steps, 4, batch_p, hidden_p), f32(batch_p, hidden_p), f32(batch_p, hidden_p)]
    if bs.platform == common.GPU:
        return common.persistent_call(bs, grid, steps + 1,
                                      functools.partial(_bwd_kernel_gpu, steps=steps),
                                      functools.partial(_bwd_kernel_seq, steps=steps), out_shape,
                                      "seqjax_lstm_bwd")
    nt = steps // bs.block_t
    specs = common.TpuSpecs(bs.block_b, bs.block_t, hidden_p, nt, reverse=True)
    seq, state = specs.seq(), specs.state()
    return common.tpu_call(
        bs, functools.partial(_bwd_kernel_tpu, block_t=bs.block_t, time_blocks=nt), specs,
        batch_p=batch_p,
        in_specs=[specs.lengths(), specs.weight(4), specs.gates(4), seq, seq, seq, state, state],
        out_specs=[specs.gates(4), state, state], out_shape=out_shape, scratch=2,
        name="seqjax_lstm_bwd")


def _fwd(w_h, gx, carry0, lengths, block_sizes: LSTMBlockSizes, save: bool = True):
    """Forward: relayout, run the kernel, unpad. Returns ``((hs, (h_T, c_T)), residuals)``."""
    bs = block_sizes
    steps, batch, hidden = common.check_kernel_args(
        gx, 4, [("w_h", w_h)], zip(("carry0 h0", "carry0 c0"), carry0), lengths)
    batch_p, hidden_p, grid = bs.plan(steps, batch, hidden)
    lens = common.kernel_lengths(lengths, steps, batch, batch_p)
    gates_first = gx.reshape(steps, batch, 4, hidden).transpose(0, 2, 1, 3)
    gx4 = common.pad_bh(gates_first, batch_p, hidden_p)
    w4 = common.gate_major_weights(bs, w_h, hidden_p)
    h0, c0 = (common.pad_bh(x, batch_p, hidden_p) for x in carry0)
    call = _fwd_call(bs, steps, batch_p, hidden_p, save, grid)
    if bs.platform == common.GPU:
        hcar, ccar, *acts = call(lens, gx4, w4, h0, c0)
    else:
        hs, cs, *acts = call(lens[:, None], gx4, w4, h0, c0)
        hcar, ccar = jnp.concatenate([h0[None], hs]), jnp.concatenate([c0[None], cs])
    hs = common.live_outputs(hcar, lens, batch, hidden)
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
    w4 = common.gate_major_weights(bs, w_h, hidden_p)
    dhs_p, dht_p, dct_p = (common.pad_bh(x.astype(_F32), batch_p, hidden_p)
                           for x in (dhs, dht, dct))
    grid = bs.plan(steps, batch, hidden)[2]
    call = _bwd_call(bs, steps, batch_p, hidden_p, grid)
    if bs.platform == common.GPU:
        dz, dh0, dc0 = call(lens, w4, acts, ccar, dhs_p, dht_p, dct_p)
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
