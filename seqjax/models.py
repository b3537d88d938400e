"""Sequence models for the experiments: ``[embedding] -> encoder -> per-step linear readout``.

The encoder is a TCN (:mod:`seqjax.tcn`) or a recurrent stack (:func:`seqjax.stacked`); the
model emits one output per input step, and the task (:mod:`seqjax.data`) picks the steps its
loss uses. Like the cells, a model is a frozen dataclass of static configuration with
``init(key) -> params`` and a pure ``apply``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells import glorot_uniform
from seqjax.layers import init_stack, stack_cells, stacked
from seqjax.tcn import TCN

Array = jax.Array

__all__ = ["SequenceModel", "param_count", "hidden_for_params", "ARCHS"]

RECURRENT_ARCHS = ("lstm", "gru", "rnn", "rnn_relu", "peephole_lstm", "gru_before")
ARCHS = ("tcn",) + RECURRENT_ARCHS


def param_count(params: Any) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params)))


def _dropout(x: Array, rate: float, key: Array | None) -> Array:
    if rate <= 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class SequenceModel:
    """A per-step sequence model.

    Args:
      arch: ``"tcn"`` or a recurrent cell kind (``"lstm"``, ``"gru"``, ``"rnn"``, ...).
      input_size: feature size ``D`` of float inputs, or the vocabulary size when
        ``embed_size > 0`` (inputs are then ``[B, T]`` int token ids).
      output_size: outputs per step ``O`` (logits or regression values).
      hidden_size: recurrent hidden size, or TCN channels per level.
      num_layers: recurrent layers, or TCN levels (residual blocks).
      kernel_size: TCN kernel size (ignored by recurrent archs).
      dropout: TCN: inside every block; recurrent: between layers and before the readout.
      embed_size: size of a learned input embedding (0: float inputs, no embedding).
      backend: recurrent backend (see :func:`seqjax.rnn`).
      readout_std: if set, the readout weight is N(0, readout_std) (the TCN paper uses 0.01);
        Glorot-uniform otherwise.
      forget_bias: initial LSTM forget-gate bias (LSTM archs only).
      tcn_init: TCN weight init, ``"locuslab"`` (what locuslab/TCN actually trains with: its
        N(0, 0.01) is overwritten by ``weight_norm``, leaving PyTorch's default uniform init) or
        ``"paper"`` (N(0, 0.01) as the paper states); see :meth:`seqjax.tcn.TCN.init`.
    """

    arch: str
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int = 1
    kernel_size: int = 2
    dropout: float = 0.0
    embed_size: int = 0
    backend: str = "auto"
    readout_std: float | None = None
    forget_bias: float = 1.0
    tcn_init: str = "locuslab"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r} must be one of {ARCHS}")
        for name in ("input_size", "output_size", "hidden_size", "num_layers", "kernel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"SequenceModel.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SequenceModel.dropout={self.dropout} must be in [0, 1)")

    # ---------------------------------------------------------------------------------------
    @property
    def _feature_size(self) -> int:
        return self.embed_size if self.embed_size else self.input_size

    @property
    def tcn(self) -> TCN:
        return TCN(self._feature_size, (self.hidden_size,) * self.num_layers,
                   kernel_size=self.kernel_size, dropout=self.dropout)

    @property
    def cells(self) -> list:
        extra = {"forget_bias": self.forget_bias} if "lstm" in self.arch else {}
        return stack_cells(self.arch, self._feature_size, self.hidden_size, self.num_layers,
                           **extra)

    @property
    def receptive_field(self) -> int | None:
        """TCN receptive field in steps (``None`` for recurrent models: unbounded)."""
        return self.tcn.receptive_field if self.arch == "tcn" else None

    def init(self, key: Array) -> dict:
        """Params ``{"embed": [V, E] (with an embedding), "encoder": ..., "readout": {"w": [H, O],
        "b": [O]}}``."""
        k_emb, k_enc, k_out = jax.random.split(key, 3)
        params: dict[str, Any] = {}
        if self.embed_size:
            params["embed"] = jax.random.normal(k_emb, (self.input_size, self.embed_size)) * 0.1
        if self.arch == "tcn":
            params["encoder"] = self.tcn.init(k_enc, weight_init=self.tcn_init)
        else:
            params["encoder"] = init_stack(self.cells, k_enc)
        shape = (self.hidden_size, self.output_size)
        if self.readout_std is None:
            w = glorot_uniform(k_out, shape)
        else:
            w = self.readout_std * jax.random.normal(k_out, shape)
        params["readout"] = {"w": w, "b": jnp.zeros((self.output_size,))}
        return params

    def apply(
        self,
        params: dict,
        inputs: Array,
        lengths: Array | None = None,
        *,
        train: bool = False,
        key: Array | None = None,
    ) -> Array:
        """Outputs ``[B, T, output_size]`` for ``inputs [B, T, D]`` (or ``[B, T]`` token ids).

        ``lengths [B]`` masks recurrent models (a causal TCN needs no mask: padding after a
        sequence cannot reach its valid outputs). ``train=True`` with ``dropout > 0`` needs
        ``key``.
        """
        if train and self.dropout > 0 and key is None:
            raise ValueError("SequenceModel.apply(train=True) with dropout > 0 needs a key")
        k_enc, k_out = (None, None) if not (train and key is not None) else jax.random.split(key)
        if self.embed_size:
            if not jnp.issubdtype(jnp.result_type(inputs), jnp.integer):
                raise TypeError(f"inputs.dtype={jnp.result_type(inputs)} must be integer token "
                                f"ids for a model with embed_size={self.embed_size}")
            if jnp.ndim(inputs) != 2:
                raise ValueError(f"inputs.shape={jnp.shape(inputs)} must be [B, T] token ids")
            xs = jnp.take(params["embed"], inputs, axis=0)
        else:
            xs = inputs
        if self.arch == "tcn":
            hs = self.tcn.apply(params["encoder"], xs, train=train, key=k_enc)
        else:
            hs, _ = stacked(self.cells, params["encoder"], xs, seq_lengths=lengths,
                            dropout=self.dropout, key=k_enc, backend=self.backend)
            hs = _dropout(hs, self.dropout, k_out)
        return hs @ params["readout"]["w"] + params["readout"]["b"]


def hidden_for_params(model: SequenceModel, target: int, *, max_hidden: int = 4096) -> int:
    """The hidden size that brings ``model``'s parameter count closest to ``target``.

    How the TCN paper compares architectures: "roughly the same number of parameters".
    """
    def count(h: int) -> int:
        shapes = jax.eval_shape(dataclasses.replace(model, hidden_size=h).init,
                                jax.random.PRNGKey(0))
        return param_count(shapes)

    lo, hi = 1, max_hidden  # parameter count grows monotonically with the hidden size
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [h for h in (lo - 1, lo) if h >= 1]
    return min(candidates, key=lambda h: abs(count(h) - target))

