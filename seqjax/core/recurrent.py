"""Running a cell over sequences: :func:`rnn`, the one entry point every layer builds on.

The scan backend is the reference. It hoists the input projection out of the recurrence: the
loop body holds only the recurrent matmul ``h @ W_h``, and the projection ``x @ W_x + b`` is
one ``[K*B, D] @ [D, G]`` matmul per chunk of ``K = CHUNK`` steps (per chunk rather than for all
``T`` steps at once so that the gate pre-activations stay in cache; see :data:`CHUNK`). Its
hand-written VJP hoists the weight gradients the same way: the reverse-time loop computes only
the gate gradients and ``dh @ W_h^T`` per step, and ``dW_h``, ``dW_x``, ``db`` and ``dxs`` are
matmuls over each chunk's ``K*B`` rows.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.backend import BACKENDS, LINEAR_BACKENDS, _warn_once, resolve_backend
from seqjax.core.cells import Cell, check_carry, shape_of, state_dtype

Array = jax.Array

__all__ = ["rnn", "reverse_padded", "length_mask", "check_lengths"]


def concrete_value(x: Any) -> np.ndarray | None:
    """``x`` as a numpy array if its value is known now (not a tracer), else ``None``."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_lengths(lengths: Any, batch: int, steps: int, name: str = "seq_lengths",
                  steps_name: str = "T") -> Array | None:
    """Validate per-sequence lengths and return them as an ``int32 [B]`` array (``None`` stays
    ``None``). Every public entry point that takes lengths calls this.

    Accepts any array-like of integers (a ``jax.Array``, a numpy array, a list or tuple).

    Raises:
      TypeError: ``lengths`` is not an array of integers (floats and bools included).
      ValueError: its shape is not ``(batch,)``, or (only when its values are concrete, i.e.
        not under ``jit``) a value lies outside ``[0, steps]``; the message names the offending
        entries. Under ``jit`` only the shape and dtype are checked: out-of-range lengths then
        act as clipped to ``[0, steps]`` (a length ``> steps`` masks nothing, ``< 0``
        everything).
    """
    if lengths is None:
        return None
    if not hasattr(lengths, "dtype"):  # a list, a tuple, a Python int
        try:
            arr = np.asarray(lengths)
        except Exception as err:  # ragged lists, or a list holding tracers
            try:
                arr = jnp.asarray(lengths)
            except Exception:
                raise TypeError(f"{name} must be an array of {batch} integers, got "
                                f"{type(lengths).__name__}") from err
        if arr.dtype == object:
            raise TypeError(f"{name} must be an array of {batch} integers, got {lengths!r}")
        if arr.size == 0 and arr.dtype.kind == "f":  # [] -> float64 in numpy
            arr = arr.astype(np.int32)
        lengths = arr
    shape = tuple(lengths.shape)
    if shape != (batch,):
        raise ValueError(f"{name}.shape={shape} must be ({batch},) (one length per sequence)")
    dtype = lengths.dtype
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(f"{name}.dtype={dtype} must be an integer dtype")
    values = concrete_value(lengths)
    if values is None:  # traced: unknown values act as clipped to [0, steps] (documented)
        return jnp.clip(jnp.asarray(lengths, jnp.int32), 0, steps)
    if values.size:
        bad = np.flatnonzero((values < 0) | (values > steps))
        if bad.size:
            shown = ", ".join(f"{name}[{i}]={values[i]}" for i in bad[:8])
            more = f" (and {bad.size - 8} more)" if bad.size > 8 else ""
            raise ValueError(f"{name} must lie in [0, {steps_name}={steps}], got {shown}{more}"
                             if steps_name else
                             f"{name} must lie in [0, {steps}], got {shown}{more}")
    return jnp.asarray(lengths, jnp.int32)


def length_mask(lengths: Array | None, steps: int, batch: int) -> Array:
    """``[T, B]`` bool mask, ``True`` where ``t < lengths[b]`` (all ``True`` if ``None``).

    ``lengths``: ``[B]`` integers in ``[0, T]`` (validated as :func:`check_lengths` does; under
    ``jit`` only their shape and dtype).
    """
    for nm, v in (("steps", steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{nm}={v!r} must be an int >= 0")
    t = jnp.arange(steps)[:, None]
    if lengths is None:
        return jnp.ones((steps, batch), bool)
    lengths = check_lengths(lengths, batch, steps, "lengths")
    return t < lengths[None, :]


def reverse_padded(x: Array, lengths: Array | None) -> Array:
    """Reverse time-major ``x [T, B, ...]`` within each sequence's own length.

    Step ``t < lengths[b]`` goes to ``lengths[b] - 1 - t``; padding steps stay where they are.
    Its own inverse. With ``lengths=None`` it is ``x[::-1]``. ``lengths``: ``[B]`` integers in
    ``[0, T]`` (validated as :func:`check_lengths` does).
    """
    shape = shape_of(x, "x")
    if len(shape) < 2 and lengths is not None:
        raise ValueError(f"x.shape={shape} must be time-major [T, B, ...] (rank >= 2)")
    if lengths is None:
        if len(shape) < 1:
            raise ValueError(f"x.shape={shape} must be time-major [T, ...] (rank >= 1)")
        return x[::-1]
    steps = shape[0]
    lengths = check_lengths(lengths, shape[1], steps, "lengths")
    return _reverse_padded(x, lengths)


def _reverse_padded(x: Array, lengths: Array | None) -> Array:
    """:func:`reverse_padded` without validation (``lengths`` an ``int32 [B]`` array)."""
    if lengths is None:
        return x[::-1]
    steps = x.shape[0]
    t = jnp.arange(steps)[:, None]
    idx = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=0)


# ------------------------------------------------------------------------------------------
# The scan backend with a hand-written VJP
# ------------------------------------------------------------------------------------------


def _where_tree(m: Array, a: Any, b: Any) -> Any:
    """``where(m, a, b)`` leaf by leaf, ``m [B]`` broadcast over each leaf's trailing axes
    (carries may hold ``[B, H]`` states or ``[B, N, W]`` memories)."""
    def pick(x, y):
        return jnp.where(m.reshape(m.shape + (1,) * (jnp.ndim(x) - 1)), x, y)

    return jax.tree.map(pick, a, b)


#: Time steps whose input projection is computed together, right before they run. Hoisting the
#: projection of all T steps into one matmul writes a [T, B, G] array that the loop then reads
#: back from memory; per chunk it stays in cache (on a 2-core CPU, T=128, B=32, H=256: 36 ms ->
#: 22 ms for an LSTM forward). Either way the loop body holds only the recurrent matmul.
CHUNK = 16


def _chunked(x: Array, chunk: int) -> Array:
    """``[T, ...] -> [T // chunk, chunk, ...]`` (``T`` a multiple of ``chunk``)."""
    return x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])


def _unchunked(x: Array) -> Array:
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _pad_time(xs: Array, lengths: Array | None, chunk: int):
    """Pad ``xs [T, B, D]`` to a multiple of ``chunk`` steps; padding is masked by ``lengths``."""
    steps, batch = xs.shape[:2]
    padded = -(-steps // chunk) * chunk
    if padded == steps:
        return xs, lengths
    xs = jnp.pad(xs, ((0, padded - steps),) + ((0, 0),) * (xs.ndim - 1))
    if lengths is None:
        lengths = jnp.full((batch,), steps, jnp.int32)
    return xs, lengths


def _gate_blocks(cell: Cell, gx: Array):
    """The loop's ``xs`` for ``gx [..., G]``: the tuple of the cell's blocks
    (:meth:`Cell.gx_blocks`) when it asks for them (:attr:`Cell.split_gates_in_loop`), else
    ``(gx,)``."""
    if not getattr(cell, "split_gates_in_loop", False) or len(cell.gx_blocks()) < 2:
        return (gx,)
    return tuple(cell.split_gx(gx))


def _gate_join(blocks) -> Array:
    """Inverse of :func:`_gate_blocks` for one step: ``gx_t [B, G]``."""
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=-1)


def _native_loops(cell: Cell, native: bool):
    """The cell's native chunk loops (:data:`seqjax.kernels.cpu.LOOPS`) if ``native``, else
    ``None`` (the ``lax.scan`` of its step)."""
    if not native:
        return None
    from seqjax.kernels import cpu  # lazily: the native library is built on first use

    return cpu.LOOPS[cell.native]


def _scan_forward(cell: Cell, unroll: int, native: bool, params, xs, carry0, lengths,
                  save: bool):
    """Time-major forward loop over padded, chunked ``xs [T/K, K, B, D]`` (``native``: each
    chunk's steps in the cell's native CPU loop instead of a ``lax.scan``).

    Returns ``(hs [T/K, K, B, H] masked, final carry, (carries, residuals))``.
    """
    rp = cell.recurrent_params(params)
    loops = _native_loops(cell, native)
    padded = xs.shape[0] * xs.shape[1]

    def step(carry, inp):
        t, gx_t = inp
        new, res = cell.step_with_residuals(rp, carry, _gate_join(gx_t))
        if lengths is not None:
            new = _where_tree(t < lengths, new, carry)
        return new, ((new, res) if save else cell.carry_hidden(new))

    def block(carry, inp):
        ts, x_c = inp
        if loops is not None:
            carry, (new, res) = loops[0](cell, params, carry, ts[0], x_c, lengths, padded,
                                         residuals=save)
            return carry, ((new, res) if save else cell.carry_hidden(new))
        gx_c = _gate_blocks(cell, cell.project(params, x_c))
        return jax.lax.scan(step, carry, (ts, gx_c), unroll=unroll)

    n, k, batch = xs.shape[:3]
    ts = jnp.arange(n * k).reshape(n, k)
    carry, outs = jax.lax.scan(block, carry0, (ts, xs))
    carries, res = outs if save else (None, None)
    hs = cell.carry_hidden(carries) if save else outs
    if lengths is not None:
        hs = jnp.where((ts[:, :, None] < lengths)[..., None], hs, 0.0)
    return hs, carry, (carries, res)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _scan(cell: Cell, unroll: int, chunk: int, native: bool, params, xs, carry0, lengths):
    """``xs [T, B, D]`` (time-major, already reversed if need be) -> ``(hs [T, B, H], carry)``.

    ``native``: the steps of each chunk run in the cell's native CPU loop (the ``"native"``
    backend, :data:`seqjax.kernels.cpu.LOOPS`), which may also take over the input projection
    and weight gradients (the LSTM's does); the rest is the same."""
    steps = xs.shape[0]
    xs_p, lengths_p = _pad_time(xs, lengths, chunk)
    hs, carry, _ = _scan_forward(cell, unroll, native, params, _chunked(xs_p, chunk), carry0,
                                 lengths_p, save=False)
    return _unchunked(hs)[:steps], carry


def _scan_fwd(cell, unroll, chunk, native, params, xs, carry0, lengths):
    steps = xs.shape[0]
    xs_p, lengths_p = _pad_time(xs, lengths, chunk)
    xs_c = _chunked(xs_p, chunk)
    hs, carry, (carries, res) = _scan_forward(cell, unroll, native, params, xs_c, carry0,
                                              lengths_p, save=True)
    return (_unchunked(hs)[:steps], carry), (params, xs_c, carry0, lengths_p, carries, res)


def _scan_bwd(cell, unroll, chunk, native, saved, cts):
    """Reverse-time loop computing only gate gradients and ``dh @ W_h^T`` per step (or the
    cell's native reverse loop); per chunk, the input projection's VJP (``dW_x``, ``db``,
    ``dxs``) and ``dW_h`` as matmuls over the chunk's ``K * B`` rows."""
    params, xs_c, carry0, lengths, carries, res = saved
    loops = _native_loops(cell, native)
    dhs, dcarry_last = cts
    n, k = xs_c.shape[:2]
    steps = dhs.shape[0]
    dhs = _chunked(jnp.pad(dhs, ((0, n * k - steps),) + ((0, 0),) * (dhs.ndim - 1)), k)
    rp = cell.recurrent_params(params)  # w_h_t: transposed once, not per step
    # first[i] = the carry before chunk i (carry0, then each chunk's last; padding steps hold
    # the frozen carry): with the chunk's carries it gives the carry before each step, which
    # the native loops read in place and the others concatenate per chunk (prev_c).
    first = jax.tree.map(lambda c0, cs: jnp.concatenate([c0[None], cs[:-1, -1]]),
                         carry0, carries)

    def step(dcarry, inp):
        t, res_t, prev_t, dh_t = inp
        d_in = cell.with_hidden(dcarry, cell.carry_hidden(dcarry) + dh_t)
        dprev, dgx_t = cell.step_vjp(rp, res_t, prev_t, d_in)
        if lengths is not None:  # a padding step is the identity on the carry and outputs 0
            m = t < lengths
            dprev = _where_tree(m, dprev, dcarry)
            dgx_t = jnp.where(m[:, None], dgx_t, 0.0)
        return dprev, dgx_t

    acc_dtype = dhs.dtype

    # The projection's VJP: the cell's own project_vjp (matmul forms XLA:CPU runs 2-3x faster
    # than jax.vjp's) where the class defining it also defines the projection in use.
    cls = type(cell)
    owner = next((c for c in cls.__mro__ if "project_vjp" in vars(c)), None)
    if (owner is not None and cls.input_projection is vars(owner).get("input_projection")
            and cls.project is owner.project):
        def project_vjp(params, xs, dgx):
            dp, dxs = cell.project_vjp(params, xs, dgx)
            return {name: dp[name] if name in dp else jax.tree.map(jnp.zeros_like, v)
                    for name, v in params.items()}, dxs
    else:
        def project_vjp(params, xs, dgx):
            return jax.vjp(cell.project, params, xs)[1](dgx)

    def block(state, inp):
        dcarry, dparams = state
        ts, x_c, res_c, carries_c, first_c, dh_c = inp
        # the carry before each step of the chunk (XLA drops it where nothing reads it)
        prev_c = jax.tree.map(lambda f, cs: jnp.concatenate([f[None], cs[:-1]]),
                              first_c, carries_c)
        looped = {}  # weight gradients the native loop summed itself
        if loops is not None:
            dcarry, dgx_c, looped = loops[1](cell, params, res_c, (carries_c, first_c), dh_c,
                                             dcarry, ts[0], x_c, lengths, n * k)
        else:
            dcarry, dgx_c = jax.lax.scan(step, dcarry, (ts, res_c, prev_c, dh_c), reverse=True,
                                         unroll=unroll)
        dp, dx_c = project_vjp(params, x_c, dgx_c)
        dp = dict(dp)
        for name, g in cell.recurrent_grads(rp, res_c, prev_c, dgx_c).items():
            dp[name] = dp[name] + g
        dp.update(looped)  # the sums it replaces are dead code: XLA drops them
        dparams = jax.tree.map(lambda a, g: a + g.astype(acc_dtype), dparams, dp)
        return (dcarry, dparams), dx_c

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, acc_dtype), params)
    ts = jnp.arange(n * k).reshape(n, k)
    (dcarry0, dparams), dxs = jax.lax.scan(
        block, (dcarry_last, zeros), (ts, xs_c, res, carries, first, dhs), reverse=True
    )
    dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
    return dparams, _unchunked(dxs)[:steps], dcarry0, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def _scan_autodiff(cell: Cell, unroll: int, rp, gx, carry0, lengths, remat: bool,
                   states: bool = False):
    """The same loop differentiated by JAX (``remat=True``: only carries are kept).

    Returns ``(hs, carry)``; with ``states=True`` ``(hs, carry, states, residuals)``, every
    step's carry and residuals too. Everything per step is time-major ``[T, B, ...]`` and zero
    past each length."""
    fwd = functools.partial(cell.step_with_residuals, rp)

    def step(carry, gx_t):
        out = fwd(carry, gx_t)
        return out if states else out[0]

    if remat:
        step = jax.checkpoint(step)

    def body(carry, inp):
        t, gx_t = inp
        out = step(carry, _gate_join(gx_t))
        new, res = out if states else (out, None)
        if lengths is not None:
            new = _where_tree(t < lengths, new, carry)
        return new, ((new, res) if states else cell.carry_hidden(new))

    steps = gx.shape[0]
    xs = (jnp.arange(steps), _gate_blocks(cell, gx))
    carry, ys = jax.lax.scan(body, carry0, xs, unroll=unroll)
    if lengths is not None:
        valid = jnp.arange(steps)[:, None] < lengths[None, :]  # [T, B]

        def mask(x):
            return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), x,
                             jnp.zeros((), x.dtype))

        ys = jax.tree.map(mask, ys)
    if not states:
        return ys, carry
    all_states, res = ys
    return jax.vmap(cell.carry_hidden)(all_states), carry, all_states, res


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def _validate(cell, params, xs, seq_lengths, initial_carry, time_major):
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax cell (SimpleRNN, LSTM, ...), got {type(cell)}")
    if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
        raise TypeError(f"xs must be an array, got {type(xs).__name__}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs.dtype={xs.dtype} must be floating (float32 or bfloat16)")
    layout = "[T, B, D]" if time_major else "[B, T, D]"
    if xs.ndim != 3:
        raise ValueError(f"xs.shape={tuple(xs.shape)} must be {layout} (rank 3)")
    if xs.shape[-1] != cell.input_size:
        raise ValueError(
            f"xs.shape={tuple(xs.shape)}: feature size {xs.shape[-1]} != "
            f"cell.input_size={cell.input_size}"
        )
    cell.check_params(params)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    lengths = check_lengths(seq_lengths, batch, steps)
    if initial_carry is not None:
        check_carry(cell, initial_carry, batch, "initial_carry")
    return steps, batch, lengths


# ------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------


def rnn(
    cell: Cell,
    params: dict,
    xs: Array,
    *,
    seq_lengths: Array | None = None,
    initial_carry: Any = None,
    reverse: bool = False,
    backend: str = "auto",
    unroll: int = 1,
    remat: bool = False,
    time_major: bool = False,
    return_states: bool = False,
    return_residuals: bool = False,
) -> tuple:
    """Run ``cell`` over a batch of sequences.

    Args:
      cell: a cell from :mod:`seqjax.core.cells`.
      params: its parameter dict (``cell.init(key)``).
      xs: inputs ``[B, T, D]`` (``[T, B, D]`` if ``time_major``), float32 or bfloat16.
      seq_lengths: optional ``[B]`` ints in ``[0, T]`` (any array-like of integers: a
        ``jax.Array``, numpy array, list or tuple). Outputs at ``t >= seq_lengths[b]`` are
        zero and the final carry is the carry after step ``seq_lengths[b] - 1`` (the initial
        carry for length 0). The padding of ``xs`` is replaced by zeros before the input
        projection, so whatever it holds (NaN and inf included) changes neither the outputs nor
        any gradient. Values are checked when concrete; under ``jit`` only the shape and dtype
        are, and out-of-range values act as clipped to ``[0, T]``.
      initial_carry: optional carry (``h [B, H]``; LSTMs ``(h, c)``; memory cells their state,
        e.g. :class:`seqjax.core.memory.NTMState`); by default ``cell.initial_carry(B)``: zeros, or
        a
        memory cell's starting memory.
      reverse: run each sequence backwards within its own length; outputs stay aligned with the
        inputs (PyTorch's reverse direction over packed sequences).
      backend: ``"scan"`` (reference), ``"pallas"`` (fused kernels), ``"parallel"`` (cells
        linear in their state, :mod:`seqjax.core.linear`: the coefficients of many steps at
        once, combined by :func:`jax.lax.associative_scan`; on a CPU a long sequence in blocks
        of :data:`seqjax.core.backend.TIME_BLOCK` steps, recomputed in the backward pass;
        ``unroll`` and ``remat`` do not apply), ``"sequential"`` (the same cells and blocks,
        the coefficients combined step by step), ``"native"`` (the LSTM and GRU on a CPU,
        float32: the scan backend with the time loop of a differentiated pass in a C++ custom
        call whose threads split the hidden units, :mod:`seqjax.kernels.cpu`; a forward pass
        alone runs the scan's loop) or ``"auto"``; see :func:`seqjax.core.backend.resolve_backend`.
      unroll: time steps per scan iteration (the scan backend).
      remat: recompute each step in the backward pass instead of storing its activations
        (memory ``O(T B H)`` carries only, at the cost of a second forward); under ``"auto"``
        it keeps an LSTM on the scan backend.
      time_major: ``xs`` and the outputs are ``[T, B, ...]``.
      return_states: also return ``states``, the carry after every step (a carry pytree with
        every leaf stacked over time, ``[B, T, ...]``; ``[T, B, ...]`` if ``time_major``), zero
        at ``t >= seq_lengths[b]`` and aligned with the inputs like ``ys`` (also for
        ``reverse``). Runs the scan loop differentiated by JAX (no fused kernel).
      return_residuals: also return the residuals of every step's
        ``cell.step_with_residuals`` (stacked and masked like ``states``; ``None`` for cells
        without); e.g. an LSTM's activated gates.

    Returns:
      ``(ys, final_carry)``: ``ys [B, T, H]`` in the dtype of ``xs``; the final carry in
      float32 (state is at least float32, float64 for float64 inputs). With ``return_states``
      and/or ``return_residuals``: ``(ys, final_carry, states)``, ``(ys, final_carry,
      residuals)`` or ``(ys, final_carry, states, residuals)``.

    Raises:
      TypeError / ValueError: naming the argument and the expected and received shape or dtype
        (``xs``, ``params`` by key, ``seq_lengths`` with the offending entries,
        ``initial_carry``); the checks are Python-level on static shapes, so they run under
        ``jit`` too, at trace time.
    """
    steps, batch, lengths = _validate(cell, params, xs, seq_lengths, initial_carry,
                                      time_major)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {', '.join(map(repr, BACKENDS))}")
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll={unroll!r} must be a positive int")
    out_dtype = xs.dtype
    acc = state_dtype(xs.dtype)
    carry0 = cell.initial_carry(batch, acc) if initial_carry is None else initial_carry
    carry0 = jax.tree.map(lambda c: jnp.asarray(c, acc), carry0)
    if steps == 0 or batch == 0:
        ys = jnp.zeros((steps, batch, cell.hidden_size) if time_major
                       else (batch, steps, cell.hidden_size), out_dtype)
        if return_states or return_residuals:
            return _empty_states(cell, params, carry0, steps, batch, time_major, ys,
                                 return_states, return_residuals)
        return ys, carry0

    xs_tm = _time_major_inputs(xs, lengths, reverse, time_major)
    if return_states or return_residuals:
        return _run_with_states(cell, params, xs_tm, carry0, lengths, unroll, remat, reverse,
                                time_major, out_dtype, return_states, return_residuals)
    choice = resolve_backend(cell, backend, dtype=xs.dtype, batch=batch, steps=steps)
    name = choice.name
    if name == "native" and remat and backend == "auto":
        name = "scan"  # remat asks for memory: the native loop keeps every step's residuals
    elif name == "native" and backend == "native" and (remat or unroll != 1):
        _warn_once(f"rnn(backend='native'): remat={remat} and unroll={unroll} do not apply to "
                   "the native loop (it saves its own residuals); they are ignored there")
    hs, carry = _run_loop(cell, name, params, xs_tm, carry0, lengths, unroll, remat,
                          time_block=choice.time_block)
    if reverse:
        hs = _reverse_padded(hs, lengths)
    ys = hs.astype(out_dtype)
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry


def _time_major_inputs(xs, lengths, reverse: bool, time_major: bool) -> Array:
    """``xs`` as ``[T, B, D]``, reversed within each length if ``reverse``, padding zeroed."""
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    if reverse:
        xs_tm = _reverse_padded(xs_tm, lengths)
    if lengths is not None:
        # Zero the padding before the input projection: a NaN/inf there would otherwise reach
        # dW_x (NaN * 0 = NaN), and padding must change neither values nor gradients.
        valid = jnp.arange(xs_tm.shape[0])[:, None] < lengths[None, :]  # [T, B]
        xs_tm = jnp.where(valid[..., None], xs_tm, jnp.zeros((), xs_tm.dtype))
    return xs_tm


def _run_loop(cell, backend: str, params, xs_tm, carry0, lengths, unroll: int, remat: bool,
              time_block: int | None = None):
    """The time loop of the resolved ``backend``: ``xs_tm [T, B, D] -> (hs [T, B, H], carry)``
    (``time_block``: the linear backends' block length, :data:`seqjax.core.backend.TIME_BLOCK`).
    """
    steps = xs_tm.shape[0]
    linear_backend = backend in LINEAR_BACKENDS or backend == "pallas"
    if linear_backend and getattr(cell, "linear_recurrence", False):
        from seqjax.core.linear import linear_recurrence, sequential_linear_scan

        scan = sequential_linear_scan if backend == "sequential" else None
        if backend == "pallas":
            from seqjax.kernels import run_linear_scan  # lazily: kernels are optional on CPU

            scan = run_linear_scan
        return linear_recurrence(cell, params, xs_tm, carry0, lengths, scan=scan,
                                 mode=getattr(cell, "parallel_mode", "linear")
                                 if backend == "parallel" else "linear",
                                 time_block=time_block)
    if backend == "native":
        # The native loop runs the whole sequence as one chunk: a scan over chunks would copy
        # every chunk's inputs and residuals once more (LSTM fwd+bwd, T=128, B=32, H=256: 25 ms
        # in 16-step chunks against 18 ms in one), and the LSTM's loop projects its inputs
        # itself. Not differentiated, it keeps no residuals (forward 20 ms against the scan's
        # 30 there; benchmarks/README.md, issue #19).
        return _scan(cell, 1, steps, True, params, xs_tm, carry0, lengths)
    if backend == "scan" and not remat and cell.hand_written_vjp:
        return _scan(cell, unroll, min(CHUNK, steps), False, params, xs_tm, carry0, lengths)
    gx = cell.project(params, xs_tm)  # [T, B, G]: the input projection of all steps at once
    rp = cell.recurrent_params(params)
    if backend == "pallas":
        from seqjax.kernels import run_kernel  # lazily: kernels are optional on CPU

        if remat or unroll != 1:
            _warn_once(f"rnn(backend='pallas'): remat={remat} and unroll={unroll} do not "
                       "apply to the fused kernel (it loops inside one kernel and saves its "
                       "own residuals); they are ignored there")
        return run_kernel(cell.kernel, rp, gx, carry0, lengths,
                          hidden_size=cell.hidden_size, **cell.kernel_options())
    return _scan_autodiff(cell, unroll, rp, gx, carry0, lengths, remat=remat)


def _run_with_states(cell, params, xs_tm, carry0, lengths, unroll, remat, reverse, time_major,
                     out_dtype, return_states, return_residuals):
    """The ``return_states``/``return_residuals`` path of :func:`rnn` (``xs_tm`` time-major,
    already reversed and with its padding zeroed)."""
    gx = cell.project(params, xs_tm)
    rp = cell.recurrent_params(params)
    hs, carry, states, res = _scan_autodiff(cell, unroll, rp, gx, carry0, lengths, remat,
                                            states=True)

    def layout(x):
        if reverse:
            x = _reverse_padded(x, lengths)
        return x if time_major else jnp.swapaxes(x, 0, 1)

    out = (layout(hs).astype(out_dtype), carry)
    if return_states:
        out += (jax.tree.map(layout, states),)
    if return_residuals:
        out += (jax.tree.map(layout, res),)
    return out


def _empty_states(cell, params, carry0, steps, batch, time_major, ys, return_states,
                  return_residuals):
    """:func:`_run_with_states` for ``T = 0`` or ``B = 0``: zero-size stacks of the right shapes."""
    def stacked(x):
        lead = (steps, batch) if time_major else (batch, steps)
        return jnp.zeros(lead + tuple(x.shape[1:]), x.dtype)

    out = (ys, carry0)
    if return_states:
        out += (jax.tree.map(stacked, carry0),)
    if return_residuals:
        gx_t = jax.ShapeDtypeStruct((batch, cell.gate_size), state_dtype(ys.dtype))
        res = jax.eval_shape(cell.step_with_residuals, cell.recurrent_params(params), carry0,
                             gx_t)[1]
        out += (jax.tree.map(stacked, res),)
    return out
