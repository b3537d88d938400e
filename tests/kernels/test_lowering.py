"""The fused LSTM kernel lowers for ``cuda`` (Triton) and ``tpu`` (Mosaic) on a CPU-only machine.

``jax.jit(f).trace(*args).lower(lowering_platforms=(p,))`` runs the whole Pallas lowering for
platform ``p``: it fails where Pallas would fail on the device (an op Triton or Mosaic does not
lower, a bad block shape), and succeeds with the kernel's IR in the module text. Interpret-mode
tests (``test_lstm.py``) prove the maths; these prove that Triton and Mosaic accept the kernels,
forward (no residuals), forward with residuals and backward, for float32 and bfloat16 weights,
for every block-size configuration :meth:`LSTMBlockSizes.default` dispatches to.
"""

import jax
import jax.numpy as jnp
import pytest

from seqjax.kernels import LSTMBlockSizes, lstm

S = jax.ShapeDtypeStruct
F32 = jnp.float32

# (T, B, H) shapes that reach every GPU configuration default() returns:
# block_h in {16, 32, 64} x block_b in {16, 32, 64} (num_warps follows from the tile size).
GPU_SHAPES = [(6, b, h) for b in (3, 4096, 9000) for h in (8, 32, 200)]
# TPU: default() picks block_b (<= 128, a multiple of 8), block_t (a divisor of T <= 16, smaller
# when VMEM is short) and block_h = H rounded up to 128; these shapes span the regimes: one small
# block, full 128-row blocks with 16-step time blocks, a prime T (block_t = 1), the largest H.
TPU_SHAPES = [(7, 3, 8), (32, 300, 256), (17, 40, 128), (8, 512, 1024)]


def _args(shape, dtype):
    steps, batch, hidden = shape
    return (S((hidden, 4 * hidden), dtype), S((steps, batch, 4 * hidden), F32),
            (S((batch, hidden), F32), S((batch, hidden), F32)), S((batch,), jnp.int32))


def _lower(fn, args, platform):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _check(shape, dtype, platform, style):
    bs = LSTMBlockSizes.default(shape, dtype, style)
    assert not bs.interpret
    args = _args(shape, dtype)

    def forward(w, gx, carry, lengths):
        return lstm(w, gx, carry, lengths, bs)

    def grads(w, gx, carry, lengths):
        def loss(w, gx, carry):
            hs, (h, c) = lstm(w, gx, carry, lengths, bs)
            return jnp.sum(hs * hs) + jnp.sum(h) + jnp.sum(c)

        return jax.grad(loss, argnums=(0, 1, 2))(w, gx, carry)

    fwd_text = _lower(forward, args, platform)
    assert "seqjax_lstm_fwd" in fwd_text and "seqjax_lstm_bwd" not in fwd_text
    bwd_text = _lower(grads, args, platform)
    assert "seqjax_lstm_fwd_res" in bwd_text and "seqjax_lstm_bwd" in bwd_text
    return bs, fwd_text, bwd_text


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "T{}B{}H{}".format(*s))
def test_lowers_for_cuda_triton(shape, dtype):
    _, fwd_text, bwd_text = _check(shape, dtype, "cuda", "gpu")
    # The Triton backend (not Mosaic GPU): the kernels are Triton custom calls.
    assert "__gpu$xla.gpu.triton" in fwd_text and "__gpu$xla.gpu.triton" in bwd_text


def test_gpu_shapes_cover_every_default_configuration():
    configs = {(bs.block_b, bs.block_h, bs.num_warps) for bs in
               (LSTMBlockSizes.default(s, F32, "gpu") for s in GPU_SHAPES)}
    assert {(b, h) for b, h, _ in configs} == {(b, h) for b in (16, 32, 64) for h in (16, 32, 64)}
    assert {w for _, _, w in configs} == {4, 8}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", TPU_SHAPES, ids=lambda s: "T{}B{}H{}".format(*s))
def test_lowers_for_tpu_mosaic(shape, dtype):
    _, fwd_text, bwd_text = _check(shape, dtype, "tpu", "tpu")
    assert "tpu_custom_call" in fwd_text and "tpu_custom_call" in bwd_text


def test_tpu_shapes_span_the_default_regimes():
    configs = [LSTMBlockSizes.default(s, F32, "tpu") for s in TPU_SHAPES]
    assert {bs.block_b for bs in configs} >= {8, 128}
    assert {bs.block_t for bs in configs} >= {1, 7, 16}
    assert {bs.block_h for bs in configs} == {128, 256, 1024}
