"""The backend switch: ``auto`` takes a kernel only where a measurement says so, and
``backend="pallas"`` lowered ahead of time for ``cuda``/``tpu`` holds the compiled kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.core import backend as backend_mod

F32, BF16 = jnp.float32, jnp.bfloat16


@pytest.mark.parametrize("platform", ["gpu", "cuda", "tpu"])
def test_auto_takes_the_scan_where_no_measurement_says_otherwise(platform):
    cell = seqjax.LSTM(8, 768)
    choice = seqjax.resolve_backend(cell, "auto", dtype=BF16, batch=16, steps=1024,
                                    platform=platform)
    assert choice.name == "scan"
    assert "MEASURED_FASTER" in choice.reason and "B=16" in choice.reason
    assert seqjax.resolve_backend(seqjax.make_cell("rnn", 8, 768), "auto", dtype=F32, batch=16,
                                  steps=8, platform="cpu").name == "scan"


def test_auto_follows_the_measurement_table(monkeypatch):
    row = backend_mod.Measurement("LSTM", "gpu", "bfloat16", max_batch=64, hidden=(512, 1024),
                                  speedup=2.5, source="docs/results/gpu/example.json")
    monkeypatch.setattr(backend_mod, "MEASURED_FASTER", (row,))
    pick = lambda cell, dtype, batch, platform="cuda": seqjax.resolve_backend(  # noqa: E731
        cell, "auto", dtype=dtype, batch=batch, steps=128, platform=platform)
    chosen = pick(seqjax.LSTM(8, 768), BF16, 16)
    assert chosen.name == "pallas" and "2.50x" in chosen.reason and "example.json" in chosen.reason
    assert pick(seqjax.LSTM(8, 768), BF16, 128).name == "scan"  # batch past the row
    assert pick(seqjax.LSTM(8, 256), BF16, 16).name == "scan"  # hidden outside the row
    assert pick(seqjax.LSTM(8, 768), F32, 16).name == "scan"  # another dtype
    assert pick(seqjax.GRU(8, 768), BF16, 16).name == "scan"  # another kernel family
    assert pick(seqjax.LSTM(8, 768), BF16, 16, platform="tpu").name == "scan"
    line = seqjax.core.backend.explain_backend(seqjax.LSTM(8, 768), "scan", dtype=BF16, batch=16,
                                          steps=8)
    assert line.startswith("LSTM: backend='scan' -> scan")


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend='cudnn'"):
        seqjax.resolve_backend(seqjax.LSTM(2, 4), "cudnn", dtype=F32, batch=1, steps=1)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pallas_lowered_for_another_platform_holds_the_compiled_kernel(kind):
    """From this CPU host, ``rnn(backend="pallas")`` lowered for cuda is the Triton kernel (no
    interpret-mode loop), for tpu the Mosaic kernel; on the host itself it runs interpreted and
    equals the scan."""
    cell = seqjax.make_cell(kind, 3, 16)
    params = cell.init(jax.random.PRNGKey(0))
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    lengths = jnp.array([5, 0])

    def loss(params, xs, backend):
        ys, _ = seqjax.rnn(cell, params, xs, seq_lengths=lengths, backend=backend)
        return jnp.sum(ys * ys)

    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, xs))
    grad = jax.jit(jax.grad(loss), static_argnums=2)
    cuda = grad.trace(*specs, "pallas").lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in cuda and "stablehlo.while" not in cuda
    tpu = grad.trace(*specs, "pallas").lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in tpu and "__gpu$xla.gpu.triton" not in tpu
    got, want = grad(params, xs, "pallas"), grad(params, xs, "scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
