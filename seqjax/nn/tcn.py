"""Flax NNX wrapper around the functional :class:`seqjax.core.tcn.TCN`."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.core import tcn as tcn_lib

__all__ = ["TCN"]


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class TCN(nnx.Module):
    """Temporal Convolutional Network as an ``nnx.Module``.

    Holds the params pytree of :class:`seqjax.core.tcn.TCN` with one ``nnx.Param`` per array, so the
    state paths read ``blocks/0/conv1/v`` etc. (handy for optimiser masks and sharding rules), and
    calls :meth:`seqjax.core.tcn.TCN.apply` on them; see that class for the maths and shapes.

    (One ``nnx.Param`` holding the whole pytree is not used: ``nnx`` turns the ``blocks`` list
    into a dict-like ``State`` on the first ``nnx.Optimizer`` update, and the second update then
    fails with a pytree structure error.)

    Args:
        input_size: Input channels.
        channels: Output channels of each level (one residual block per level).
        kernel_size: Convolution kernel size.
        dropout: Dropout rate in ``[0, 1)``.
        weight_init: ``"paper"`` or ``"locuslab"``, see :meth:`seqjax.core.tcn.TCN.init`.
        dtype: Parameter dtype.
        rngs: ``nnx.Rngs``; the ``params`` stream initialises the weights, and a fork of it is
            kept (when ``dropout > 0``) to draw dropout keys from its ``dropout`` stream when
            ``__call__`` gets ``train=True`` and no ``key``.

    Attributes:
        config: The static :class:`seqjax.core.tcn.TCN` configuration.
        blocks: Per-level dicts of ``nnx.Param`` mirroring ``params["blocks"]``.
    """

    def __init__(
        self,
        input_size: int,
        channels: tuple[int, ...] | list[int],
        kernel_size: int = 2,
        dropout: float = 0.0,
        *,
        weight_init: Literal["paper", "locuslab"] = "paper",
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.config = tcn_lib.TCN(input_size, channels, kernel_size, dropout)
        params = self.config.init(rngs.params(), weight_init=weight_init, dtype=dtype)
        self.blocks = nnx.data(jax.tree.map(nnx.Param, params["blocks"]))
        self.rngs = rngs.fork() if self.config.dropout > 0 else None

    @property
    def receptive_field(self) -> int:
        """Input steps one output step sees."""
        return self.config.receptive_field

    @property
    def params(self) -> tcn_lib.Params:
        """The current parameters as the plain pytree :meth:`seqjax.core.tcn.TCN.apply` takes."""
        blocks = jax.tree.map(lambda v: v.get_value(), self.blocks, is_leaf=_is_variable)
        return {"blocks": blocks}

    def __call__(
        self, xs: jax.Array, *, train: bool = False, key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
    ) -> jax.Array:
        """``[B, T, input_size] -> [B, T, channels[-1]]``; see :meth:`seqjax.core.tcn.TCN.apply`.

        Args:
            xs: Inputs ``[B, T, input_size]``.
            train: Apply dropout.
            key: Dropout key; if None (and ``train`` with ``dropout > 0``), one is drawn from the
                module's ``dropout`` stream, which advances on every such call.
            seq_lengths: Optional ``[B]`` lengths: padding is zeroed before the first
                convolution and in the outputs (see :meth:`seqjax.core.tcn.TCN.apply`).
        """
        if train and key is None and self.rngs is not None:
            key = self.rngs.dropout()
        return self.config.apply(self.params, xs, train=train, key=key, seq_lengths=seq_lengths)
