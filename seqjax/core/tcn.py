r"""Temporal Convolutional Network (Bai, Kolter & Koltun, 2018), functional.

A TCN is a stack of residual blocks of causal, dilated 1D convolutions. Level ``i``
(``0``-based) uses dilation :math:`d_i = 2^i`, and each block holds two convolutions, so a TCN with
kernel size :math:`K` and :math:`L` levels sees

.. math::

    \mathrm{RF}(K, L) = 1 + 2 (K - 1) (2^L - 1)

input steps: the output at time :math:`t` depends on :math:`x_{t-\mathrm{RF}+1}, \dots, x_t` and
on nothing later.

Everything here is pure: a :class:`TCN` holds only static configuration (it is frozen and hashable,
so it can be a ``jit`` static argument) and the parameters are a plain dict pytree::

    {"blocks": [
        {"conv1": {"v": [K, C_in, C_out], "g": [C_out], "b": [C_out]},
         "conv2": {"v": [K, C_out, C_out], "g": [C_out], "b": [C_out]},
         "downsample": {"w": [C_in, C_out], "b": [C_out]}},   # only when C_in != C_out
        ...]}

Convolution weights use the feature-last ``WIO`` layout (``[K, C_in, C_out]``) and activations
are batch-major, feature-last ``[B, T, C]``, so no transposes happen anywhere. A PyTorch
``Conv1d`` weight ``[C_out, C_in, K]`` converts with ``w.transpose(2, 1, 0)``.

The block is exactly ``TemporalBlock`` of https://github.com/locuslab/TCN (``Conv1d`` with
padding ``(K-1)d`` followed by ``Chomp1d``, weight norm, ReLU, dropout, 1x1 downsample).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.core.cells import check_key, check_tree, dtype_of, shape_of
from seqjax.core.cells import check_positive_int as _check_positive_int
from seqjax.core.layers import dropout as _dropout
from seqjax.core.recurrent import check_lengths

__all__ = ["TCN", "causal_conv1d", "receptive_field", "weight_norm"]

Params = dict[str, Any]

_DIMENSION_NUMBERS = ("NWC", "WIO", "NWC")


def receptive_field(kernel_size: int, levels: int) -> int:
    r"""Number of input steps one output step of a TCN sees.

    .. math::

        \mathrm{RF}(K, L) = 1 + 2 (K - 1) (2^L - 1)

    (two convolutions per residual block, dilation :math:`2^i` at level :math:`i`).

    Args:
        kernel_size: Convolution kernel size :math:`K` (positive).
        levels: Number of residual blocks :math:`L` (positive).

    Returns:
        The receptive field in time steps.

    Raises:
        ValueError: If an argument is not a positive int.
    """
    _check_positive_int("kernel_size", kernel_size)
    _check_positive_int("levels", levels)
    return 1 + 2 * (kernel_size - 1) * (2**levels - 1)


def causal_conv1d(x: jax.Array, w: jax.Array, b: jax.Array, dilation: int = 1) -> jax.Array:
    r"""Causal, dilated 1D convolution over time, feature-last.

    The input is left-padded with :math:`(K-1)d` zeros, so that

    .. math::

        y_t = b + \sum_{k=0}^{K-1} x_{t - (K-1-k) d} \, W_k, \qquad x_{s<0} = 0,

    i.e. the output at time :math:`t` depends only on inputs at times :math:`\le t`. This is
    PyTorch's ``Conv1d(padding=(K-1)*d, dilation=d)`` followed by chopping the last
    :math:`(K-1)d` steps (locuslab's ``Chomp1d``), with ``W_k = weight[:, :, k].T``.

    Args:
        x: Inputs ``[B, T, C_in]``.
        w: Kernel ``[K, C_in, C_out]`` (``WIO`` layout).
        b: Bias ``[C_out]``.
        dilation: Dilation :math:`d` (positive int).

    Returns:
        Outputs ``[B, T, C_out]`` in the promoted dtype of ``x`` and ``w``.

    Raises:
        ValueError: If ``dilation`` is not a positive int, or the shapes of ``x``, ``w`` and
            ``b`` do not fit together (the message names the argument and both shapes).
        TypeError: If ``x`` or ``w`` is not floating point.
    """
    _check_positive_int("dilation", dilation)
    x_shape, w_shape, b_shape = shape_of(x, "x"), shape_of(w, "w"), shape_of(b, "b")
    if len(x_shape) != 3:
        raise ValueError(f"x.shape={x_shape} must be [B, T, C_in] (rank 3)")
    if len(w_shape) != 3 or w_shape[1] != x_shape[2]:
        raise ValueError(f"w.shape={w_shape} must be [K, C_in={x_shape[2]}, C_out] (WIO layout; "
                         f"x.shape={x_shape})")
    if b_shape != (w_shape[2],):
        raise ValueError(f"b.shape={b_shape} must be ({w_shape[2]},) (C_out of w.shape={w_shape})")
    for name, a in (("x", x), ("w", w)):
        dtype = dtype_of(a, name)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name}.dtype={dtype} must be floating point")
    k = w_shape[0]
    y = lax.conv_general_dilated(
        x,
        w,
        window_strides=(1,),
        padding=[((k - 1) * dilation, 0)],
        rhs_dilation=(dilation,),
        dimension_numbers=_DIMENSION_NUMBERS,
    )
    return y + b


def weight_norm(v: jax.Array, g: jax.Array) -> jax.Array:
    r"""Weight normalisation (Salimans & Kingma, 2016) with the output channel last.

    .. math::

        W_{\dots, o} = g_o \, \frac{V_{\dots, o}}{\lVert V_{\dots, o} \rVert_2},

    the norm taken over every axis but the last (output-channel) one: the same as PyTorch's
    ``weight_norm(conv, dim=0)`` on a ``Conv1d`` (whose output channel is axis 0 there).

    Args:
        v: Direction ``[..., C_out]``, e.g. a conv kernel ``[K, C_in, C_out]``.
        g: Magnitude ``[C_out]``.

    Returns:
        The weight, same shape as ``v``.

    Raises:
        ValueError: If ``g.shape != (v.shape[-1],)``.
    """
    v_shape, g_shape = shape_of(v, "v"), shape_of(g, "g")
    if not v_shape or g_shape != v_shape[-1:]:
        raise ValueError(f"g.shape={g_shape} must be ({v_shape[-1] if v_shape else 'C_out'},) "
                         f"(the last axis of v.shape={v_shape})")
    v, g = jnp.asarray(v), jnp.asarray(g)
    axes = tuple(range(v.ndim - 1))
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=axes))
    return v * (g / norm)


def _temporal_block(
    block: Params, x: jax.Array, dilation: int, rate: float, key: jax.Array | None
) -> jax.Array:
    """One residual block, ``[B, T, C_in] -> [B, T, C_out]`` (see :class:`TCN` for the maths)."""
    keys = (None, None) if key is None else tuple(jax.random.split(key))
    h = x
    for name, k in zip(("conv1", "conv2"), keys):
        p = block[name]
        h = causal_conv1d(h, weight_norm(p["v"], p["g"]), p["b"], dilation)
        h = _dropout(jax.nn.relu(h), rate, k)
    if "downsample" in block:
        res = jnp.einsum("btc,cd->btd", x, block["downsample"]["w"]) + block["downsample"]["b"]
    else:
        res = x
    return jax.nn.relu(h + res)


@dataclasses.dataclass(frozen=True)
class TCN:
    r"""Temporal Convolutional Network: a stack of causal, dilated residual blocks.

    Level :math:`i` maps :math:`C_{i-1} \to C_i` channels (:math:`C_{-1}` = ``input_size``,
    :math:`C_i` = ``channels[i]``) with dilation :math:`d = 2^i`. With
    :math:`\mathrm{Conv}_d` the causal dilated convolution of :func:`causal_conv1d` and
    :math:`W = g \, V / \lVert V \rVert` the weight norm of :func:`weight_norm`, one block is

    .. math::

        h^{(1)} &= \mathrm{Dropout}(\mathrm{ReLU}(\mathrm{Conv}_d(x; W^{(1)}) + b^{(1)})) \\
        h^{(2)} &= \mathrm{Dropout}(\mathrm{ReLU}(\mathrm{Conv}_d(h^{(1)}; W^{(2)}) + b^{(2)})) \\
        r &= \begin{cases} x & C_{i-1} = C_i \\
                x \, W^{\mathrm{down}} + b^{\mathrm{down}} & \text{otherwise} \end{cases} \\
        y &= \mathrm{ReLU}(h^{(2)} + r)

    which is ``TemporalBlock`` of locuslab/TCN. Dropout is element-wise inverted dropout, active
    only with ``train=True``.

    Attributes:
        input_size: Input channels :math:`C_{-1}`.
        channels: Output channels of each level; ``len(channels)`` is the number of levels
            :math:`L`. A list is stored as a tuple, so the config stays hashable.
        kernel_size: Convolution kernel size :math:`K`.
        dropout: Dropout rate in ``[0, 1)`` after each convolution's ReLU.

    Example:
        >>> tcn = TCN(input_size=1, channels=(25,) * 8, kernel_size=7, dropout=0.05)
        >>> params = tcn.init(jax.random.key(0))
        >>> ys = tcn.apply(params, jnp.zeros((4, 600, 1)))  # [B, T, 1] -> [B, T, 25]
        >>> ys.shape, tcn.receptive_field
        ((4, 600, 25), 3061)
    """

    input_size: int
    channels: tuple[int, ...]
    kernel_size: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_positive_int("input_size", self.input_size)
        channels = self.channels
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise ValueError(f"channels={channels!r} must be a non-empty sequence of positive ints")
        channels = tuple(channels)
        if not channels:
            raise ValueError("channels=() must be a non-empty sequence of positive ints")
        for i, c in enumerate(channels):
            _check_positive_int(f"channels[{i}]", c)
        object.__setattr__(self, "channels", channels)
        _check_positive_int("kernel_size", self.kernel_size)
        dropout = self.dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ValueError(f"dropout={dropout!r} must be a float in [0, 1)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        object.__setattr__(self, "dropout", float(dropout))

    @property
    def levels(self) -> int:
        """Number of residual blocks :math:`L`."""
        return len(self.channels)

    @property
    def receptive_field(self) -> int:
        """Input steps one output step sees: ``receptive_field(kernel_size, levels)``."""
        return receptive_field(self.kernel_size, self.levels)

    def _in_out(self) -> list[tuple[int, int]]:
        ins = (self.input_size, *self.channels[:-1])
        return list(zip(ins, self.channels))

    def init(
        self,
        key: jax.Array,
        *,
        weight_init: Literal["paper", "locuslab"] = "paper",
        dtype: Any = jnp.float32,
    ) -> Params:
        r"""Initialise the parameters.

        Biases follow PyTorch's ``Conv1d`` default, :math:`U(-1/\sqrt{f}, 1/\sqrt{f})` with
        fan-in :math:`f = K C_{in}` (:math:`C_{in}` for the 1x1 downsample), and the downsample
        weight is :math:`N(0, 0.01^2)`. The conv directions :math:`V` depend on ``weight_init``:

        - ``"paper"`` (default): :math:`V \sim N(0, 0.01^2)`, as the paper and locuslab's
          ``init_weights`` intend.
        - ``"locuslab"``: :math:`V \sim U(-1/\sqrt{f}, 1/\sqrt{f})`, PyTorch's ``Conv1d``
          default. This is what locuslab's code actually trains with: its ``init_weights``
          writes ``conv.weight.data`` after ``weight_norm`` has been applied, and the weight-norm
          hook recomputes the weight from ``g`` and ``v`` at the next forward pass, undoing it.

        In both cases :math:`g = \lVert V \rVert` per output channel, so :math:`W = V` at init.

        Args:
            key: PRNG key.
            weight_init: ``"paper"`` or ``"locuslab"``, see above.
            dtype: Parameter dtype.

        Returns:
            The params pytree described in the module docstring.

        Raises:
            ValueError: If ``weight_init`` is unknown.
        """
        if weight_init not in ("paper", "locuslab"):
            raise ValueError(f"weight_init={weight_init!r} must be 'paper' or 'locuslab'")
        check_key(key)
        k = self.kernel_size

        def uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
            bound = 1.0 / math.sqrt(fan_in)
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        def conv(key: jax.Array, c_in: int, c_out: int) -> Params:
            kv, kb = jax.random.split(key)
            if weight_init == "paper":
                v = 0.01 * jax.random.normal(kv, (k, c_in, c_out), dtype)
            else:
                v = uniform(kv, (k, c_in, c_out), k * c_in)
            g = jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1)))
            return {"v": v, "g": g, "b": uniform(kb, (c_out,), k * c_in)}

        blocks = []
        for level_key, (c_in, c_out) in zip(jax.random.split(key, self.levels), self._in_out()):
            k1, k2, kw, kb = jax.random.split(level_key, 4)
            block = {"conv1": conv(k1, c_in, c_out), "conv2": conv(k2, c_out, c_out)}
            if c_in != c_out:
                block["downsample"] = {
                    "w": 0.01 * jax.random.normal(kw, (c_in, c_out), dtype),
                    "b": uniform(kb, (c_out,), c_in),
                }
            blocks.append(block)
        return {"blocks": blocks}

    def param_shapes(self) -> dict[str, Any]:
        """The expected shape of every parameter, in the layout of :meth:`init`."""
        k = self.kernel_size

        def conv(c_in: int, c_out: int) -> dict[str, tuple[int, ...]]:
            return {"v": (k, c_in, c_out), "g": (c_out,), "b": (c_out,)}

        blocks = []
        for c_in, c_out in self._in_out():
            block: dict[str, Any] = {"conv1": conv(c_in, c_out), "conv2": conv(c_out, c_out)}
            if c_in != c_out:
                block["downsample"] = {"w": (c_in, c_out), "b": (c_out,)}
            blocks.append(block)
        return {"blocks": blocks}

    def check_params(self, params: Params) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first parameter whose path or shape
        differs from :meth:`param_shapes` (e.g. ``params['blocks'][0]['conv1']['b'].shape=(3,)
        must be (4,)``)."""
        blocks = params.get("blocks") if isinstance(params, dict) else None
        if not isinstance(blocks, (list, tuple)) or len(blocks) != self.levels:
            got = ("no 'blocks' list" if not isinstance(blocks, (list, tuple))
                   else f"{len(blocks)} blocks")
            raise ValueError(f"params must hold {self.levels} blocks (levels), got {got}")
        for i, (block, (c_in, c_out)) in enumerate(zip(blocks, self._in_out())):
            if isinstance(block, dict) and (c_in != c_out) != ("downsample" in block):
                raise ValueError(
                    f"params['blocks'][{i}] must {'' if c_in != c_out else 'not '}hold "
                    f"'downsample' for {c_in} -> {c_out} channels"
                )
        check_tree(params, self.param_shapes(), "params")

    def apply(
        self,
        params: Params,
        xs: jax.Array,
        *,
        train: bool = False,
        key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
    ) -> jax.Array:
        """Run the TCN over whole sequences.

        Args:
            params: Params from :meth:`init`.
            xs: Inputs ``[B, T, input_size]``, floating point. bfloat16/float16 inputs are
                computed in float32 and the result is cast back.
            train: Apply dropout (when ``dropout > 0``).
            key: PRNG key for dropout; required when ``train`` and ``dropout > 0``, ignored
                otherwise.
            seq_lengths: Optional ``[B]`` ints in ``[0, T]`` (any array-like of ints). Inputs at
                ``t >= seq_lengths[b]`` are replaced by zeros before the first convolution (so
                a NaN/inf in the padding changes neither values nor gradients) and the outputs
                there are zero, as :func:`seqjax.rnn` does. Outputs before the length do not
                change (the convolutions are causal).

        Returns:
            Outputs ``[B, T, channels[-1]]`` in ``xs.dtype``; output ``t`` depends only on
            ``xs[:, t - receptive_field + 1 : t + 1]``.

        Raises:
            TypeError: If ``xs`` is not floating point, or ``seq_lengths`` not integers.
            ValueError: If ``xs`` is not ``[B, T, input_size]``, if the params do not match the
                config (the message names the parameter's path and both shapes), if
                ``seq_lengths`` is not ``[B]`` with values in ``[0, T]`` (values only checked
                when concrete, i.e. not under ``jit``), or if dropout is active and ``key`` is
                None.
        """
        dtype = getattr(xs, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"xs.dtype={dtype} must be floating point")
        xs = jnp.asarray(xs)
        if xs.ndim != 3:
            raise ValueError(f"xs.shape={xs.shape} must be [B, T, input_size] (rank 3)")
        if xs.shape[-1] != self.input_size:
            raise ValueError(
                f"xs.shape={xs.shape} must have last dim input_size={self.input_size}, "
                f"got {xs.shape[-1]}"
            )
        self.check_params(params)
        use_dropout = train and self.dropout > 0.0
        if use_dropout and key is None:
            raise ValueError(f"key is required when train=True and dropout={self.dropout} > 0")
        if use_dropout:
            check_key(key)
        batch, steps, _ = xs.shape
        lengths = check_lengths(seq_lengths, batch, steps)
        if batch == 0 or steps == 0:
            return jnp.zeros((batch, steps, self.channels[-1]), xs.dtype)

        compute_dtype = jnp.promote_types(xs.dtype, jnp.float32)
        params = jax.tree.map(lambda a: jnp.asarray(a, compute_dtype), params)
        h = xs.astype(compute_dtype)
        if lengths is not None:
            valid = (jnp.arange(steps)[None, :] < lengths[:, None])[..., None]  # [B, T, 1]
            h = jnp.where(valid, h, jnp.zeros((), compute_dtype))
        keys = jax.random.split(key, self.levels) if use_dropout else [None] * self.levels
        for i, (block, k) in enumerate(zip(params["blocks"], keys)):
            h = _temporal_block(block, h, 2**i, self.dropout, k)
        if lengths is not None:
            h = jnp.where(valid, h, jnp.zeros((), compute_dtype))
        return h.astype(xs.dtype)
