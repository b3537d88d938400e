"""The LSTM and GRU time loops as native CPU custom calls (``backend="native"`` of
:func:`seqjax.rnn`).

XLA:CPU runs the per-step recurrent matmul of a :func:`jax.lax.scan` on one core (issue #19,
``benchmarks/README.md``). ``cpu_rnn.cc`` runs one chunk of an LSTM's or a GRU's (``reset=
"after"``) time loop as an XLA FFI
custom call whose threads each own a range of hidden units, keep those units' columns of
``W_h`` in their own cache, and meet once per step. :func:`lstm_forward` and
:func:`lstm_backward` (and the ``gru_`` pair) compute exactly the chunk loops of the scan backend
(:mod:`seqjax.core.recurrent`), the input projection (forward) and the weight gradients
(backward) included; the scan backend's glue (``dx = dgx W_x^T``, padding, masking) is shared.

The library is compiled on first use with the system's C++ compiler (``$CXX``, else ``g++``;
``-O3 -march=native`` against JAX's own FFI headers, :func:`jax.ffi.include_dir`) into
``$SEQJAX_CACHE_DIR`` (default ``~/.cache/seqjax``; a temporary folder if that is not
writable), keyed by the source, the flags, jaxlib and
the CPU: a few seconds once per machine. Without a compiler :func:`unavailable_reason` says
why, and the backend switch runs the scan instead.

Threads: :func:`threads` (``$SEQJAX_CPU_THREADS``, else the cores this process may run on, at
most one per :data:`MIN_UNITS_PER_THREAD` hidden units).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LOOPS", "MIN_UNITS_PER_THREAD", "gru_backward", "gru_chunk", "gru_chunk_vjp",
           "gru_forward", "library_path", "lstm_backward", "lstm_chunk", "lstm_chunk_vjp",
           "lstm_forward", "threads", "unavailable_reason"]

SOURCE = Path(__file__).with_name("cpu_rnn.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
_TARGETS = {"seqjax_lstm_forward": "SeqjaxLstmForward",
            "seqjax_lstm_backward": "SeqjaxLstmBackward",
            "seqjax_gru_forward": "SeqjaxGruForward",
            "seqjax_gru_backward": "SeqjaxGruBackward"}


#: Fewest hidden units per thread where :func:`threads` picks the count: below it the per-step
#: work is a few microseconds and a second thread costs more at the barrier than it saves.
#: ``python benchmarks/native_threads.py`` (grad of one layer, 2 idle cores, 2 threads / 1,
#: alternating, session 18): LSTM H=32 (T=50, B=64) 2.0, H=64 (T=128, B=32) 2.1-2.2, H=72
#: (T=200) 1.17, H=88 0.85-0.99, H=96 (D=128) 0.77, H=101 0.70, H=128 0.63; GRU H=32 3.0,
#: H=64 2.9-4.2, H=72 1.18, H=88 0.85-0.93, H=96 1.09, H=101 0.93, H=128 0.88. On a busy
#: machine a second thread is far worse below it: the H=32 LSTM's training step took 56 ms
#: with 2 threads, 3.7 with 1 (each step's barrier waits for the scheduler).
MIN_UNITS_PER_THREAD = 48


def threads(hidden: int | None = None) -> int:
    """Threads per call: ``$SEQJAX_CPU_THREADS`` if set (an int >= 1), else the number of
    cores this process may run on (``os.sched_getaffinity``; ``taskset -c 0`` gives 1), and
    given the ``hidden`` size, at most one per :data:`MIN_UNITS_PER_THREAD` units (one for
    ``H < 96``). The loops use at most one thread per 16 units whatever the setting."""
    env = os.environ.get("SEQJAX_CPU_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"SEQJAX_CPU_THREADS={env!r} must be an int >= 1")
        return n
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cores = max(1, os.cpu_count() or 1)
    return cores if hidden is None else max(1, min(cores, hidden // MIN_UNITS_PER_THREAD))


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dir() -> Path:
    root = os.environ.get("SEQJAX_CACHE_DIR") or Path.home() / ".cache" / "seqjax"
    return Path(root)


def _compiler() -> str:
    return os.environ.get("CXX") or "g++"


@functools.lru_cache(maxsize=None)
def _build(cxx: str, source: Path = SOURCE) -> tuple[Path | None, str | None]:
    """Compile ``source`` (``cpu_rnn.cc``, or another version of it: ``benchmarks/
    ab_native.py``) with ``cxx`` once per machine; ``(path, None)`` or ``(None, why not)``."""
    if shutil.which(cxx) is None:
        return None, f"no C++ compiler ({cxx!r} not found; set $CXX)"
    include = jax.ffi.include_dir()
    key = hashlib.sha256("\0".join(
        [source.read_text(), cxx, " ".join(FLAGS), jax.__version__,
         getattr(jax.lib, "__version__", "") or "", _cpu_id()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"seqjax-{os.getuid()}"):
        out = folder / f"cpu_rnn-{key}.so"
        if out.exists():
            return out, None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
            os.close(fd)
            break
        except OSError as err:
            why = f"cannot write the compiled library to {folder}: {err}"
    else:
        return None, why
    cmd = [cxx, *FLAGS, "-isystem", include, str(source), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        return None, f"compiling {source.name} failed ({' '.join(cmd)}): {proc.stderr[-2000:]}"
    os.replace(tmp, out)  # atomic: concurrent first uses (pytest-xdist workers) all succeed
    return out, None


@functools.lru_cache(maxsize=None)
def _register() -> str | None:
    """Build and register the FFI targets once per process; ``None`` or why not."""
    path, why = _build(_compiler())
    if path is None:
        return why
    try:
        register_library(path)
    except OSError as err:
        return f"cannot load {path}: {err}"
    return None


def register_library(path: Path, suffix: str = "") -> None:
    """Load a compiled ``cpu_rnn.cc`` and register its handlers as ``<target><suffix>``
    (``benchmarks/ab_native.py`` registers an older version beside the current one)."""
    lib = ctypes.cdll.LoadLibrary(str(path))
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target + suffix, jax.ffi.pycapsule(getattr(lib, symbol)),
                                    platform="cpu")


def unavailable_reason() -> str | None:
    """Why the native LSTM loop cannot run here (no compiler, say), or ``None``."""
    return _register()


def library_path() -> Path | None:
    """The compiled library (built now if need be), or ``None`` where it cannot be built."""
    return _build(_compiler())[0]


def _check_ready() -> None:
    why = _register()
    if why is not None:
        raise RuntimeError(f"the native CPU LSTM loop is unavailable: {why}")


def _t0(t0) -> jax.Array:
    return jnp.asarray(t0, jnp.int32).reshape(())


def _call(target: str, shapes, *args, hidden: int, aliases=None, **attrs):
    """Run the FFI handler ``target`` (built and registered on first use) on ``args`` (floating
    ones as float32; the step ``t0`` and ``lengths`` given as int32 by the caller) with
    :func:`threads` threads for ``hidden`` units and the attributes ``attrs``; ``shapes``: its
    float32 results' shapes; ``aliases``: results that may be written over an input (``{input
    index: result index}``)."""
    _check_ready()
    f32 = jnp.float32
    call = jax.ffi.ffi_call(target, tuple(jax.ShapeDtypeStruct(s, f32) for s in shapes),
                            vmap_method="sequential", input_output_aliases=aliases)
    args = [a.astype(f32) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in args]
    return call(*args, threads=np.int64(threads(hidden)), **attrs)


def lstm_forward(xs, w_x, b, w_h, h0, c0, t0, lengths, residuals: bool = True):
    """One chunk of the LSTM loop, input projection included: ``xs [K, B, D]``, ``w_x [D, 4H]``,
    ``b [4H]``, ``w_h [H, 4H]``, carry ``h0, c0 [B, H]``, ``t0`` the chunk's first step and
    ``lengths [B]`` int32 (steps ``t0 + s >= lengths[b]`` keep row ``b``'s carry).

    Returns ``(hs, cs, acts)``: the carry after each step ``[K, B, H]`` twice and the
    activated gates ``[K, B, 4H]`` (all float32); with ``residuals=False`` (a pass not
    differentiated) ``acts`` is empty (``[0]``), not computed."""
    k, b_, _ = xs.shape
    h, g = w_h.shape
    return _call("seqjax_lstm_forward", ((k, b_, h), (k, b_, h), (k, b_, g) if residuals else (0,)),
                 xs, w_x, b, w_h, h0, c0, _t0(t0), lengths.astype(jnp.int32), hidden=h)


def lstm_backward(dhs, acts, cs, c_first, w_h, dh, dc, t0, lengths, xs=None, hs=None,
                  h_first=None):
    """The reverse of :func:`lstm_forward` for one chunk: ``dhs [K, B, H]`` the cotangents of
    the outputs, the forward's ``acts`` and ``cs [K, B, H]`` with ``c_first [B, H]`` the cell
    state before the chunk (the state before step ``s`` is ``cs[s - 1]``, ``c_first`` for
    ``s = 0``; ``tanh(c_t)`` is recomputed from them), and the carry cotangent ``(dh, dc)``
    after the chunk. Given the chunk's inputs ``xs [K, B, D]`` and/or the forward's ``hs [K, B,
    H]`` with ``h_first [B, H]``, the weight gradients are summed in the loop as well, while
    each step's gate gradients are in cache.

    Returns ``(dgx [K, B, 4H], dh0, dc0, grads)``: the gate pre-activations' cotangents (zero
    at steps past a length), the carry cotangent before the chunk, and ``grads``, the chunk's
    sums ``{"w_x": [D, 4H], "b": [4H]}`` (given ``xs``) and ``{"w_h": [H, 4H]}`` (given
    ``hs``). ``dgx`` is written over ``acts`` where XLA can give up that buffer."""
    k, b, g = acts.shape
    h = g // 4
    empty = jnp.zeros((0,), jnp.float32)
    shapes = ((k, b, g), (b, h), (b, h),
              (xs.shape[-1], g) if xs is not None else (0,), (g,) if xs is not None else (0,),
              (h, g) if hs is not None else (0,))
    dgx, dh0, dc0, dw_x, db, dw_h = _call(
        "seqjax_lstm_backward", shapes, dhs, acts, cs, c_first, w_h, dh, dc, _t0(t0),
        lengths.astype(jnp.int32), empty if xs is None else xs,
        empty if hs is None else hs, empty if hs is None else h_first, hidden=h,
        aliases={1: 0})
    grads = ({} if xs is None else {"w_x": dw_x, "b": db}) | (
        {} if hs is None else {"w_h": dw_h})
    return dgx, dh0, dc0, grads


def _lengths(lengths, batch: int, steps: int) -> jax.Array:
    return jnp.full((batch,), steps, jnp.int32) if lengths is None else lengths


def lstm_chunk(cell, params, carry, t0, x_c, lengths, steps: int, residuals: bool = True):
    """The scan backend's forward chunk loop for an LSTM (``seqjax.core.recurrent``): carry
    ``(h, c)``, the chunk's inputs ``x_c [K, B, D]`` (projected here, with ``params["w_x"]``
    and ``params["b"]``, as ``cell.input_projection`` does), ``lengths [B]`` or ``None``
    (``steps``: the padded length).

    Returns ``(carry after the chunk, ((hs, cs), (acts,)))``: every step's carry and the
    activated gates (empty if not ``residuals``), all :func:`lstm_chunk_vjp` needs."""
    h0, c0 = carry
    hs, cs, acts = lstm_forward(x_c, params["w_x"], params["b"], params["w_h"], h0, c0, t0,
                                _lengths(lengths, h0.shape[0], steps), residuals)
    return (hs[-1], cs[-1]), ((hs, cs), (acts,))


#: ``dW_h`` is summed in the backward loop (each thread its units' columns, ``H x 4H/P`` floats,
#: added to once per block of steps, ``cpu_rnn.cc``'s ``kDwRows``) for ``W_h`` up to this size,
#: else left to one XLA matmul over the sequence. Measured (grad of an LSTM layer, B=32,
#: 2 threads, interleaved medians in one process, loop vs XLA): H=130 (T=600) 118-124 vs 129
#: ms; H=256 88 vs 94; H=512 237 vs 234; H=700 (B=16, T=80) 226 vs 216. Before the blocking
#: (one pass over the accumulator per step) H=256 was 96 vs 91.
LOOP_DW_H_BYTES = 2 * 1024 * 1024


def lstm_chunk_vjp(cell, params, res_c, carries_c, dh_c, dcarry, t0, x_c, lengths,
                   steps: int):
    """The scan backend's reverse chunk loop for an LSTM: ``res_c`` the chunk's ``(acts,)``,
    ``carries_c = (carries, first)``: the carry after each step ``([K, B, H], [K, B, H])`` and
    the carry before the chunk, ``dh_c [K, B, H]`` the outputs' cotangents,
    ``dcarry`` the carry's cotangent after the chunk, ``x_c [K, B, D]`` its inputs.

    Returns ``(dcarry before the chunk, dgx_c [K, B, 4H], {"w_x": dW_x, "b": db, "w_h":
    dW_h})``: the weight gradients over the chunk come from the loop (see
    :func:`lstm_backward`; ``dW_h`` up to :data:`LOOP_DW_H_BYTES`); ``dx_c`` is left to
    ``dgx_c``'s matmul (not computed at all where the inputs need no gradient)."""
    (acts,) = res_c
    dh, dc = dcarry
    w_h = params["w_h"]
    (hs, cs), (h_first, c_first) = carries_c
    loop_dw_h = w_h.size * 4 <= LOOP_DW_H_BYTES
    dgx, dh0, dc0, grads = lstm_backward(
        dh_c, acts, cs, c_first, w_h, dh, dc, t0, _lengths(lengths, dh.shape[0], steps), x_c,
        hs if loop_dw_h else None, h_first if loop_dw_h else None)
    return (dh0, dc0), dgx, grads


def gru_forward(xs, w_x, b_x, w_h, b_h, h0, t0, lengths, residuals: bool = True):
    """One chunk of the GRU loop (``reset="after"``), input projection included: ``xs [K, B,
    D]``, ``w_x [D, 3H]``, ``b_x [3H]``, ``w_h [H, 3H]``, ``b_h [3H]``, ``h0 [B, H]``, ``t0``
    and ``lengths`` as in :func:`lstm_forward`. Returns ``(hs, rzn, zn)``: the carry after
    each step ``[K, B, H]``, the gates ``r, z, n`` ``[K, B, 3H]`` (``dgx``'s shape: the backward
    writes it there) and ``h W_hn + b_hn`` ``[K, B, H]``; with ``residuals=False`` the last two
    are empty (``[0]``), not computed."""
    k, b, _ = xs.shape
    h, g = w_h.shape
    shapes = ((k, b, h),) + (((k, b, g), (k, b, h)) if residuals else ((0,),) * 2)
    return _call("seqjax_gru_forward", shapes, xs, w_x, b_x, w_h, b_h, h0, _t0(t0),
                 lengths.astype(jnp.int32), hidden=h)


def gru_backward(dhs, rzn, zn, hs, h_first, w_h, dh, t0, lengths, xs=None,
                 recurrent: bool = False):
    """The reverse of :func:`gru_forward` for one chunk: ``hs [K, B, H]`` the forward's
    outputs and ``h_first [B, H]`` the carry before the chunk (h before step ``s`` is
    ``hs[s - 1]``, ``h_first`` for ``s = 0``). Given the chunk's inputs ``xs [K, B, D]`` the
    input projection's weight gradients are summed in the loop as well, and with ``recurrent``
    those of ``h W_h + b_h``.

    Returns ``(dgx [K, B, 3H], dh0, grads)``: the gate pre-activations' cotangents, the carry
    cotangent before the chunk and the chunk's sums ``{"w_x": [D, 3H], "b_x": [3H]}`` (given
    ``xs``) and ``{"w_h": [H, 3H], "b_h": [3H]}`` (if ``recurrent``). With ``recurrent`` (so
    that nothing reads ``r`` from ``rzn`` afterwards) ``dgx`` is written over ``rzn`` where XLA
    can give up that buffer: it keeps a fwd+bwd's peak memory down by ``K B 3H`` floats (the
    T=128 B=32 H=256 layer's 36 MiB of temporaries to 24, under glibc's 32 MiB ``mmap``
    threshold: 47.5 -> 38 ms, ``benchmarks/README.md``)."""
    k, b, h = dhs.shape
    g = 3 * h
    proj = xs is not None
    shapes = ((k, b, g), (b, h), (xs.shape[-1], g) if proj else (0,), (g,) if proj else (0,),
              (h, g) if recurrent else (0,), (g,) if recurrent else (0,))
    dgx, dh0, dw_x, db_x, dw_h, db_h = _call(
        "seqjax_gru_backward", shapes, dhs, rzn, zn, hs, h_first, w_h, dh, _t0(t0),
        lengths.astype(jnp.int32), xs if proj else jnp.zeros((0,), jnp.float32),
        hidden=h, weights=np.bool_(recurrent), aliases={1: 0} if recurrent else None)
    grads = ({"w_x": dw_x, "b_x": db_x} if proj else {}) | (
        {"w_h": dw_h, "b_h": db_h} if recurrent else {})
    return dgx, dh0, grads


def gru_chunk(cell, params, h0, t0, x_c, lengths, steps: int, residuals: bool = True):
    """The scan backend's forward chunk loop for a GRU (``reset="after"``): ``x_c [K, B, D]``
    projected in the loop (with ``params["w_x"]`` and ``params["b_x"]``, as
    ``cell.input_projection`` does); returns ``(h after the chunk, (hs, (rzn, zn)))`` as
    :func:`lstm_chunk` does (the residuals empty if not ``residuals``; ``rzn[..., :H]`` is
    ``r``, as ``cell.recurrent_grads`` reads it from the scan's ``(rz, n, zn)``)."""
    hs, rzn, zn = gru_forward(x_c, params["w_x"], params["b_x"], params["w_h"], params["b_h"],
                                h0, t0, _lengths(lengths, h0.shape[0], steps), residuals)
    return hs[-1], (hs, (rzn, zn))


def gru_chunk_vjp(cell, params, res_c, carries_c, dh_c, dh, t0, x_c, lengths, steps: int):
    """The scan backend's reverse chunk loop for a GRU (``carries_c = (hs, h before the
    chunk)``, as :func:`lstm_chunk_vjp`'s): returns ``(dh before the chunk,
    dgx_c [K, B, 3H], grads)``: the weight gradients summed in the loop (``W_h``'s and ``b_h``'s
    up to :data:`LOOP_DW_H_BYTES`), ``dx_c`` left to ``dgx_c``'s matmul."""
    rzn, zn = res_c
    w_h = params["w_h"]
    hs, h_first = carries_c
    dgx, dh0, grads = gru_backward(dh_c, rzn, zn, hs, h_first, w_h, dh, t0,
                                   _lengths(lengths, dh.shape[0], steps), x_c,
                                   recurrent=w_h.size * 4 <= LOOP_DW_H_BYTES)
    return dh0, dgx, grads


#: ``Cell.native`` -> the forward and reverse chunk loops of that family.
LOOPS = {"lstm": (lstm_chunk, lstm_chunk_vjp), "gru": (gru_chunk, gru_chunk_vjp)}
