"""The fused kernels lower for ``cuda`` (Triton) and ``tpu`` (Mosaic) on a CPU-only machine.

``jax.jit(f).trace(*args).lower(lowering_platforms=(p,))`` runs the whole Pallas lowering for
platform ``p``: it fails where Pallas would fail on the device (an op Triton or Mosaic does not
lower, a bad block shape), and succeeds with the kernel's IR in the module text. Interpret-mode
tests (``test_lstm.py``, ``test_gru.py``) prove the maths; these prove that Triton and Mosaic
accept the kernels, forward (no residuals), forward with residuals and backward, for float32 and
bfloat16 weights: for the LSTM every block-size configuration :meth:`LSTMBlockSizes.default`
dispatches to; for the GRU (both reset variants) a set of shapes that reaches every value of each
block size and launch parameter :meth:`GRUBlockSizes.default` picks.
"""

import jax.numpy as jnp
import pytest
from helpers import F32, RESETS, lower_op
from seqjax.kernels import GRUBlockSizes, LSTMBlockSizes

# (T, B, H) shapes that reach every GPU configuration default() returns for the persistent
# kernel (block_h is always 16): block_b in {16, 32, 64, 128}, num_warps in {4, 8, 16}, one and
# several K tiles, one and several batch groups, one and several batch blocks per program; and
# the shapes of issue #16 (B=16 H=768, B=64 H=256 and 512).
GPU_SHAPES = [(6, 3, 8), (6, 16, 768), (6, 64, 256), (6, 64, 512), (6, 256, 256),
              (6, 512, 256), (6, 9000, 200)]
# TPU: default() picks block_b (<= 128, a multiple of 8), block_t (a divisor of T <= 16, smaller
# when VMEM is short) and block_h = H rounded up to 128; these shapes span the regimes: one small
# block, full 128-row blocks with 16-step time blocks, a prime T (block_t = 1), the largest H.
TPU_SHAPES = [(7, 3, 8), (32, 300, 256), (17, 40, 128), (8, 512, 1024)]


def _check(shape, dtype, platform, style):
    bs = LSTMBlockSizes.default(shape, dtype, style)
    assert not bs.interpret
    return (bs, *lower_op("lstm", bs, shape, dtype, platform))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "T{}B{}H{}".format(*s))
def test_lowers_for_cuda_triton(shape, dtype):
    _, fwd_text, bwd_text = _check(shape, dtype, "cuda", "gpu")
    # The Triton backend (not Mosaic GPU): the kernels are Triton custom calls.
    assert "__gpu$xla.gpu.triton" in fwd_text and "__gpu$xla.gpu.triton" in bwd_text


def gpu_defaults_reached(block_sizes, shapes):
    """What ``block_sizes.default`` picks on GPU over ``shapes`` in float32 and bfloat16: the
    values of ``block_b``, ``block_h``, ``num_warps``, and whether one and several K tiles,
    batch groups and batch blocks per program occur. Every grid fits its 132 programs."""
    configs = [(block_sizes.default(s, dt, "gpu"), s) for s in shapes
               for dt in (jnp.float32, jnp.bfloat16)]
    grids = [bs.grid(s[1], s[2]) for bs, s in configs]
    assert all(g.programs <= bs.max_programs == 132 for g, (bs, _) in zip(grids, configs))
    return {
        "block_b": {bs.block_b for bs, _ in configs},
        "block_h": {bs.block_h for bs, _ in configs},
        "num_warps": {bs.num_warps for bs, _ in configs},
        "several K tiles": {g.k_tiles > 1 for g in grids},
        "several batch groups": {g.batch_groups > 1 for g in grids},
        "several blocks per program": {g.blocks_per_program > 1 for g in grids},
    }


def tpu_defaults_reached(block_sizes, shapes):
    """The ``block_b``, ``block_t`` and ``block_h`` values ``block_sizes.default`` picks on TPU
    over ``shapes`` (float32)."""
    configs = [block_sizes.default(s, F32, "tpu") for s in shapes]
    return ({bs.block_b for bs in configs}, {bs.block_t for bs in configs},
            {bs.block_h for bs in configs})


EVERY_GPU_CASE = {"several K tiles": {False, True}, "several batch groups": {False, True},
                  "several blocks per program": {False, True}}


def test_gpu_shapes_cover_every_default_configuration():
    assert gpu_defaults_reached(LSTMBlockSizes, GPU_SHAPES) == {
        "block_b": {16, 32, 64, 128}, "block_h": {16}, "num_warps": {4, 8, 16}, **EVERY_GPU_CASE}


def test_cuda_lowering_is_the_persistent_kernel():
    """The lowered Triton module of the GPU kernels holds the grid barrier: global atomics, the
    spin ``while`` loop and block barriers; the grid is (hidden blocks, batch groups)."""
    shape = (6, 16, 768)
    bs, fwd_text, bwd_text = _check(shape, jnp.bfloat16, "cuda", "gpu")
    for text in (fwd_text, bwd_text):
        assert "atomic_rmw" in text and "while" in text and "barrier" in text
        assert "grid_x = 48 : i32, grid_y = 1 : i32" in text  # 768 / 16 hidden blocks
        assert "num_stages = 1 : i32" in text and f"num_warps = {bs.num_warps} : i32" in text


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", TPU_SHAPES, ids=lambda s: "T{}B{}H{}".format(*s))
def test_lowers_for_tpu_mosaic(shape, dtype):
    _, fwd_text, bwd_text = _check(shape, dtype, "tpu", "tpu")
    assert "tpu_custom_call" in fwd_text and "tpu_custom_call" in bwd_text


def test_tpu_shapes_span_the_default_regimes():
    block_b, block_t, block_h = tpu_defaults_reached(LSTMBlockSizes, TPU_SHAPES)
    assert block_b >= {8, 128} and block_t >= {1, 7, 16} and block_h == {128, 256, 1024}


# ---------------------------------------------------------------------------------------------
# GRU, both reset variants
# ---------------------------------------------------------------------------------------------

# GPU: the persistent kernel depends on the block sizes through its tile shapes, the K tiles,
# the batch groups and the batch blocks per program; these shapes reach every value of each that
# default() picks (block_b 16/32/128, several K tiles, several groups and blocks per program,
# 4/8/16 warps) and include issue #16's B=16 H=768.
GRU_GPU_SHAPES = [(6, 3, 8), (6, 16, 768), (6, 256, 256), (6, 9000, 200)]
GRU_TPU_SHAPES = TPU_SHAPES


def _check_gru(shape, dtype, reset, platform, style):
    bs = GRUBlockSizes.default(shape, dtype, style, reset=reset)
    assert not bs.interpret and bs.reset == reset
    return lower_op("gru", bs, shape, dtype, platform)


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", GRU_GPU_SHAPES, ids=lambda s: "T{}B{}H{}".format(*s))
def test_gru_lowers_for_cuda_triton(shape, dtype, reset):
    fwd_text, bwd_text = _check_gru(shape, dtype, reset, "cuda", "gpu")
    assert "__gpu$xla.gpu.triton" in fwd_text and "__gpu$xla.gpu.triton" in bwd_text


def test_gru_gpu_shapes_reach_every_default_value():
    assert gpu_defaults_reached(GRUBlockSizes, GRU_GPU_SHAPES) == {
        "block_b": {16, 32, 128}, "block_h": {16}, "num_warps": {4, 8, 16}, **EVERY_GPU_CASE}


def test_gru_cuda_lowering_is_the_persistent_kernel():
    """Both variants lower to the persistent kernel: global atomics, spin loops, barriers,
    grid (hidden blocks, batch groups)."""
    for reset in RESETS:
        fwd_text, bwd_text = _check_gru((6, 16, 768), jnp.bfloat16, reset, "cuda", "gpu")
        for text in (fwd_text, bwd_text):
            assert "atomic_rmw" in text and "while" in text and "barrier" in text
            assert "grid_x = 48 : i32, grid_y = 1 : i32" in text


# On TPU the wrapper upcasts w_h to float32 before the kernel, so a bfloat16 weight gives the
# same Mosaic kernel as float32: one bfloat16 case checks that path, float32 covers the regimes.
GRU_TPU_CASES = [(s, jnp.float32) for s in GRU_TPU_SHAPES] + [(GRU_TPU_SHAPES[0], jnp.bfloat16)]


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize(
    "shape,dtype", GRU_TPU_CASES,
    ids=lambda v: "T{}B{}H{}".format(*v) if isinstance(v, tuple) else jnp.dtype(v).name,
)
def test_gru_lowers_for_tpu_mosaic(shape, dtype, reset):
    fwd_text, bwd_text = _check_gru(shape, dtype, reset, "tpu", "tpu")
    assert "tpu_custom_call" in fwd_text and "tpu_custom_call" in bwd_text


def test_gru_tpu_shapes_span_the_default_regimes():
    block_b, block_t, block_h = tpu_defaults_reached(GRUBlockSizes, GRU_TPU_SHAPES)
    assert block_b >= {8, 128} and block_t >= {1, 7, 16} and block_h == {128, 256, 1024}
