"""The fused linear scan (:mod:`seqjax.kernels.linear_scan`): interpret-mode values and
``jax.vjp`` gradients against the ``lax.scan`` reference (both kernel styles, both directions),
``rnn(..., backend="pallas")`` for minGRU/minLSTM against the scan backend (lengths and
``reverse`` are the caller's), and lowering for ``cuda`` (Triton) and ``tpu`` (Mosaic) from a
CPU-only machine, forward and backward, float32 and bfloat16.
"""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqjax.kernels import (
    ScanBlockSizes,
    linear_scan,
    linear_scan_reference,
    unsupported_reason,
)

import seqjax

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def _inputs(shape, dtype=F32, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    a = jax.random.uniform(k[0], shape, F32, 0.2, 1.0).astype(dtype)
    b = jax.random.normal(k[1], shape, F32).astype(dtype)
    h0 = jax.random.normal(k[2], shape[1:], F32)
    ct = jax.random.normal(k[3], shape, F32).astype(dtype)
    return a, b, h0, ct


@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "rev"])
@pytest.mark.parametrize("style,block_t", [("gpu", 1), ("tpu", 4)])
def test_interpret_matches_reference(style, block_t, reverse):
    shape = (9, 3, 5)  # T not a multiple of block_t; B * N = 15 features, padded
    a, b, h0, ct = _inputs(shape)
    bs = dataclasses.replace(ScanBlockSizes.default(shape, F32, style), interpret=True,
                             block_t=block_t)

    def kernel(a, b, h0):
        return linear_scan(a, b, h0, reverse=reverse, block_sizes=bs)

    def reference(a, b, h0):
        return linear_scan_reference(a, b, h0, reverse=reverse)

    hs, vjp = jax.vjp(kernel, a, b, h0)
    hs_ref, vjp_ref = jax.vjp(reference, a, b, h0)
    np.testing.assert_allclose(hs, hs_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(vjp(ct), vjp_ref(ct)):
        np.testing.assert_allclose(g, g_ref, atol=1e-5, rtol=1e-5)


def test_interpret_bfloat16_and_defaults():
    shape = (6, 2, 40)
    a, b, h0, ct = _inputs(shape, jnp.bfloat16, seed=1)
    hs = linear_scan(a, b, h0, interpret=True)
    assert hs.dtype == jnp.bfloat16
    np.testing.assert_allclose(hs.astype(F32), linear_scan_reference(a, b, h0).astype(F32),
                               atol=2e-2, rtol=2e-2)
    # default h0 = 0, and the loop matches a NumPy loop
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    h, want = np.zeros(shape[1:]), []
    for t in range(shape[0]):
        h = a32[t] * h + b32[t]
        want.append(h)
    hs = linear_scan(a.astype(F32), b.astype(F32), interpret=True)
    np.testing.assert_allclose(hs, np.stack(want), atol=1e-5)


@pytest.mark.parametrize("kind", ["mingru", "minlstm"])
def test_rnn_pallas_backend_matches_scan(kind):
    cell = seqjax.make_cell(kind, 3, 6)
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (3, 5, 3))
    lengths = jnp.array([5, 0, 2])
    h0 = 0.5 * jax.random.normal(jax.random.key(2), (3, 6))

    def loss(backend):
        def f(params, xs, h0):
            ys, h = seqjax.rnn(cell, params, xs, seq_lengths=lengths, reverse=True,
                               initial_carry=h0, backend=backend)
            return jnp.sum(ys * jnp.cos(ys)) + jnp.sum(h**2), (ys, h)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, out_s), g_s = loss("scan")(params, xs, h0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback: the kernel runs (interpreted on CPU)
        (_, out_k), g_k = loss("pallas")(params, xs, h0)
    for x, y in zip(jax.tree.leaves((out_s, g_s)), jax.tree.leaves((out_k, g_k))):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda p, x: seqjax.rnn(cell, p, x, backend="pallas"))(params, xs))
    assert "seqjax_linear_scan_fwd" in jaxpr


def test_lru_has_no_kernel_and_falls_back():
    cell = seqjax.make_cell("lru", 3, 4)
    assert cell.kernel is None  # complex: not the kernel's real elementwise product
    assert unsupported_reason("linear_scan", hidden_size=8, dtype=F32, batch=2, steps=3) is None
    params = cell.init(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (2, 4, 3))
    with pytest.warns(RuntimeWarning, match="pallas"):
        ys, _ = seqjax.rnn(cell, params, xs, backend="pallas")
    np.testing.assert_allclose(ys, seqjax.rnn(cell, params, xs, backend="scan")[0], atol=1e-6)


def test_bad_arguments():
    a = jnp.zeros((4, 2, 3))
    with pytest.raises(ValueError, match="a.shape"):
        linear_scan(a, jnp.zeros((4, 2, 4)))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        linear_scan(a.astype(jnp.complex64), a.astype(jnp.complex64))
    with pytest.raises(ValueError, match="h0.shape"):
        linear_scan(a, a, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="power of two"):
        ScanBlockSizes("gpu", 100)
    with pytest.raises(ValueError, match="multiple of 1024"):
        ScanBlockSizes("tpu", 512)


# (T, B, N) for lowering: a tiny padded one, B*N giving small and full GPU blocks, and on TPU
# a T that block_t does not divide.
LOWER_SHAPES = [(7, 3, 5), (100, 16, 1000)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("platform,style,marker", [
    ("cuda", "gpu", "__gpu$xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")])
def test_lowers_forward_and_backward(platform, style, marker, dtype):
    for shape in LOWER_SHAPES:
        bs = ScanBlockSizes.default(shape, dtype, style)
        assert not bs.interpret
        args = (S(shape, dtype), S(shape, dtype), S(shape[1:], F32))

        def forward(a, b, h0):
            return linear_scan(a, b, h0, block_sizes=bs)

        def grads(a, b, h0):
            def loss(a, b, h0):
                return jnp.sum(linear_scan(a, b, h0, block_sizes=bs).astype(F32) ** 2)
            return jax.grad(loss, argnums=(0, 1, 2))(a, b, h0)

        fwd = jax.jit(forward).trace(*args).lower(lowering_platforms=(platform,)).as_text()
        bwd = jax.jit(grads).trace(*args).lower(lowering_platforms=(platform,)).as_text()
        assert marker in fwd and marker in bwd
        assert "seqjax_linear_scan_fwd" in fwd and "seqjax_linear_scan_bwd" not in fwd
        assert "seqjax_linear_scan_bwd" in bwd


@pytest.mark.parametrize("platform,marker", [("cuda", "__gpu$xla.gpu.triton"),
                                             ("tpu", "tpu_custom_call")])
def test_rnn_pallas_lowers_the_compiled_kernel(platform, marker):
    cell = seqjax.make_cell("mingru", 8, 16)
    params = jax.tree.map(lambda p: S(p.shape, p.dtype), cell.init(jax.random.key(0)))

    def f(params, xs, lengths):
        return jax.grad(lambda p: jnp.sum(seqjax.rnn(cell, p, xs, seq_lengths=lengths,
                                                     backend="pallas")[0]))(params)

    text = jax.jit(f).trace(params, S((4, 6, 8), F32), S((4,), jnp.int32)).lower(
        lowering_platforms=(platform,)).as_text()
    assert marker in text and "seqjax_linear_scan_bwd" in text
