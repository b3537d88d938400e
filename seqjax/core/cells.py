"""Pure-functional recurrent cells.

A cell is a frozen, hashable dataclass holding only static configuration, so it can be a
``jax.jit`` static argument. Its parameters are a plain ``dict`` pytree made by ``init``.

Every cell splits its step in two so that the input projection can be hoisted out of the time
loop:

* ``project(params, xs) -> gx``: ``xs [..., D] -> gx [..., G]``, the input-side pre-activations of
  all time steps in one matmul (biases folded in);
* ``step(params, carry, gx_t) -> (carry, h_t)``: one time step, ``gx_t [B, G]``.

Gate order is PyTorch's and cuDNN's: (i, f, g, o) for LSTMs and (r, z, n) for GRUs, so weights
convert both ways (:mod:`seqjax.core.interop`). Weights are stored input-major (``w_x [D, G]``,
``w_h [H, G]``), i.e. transposed relative to PyTorch's ``weight_ih [G, D]``.

The time loop (:func:`seqjax.core.recurrent.rnn`) talks to a cell only through its public
*cell protocol* (see :class:`Cell` and ``docs/cells.md``):

* ``input_projection(params, xs) -> gx``: ``xs [..., D] -> gx [..., G]``, unchecked (``project``
  is the checked entry point);
* ``step_with_residuals(rp, carry, gx_t) -> (carry, res)``: the step, also returning the
  residuals the backward pass needs (activated gates, cell state, ...); ``rp`` are the recurrent
  params (:meth:`recurrent_params`: ``w_h [H, G]`` and its transpose ``w_h_t [G, H]``, made once
  outside the loop, so that each matmul of the step and of its VJP can take the form XLA:CPU
  runs fastest inside a loop, :func:`_recurrent_matmul`);
* ``step_vjp(rp, res, carry_prev, dcarry) -> (dcarry_prev, dgx_t)``: the step's VJP from those
  residuals, without any weight gradient; only with ``hand_written_vjp = True``;
* ``recurrent_grads(rp, res, carry_prev, dgx) -> drp``: the recurrent-weight gradients for all
  steps at once (``res``, ``carry_prev`` and ``dgx`` stacked over time), one big matmul instead
  of ``T`` small ones; only with ``hand_written_vjp = True``.

``step`` is ``step_with_residuals`` with the residuals dropped, so the forward maths is written
once.

State and accumulation are float32 (float64 for float64 inputs, :func:`state_dtype`) whatever
the parameter dtype: ``project`` returns the state dtype and ``step`` casts the recurrent weight
to the dtype of the carry.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, Array]
Initializer = Callable[..., Array]

__all__ = [
    "Cell",
    "SimpleRNN",
    "LSTM",
    "PeepholeLSTM",
    "GRU",
    "make_cell",
    "register_cell",
    "cell_kinds",
    "cell_class",
    "cell_accepts",
    "glorot_uniform",
    "orthogonal",
]

glorot_uniform: Initializer = jax.nn.initializers.glorot_uniform()
orthogonal: Initializer = jax.nn.initializers.orthogonal()
_F32 = jnp.float32


def _sigmoid_tanh(x: Array) -> Array:
    """sigmoid(x) through tanh: one transcendental that XLA:CPU vectorises well."""
    return 0.5 + 0.5 * jnp.tanh(0.5 * x)


def check_positive_int(name: str, value: Any) -> int:
    """``int(value)``, or a ``ValueError`` naming ``name`` unless ``value`` is an integer
    (Python or numpy; not a bool) ``>= 1``. The one positive-integer check of seqjax."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    return int(value)


def _check_positive(cell: Any, *names: str) -> None:
    for name in names:
        check_positive_int(f"{type(cell).__name__}.{name}", getattr(cell, name))


def _recurrent_init(init: Initializer, key: Array, hidden: int, gates: int, dtype: Any) -> Array:
    """Initialise ``w_h [H, gates*H]`` gate block by gate block (each block orthogonal)."""
    keys = jax.random.split(key, gates)
    return jnp.concatenate([init(k, (hidden, hidden), dtype) for k in keys], axis=1)


def state_dtype(dtype: Any) -> Any:
    """The dtype of state and accumulation for inputs of ``dtype``: at least float32."""
    return jnp.promote_types(dtype, _F32)


#: Input projections with at most this many input features are computed as ``D`` broadcast
#: multiply-adds instead of a matmul (:func:`_project`).
SMALL_PROJECTION_D = 8


def _project(xs: Array, w_x: Array, b: Array | None = None) -> Array:
    """``xs [..., D] @ w_x [D, G] + b [G]``, accumulated and returned in the state dtype.

    One 2-D matmul ``[prod(...), D] @ [D, G]``, so that JAX's transpose of it (``dW_x``, ``dxs``)
    is two plain matmuls: differentiating the ``...d,dg`` einsum instead ran 1.7-2.7x slower on
    XLA:CPU (jaxlib 0.10.2). With ``D <= SMALL_PROJECTION_D`` (the adding problem's 2 features,
    pixel MNIST's 1) the forward is ``D`` broadcast multiply-adds that XLA fuses into the gates
    that consume it, the derivatives still matmuls (:func:`_small_d_matmul`): fwd+bwd 0.80-0.95x
    the matmul's time with a sigmoid/tanh consumer, the forward alone 0.3-0.6x (issue #21 in
    ``benchmarks/README.md``).
    """
    acc = state_dtype(jnp.promote_types(xs.dtype, w_x.dtype))
    x2 = xs.reshape(-1, xs.shape[-1])
    if xs.shape[-1] <= SMALL_PROJECTION_D:
        gx = _small_d_matmul(x2, w_x, acc)
    else:
        gx = jnp.dot(x2, w_x, preferred_element_type=acc)
    if b is not None:
        gx = gx + b.astype(acc)
    return gx.reshape(xs.shape[:-1] + gx.shape[-1:])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _small_d_matmul(x: Array, w: Array, acc: Any) -> Array:
    """``x [M, D] @ w [D, G]`` in ``acc`` as ``D`` broadcast multiply-adds (small ``D``).

    Its JVP is the matmul's (so its transpose, the backward, is two matmuls, where the
    derivative of the broadcast form would be ``D`` slices and padded sums)."""
    x, w = x.astype(acc), w.astype(acc)
    out = x[:, :1] * w[0]
    for d in range(1, x.shape[1]):
        out = out + x[:, d:d + 1] * w[d]
    return out


@functools.partial(_small_d_matmul.defjvp, symbolic_zeros=True)
def _small_d_matmul_jvp(acc, primals, tangents):
    x, w = primals
    dx, dw = tangents
    out = _small_d_matmul(x, w, acc)
    terms = [jnp.dot(u, v, preferred_element_type=acc) for u, v, t in ((dx, w, dx), (x, dw, dw))
             if not isinstance(t, jax.custom_derivatives.SymbolicZero)]
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _matmul(h: Array, w: Array) -> Array:
    """``h [B, H] @ w [H, G]`` in the dtype of the state ``h``."""
    return jnp.dot(h, w.astype(h.dtype), preferred_element_type=h.dtype)


#: Recurrent weights of at least this many bytes are multiplied through their transpose (see
#: :func:`_recurrent_matmul`).
TRANSPOSED_MATMUL_BYTES = 1 << 20


def _recurrent_matmul(x: Array, w: Array, w_t: Array) -> Array:
    """``x [B, K] @ w [K, N]`` in the dtype of the state ``x``, given ``w`` both ways (``w_t =
    w.T``, made once outside the time loop): the form XLA:CPU runs fastest inside a loop.

    A weight of at least :data:`TRANSPOSED_MATMUL_BYTES` is contracted through ``w_t``'s last
    axis (``dot_general(x, w_t)``, the rows of ``w_t`` read contiguously), a smaller one as
    ``x @ w``. One core, B=32, 128 steps of the bare matmul (jaxlib 0.10.2; issue #19 in
    ``benchmarks/README.md``): transposed / plain time 0.52-0.85 for 2-12 MiB weights (H=512,
    1024), 0.89 forward at 1 MiB (the LSTM of ``rnn_cpu.py``), 1.2-1.36 for weights <= 768 KiB.
    The forward step calls it with ``(h, w_h, w_h_t)``, the backward with ``(dpre, w_h_t, w_h)``.
    """
    if w.size * w.dtype.itemsize >= TRANSPOSED_MATMUL_BYTES:
        return jax.lax.dot_general(x, w_t.astype(x.dtype), (((x.ndim - 1,), (1,)), ((), ())),
                                   preferred_element_type=x.dtype)
    return _matmul(x, w)


def _outer_sum(a: Array, b: Array) -> Array:
    """``sum_{t,b} a[t,b,:]^T b[t,b,:]``: a weight gradient over all steps in one matmul.

    Written as one ``dot_general`` contracting the leading axes (not ``a2.T @ b2``): XLA:CPU
    hands that form to its fast matmul library, the transposed one ran 2x slower there.
    """
    acc = jnp.promote_types(a.dtype, b.dtype)
    lead = "".join(chr(ord("k") + i) for i in range(a.ndim - 1))  # k, l, ...: summed axes
    return jnp.einsum(f"{lead}x,{lead}y->xy", a, b, preferred_element_type=acc)


def _dense_project_vjp(params: Params, xs: Array, dgx: Array, bias: str) -> tuple[Params, Array]:
    """VJP of :func:`_project` (``xs @ w_x + params[bias]``) for the scan backend: ``({"w_x":
    dW_x, bias: db}, dxs)``, with the matmul forms XLA:CPU runs fastest (see :func:`_outer_sum`;
    ``jax.vjp`` of the einsum gave a 3x slower ``dW_x``)."""
    w_x = params["w_x"]
    dw = _outer_sum(xs, dgx)
    db = jnp.sum(dgx, axis=tuple(range(dgx.ndim - 1)))
    dxs = jnp.einsum("...g,dg->...d", dgx, w_x.astype(dgx.dtype),
                     preferred_element_type=dgx.dtype)
    return {"w_x": dw, bias: db}, dxs.astype(xs.dtype)


# --------------------------------------------------------------------------------------------
# Validation helpers shared by the functional core (Python-level, on static shapes only)
# --------------------------------------------------------------------------------------------


def shape_of(x: Any, name: str) -> tuple[int, ...]:
    """The shape of an array-like ``x``, or a ``TypeError`` naming ``name``."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        return tuple(np.shape(x))
    except Exception as err:  # ragged lists, objects without a shape
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from err


def dtype_of(x: Any, name: str) -> Any:
    """The dtype of an array-like ``x`` as given (not canonicalised: a numpy float64 stays
    float64 in messages), or a ``TypeError`` naming ``name``."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None:
        return dtype
    try:
        return np.asarray(x).dtype
    except Exception as err:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from err


def check_array(x: Any, name: str, expected: tuple[Any, ...], *,
                floating: bool = False) -> tuple[int, ...]:
    """Raise unless ``x`` is an array of shape ``expected``; returns its shape.

    ``expected`` holds ints (that size), ``None`` (any size) or a string naming a free axis
    (any size; only used in the message, e.g. ``("B", "T", 3)``). ``floating=True`` also
    requires a floating dtype (``TypeError``).
    """
    shape = shape_of(x, name)
    want = "[" + ", ".join(str(e) for e in expected) + "]"
    if len(shape) != len(expected):
        raise ValueError(f"{name}.shape={shape} must be {want} (rank {len(expected)})")
    for got, exp in zip(shape, expected):
        if isinstance(exp, int) and got != exp:
            raise ValueError(f"{name}.shape={shape} must be {want}")
    if floating:
        dtype = dtype_of(x, name)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}.dtype={dtype} must be floating")
    return shape


def check_key(key: Any, name: str = "key") -> None:
    """``TypeError`` unless ``key`` is one PRNG key (``jax.random.key`` or ``PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return
    if dtype == jnp.uint32 and shape == (2,):
        return
    got = f"shape={tuple(shape)} dtype={dtype}" if shape is not None else type(key).__name__
    raise TypeError(f"{name} must be one PRNG key (jax.random.key(seed) or "
                    f"jax.random.PRNGKey(seed)), got {got}")


def _is_shape(spec: Any) -> bool:
    return isinstance(spec, tuple) and all(isinstance(e, int) for e in spec)


def check_tree(tree: Any, expected: Any, where: str = "params", owner: Any = None, *,
               allow_extra: bool = True) -> None:
    """Raise ``ValueError`` naming the first path of ``tree`` that does not match ``expected``.

    ``expected`` nests dicts and lists; its leaves are shapes (tuples of ints) or anything with
    a ``.shape`` (arrays, ``jax.ShapeDtypeStruct`` from :func:`jax.eval_shape`). Paths are
    written as they are indexed, e.g. ``params['blocks'][0]['conv1']['b']``. With
    ``allow_extra=False`` a dict key that ``expected`` lacks is an error too.
    """
    suffix = f" for {owner!r}" if owner is not None else ""
    if isinstance(expected, dict):
        if not isinstance(tree, dict):
            raise TypeError(f"{where} must be a dict, got {type(tree).__name__}{suffix}")
        missing = sorted(set(expected) - set(tree), key=str)
        if missing:
            raise ValueError(f"{where}{suffix} lack {missing}; expected keys "
                             f"{sorted(expected, key=str)}")
        extra = sorted(set(tree) - set(expected), key=str)
        if extra and not allow_extra:
            raise ValueError(f"{where}{suffix} has unexpected keys {extra}; expected keys "
                             f"{sorted(expected, key=str)}")
        for name, sub in expected.items():
            check_tree(tree[name], sub, f"{where}[{name!r}]", owner, allow_extra=allow_extra)
        return
    if isinstance(expected, list) or (isinstance(expected, tuple) and not _is_shape(expected)):
        if not isinstance(tree, (list, tuple)):
            raise TypeError(f"{where} must be a list of {len(expected)} entries, got "
                            f"{type(tree).__name__}{suffix}")
        if len(tree) != len(expected):
            raise ValueError(f"len({where})={len(tree)} must be {len(expected)}{suffix}")
        for i, (t, e) in enumerate(zip(tree, expected)):
            check_tree(t, e, f"{where}[{i}]", owner, allow_extra=allow_extra)
        return
    want = tuple(expected) if _is_shape(expected) else tuple(expected.shape)
    if isinstance(tree, (dict, list, tuple, str)) or tree is None:
        raise TypeError(f"{where} must be an array of shape {want}, got "
                        f"{type(tree).__name__}{suffix}")
    got = shape_of(tree, where)
    if got != want:
        raise ValueError(f"{where}.shape={got} must be {want}{suffix}")


def check_dims(**args: tuple[Any, str]) -> dict[str, int]:
    """Check several arrays against named axes that must agree, e.g.
    ``check_dims(memory=(memory, "B N W"), keys=(keys, "B K W"))``.

    A pattern is space-separated axis names (a name used twice must have one size; an int
    literal fixes the size); a leading ``...`` stands for any leading axes, which must then be
    the same for every argument using ``...``. Returns the sizes bound to the names.

    Raises:
      ValueError: naming the first argument whose rank or an axis disagrees, with its expected
        (symbolic and bound) and received shapes.
      TypeError: an argument that is not an array.
    """
    sizes: dict[str, Any] = {}
    for name, (x, pattern) in args.items():
        shape = shape_of(x, name)
        tokens = pattern.split()
        lead = tokens[0] == "..."
        tokens = tokens[1:] if lead else tokens
        rank_ok = len(shape) >= len(tokens) if lead else len(shape) == len(tokens)
        bound = dict(sizes)  # the sizes known so far, this argument's earlier axes included

        def expected() -> str:
            parts = (["..."] if lead else []) + [
                f"{t}={bound[t]}" if t in bound and not t.isdigit() else t for t in tokens]
            return "[" + ", ".join(parts) + "]"

        if not rank_ok:
            raise ValueError(f"{name}.shape={shape} must be {expected()} "
                             f"(rank {'>= ' if lead else ''}{len(tokens)})")
        tail = shape[len(shape) - len(tokens):]
        if lead:
            head = shape[: len(shape) - len(tokens)]
            if sizes.setdefault("...", head) != head:
                raise ValueError(f"{name}.shape={shape} must be {expected()} with leading axes "
                                 f"{sizes['...']}")
        for tok, got in zip(tokens, tail):
            want = int(tok) if tok.isdigit() else bound.get(tok, got)
            if got != want:
                raise ValueError(f"{name}.shape={shape} must be {expected()}")
            if not tok.isdigit():
                bound[tok] = got
        sizes.update(bound)
    return sizes


@functools.lru_cache(maxsize=512)
def _carry_spec(cell: Any, batch: int) -> Any:
    return jax.eval_shape(lambda: cell.initial_carry(batch))


def check_carry(cell: Any, carry: Any, batch: int, name: str = "carry") -> None:
    """Raise ``ValueError`` unless ``carry`` has the structure and leaf shapes of
    ``cell.initial_carry(batch)`` (naming ``name``, the received and the expected shapes)."""
    try:
        expected = _carry_spec(cell, batch)
    except TypeError:  # an unhashable (user-defined) cell: no cache
        expected = jax.eval_shape(lambda: cell.initial_carry(batch))
    ok = jax.tree.structure(carry) == jax.tree.structure(expected)
    if ok:
        try:
            ok = all(shape_of(a, name) == b.shape
                     for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)))
        except TypeError:
            ok = False
    if not ok:
        def describe(a):
            try:
                return shape_of(a, name)
            except TypeError:
                return type(a).__name__

        got = jax.tree.map(describe, carry)
        want = jax.tree.map(lambda a: a.shape, expected)
        raise ValueError(f"{name} shapes {got} must be {want} for {cell!r} (batch {batch})")


class Cell(abc.ABC):
    """Interface shared by the cells (documentation and ``isinstance`` checks only).

    The public methods (``init``, ``initial_carry``, ``project``, ``step``, ``__call__``,
    ``check_params``) validate their arguments on static shapes (so also under ``jit``, at trace
    time, at no run-time cost) and raise ``ValueError``/``TypeError`` naming the argument;
    the protocol methods that the time loop calls do not.

    The cell protocol (what a new cell implements; a worked example is in ``docs/cells.md``),
    with ``B`` batch, ``T`` time, ``D`` input size, ``H`` hidden size, ``G = gate_size``:

    * ``param_shapes() -> {name: shape}`` and ``init(key, dtype) -> params``;
    * ``input_projection(params, xs [..., D]) -> gx [..., G]`` (unchecked; biases folded in);
    * ``recurrent_params(params) -> rp``: what the loop needs (default ``{"w_h": w_h, "w_h_t":
      w_h.T}``: made once outside the loop);
    * ``step_with_residuals(rp, carry, gx_t [B, G]) -> (carry, res)``: one step; ``res`` may be
      ``None`` when ``hand_written_vjp = False`` (JAX then differentiates this method);
    * ``step_vjp(rp, res, carry_prev, dcarry) -> (dcarry_prev, dgx_t [B, G])`` and
      ``recurrent_grads(rp, res [T, ...], carry_prev [T, ...], dgx [T, B, G]) -> drp``: only
      with ``hand_written_vjp = True``;
    * ``initial_carry(B)``, ``carry_hidden(carry) -> h [B, H]``, ``with_hidden(carry, h)``: for
      carries other than a plain ``h [B, H]``;
    * ``kernel``/``kernel_options()``: the fused-kernel family computing the cell exactly, if any.
    """

    input_size: int
    hidden_size: int
    #: Number of gate blocks of width ``hidden_size`` in ``gx``.
    num_gates: int = 1
    #: Whether the cell has ``step_vjp``/``recurrent_grads`` for the scan backend's hand-written
    #: VJP. Cells without (the memory cells of :mod:`seqjax.core.memory`) are differentiated by JAX
    #: through the same ``step_with_residuals`` (which may then return ``None`` residuals).
    hand_written_vjp: bool = True
    #: The fused-kernel family that computes this cell exactly (``"lstm"``, ``"gru"``; see
    #: :mod:`seqjax.kernels`), ``None`` for none. A subclass that changes the maths (the peephole
    #: LSTM) sets it back to ``None``.
    kernel: ClassVar[str | None] = None
    #: The native CPU loop that computes this cell exactly (``"lstm"``, ``"gru"``:
    #: :mod:`seqjax.kernels.cpu`, the ``"native"`` backend), ``None`` for none; a subclass that
    #: changes the maths sets it back to ``None``.
    native: ClassVar[str | None] = None
    #: Whether the scan loops hand the step ``gx_t`` as separate blocks (``gx_blocks()``,
    #: scanned as separate arrays, concatenated back inside the step: the same values). A speed
    #: switch for XLA:CPU, which emits scalar (unvectorised) code for a fusion that slices the
    #: loop's dynamic slice of ``gx`` at a lane offset, as a GRU's ``n`` gate does; the blocks
    #: avoid that (GRU forward 0.55-0.7x the time; LSTM 1.03-1.1x, so it stays off there; issue
    #: #19 in ``benchmarks/README.md``).
    split_gates_in_loop: ClassVar[bool] = False

    def gx_blocks(self) -> tuple[int, ...]:
        """Widths of the blocks of ``gx``'s last axis that ``split_gates_in_loop`` scans
        separately: ``num_gates`` blocks of ``hidden_size`` unless a cell's ``gx`` is laid out
        otherwise (the LRU: ``(N, N, H)``)."""
        return (self.hidden_size,) * self.num_gates

    def split_gx(self, gx: Array) -> list[Array]:
        """``gx [..., G]`` as its blocks ``[..., w]`` for ``w`` in :meth:`gx_blocks`, by one
        ``jnp.split`` rather than slices: the split's transpose (for the cells JAX
        differentiates) is one concatenate, where slices' is a sum of zero-padded blocks that
        XLA:CPU (jaxlib 0.10.2) runs as scalar code (the minLSTM's gate gradients 257 -> 198 ms
        at T=600, B=32, H=87; issue #19 in ``benchmarks/README.md``)."""
        widths = self.gx_blocks()
        return jnp.split(gx, list(itertools.accumulate(widths[:-1])), axis=-1)

    def kernel_options(self) -> dict[str, Any]:
        """Static options the kernel family needs besides the sizes (a GRU's ``reset``)."""
        return {}

    @property
    def gate_size(self) -> int:
        return self.num_gates * self.hidden_size

    def initial_carry(self, batch: int, dtype: Any = _F32) -> Any:
        """Zero state: ``h [B, H]`` (LSTMs: ``(h, c)``)."""
        check_batch(batch)
        return jnp.zeros((batch, self.hidden_size), dtype)

    def carry_hidden(self, carry: Any) -> Array:
        """The hidden state ``h [B, H]`` inside a carry."""
        return carry

    def with_hidden(self, carry: Any, h: Array) -> Any:
        """``carry`` with its hidden state replaced by ``h``."""
        return h

    def project(self, params: Params, xs: Array) -> Array:
        """The input projection of any number of steps: ``xs [..., D] -> gx [..., G]``.

        Raises:
          ValueError / TypeError: if ``params`` do not match :meth:`param_shapes` or
            ``xs.shape[-1] != input_size``.
        """
        self.check_params(params)
        shape = shape_of(xs, "xs")
        if not shape or shape[-1] != self.input_size:
            raise ValueError(f"xs.shape={shape} must be [..., {self.input_size}] "
                             f"(input_size of {self!r})")
        return self.input_projection(params, xs)

    def input_projection(self, params: Params, xs: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} defines no input projection")

    def step(self, params: Params, carry: Any, gx_t: Array) -> tuple[Any, Array]:
        """One time step: ``gx_t [B, G]`` (from :meth:`project`) -> ``(carry, h_t [B, H])``.

        Raises:
          ValueError / TypeError: if ``params``, ``gx_t`` or ``carry`` (which must look like
            ``initial_carry(B)``) have the wrong shapes.
        """
        self.check_params(params)
        shape = shape_of(gx_t, "gx_t")
        if len(shape) != 2 or shape[1] != self.gate_size:
            raise ValueError(f"gx_t.shape={shape} must be [B, {self.gate_size}] (the "
                             f"projection of one step's inputs, G = gate_size of {self!r})")
        check_carry(self, carry, shape[0], "carry")
        new, _ = self.step_with_residuals(self.recurrent_params(params), carry, gx_t)
        return new, self.carry_hidden(new)

    def recurrent_params(self, params: Params) -> Params:
        """The params the time loop needs (everything but the input projection), with the
        recurrent weight also transposed (``w_h_t [G, H]``; see :func:`_recurrent_matmul`)."""
        return {"w_h": params["w_h"], "w_h_t": params["w_h"].T}

    def __call__(self, params: Params, carry: Any, x_t: Array) -> tuple[Any, Array]:
        """Convenience: project one input ``x_t [B, D]`` and step."""
        check_array(x_t, "x_t", ("B", self.input_size))
        return self.step(params, carry, self.project(params, x_t))

    @abc.abstractmethod
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every parameter, e.g. LSTM ``{"w_x": (D, 4H), ...}``."""

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError`` naming any missing key or wrongly shaped parameter.

        ``param_shapes`` may nest (a memory cell's ``{"controller": {...}, ...}``); keys are
        named by their path, e.g. ``params['controller']['w_h']``. Keys that ``param_shapes``
        does not name are ignored.
        """
        check_tree(params, self.param_shapes(), "params", self)


def check_batch(batch: Any) -> None:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0:
        raise ValueError(f"batch={batch!r} must be an int >= 0")


# --------------------------------------------------------------------------------------------
# Elman RNN
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimpleRNN(Cell):
    r"""Elman RNN: :math:`h_t = \phi(x_t W_x + h_{t-1} W_h + b)`, :math:`\phi` tanh or relu.

    Params: ``w_x [D, H]``, ``w_h [H, H]``, ``b [H]`` (PyTorch's ``b_ih + b_hh``).
    """

    input_size: int
    hidden_size: int
    activation: str = "tanh"
    input_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
    recurrent_init: Initializer = dataclasses.field(default=orthogonal, repr=False)

    num_gates = 1

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, h), "w_h": (h, h), "b": (h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        check_key(key)
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        return {
            "w_x": self.input_init(kx, (d, h), dtype),
            "w_h": self.recurrent_init(kh, (h, h), dtype),
            "b": jnp.zeros((h,), dtype),
        }

    def input_projection(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def project_vjp(self, params: Params, xs: Array, dgx: Array) -> tuple[Params, Array]:
        """``(d params of the projection, d xs)`` for ``d gx``: the scan backend's fast path."""
        return _dense_project_vjp(params, xs, dgx, "b")

    def step_with_residuals(self, rp, h, gx_t):
        pre = gx_t + _recurrent_matmul(h, rp["w_h"], rp["w_h_t"])
        h_new = jnp.tanh(pre) if self.activation == "tanh" else jax.nn.relu(pre)
        return h_new, h_new

    def step_vjp(self, rp, h_new, h_prev, dh):
        if self.activation == "tanh":
            dpre = dh * (1.0 - h_new * h_new)
        else:
            dpre = jnp.where(h_new > 0, dh, 0.0)
        return _recurrent_matmul(dpre, rp["w_h_t"], rp["w_h"]), dpre

    def recurrent_grads(self, rp, res, h_prev, dgx):
        return {"w_h": _outer_sum(h_prev, dgx)}


# --------------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------------


def _lstm_gate_scale(hidden: int) -> Array:
    """Pre-activation scale (1/2 for the sigmoid gates i, f, o; 1 for g) for the one-tanh trick."""
    half = jnp.full((hidden,), 0.5, _F32)
    return jnp.concatenate([half, half, jnp.ones((hidden,), _F32), half])


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch layout.

    .. math::
        (i, f, g, o) &= x_t W_x + h_{t-1} W_h + b \\
        i, f, o &\leftarrow \sigma(i), \sigma(f), \sigma(o); \quad g \leftarrow \tanh(g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        h_t &= o \odot \tanh(c_t)

    Params: ``w_x [D, 4H]``, ``w_h [H, 4H]``, ``b [4H]`` (PyTorch's ``b_ih + b_hh``); the forget
    block of ``b`` is initialised to ``forget_bias``, or with ``chrono=T`` to the chrono
    initialisation of Tallec & Ollivier (2018) for dependencies up to ``T`` steps: forget bias
    ``log(u)``, ``u ~ U(1, T - 1)`` per unit, input bias its negative (memory times spread over
    ``1..T``). Carry: ``(h [B, H], c [B, H])``.
    All four gates are computed with a single ``tanh`` over the ``[B, 4H]`` pre-activations
    (:math:`\sigma(x) = (1 + \tanh(x/2))/2`).
    """

    input_size: int
    hidden_size: int
    forget_bias: float = 1.0
    input_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
    recurrent_init: Initializer = dataclasses.field(default=orthogonal, repr=False)
    chrono: int | None = None

    num_gates = 4
    kernel = "lstm"
    native = "lstm"

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.chrono is not None and (isinstance(self.chrono, bool)
                                        or not isinstance(self.chrono, int) or self.chrono < 3):
            raise ValueError(f"{type(self).__name__}.chrono must be None or an int >= 3 (the "
                             f"longest dependency, in steps), got {self.chrono!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, 4 * h), "w_h": (h, 4 * h), "b": (4 * h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        check_key(key)
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        if self.chrono is None:
            b = jnp.zeros((4 * h,), dtype).at[h : 2 * h].set(self.forget_bias)
        else:
            # a key of its own (fold_in), so weights equal those of chrono=None
            u = jax.random.uniform(jax.random.fold_in(key, 2), (h,), dtype, 1.0, self.chrono - 1.0)
            b_f = jnp.log(u)
            b = jnp.concatenate([-b_f, b_f, jnp.zeros((2 * h,), dtype)])
        return {
            "w_x": self.input_init(kx, (d, 4 * h), dtype),
            "w_h": _recurrent_init(self.recurrent_init, kh, h, 4, dtype),
            "b": b,
        }

    def initial_carry(self, batch: int, dtype: Any = _F32):
        check_batch(batch)
        z = jnp.zeros((batch, self.hidden_size), dtype)
        return (z, z)

    def carry_hidden(self, carry):
        return carry[0]

    def with_hidden(self, carry, h):
        return (h, carry[1])

    def input_projection(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b"])

    def project_vjp(self, params: Params, xs: Array, dgx: Array) -> tuple[Params, Array]:
        """``(d params of the projection, d xs)`` for ``d gx``: the scan backend's fast path."""
        return _dense_project_vjp(params, xs, dgx, "b")

    def _gates(self, pre):
        """Activated gates ``(i, f, g, o) [B, 4H]`` from pre-activations, with one ``tanh``."""
        scale = _lstm_gate_scale(self.hidden_size)  # 1/2 on sigmoid gates, 1 on g
        shift = 1.0 - scale  # 1/2 on sigmoid gates, 0 on g
        return jnp.tanh(pre * scale) * scale + shift

    def step_with_residuals(self, rp, carry, gx_t):
        h, c = carry
        hid = self.hidden_size
        acts = self._gates(gx_t + _recurrent_matmul(h, rp["w_h"], rp["w_h_t"]))
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        h_new = o * tc
        return (h_new, c_new), (acts, tc)

    def step_vjp(self, rp, res, carry_prev, dcarry):
        acts, tc = res
        _, c_prev = carry_prev
        dh, dc = dcarry
        hid = self.hidden_size
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        dc = dc + dh * o * (1.0 - tc * tc)
        dpre = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tc * o * (1.0 - o),
            ],
            axis=-1,
        )
        return (_recurrent_matmul(dpre, rp["w_h_t"], rp["w_h"]), dc * f), dpre

    def recurrent_grads(self, rp, res, carry_prev, dgx):
        return {"w_h": _outer_sum(carry_prev[0], dgx)}


@dataclasses.dataclass(frozen=True)
class PeepholeLSTM(LSTM):
    r"""LSTM with diagonal peephole connections (Gers & Schmidhuber 2000).

    .. math::
        i &= \sigma(x_t W_{xi} + h_{t-1} W_{hi} + p_i \odot c_{t-1} + b_i) \\
        f &= \sigma(x_t W_{xf} + h_{t-1} W_{hf} + p_f \odot c_{t-1} + b_f) \\
        g &= \tanh(x_t W_{xg} + h_{t-1} W_{hg} + b_g) \\
        c_t &= f \odot c_{t-1} + i \odot g \\
        o &= \sigma(x_t W_{xo} + h_{t-1} W_{ho} + p_o \odot c_t + b_o) \\
        h_t &= o \odot \tanh(c_t)

    Params: the :class:`LSTM` ones plus ``p_i, p_f, p_o [H]`` (initialised to zero, so a fresh
    peephole LSTM computes what a fresh LSTM with the same weights does).
    """

    kernel = None  # its gates read the cell state: the LSTM kernel does not compute it
    native = None  # nor does the native LSTM loop

    def param_shapes(self):
        shapes = super().param_shapes()
        h = self.hidden_size
        shapes.update(p_i=(h,), p_f=(h,), p_o=(h,))
        return shapes

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        params = super().init(key, dtype)
        zeros = jnp.zeros((self.hidden_size,), dtype)
        params.update(p_i=zeros, p_f=zeros, p_o=zeros)
        return params

    def recurrent_params(self, params):
        return dict(super().recurrent_params(params),
                    **{k: params[k] for k in ("p_i", "p_f", "p_o")})

    def step_with_residuals(self, rp, carry, gx_t):
        h, c = carry
        hid = self.hidden_size
        p_i, p_f, p_o = (rp[k].astype(c.dtype) for k in ("p_i", "p_f", "p_o"))
        pre = gx_t + _recurrent_matmul(h, rp["w_h"], rp["w_h_t"])
        ifg = pre[:, : 3 * hid] + jnp.concatenate([p_i * c, p_f * c, jnp.zeros_like(c)], axis=-1)
        # i, f, g in one tanh (sigmoid via tanh); o needs c_t first.
        t = jnp.tanh(ifg * _lstm_gate_scale(hid)[: 3 * hid])
        i, f = 0.5 + 0.5 * t[:, :hid], 0.5 + 0.5 * t[:, hid : 2 * hid]
        g = t[:, 2 * hid :]
        c_new = f * c + i * g
        tc = jnp.tanh(c_new)
        o = _sigmoid_tanh(pre[:, 3 * hid :] + p_o * c_new)
        h_new = o * tc
        acts = jnp.concatenate([i, f, g, o], axis=-1)
        return (h_new, c_new), (acts, tc, c_new)

    def step_vjp(self, rp, res, carry_prev, dcarry):
        acts, tc, _ = res
        _, c_prev = carry_prev
        dh, dc = dcarry
        hid = self.hidden_size
        p_i, p_f, p_o = (rp[k].astype(dc.dtype) for k in ("p_i", "p_f", "p_o"))
        i, f, g, o = (acts[:, k * hid : (k + 1) * hid] for k in range(4))
        dpre_o = dh * tc * o * (1.0 - o)
        dc = dc + dh * o * (1.0 - tc * tc) + dpre_o * p_o
        dpre_i = dc * g * i * (1.0 - i)
        dpre_f = dc * c_prev * f * (1.0 - f)
        dpre = jnp.concatenate([dpre_i, dpre_f, dc * i * (1.0 - g * g), dpre_o], axis=-1)
        dc_prev = dc * f + dpre_i * p_i + dpre_f * p_f
        return (_recurrent_matmul(dpre, rp["w_h_t"], rp["w_h"]), dc_prev), dpre

    def recurrent_grads(self, rp, res, carry_prev, dgx):
        _, _, c_new = res
        h_prev, c_prev = carry_prev
        hid = self.hidden_size
        sum_tb = lambda a: jnp.sum(a, axis=(0, 1))  # noqa: E731
        return {
            "w_h": _outer_sum(h_prev, dgx),
            "p_i": sum_tb(dgx[..., :hid] * c_prev),
            "p_f": sum_tb(dgx[..., hid : 2 * hid] * c_prev),
            "p_o": sum_tb(dgx[..., 3 * hid :] * c_new),
        }


# --------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRU(Cell):
    r"""Gated recurrent unit (Cho et al. 2014) in both reset variants, gate order (r, z, n).

    ``reset="after"`` (cuDNN, PyTorch ``nn.GRU``):

    .. math::
        r &= \sigma(x_t W_{xr} + b_{xr} + h_{t-1} W_{hr} + b_{hr}) \\
        z &= \sigma(x_t W_{xz} + b_{xz} + h_{t-1} W_{hz} + b_{hz}) \\
        n &= \tanh(x_t W_{xn} + b_{xn} + r \odot (h_{t-1} W_{hn} + b_{hn})) \\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}

    ``reset="before"`` (Cho et al. 2014): :math:`n = \tanh(x_t W_{xn} + b_{xn} +
    (r \odot h_{t-1}) W_{hn} + b_{hn})`, the rest unchanged.

    Params: ``w_x [D, 3H]``, ``w_h [H, 3H]``, ``b_x [3H]``, ``b_h [3H]``.
    """

    input_size: int
    hidden_size: int
    reset: str = "after"
    input_init: Initializer = dataclasses.field(default=glorot_uniform, repr=False)
    recurrent_init: Initializer = dataclasses.field(default=orthogonal, repr=False)

    num_gates = 3
    kernel = "gru"
    split_gates_in_loop = True  # n = tanh(gx_n + ...) slices gx_t at 2H (see Cell)

    @property
    def native(self) -> str | None:  # type: ignore[override]
        """The native CPU loop serves ``reset="after"`` (see :attr:`Cell.native`)."""
        return "gru" if self.reset == "after" else None

    def kernel_options(self) -> dict[str, Any]:
        return {"reset": self.reset}

    def __post_init__(self):
        _check_positive(self, "input_size", "hidden_size")
        if self.reset not in ("after", "before"):
            raise ValueError(f"reset must be 'after' or 'before', got {self.reset!r}")

    def param_shapes(self):
        d, h = self.input_size, self.hidden_size
        return {"w_x": (d, 3 * h), "w_h": (h, 3 * h), "b_x": (3 * h,), "b_h": (3 * h,)}

    def init(self, key: Array, dtype: Any = _F32) -> Params:
        check_key(key)
        kx, kh = jax.random.split(key)
        d, h = self.input_size, self.hidden_size
        return {
            "w_x": self.input_init(kx, (d, 3 * h), dtype),
            "w_h": _recurrent_init(self.recurrent_init, kh, h, 3, dtype),
            "b_x": jnp.zeros((3 * h,), dtype),
            "b_h": jnp.zeros((3 * h,), dtype),
        }

    def input_projection(self, params: Params, xs: Array) -> Array:
        return _project(xs, params["w_x"], params["b_x"])

    def project_vjp(self, params: Params, xs: Array, dgx: Array) -> tuple[Params, Array]:
        """``(d params of the projection, d xs)`` for ``d gx``: the scan backend's fast path."""
        return _dense_project_vjp(params, xs, dgx, "b_x")

    def recurrent_params(self, params):
        return dict(super().recurrent_params(params), b_h=params["b_h"])

    def step_with_residuals(self, rp, h, gx_t):
        hid = self.hidden_size
        w_h, w_h_t, b_h = rp["w_h"], rp["w_h_t"], rp["b_h"].astype(h.dtype)
        if self.reset == "after":
            zh = _recurrent_matmul(h, w_h, w_h_t) + b_h
            rz = _sigmoid_tanh(gx_t[:, : 2 * hid] + zh[:, : 2 * hid])
            r, u = rz[:, :hid], rz[:, hid:]
            zn = zh[:, 2 * hid :]
            n = jnp.tanh(gx_t[:, 2 * hid :] + r * zn)
            res = (rz, n, zn)
        else:
            zrz = _recurrent_matmul(h, w_h[:, : 2 * hid], w_h_t[: 2 * hid]) + b_h[: 2 * hid]
            rz = _sigmoid_tanh(gx_t[:, : 2 * hid] + zrz)
            r, u = rz[:, :hid], rz[:, hid:]
            zn = _recurrent_matmul(r * h, w_h[:, 2 * hid :], w_h_t[2 * hid :]) + b_h[2 * hid :]
            n = jnp.tanh(gx_t[:, 2 * hid :] + zn)
            res = (rz, n)
        h_new = n + u * (h - n)
        return h_new, res

    def step_vjp(self, rp, res, h_prev, dh):
        hid = self.hidden_size
        rz, n = res[0], res[1]
        r, u = rz[:, :hid], rz[:, hid:]
        dpre_n = dh * (1.0 - u) * (1.0 - n * n)
        dpre_u = dh * (h_prev - n) * u * (1.0 - u)
        dh_prev = dh * u
        w_h, w_h_t = rp["w_h"], rp["w_h_t"]
        if self.reset == "after":
            zn = res[2]
            dpre_r = dpre_n * zn * r * (1.0 - r)
            dgx = jnp.concatenate([dpre_r, dpre_u, dpre_n], axis=-1)
            dz = jnp.concatenate([dpre_r, dpre_u, dpre_n * r], axis=-1)
            dh_prev = dh_prev + _recurrent_matmul(dz, w_h_t, w_h)
        else:
            drh = _recurrent_matmul(dpre_n, w_h_t[2 * hid :], w_h[:, 2 * hid :])
            dpre_r = drh * h_prev * r * (1.0 - r)
            drz = jnp.concatenate([dpre_r, dpre_u], axis=-1)
            drz_h = _recurrent_matmul(drz, w_h_t[: 2 * hid], w_h[:, : 2 * hid])
            dh_prev = dh_prev + drh * r + drz_h
            dgx = jnp.concatenate([drz, dpre_n], axis=-1)
        return dh_prev, dgx

    def recurrent_grads(self, rp, res, h_prev, dgx):
        hid = self.hidden_size
        r = res[0][..., :hid]
        if self.reset == "after":
            dz = jnp.concatenate([dgx[..., : 2 * hid], dgx[..., 2 * hid :] * r], axis=-1)
            return {"w_h": _outer_sum(h_prev, dz), "b_h": jnp.sum(dz, axis=(0, 1))}
        dw = jnp.concatenate(
            [_outer_sum(h_prev, dgx[..., : 2 * hid]), _outer_sum(r * h_prev, dgx[..., 2 * hid :])],
            axis=1,
        )
        return {"w_h": dw, "b_h": jnp.sum(dgx, axis=(0, 1))}


#: The cell registry: kind name -> (cell class, constructor defaults). Model builders take their
#: architecture lists from it (:func:`cell_kinds`), so a cell registered here (with
#: :func:`register_cell`, usually as a class decorator in the cell's own module) is available
#: to ``SequenceModel``, ``LanguageModel``, ``Classifier``, ``stack_cells`` and the scripts.
_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {}


def register_cell(kind: str, cls: type | None = None, **defaults: Any):
    """Register ``cls`` under ``kind`` (``defaults`` are constructor arguments the kind implies,
    e.g. ``register_cell("gru_before", GRU, reset="before")``). Usable as a class decorator:
    ``@register_cell("mingru")``. Returns ``cls``.

    Raises:
      ValueError: ``kind`` is already registered to another class or defaults.
    """
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"kind={kind!r} must be a non-empty str")

    def add(c: type) -> type:
        if not (isinstance(c, type) and issubclass(c, Cell)):
            raise TypeError(f"register_cell({kind!r}) needs a Cell subclass, got {c!r}")
        old = _REGISTRY.get(kind)
        if old is not None and (old[0].__qualname__, old[1]) != (c.__qualname__, defaults):
            raise ValueError(f"cell kind {kind!r} is already registered to {old[0].__name__}")
        _REGISTRY[kind] = (c, dict(defaults))
        return c

    return add if cls is None else add(cls)


def cell_kinds() -> tuple[str, ...]:
    """Every registered cell kind, in registration order (``"rnn"``, ``"lstm"``, ...)."""
    return tuple(_REGISTRY)


def cell_class(kind: str) -> tuple[type, dict[str, Any]]:
    """``(cell class, constructor defaults)`` of a registered kind.

    Raises:
      TypeError / ValueError: ``kind`` is not a str / not registered (the message lists the
        valid kinds).
    """
    if not isinstance(kind, str):
        raise TypeError(f"kind={kind!r} must be a str such as 'lstm'")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown cell kind {kind!r}; valid kinds are {sorted(_REGISTRY)}")
    return _REGISTRY[kind]


def cell_accepts(kind: str, option: str) -> bool:
    """Whether cells of ``kind`` take the constructor argument ``option`` (e.g.
    ``"forget_bias"``): model builders pass such options only to the cells that have them."""
    cls, _ = cell_class(kind)
    return option in {f.name for f in dataclasses.fields(cls)}


register_cell("rnn", SimpleRNN)
register_cell("rnn_tanh", SimpleRNN)
register_cell("rnn_relu", SimpleRNN, activation="relu")
register_cell("lstm", LSTM)
register_cell("peephole_lstm", PeepholeLSTM)
register_cell("gru", GRU)
register_cell("gru_before", GRU, reset="before")

#: Kind name -> class of the registered kinds (a read-only view kept for older code).
CELLS = {kind: cls for kind, (cls, _) in _REGISTRY.items()}


def make_cell(kind: str, input_size: int, hidden_size: int, **kwargs: Any) -> Cell:
    """Build a registered cell by kind (:func:`cell_kinds`): ``"rnn"`` (tanh), ``"rnn_relu"``,
    ``"lstm"``, ``"peephole_lstm"``, ``"gru"`` (reset after), ``"gru_before"``, and whatever
    else was registered with :func:`register_cell`. ``kwargs`` override the kind's defaults."""
    cls, defaults = cell_class(kind)
    return cls(input_size, hidden_size, **{**defaults, **kwargs})


def fan_in_uniform(scale: float | None = None) -> Initializer:
    """PyTorch's RNN init U(-1/sqrt(H), 1/sqrt(H)) as an initializer (for parity experiments)."""

    def init(key, shape, dtype=_F32):
        bound = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
