"""The one place where the recurrent backend is chosen.

``"scan"`` is the reference (:func:`jax.lax.scan` with a hand-written VJP); ``"pallas"`` is the
fused kernels of :mod:`seqjax.kernels`; ``"native"`` is the scan backend with an LSTM's or GRU's
time loop in a multithreaded C++ custom call on the CPU (:mod:`seqjax.kernels.cpu`);
``"parallel"`` is the associative scan of the cells linear in their state
(:mod:`seqjax.core.linear`); ``"auto"`` takes a kernel only where a measurement on the device
showed it faster than the scan (:data:`MEASURED_FASTER`), the native loop where
:data:`NATIVE_AUTO` lists it, the parallel scan for linear cells on
:data:`PARALLEL_AUTO_PLATFORMS`, the scan everywhere else.
Nothing else in seqjax branches on the platform. A request for ``"pallas"`` that cannot be
served (or for ``"native"``) falls back to the scan with a one-time warning saying why: never
silently, never wrong.

Why ``auto`` is conservative: the first kernels, measured on an H200 (JAX 0.11.2,
``benchmarks/rnn_gpu.py``), were correct but 3-20x slower than the scan at every shape tried
(LSTM bf16 B=16 T=1024 H=768: 653 ms fwd+bwd against the scan's 34.7), so a kernel is chosen
only for the cell family, platform, dtype and shape range of a row of :data:`MEASURED_FASTER`,
filled from ``benchmarks/gpu_check.sh`` runs (``docs/results/gpu/``).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["BACKENDS", "LINEAR_BACKENDS", "MEASURED_FASTER", "NATIVE_AUTO",
           "PARALLEL_AUTO_PLATFORMS", "native_unsupported_reason",
           "SEQUENTIAL_AUTO_PLATFORMS", "TIME_BLOCK", "BLOCK_FROM_BYTES", "BackendChoice",
           "Measurement", "explain_backend", "resolve_backend"]

#: The backend names :func:`resolve_backend` and :func:`seqjax.rnn` accept. ``"parallel"``
#: serves only cells linear in their state (``linear_recurrence = True``,
#: :mod:`seqjax.core.linear`): all time steps at once with :func:`jax.lax.associative_scan`.
BACKENDS = ("auto", "scan", "pallas", "parallel", "sequential", "native")
#: The backends that serve only cells linear in their state. ``"sequential"``: the parallel
#: backend's coefficients of all steps at once, combined step by step
#: (:func:`seqjax.core.linear.sequential_linear_scan`, a hand-written VJP) rather than by the
#: associative scan.
LINEAR_BACKENDS = ("parallel", "sequential")

#: ``(platform, Cell.native family)`` pairs where ``"auto"`` runs the ``"native"`` backend: the
#: scan backend with the time loop of a differentiated pass in a C++ custom call whose threads
#: split the hidden units (:mod:`seqjax.kernels.cpu`), float32 only. From
#: ``benchmarks/rnn_cpu.py`` on a 2-core CPU (issue #19, ``benchmarks/README.md``): the LSTM
#: fwd+bwd at 0.80-0.89x the scan's time at every shape measured (H=128..512, T=128 and 600, one
#: core and two; 2026-12-01); the GRU (``reset="after"``, since its loop projects its inputs
#: itself) at 0.76-0.84x with two cores (T=128 D=128 H=128/256/512, T=600 D=2 H=150, T=200
#: D=2 H=101) and 0.90-1.04x, a wash, with one (2026-12-02).
NATIVE_AUTO: tuple[tuple[str, str], ...] = (("cpu", "lstm"), ("cpu", "gru"))

#: Platforms where ``"auto"`` runs a linear-recurrence cell with the parallel scan rather than
#: the sequential one, from ``benchmarks/parallel_scan.py`` (see :func:`resolve_backend`).
#: Empty: on a 2-core CPU (2026-11-30, JAX 0.10.2, B=16 D=H=128 f32 fwd+bwd, a loaded machine)
#: the associative scan ran minGRU at 0.93-1.08x the speed of the sequential scan for T from
#: 128 to 4096 (T=1024: 131 ms against 121 ms; the LSTM scan 259 ms): with two cores its
#: O(log T) depth buys nothing and its extra passes over memory cost as much as the loop
#: overhead it saves. In time blocks (:data:`TIME_BLOCK`, 2026-12-01, quiet 2 cores, T=1024
#: D=2) still 1.4x the sequential scan's time (20.8 against 14.8 ms). No GPU/TPU measurement
#: yet; add ``"gpu"``/``"tpu"`` here only from one.
PARALLEL_AUTO_PLATFORMS: tuple[str, ...] = ()
#: Platforms where ``"auto"`` runs a linear-recurrence cell that sets ``sequential_on_auto``
#: (minGRU, minLSTM) with the ``"sequential"`` backend rather than the scan of its step: on a
#: 2-core CPU (2026-11-30, JAX 0.10.2, f32 fwd+bwd, one loaded core) 0.85-1.0x the scan's time
#: for minGRU and 0.69-0.88x for minLSTM at the Table 1 shapes (T=600-1024, B=16-32, D=2-87,
#: H=44-128); the LRU, 1.44-1.84x, does not set it (``benchmarks/README.md``, issue #21). In
#: time blocks (2026-12-01, quiet 2 cores, minGRU T=1024 B=16 D=2 H=128) 0.33x (14.8 ms
#: against the scan's 45.2).
SEQUENTIAL_AUTO_PLATFORMS: tuple[str, ...] = ("cpu",)
#: ``(platform, backend)`` -> time steps per block for the ``"parallel"`` and ``"sequential"``
#: backends (:func:`seqjax.core.linear.linear_recurrence`'s ``time_block``): time runs in
#: blocks of about that many steps, each block's coefficients, combination and outputs computed
#: together and recomputed in the backward pass, so no ``[T, B, N]`` intermediate leaves the
#: cache (a chunked scan: parallel within a block, sequential across blocks). On a CPU the
#: passes of ``[T, B, N]`` arrays through memory, not the arithmetic, set the time. minGRU
#: T=1024 B=16 D=2 H=128 f32 fwd+bwd on a quiet 2-core CPU (``benchmarks/parallel_scan.py``),
#: ms associative / sequential: whole sequence 44.5 / 37.6; blocks of 8: 25.0 / 19.9, of 16:
#: 24.4 / 15.9, of 32: 29.7 / 15.0 (the LSTM scan: 127-139). Platforms not listed (GPU, TPU:
#: unmeasured) run the whole sequence at once (``benchmarks/README.md``, issue #21).
TIME_BLOCK: dict[tuple[str, str], int] = {("cpu", "parallel"): 8, ("cpu", "sequential"): 16}
#: Blocks only pay once one ``[T, B, H]`` float32 array outgrows the cache: at T=128 B=16
#: H=128 (1 MiB) the whole sequence at once took 0.5x the time of blocks of 16, at T=512
#: (4 MiB) 1.6-1.8x (same benchmark). Below this many bytes the sequence runs whole.
BLOCK_FROM_BYTES = 2 * 2**20


def _time_block(platform: str, backend: str, cell: Any, batch: int, steps: int) -> int | None:
    """The block length :data:`TIME_BLOCK` gives a linear backend here, or ``None``."""
    if steps * batch * cell.hidden_size * 4 < BLOCK_FROM_BYTES:
        return None
    return TIME_BLOCK.get((platform, backend))


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """The resolved backend (``"scan"``, ``"pallas"`` or ``"parallel"``), the platform, and
    why."""

    name: str
    platform: str
    reason: str
    #: time steps per block for the linear backends (:data:`TIME_BLOCK`); ``None``: all at once
    time_block: int | None = None


@dataclasses.dataclass(frozen=True)
class Measurement:
    """A shape range where a fused kernel was measured faster than the scan (fwd+bwd).

    Attributes:
      cell: ``"LSTM"`` or ``"GRU"`` (the kernel family, the cell class's name).
      platform: ``"gpu"`` or ``"tpu"``.
      dtype: the input dtype name, e.g. ``"bfloat16"``.
      max_batch: largest batch the row covers (the kernels' advantage shrinks with the batch).
      hidden: ``(lo, hi)`` hidden sizes covered, inclusive.
      speedup: scan time / kernel time at the measured point.
      source: where the figure comes from (a file under ``docs/results/gpu/``).
    """

    cell: str
    platform: str
    dtype: str
    max_batch: int
    hidden: tuple[int, int]
    speedup: float
    source: str

    def covers(self, cell: str, platform: str, dtype: str, batch: int, hidden: int) -> bool:
        return (self.cell == cell and self.platform == platform and self.dtype == dtype
                and batch <= self.max_batch and self.hidden[0] <= hidden <= self.hidden[1])


#: Where ``auto`` picks a kernel. Empty: no GPU/TPU run has shown a kernel faster than the scan
#: (the v1 kernels were 3-20x slower on an H200, 2026-11-29). Add a row only from a committed
#: ``benchmarks/gpu_check.sh`` result.
MEASURED_FASTER: tuple[Measurement, ...] = ()

_GPU = ("gpu", "cuda", "rocm")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


#: Besides the step and its VJP, what a native loop computes itself (so a subclass must not
#: change it): both loops project their inputs (``seqjax.kernels.cpu.lstm_forward`` /
#: ``gru_forward``) and sum the gradients of the projection's and the recurrent weights.
_NATIVE_COMPUTES = {"lstm": ("input_projection", "recurrent_grads"),
                    "gru": ("input_projection", "recurrent_grads")}


def native_unsupported_reason(cell: Any, dtype: Any, platform: str) -> str | None:
    """Why the ``"native"`` backend cannot run ``cell`` here, or ``None``: it needs a cell that
    declares a native loop (``Cell.native``) whose step and step VJP (and input projection and
    weight gradients) are those of the class that declared it (a subclass changing the maths must
    set ``native = None`` or its own), float32 inputs, the CPU, and the library built
    (:mod:`seqjax.kernels.cpu`)."""
    cls = type(cell)
    family = getattr(cell, "native", None)
    if family is None:
        return f"{cls.__name__} has no native loop (Cell.native is None)"
    owner = next(c for c in cls.__mro__ if "native" in vars(c))
    for method in _NATIVE_COMPUTES.get(family, ()) + ("step_with_residuals", "step_vjp"):
        if getattr(cls, method) is not getattr(owner, method, None):
            return (f"{cls.__name__} overrides {method} of {owner.__name__}, whose native "
                    f"{family} loop would not compute it")
    if jnp.dtype(dtype) != jnp.float32:
        return f"dtype={jnp.dtype(dtype)}: the native loop runs float32 only"
    if platform != "cpu":
        return f"platform {platform!r}: the native loop runs on the CPU only"
    from seqjax.kernels import cpu  # lazily: builds the library on first use

    return cpu.unavailable_reason()


def resolve_backend(
    cell: Any, backend: str, *, dtype: Any, batch: int, steps: int, platform: str | None = None
) -> BackendChoice:
    """Resolve ``backend`` for one call.

    Args:
      cell: the cell to run.
      backend: ``"auto"``, ``"scan"``, ``"pallas"``, ``"parallel"``, ``"sequential"``
        (these two for linear-recurrence cells only: a ``ValueError`` naming the cell
        otherwise) or ``"native"`` (a cell with a native CPU loop, ``Cell.native``; falls back
        to the scan with a one-time warning saying why where it cannot run,
        :func:`native_unsupported_reason`). ``"auto"`` picks ``"native"`` where it can run for
        the platforms and families of :data:`NATIVE_AUTO`, ``"parallel"`` for linear cells on
        :data:`PARALLEL_AUTO_PLATFORMS`, else ``"sequential"`` for those that set
        ``sequential_on_auto`` on :data:`SEQUENTIAL_AUTO_PLATFORMS`.
      dtype: the input dtype.
      batch, steps: the batch size and sequence length.
      platform: ``jax.default_backend()`` unless given (tests pass it). With ``"pallas"`` the
        kernel itself is chosen per platform when the computation is lowered, so a function
        lowered ahead of time for ``cuda`` or ``tpu`` on a CPU host holds the compiled kernel.

    Returns:
      The :class:`BackendChoice`; its ``reason`` says why (``"auto: ..."`` names the table row
      or its absence).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(map(repr, BACKENDS))}")
    platform = platform or jax.default_backend()
    if backend == "scan":
        return BackendChoice("scan", platform, "requested")
    if backend == "native" or (backend == "auto"
                               and (platform, getattr(cell, "native", None)) in NATIVE_AUTO):
        why_not = native_unsupported_reason(cell, dtype, platform)
        if why_not is None:
            return BackendChoice("native", platform, "requested" if backend == "native" else
                                 f"auto: the native {cell.native} loop was measured faster than "
                                 f"the scan on {platform} (benchmarks/rnn_cpu.py)")
        if backend == "native":
            _warn_once(f"backend='native' unavailable for {cell!r}: {why_not}; using the scan "
                       "backend")
            return BackendChoice("scan", platform, f"native unavailable: {why_not}")
    linear = bool(getattr(cell, "linear_recurrence", False))
    if backend in LINEAR_BACKENDS:
        if not linear:
            raise ValueError(
                f"backend={backend!r} needs a cell whose recurrence is linear in its state "
                f"(linear_recurrence = True: MinGRU, MinLSTM, LRU); {type(cell).__name__} is "
                "not; use backend='scan' or 'auto'")
        return BackendChoice(backend, platform, "requested",
                             _time_block(platform, backend, cell, batch, steps))
    if backend == "auto" and linear and platform in PARALLEL_AUTO_PLATFORMS:
        return BackendChoice("parallel", platform,
                             f"auto: the parallel scan of a linear recurrence was measured "
                             f"faster than the sequential scan on {platform} "
                             "(benchmarks/parallel_scan.py)",
                             _time_block(platform, "parallel", cell, batch, steps))
    if (backend == "auto" and linear and platform in SEQUENTIAL_AUTO_PLATFORMS
            and getattr(cell, "sequential_on_auto", False)):
        return BackendChoice("sequential", platform,
                             f"auto: the hoisted sequential scan of {type(cell).__name__} was "
                             f"measured faster than the scan of its step on {platform} "
                             "(benchmarks/README.md)",
                             _time_block(platform, "sequential", cell, batch, steps))
    import seqjax.kernels as kernels  # local import: the kernels package imports Pallas

    why_not = kernels.unsupported_reason(cell.kernel, hidden_size=cell.hidden_size, dtype=dtype,
                                         batch=batch, steps=steps)
    if why_not is not None:
        why_not = f"{type(cell).__name__}: {why_not}"
    if backend == "pallas":
        if why_not is None:
            return BackendChoice("pallas", platform, "requested")
        _warn_once(f"backend='pallas' unavailable for {cell!r}: {why_not}; using the scan backend")
        return BackendChoice("scan", platform, f"pallas unavailable: {why_not}")
    kind = "gpu" if platform in _GPU else platform
    if kind not in ("gpu", "tpu"):
        return BackendChoice("scan", platform, f"auto: platform {platform!r} has no fused kernels")
    if why_not is not None:
        return BackendChoice("scan", platform, f"auto: {why_not}")
    name = type(cell).__name__
    dtype_name = jnp.dtype(dtype).name
    for row in MEASURED_FASTER:
        if row.covers(name, kind, dtype_name, batch, cell.hidden_size):
            return BackendChoice("pallas", platform,
                                 f"auto: the fused {name} kernel was measured {row.speedup:.2f}x "
                                 f"faster than the scan here ({row.source})")
    return BackendChoice(
        "scan", platform,
        f"auto: no {kind} measurement shows the fused {name} kernel faster than the scan at "
        f"B={batch}, H={cell.hidden_size}, {dtype_name} (seqjax.core.backend.MEASURED_FASTER); "
        "backend='pallas' forces it")


def explain_backend(cell: Any, backend: str, *, dtype: Any, batch: int, steps: int) -> str:
    """One line saying which backend ``rnn`` runs for these arguments and why (for logs)."""
    choice = resolve_backend(cell, backend, dtype=dtype, batch=batch, steps=steps)
    return f"{type(cell).__name__}: backend={backend!r} -> {choice.name} ({choice.reason})"
