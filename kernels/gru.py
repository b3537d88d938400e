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
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from . import common

__all__ = ["MAX_HIDDEN", "RESETS", "GRUBlockSizes", "gru", "gru_reference"]

Array = jax.Array
_F32 = jnp.float32

#: Largest hidden size served (the TPU kernel keeps ``w_h`` whole in VMEM).
MAX_HIDDEN = 1024
#: The reset variants: ``"after"`` (cuDNN/PyTorch) and ``"before"`` (Cho et al. 2014).
RESETS = ("after", "before")
#: Supported dtypes of the recurrent params (state and accumulation are always float32).
WEIGHT_DTYPES = common.WEIGHT_DTYPES

_sigmoid = common.sigmoid
_dot_nt = common.dot_nt


# ------------------------------------------------------------------------------------------
# Static choices
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRUBlockSizes(common.BlockSizes):
    """Static kernel choices (hashable: it travels as the op's one non-differentiable argument).

    The fields of :class:`seqjax.kernels.common.BlockSizes` (``platform``, ``block_b``,
    ``block_h``, ``block_t``, ``num_warps``, ``num_stages``, ``vmem_limit_bytes``,
    ``interpret``, ``max_programs``; on GPU each program owns the r, z, n columns of its
    ``block_h`` units), their validation, :meth:`grid`, :meth:`padded` and :meth:`plan`, plus:

    Attributes:
      reset: ``"after"`` (cuDNN/PyTorch) or ``"before"`` (Cho et al.); see the module docstring.
        Keyword-only.
    """

    reset: str = dataclasses.field(default="after", kw_only=True)

    GATES: ClassVar[int] = 3
    # backward per step: acts 4 + h_prev 1 + dhs 1 + dgx 3 (forward: 8); state: scratch (1),
    # b_hn, the (bb, H) in/out blocks double-buffered
    TPU_STEP_TILES: ClassVar[int] = 9
    TPU_STATE_TILES: ClassVar[int] = 8

    def _check_options(self) -> None:
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
        kernel in interpret mode). GPU: as :meth:`seqjax.kernels.LSTMBlockSizes.default`
        (persistent kernel, ``block_h = 16``, ``block_b`` the smallest of 16 to 128 whose batch
        blocks fit beside the hidden blocks in ``max_programs`` programs (the local GPU's SMs,
        else 132), ``num_warps`` from the resident weight slice ``3 * Hp * block_h``). TPU:
        ``block_h`` is ``H`` rounded up to 128; ``block_b`` up to 128 rows and ``block_t`` the
        largest divisor of ``T`` up to 16, halved until the VMEM estimate fits 48 MiB.
        """
        return cls._default(shape, dtype, platform, interpret=interpret, reset=reset)


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
    return common.resident_weights(w_ref, cols, grid, 3, transposed=False)


def _bwd_weights(w_ref, cols, grid: common.PersistentGrid):
    """A program's resident backward weight slice: ``w[g][k] = w_ref[g, cols, K tile k]``."""
    return common.resident_weights(w_ref, cols, grid, 3, transposed=True)


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
    prog = common.PersistentProgram(grid, count_ref, interpret=interpret)
    cols, barrier, each_block = prog.cols, prog.barrier, prog.each_block
    w = _fwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence
    phases = 1 if reset == "after" else 2

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
    s, rows, cols = common.sequential_program(grid)
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
    prog = common.PersistentProgram(grid, count_ref, interpret=interpret)
    cols, barrier, each_block = prog.cols, prog.barrier, prog.each_block
    w = _bwd_weights(w_ref, cols, grid)  # on-chip for the whole sequence

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
    s, rows, cols = common.sequential_program(grid)
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


def _fwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int, save: bool,
              grid: common.PersistentGrid | None = None):
    """The forward ``pallas_call``: ``(len, gx3, w3, b_hn, h0) -> (hcar[, tmp][, acts])`` on GPU,
    ``-> (hs[, acts])`` on TPU (see the kernels for shapes)."""
    f32 = common.f32
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
    specs = common.TpuSpecs(bs.block_b, bs.block_t, hidden_p, steps // bs.block_t)
    out_shape = [f32(steps, batch_p, hidden_p)]
    out_specs = [specs.seq()]
    if save:
        out_shape.append(f32(steps, ng, batch_p, hidden_p))
        out_specs.append(specs.gates(ng))
    b_hn = pl.BlockSpec((1, hidden_p), lambda b, s: (0, 0))
    return common.tpu_call(
        bs, functools.partial(_fwd_kernel_tpu, block_t=bs.block_t, reset=bs.reset), specs,
        batch_p=batch_p,
        in_specs=[specs.lengths(), specs.gates(3), specs.weight(3), b_hn, specs.state()],
        out_specs=out_specs, out_shape=out_shape, scratch=1, name=name)


def _bwd_call(bs: GRUBlockSizes, steps: int, batch_p: int, hidden_p: int,
              grid: common.PersistentGrid | None = None):
    """The backward ``pallas_call``. GPU: ``(len, w3, acts, hcar, dhs, dhT) -> (dgx, dh0[,
    tmp])``; TPU:
    ``(len, w3, acts, hprev, dhs, dhT) -> (dgx, dh0)``."""
    f32 = common.f32
    name = f"seqjax_gru_{bs.reset}_bwd"
    out_shape = [f32(steps, 3, batch_p, hidden_p), f32(batch_p, hidden_p)]
    if bs.platform == common.GPU:
        if bs.reset == "before":
            out_shape.append(f32(batch_p, hidden_p))
        return common.persistent_call(
            bs, grid, 1 + (2 if bs.reset == "after" else 3) * steps,
            functools.partial(_bwd_kernel_gpu, steps=steps, reset=bs.reset),
            functools.partial(_bwd_kernel_seq, steps=steps, reset=bs.reset), out_shape, name)
    nt = steps // bs.block_t
    specs = common.TpuSpecs(bs.block_b, bs.block_t, hidden_p, nt, reverse=True)
    seq, state = specs.seq(), specs.state()
    return common.tpu_call(
        bs, functools.partial(_bwd_kernel_tpu, block_t=bs.block_t, time_blocks=nt,
                              reset=bs.reset), specs,
        batch_p=batch_p,
        in_specs=[specs.lengths(), specs.weight(3), specs.gates(bs.saved_gates), seq, seq, state],
        out_specs=[specs.gates(3), state], out_shape=out_shape, scratch=1, name=name)


def _fwd(w_h, b_h, gx, h0, lengths, block_sizes: GRUBlockSizes, save: bool = True):
    """Forward: fold ``b_hr, b_hz`` into ``gx``, relayout, run the kernel, unpad.
    Returns ``((hs, h_T), residuals)``."""
    bs = block_sizes
    steps, batch, hidden = common.check_kernel_args(
        gx, 3, [("w_h", w_h), ("b_h", b_h)], [("h0", h0)], lengths)
    batch_p, hidden_p, grid = bs.plan(steps, batch, hidden)
    lens = common.kernel_lengths(lengths, steps, batch, batch_p)
    b3 = b_h.astype(_F32).reshape(3, hidden)
    gx3 = gx.reshape(steps, batch, 3, hidden) + jnp.concatenate(
        [b3[:2], jnp.zeros((1, hidden), _F32)])  # b_hn stays out: it sits inside r * (...)
    gx3 = common.pad_bh(gx3.transpose(0, 2, 1, 3), batch_p, hidden_p)
    b_hn = jnp.pad(b3[2], (0, hidden_p - hidden))
    w3 = common.gate_major_weights(bs, w_h, hidden_p)
    h0_p = common.pad_bh(h0, batch_p, hidden_p)
    call = _fwd_call(bs, steps, batch_p, hidden_p, save, grid)
    if bs.platform == common.GPU:
        hcar, *rest = call(lens, gx3, w3, b_hn, h0_p)
        acts = rest[-1] if save else None
    else:
        hs, *rest = call(lens[:, None], gx3, w3, b_hn[None], h0_p)
        acts = rest[0] if save else None
        hcar = jnp.concatenate([h0_p[None], hs])
    hs = common.live_outputs(hcar, lens, batch, hidden)
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
    w3 = common.gate_major_weights(bs, w_h, hidden_p)
    dhs_p, dht_p = (common.pad_bh(x.astype(_F32), batch_p, hidden_p) for x in (dhs, dht))
    grid = bs.plan(steps, batch, hidden)[2]
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
