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

import dataclasses
import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "DEFAULT_MAX_PROGRAMS",
    "GPU",
    "TPU",
    "WEIGHT_DTYPES",
    "BlockSizes",
    "PersistentGrid",
    "PersistentProgram",
    "TpuSpecs",
    "cdiv",
    "check_block_sizes",
    "check_kernel_args",
    "default_max_programs",
    "default_persistent_blocks",
    "dot_nt",
    "f32",
    "gate_major_weights",
    "gpu_barrier",
    "grid_barrier",
    "interpret_arg",
    "is_persistent",
    "k_tiling",
    "kernel_lengths",
    "kernel_platform",
    "largest_divisor_at_most",
    "live_outputs",
    "next_pow2",
    "pad_bh",
    "persistent_call",
    "persistent_grid",
    "resident_num_warps",
    "resident_weights",
    "round_up",
    "sequential_program",
    "sigmoid",
    "tile",
    "tpu_call",
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


# ------------------------------------------------------------------------------------------
# Persistent GPU kernels: the grid plan and the grid-wide barrier
# ------------------------------------------------------------------------------------------

#: Default cap on the number of programs of a persistent GPU kernel: the SM count of an
#: H100/H200 SXM (132). Every program of a persistent kernel must be resident at once (they
#: wait for each other at a grid-wide barrier every step), so the grid must not exceed the SMs
#: of the GPU it runs on: lower it (``max_programs=`` of the block sizes) for smaller GPUs, e.g.
#: 114 for an H100 PCIe, 108 for an A100 (:func:`default_max_programs` does so for the GPU the
#: process sees).
DEFAULT_MAX_PROGRAMS = 132

_MAX_K_TILES = 8  # K tiles a step unrolls before the tile width is doubled (code size)
_MAX_BLOCK_K = 256  # widest K tile
_TILE_ELEMENTS = 8192  # cap on block_b * block_k: one [block_b, block_k] float32 tile of h


@dataclasses.dataclass(frozen=True)
class PersistentGrid:
    """How a persistent GPU kernel splits a ``[B, H]`` recurrence over programs.

    Program ``(n, p)`` owns hidden block ``n`` (``block_h`` units: the gate columns of those
    units) for the ``blocks_per_program`` batch blocks ``p * blocks_per_program + j`` of
    ``block_b`` rows. The hidden size is padded to ``hidden_p``, a multiple of ``block_k`` (the
    width of one K tile of the ``h @ W`` contraction: ``hidden_p // block_k`` tiles), which is a
    multiple of ``block_h``; the batch to ``batch_p``.
    """

    block_b: int
    block_h: int
    block_k: int
    hidden_p: int
    batch_groups: int
    blocks_per_program: int

    @property
    def hidden_blocks(self) -> int:
        return self.hidden_p // self.block_h

    @property
    def k_tiles(self) -> int:
        return self.hidden_p // self.block_k

    @property
    def batch_blocks(self) -> int:
        return self.batch_groups * self.blocks_per_program

    @property
    def batch_p(self) -> int:
        return self.batch_blocks * self.block_b

    @property
    def programs(self) -> int:
        return self.hidden_blocks * self.batch_groups


def k_tiling(hidden: int, block_h: int, block_b: int) -> tuple[int, int]:
    """``(hidden_p, block_k)``: the padded hidden size and the K-tile width of ``h @ W``.

    Triton tensors have power-of-two shapes, so ``h_{t-1} [block_b, H]`` is contracted in K tiles
    of ``block_k`` columns (a power of two, ``block_h <= block_k <= min(256, 8192 / block_b)``).
    ``block_k`` starts at ``block_h`` and doubles while more than 8 tiles would be needed;
    ``hidden_p`` is ``H`` rounded up to it; then ``block_k`` grows to the widest power of two
    (within the cap) that divides ``hidden_p``. E.g. ``H = 768`` -> 3 tiles of 256,
    ``H = 200`` -> ``hidden_p = 224``, 7 tiles of 32, ``H = 40`` -> 48, 3 tiles of 16.
    """
    cap = max(block_h, min(_MAX_BLOCK_K, _TILE_ELEMENTS // block_b))
    block_k = block_h
    while cdiv(hidden, block_k) > _MAX_K_TILES and block_k < cap:
        block_k *= 2
    hidden_p = round_up(hidden, block_k)
    while block_k < cap and hidden_p % (2 * block_k) == 0:
        block_k *= 2
    return hidden_p, block_k


def persistent_grid(batch: int, hidden: int, block_b: int, block_h: int,
                    max_programs: int) -> PersistentGrid:
    """The :class:`PersistentGrid` for ``[batch, hidden]`` with at most ``max_programs``
    programs: as many batch groups as fit beside the ``hidden_blocks`` programs of one group,
    each looping over ``blocks_per_program`` batch blocks per step.

    Raises:
      ValueError: if the hidden blocks alone exceed ``max_programs`` (a larger ``block_h`` is
        needed).
    """
    hidden_p, block_k = k_tiling(hidden, block_h, block_b)
    hidden_blocks = hidden_p // block_h
    if hidden_blocks > max_programs:
        raise ValueError(
            f"hidden={hidden} in blocks of block_h={block_h} gives {hidden_blocks} programs > "
            f"max_programs={max_programs} (all must be resident at once): use a larger block_h")
    blocks = cdiv(batch, block_b)
    per_program = cdiv(blocks, max_programs // hidden_blocks)
    return PersistentGrid(block_b, block_h, block_k, hidden_p, cdiv(blocks, per_program),
                          per_program)


def default_max_programs() -> int:
    """The program cap ``default()`` plans for: the SM count (``Device.core_count``) of the
    smallest CUDA GPU this process sees, else :data:`DEFAULT_MAX_PROGRAMS` (132: an H100/H200
    SXM; also what a CPU-only process lowering for ``cuda`` gets)."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this process
        return DEFAULT_MAX_PROGRAMS
    counts = [getattr(d, "core_count", None) for d in devices]
    counts = [c for c in counts if isinstance(c, int) and c > 0]
    return min(counts) if counts else DEFAULT_MAX_PROGRAMS


def default_persistent_blocks(batch: int, hidden: int, max_programs: int = DEFAULT_MAX_PROGRAMS
                              ) -> tuple[int, int, PersistentGrid]:
    """``(block_b, block_h, grid)`` the kernels' ``default()`` picks on GPU: ``block_h = 16``
    (the most programs per batch row; doubled only if the hidden blocks alone exceeded
    ``max_programs``), ``block_b`` the smallest of 16, 32, 64, 128 whose batch blocks all get a
    program of their own beside the hidden blocks, else 128 with several batch blocks looped
    over per program."""
    block_h = 16
    while k_tiling(hidden, block_h, 16)[0] // block_h > max_programs:
        block_h *= 2
    block_b = 16
    grid = persistent_grid(batch, hidden, block_b, block_h, max_programs)
    while block_b < 128 and grid.blocks_per_program > 1:
        block_b *= 2
        grid = persistent_grid(batch, hidden, block_b, block_h, max_programs)
    return block_b, block_h, grid


def resident_num_warps(weight_bytes: int, *, regs_per_thread: int = 96) -> int:
    """Warps (4 to 16, a power of two) so that a program's resident weight slice of
    ``weight_bytes`` spreads to about ``regs_per_thread`` 32-bit registers per thread."""
    want = cdiv(weight_bytes // 4, 32 * regs_per_thread)
    return min(16, max(4, next_pow2(want)))


def grid_barrier(count_ref, group, target, *, interpret: bool) -> None:
    """A barrier across the programs of one group of a persistent GPU kernel.

    Every program of the group calls it with the same ``target = (k + 1) * programs_in_group``
    at its ``k``-th barrier:

    1. a block-wide barrier: all of this program's global stores are issued;
    2. one atomic increment of ``count_ref[group]`` (Triton lowers a scalar atomic to one
       thread's ``atom.acq_rel.gpu`` and broadcasts the result to the program's threads: the
       release publishes the program's stores);
    3. a spin on atomic reads (``+ 0``, acquire-release) of the counter until it reaches
       ``target``: the read that ends the spin reads the last increment of the counter's
       release sequence, so everything every program stored before arriving happens-before
       this program's next loads (an atomic, not a plain or volatile load: its write effect
       keeps JAX and MLIR from deleting a loop whose result is unused);
    4. a block-wide barrier (the other threads of the program wait for the one that spun).

    The counter only grows within a launch (it starts at zero: the kernel takes it as a zero
    input aliased to an output), so no reset and no sense reversal are needed. Deadlock-free
    only when every program of the grid is resident at once (``PersistentGrid.programs`` <= the
    SMs). In interpret mode programs run one after another, so a spin could only end for a
    group of one program, where the increment alone reaches ``target``: there the barrier is
    the increment alone (and JAX 0.10's interpret mode cannot discharge an atomic inside a
    ``while`` loop).
    """
    from jax.experimental.pallas import triton as plgpu

    one, zero = np.int32(1), np.int32(0)
    if interpret:
        plgpu.atomic_add(count_ref, (group,), one)
        return
    plgpu.debug_barrier()
    seen = plgpu.atomic_add(count_ref, (group,), one) + one
    lax.while_loop(lambda c: c < target, lambda _: plgpu.atomic_add(count_ref, (group,), zero),
                   seen)
    plgpu.debug_barrier()


def tile(i, size: int):
    """``pl.ds`` of the ``i``-th block of ``size`` (``i`` a Python int or traced)."""
    from jax.experimental import pallas as pl

    if isinstance(i, int):
        return pl.ds(i * size, size)
    return pl.ds(pl.multiple_of(i * size, size), size)


def is_persistent(interpret: bool, grid: PersistentGrid) -> bool:
    """Whether a GPU-style kernel runs as the persistent kernel (always on the device; in
    interpret mode only for one hidden block, where its barrier never waits) rather than its
    sequential driver."""
    return not interpret or grid.hidden_blocks == 1


def persistent_call(bs: Any, grid: PersistentGrid, phases: int, kernel_gpu, kernel_seq,
                    out_shape, name: str):
    """A GPU-style ``pallas_call`` on whole-array refs, for block sizes ``bs`` (with
    ``num_warps``, ``num_stages``, ``interpret``).

    Either the persistent kernel ``kernel_gpu(*inputs, count_in, *outputs, count, grid=,
    interpret=)`` with grid ``(hidden blocks, batch groups)`` and a zero int32 counter per batch
    group (an input aliased to an extra last output, dropped here), or (interpret mode, several
    hidden blocks: :func:`is_persistent`) the sequential driver ``kernel_seq(*inputs,
    *outputs, grid=)`` with grid ``(phases, hidden blocks, batch blocks)``, phase outermost.
    Returns ``f(*inputs) -> outputs``.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    params = plgpu.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)
    if not is_persistent(bs.interpret, grid):
        return pl.pallas_call(
            functools.partial(kernel_seq, grid=grid),
            grid=(phases, grid.hidden_blocks, grid.batch_blocks),
            out_shape=out_shape, compiler_params=params, interpret=bs.interpret, name=name)
    count = jax.ShapeDtypeStruct((grid.batch_groups,), jnp.int32)

    def call(*inputs):
        outs = pl.pallas_call(
            functools.partial(kernel_gpu, grid=grid, interpret=bs.interpret),
            grid=(grid.hidden_blocks, grid.batch_groups),
            out_shape=[*out_shape, count],
            input_output_aliases={len(inputs): len(out_shape)},
            compiler_params=params, interpret=bs.interpret, name=name,
        )(*inputs, jnp.zeros(count.shape, count.dtype))
        return outs[:-1]

    return call


# ------------------------------------------------------------------------------------------
# The static choices every recurrent kernel takes
# ------------------------------------------------------------------------------------------

#: Supported dtypes of the recurrent params (state and accumulation are always float32).
WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

_TPU_VMEM_BUDGET = 48 * 2**20  # what default() plans for (v7x has 64 MiB per core)
_TPU_VMEM_CAP = 60 * 2**20


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static kernel choices shared by the recurrent kernels (hashable: a subclass travels as
    its op's one non-differentiable argument). Subclasses (:class:`seqjax.kernels.LSTMBlockSizes`,
    :class:`seqjax.kernels.GRUBlockSizes`) set the class constants of their family and may add
    fields.

    Attributes:
      platform: ``"gpu"`` (persistent Triton kernel) or ``"tpu"`` (Mosaic kernel).
      block_b: batch rows per block (GPU: a power of two >= 16, the minimum ``tl.dot`` size;
        TPU: a multiple of 8).
      block_h: hidden units per program (GPU: a power of two >= 16; each program owns the gate
        columns of its units); TPU: the whole padded hidden size, a multiple of 128.
      block_t: time steps per grid step (TPU only; divides ``T``). 1 on GPU.
      num_warps, num_stages: Triton launch parameters (GPU only). ``num_stages=1`` (no software
        pipelining): each step reads through global memory what other programs wrote before the
        grid barrier, and Triton's pipeliner would prefetch those loads across it.
      vmem_limit_bytes: Mosaic scoped-VMEM limit (TPU only; ``None``: the compiler's default).
      interpret: run in Pallas interpret mode (CPU tests); ``False`` to lower for the device.
      max_programs: GPU only: the most programs the persistent kernel may launch. They all wait
        for each other every step, so they must all be resident at once: keep it <= the SMs of
        the GPU (the field's default is 132, an H100/H200 SXM; :meth:`default` uses the SM
        count of the local GPU when the process has one: 114 on an H100 PCIe, 108 on an A100).
        Batch blocks beyond it are looped over inside the programs.
    """

    platform: str
    block_b: int
    block_h: int
    block_t: int = 1
    num_warps: int = 4
    num_stages: int = 1
    vmem_limit_bytes: int | None = None
    interpret: bool = False
    max_programs: int = DEFAULT_MAX_PROGRAMS

    #: Gates of the family: rows of its gate-major recurrent weight ``[G, Hp, Hp]``.
    GATES: ClassVar[int] = 0
    #: The TPU VMEM model: ``[block_b, Hp]`` float32 tiles per time step (the larger of forward
    #: and backward) and outside the time blocks (scratch and the state blocks).
    TPU_STEP_TILES: ClassVar[int] = 0
    TPU_STATE_TILES: ClassVar[int] = 0

    def __post_init__(self):
        check_block_sizes(self.platform, self.block_b, self.block_h, self.block_t)
        self._check_options()
        if self.max_programs < 1:
            raise ValueError(f"max_programs={self.max_programs} must be positive")

    def _check_options(self) -> None:
        """Validate a subclass's own fields (none here)."""

    @classmethod
    def tpu_vmem_bytes(cls, block_b: int, block_t: int, hidden_p: int) -> int:
        """VMEM the TPU kernels need (the larger of forward and backward), double-buffered
        blocks: the weight ``[G, Hp, Hp]`` (f32) double-buffered, ``TPU_STEP_TILES`` tiles per
        step of a time block (double-buffered) and ``TPU_STATE_TILES`` more."""
        tile = block_b * hidden_p * 4
        weight = 2 * cls.GATES * hidden_p * hidden_p * 4
        return weight + 2 * block_t * (cls.TPU_STEP_TILES * tile) + cls.TPU_STATE_TILES * tile

    @classmethod
    def _default(cls, shape: tuple[int, int, int], dtype: Any, platform: str, *,
                 interpret: bool, **fields):
        """What the subclasses' ``default()`` return (their docstrings say what it picks);
        ``fields`` are the subclass's own fields."""
        steps, batch, hidden = (int(s) for s in shape)
        if jnp.dtype(dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"dtype={jnp.dtype(dtype)} must be float32 or bfloat16")
        style, on_cpu = kernel_platform(platform)
        interpret = bool(interpret or on_cpu)
        if style == GPU:
            cap = default_max_programs()
            block_b, block_h, grid = default_persistent_blocks(batch, hidden, cap)
            weight_bytes = cls.GATES * grid.hidden_p * block_h * jnp.dtype(dtype).itemsize
            return cls(GPU, block_b, block_h, num_warps=resident_num_warps(weight_bytes),
                       interpret=interpret, max_programs=cap, **fields)
        block_h = round_up(hidden, 128)
        block_b = min(round_up(batch, 8), 128)
        block_t = largest_divisor_at_most(steps, 16)
        while cls.tpu_vmem_bytes(block_b, 1, block_h) > _TPU_VMEM_BUDGET and block_b > 8:
            block_b = max(8, round_up(block_b // 2, 8))
        while cls.tpu_vmem_bytes(block_b, block_t, block_h) > _TPU_VMEM_BUDGET and block_t > 1:
            block_t = largest_divisor_at_most(steps, block_t // 2)
        need = cls.tpu_vmem_bytes(block_b, block_t, block_h)
        limit = min(max(32 * 2**20, int(need * 1.25) + 4 * 2**20), _TPU_VMEM_CAP)
        return cls(TPU, block_b, block_h, block_t, vmem_limit_bytes=limit, interpret=interpret,
                   **fields)

    def grid(self, batch: int, hidden: int) -> PersistentGrid:
        """The GPU kernel's :class:`~seqjax.kernels.common.PersistentGrid` for ``[B, H]``."""
        if self.platform != GPU:
            raise ValueError("grid() is for the GPU kernel")
        return persistent_grid(batch, hidden, self.block_b, self.block_h, self.max_programs)

    def padded(self, batch: int, hidden: int) -> tuple[int, int]:
        """``(B_pad, H_pad)``: the batch and hidden sizes the kernel runs at."""
        if self.platform == GPU:
            grid = self.grid(batch, hidden)
            return grid.batch_p, grid.hidden_p
        if hidden > self.block_h:
            raise ValueError(
                f"hidden={hidden} > block_h={self.block_h}: on TPU block_h is all of H")
        return round_up(batch, self.block_b), round_up(hidden, self.block_h)

    def plan(self, steps: int, batch: int, hidden: int
             ) -> tuple[int, int, PersistentGrid | None]:
        """``(B_pad, H_pad, grid)`` for a ``[T, B, H]`` problem (``grid`` ``None`` on TPU).

        Raises:
          ValueError: on TPU if ``block_t`` does not divide ``T``.
        """
        if self.platform == TPU and steps % self.block_t:
            raise ValueError(f"block_t={self.block_t} must divide T={steps}")
        batch_p, hidden_p = self.padded(batch, hidden)
        return batch_p, hidden_p, (self.grid(batch, hidden) if self.platform == GPU else None)


# ------------------------------------------------------------------------------------------
# Wrapper helpers: argument checks, relayout and padding, the Mosaic pallas_call
# ------------------------------------------------------------------------------------------


def check_kernel_args(gx, gates: int, params, carries, lengths) -> tuple[int, int, int]:
    """Validate a recurrent op's arguments; return ``(T, B, H)``.

    ``gx`` must be ``[T, B, G H]`` float32 (``G = gates``), ``params`` (``(name, array)`` pairs:
    ``w_h`` first, ``[H, G H]``, then ``b_h`` if any, ``[G H]``) float32 or bfloat16, each
    carry (``(label, array)`` pairs) ``[B, H]`` float32, ``lengths`` ``[B]`` or ``None``, and
    ``T, B >= 1``.

    Raises:
      ValueError, TypeError: naming the argument, the expected and the received shape/dtype.
    """
    if gx.ndim != 3 or gx.shape[-1] % gates:
        raise ValueError(f"gx.shape={tuple(gx.shape)} must be [T, B, {gates}H]")
    steps, batch, width = gx.shape
    hidden = width // gates
    for name, x in params:
        want = (hidden, width) if name == "w_h" else (width,)
        if tuple(x.shape) != want:
            raise ValueError(f"{name}.shape={tuple(x.shape)} must be {want} for gx {gx.shape}")
    for name, x in params:
        if jnp.dtype(x.dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"{name}.dtype={x.dtype} must be float32 or bfloat16")
    if gx.dtype != jnp.float32:
        raise TypeError(f"gx.dtype={gx.dtype} must be float32 (state and accumulation are float32)")
    for label, x in carries:
        if tuple(x.shape) != (batch, hidden) or x.dtype != jnp.float32:
            raise ValueError(f"{label}: {x.shape} {x.dtype} must be ({batch}, {hidden}) float32")
    if lengths is not None and tuple(jnp.shape(lengths)) != (batch,):
        raise ValueError(f"lengths.shape={tuple(jnp.shape(lengths))} must be ({batch},)")
    if steps == 0 or batch == 0:
        raise ValueError(f"gx.shape={tuple(gx.shape)}: T and B must be positive")
    return steps, batch, hidden


def kernel_lengths(lengths, steps: int, batch: int, batch_p: int):
    """``[Bp]`` int32 lengths (all ``T`` for ``None``); padding rows get length 0."""
    lens = jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    return jnp.pad(lens, (0, batch_p - batch))


def gate_major_weights(bs: BlockSizes, w_h, hidden_p: int):
    """``w_h [H, G H]`` -> ``[G, Hp, Hp]`` (``w[k] = w_h[:, kH:(k+1)H]``, ``G = bs.GATES``),
    zero-padded; float32 on TPU, the weight dtype on GPU."""
    hidden = w_h.shape[0]
    w = w_h.reshape(hidden, bs.GATES, hidden).transpose(1, 0, 2)
    w = jnp.pad(w, ((0, 0), (0, hidden_p - hidden), (0, hidden_p - hidden)))
    return w.astype(jnp.float32) if bs.platform == TPU else w


def live_outputs(hcar, lens, batch: int, hidden: int):
    """``hs [T, B, H]`` from the carry output ``hcar [T+1, Bp, Hp]`` (row ``t + 1`` the carry
    after step ``t``), unpadded, zero at ``t >= lens[b]``."""
    steps = hcar.shape[0] - 1
    live = (jnp.arange(steps)[:, None] < lens[None, :batch])[..., None]
    return jnp.where(live, hcar[1:, :batch, :hidden], 0.0)


def f32(*shape: int) -> jax.ShapeDtypeStruct:
    """A float32 ``ShapeDtypeStruct`` (kernel outputs are float32)."""
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def resident_weights(w_ref, cols, grid: PersistentGrid, gates: int, *, transposed: bool):
    """A program's resident weight slice of a persistent kernel, loaded once (in the weight
    dtype): forward ``w[g][k] = w_ref[g, K tile k, cols]`` (``[block_k, block_h]``: the gate
    columns of its units); ``transposed`` (backward) ``w[g][k] = w_ref[g, cols, K tile k]``
    (``[block_h, block_k]``: the rows of ``W`` that feed its units)."""
    if transposed:
        return [[w_ref[g, cols, tile(k, grid.block_k)] for k in range(grid.k_tiles)]
                for g in range(gates)]
    return [[w_ref[g, tile(k, grid.block_k), cols] for k in range(grid.k_tiles)]
            for g in range(gates)]


class PersistentProgram:
    """Program ``(n, p)`` of a persistent GPU kernel (grid ``(hidden blocks, batch groups)``):
    its hidden block ``cols``, its ``j``-th batch block ``rows(j)``, the barrier of its batch
    group and a loop over its batch blocks. Build it inside the kernel."""

    def __init__(self, grid: PersistentGrid, count_ref, *, interpret: bool):
        from jax.experimental import pallas as pl

        self.grid, self.count_ref, self.interpret = grid, count_ref, interpret
        self.n, self.p = pl.program_id(0), pl.program_id(1)
        self.cols = tile(self.n, grid.block_h)
        self.per_program = grid.blocks_per_program

    def rows(self, j):
        """The program's ``j``-th batch block."""
        return tile(self.p * self.per_program + j, self.grid.block_b)

    def barrier(self, k) -> None:
        """The ``k``-th barrier: every program of group ``p`` has written what follows it."""
        grid_barrier(self.count_ref, self.p, (k + 1) * self.grid.hidden_blocks,
                     interpret=self.interpret)

    def each_block(self, fn) -> None:
        """``fn(rows(j))`` for each of the program's batch blocks, in a ``fori_loop`` (what
        ``fn`` returns is dropped)."""

        def body(j, _):
            fn(self.rows(j))

        lax.fori_loop(0, self.per_program, body, None)


def sequential_program(grid: PersistentGrid):
    """``(phase, rows, cols)`` of a sequential driver's program (grid ``(phases, hidden blocks,
    batch blocks)``)."""
    from jax.experimental import pallas as pl

    s, n, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    return s, tile(b, grid.block_b), tile(n, grid.block_h)


@dataclasses.dataclass(frozen=True)
class TpuSpecs:
    """The ``BlockSpec`` s of a Mosaic kernel on grid ``(batch blocks, time blocks)``; with
    ``reverse`` the time blocks are visited last to first."""

    block_b: int
    block_t: int
    hidden_p: int
    time_blocks: int
    reverse: bool = False

    def _time(self, s):
        return self.time_blocks - 1 - s if self.reverse else s

    def lengths(self):
        """``len [bb, 1]``."""
        from jax.experimental import pallas as pl

        return pl.BlockSpec((self.block_b, 1), lambda b, s: (b, 0))

    def weight(self, gates: int):
        """The whole ``w [G, Hp, Hp]``."""
        from jax.experimental import pallas as pl

        return pl.BlockSpec((gates, self.hidden_p, self.hidden_p), lambda b, s: (0, 0, 0))

    def state(self):
        """A ``[bb, Hp]`` state block."""
        from jax.experimental import pallas as pl

        return pl.BlockSpec((self.block_b, self.hidden_p), lambda b, s: (b, 0))

    def seq(self):
        """A ``[bt, bb, Hp]`` block of a per-step array."""
        from jax.experimental import pallas as pl

        return pl.BlockSpec((self.block_t, self.block_b, self.hidden_p),
                            lambda b, s: (self._time(s), b, 0))

    def gates(self, gates: int):
        """A ``[bt, G, bb, Hp]`` block of a per-step gate array."""
        from jax.experimental import pallas as pl

        return pl.BlockSpec((self.block_t, gates, self.block_b, self.hidden_p),
                            lambda b, s: (self._time(s), 0, b, 0))


def tpu_call(bs: BlockSizes, kernel, specs: TpuSpecs, *, batch_p: int, in_specs, out_specs,
             out_shape, scratch: int, name: str):
    """The Mosaic ``pallas_call`` of a recurrent kernel: grid ``(batch blocks, time blocks)``,
    the time axis sequential (``"arbitrary"``), ``scratch`` ``[bb, Hp]`` float32 VMEM scratch
    buffers, ``bs.vmem_limit_bytes`` and ``bs``'s interpret mode."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    return pl.pallas_call(
        kernel,
        grid=(batch_p // bs.block_b, specs.time_blocks),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((bs.block_b, specs.hidden_p), jnp.float32)] * scratch,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "arbitrary"), vmem_limit_bytes=bs.vmem_limit_bytes
        ),
        interpret=interpret_arg(bs.platform, bs.interpret),
        name=name,
    )
