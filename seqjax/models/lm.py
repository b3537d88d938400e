"""Language models: token embedding -> recurrent stack or TCN -> softmax readout.

A :class:`LanguageModel` is, like the cells, a frozen dataclass of static configuration with
``init(key) -> params`` and a pure :meth:`LanguageModel.apply`. For token ids
``x [B, T]`` and a carry,

.. math::

    e_t &= \\mathrm{Drop}_{in}(E[x_t]) \\\\
    h_t &= \\mathrm{encoder}(e_{\\le t}) \\quad \\text{(stacked cells with dropout between
           layers, or a causal TCN)} \\\\
    \\mathrm{logits}_t &= \\mathrm{Drop}_{out}(h_t)\\, W + b, \\qquad W = E^\\top
           \\text{ when the embeddings are tied.}

Params::

    {"embed": [V, E],
     "encoder": [per-layer cell params, ...]          # recurrent
              | {"blocks": [...]},                    # TCN (seqjax.core.tcn)
     "readout": {"w": [H_last, V], "b": [V]}}         # no "w" when tied

With ``tie_weights=True`` the last layer's width is ``embed_size`` (the last recurrent layer's
hidden size, or the TCN's last level's channels, as in locuslab/TCN's word model and Press &
Wolf 2017), so that the readout can reuse the embedding matrix.

Recurrent models carry state across calls: :meth:`LanguageModel.apply` takes an initial carry
(one per layer; ``None`` for zeros) and returns the final one, which is what truncated BPTT
(:mod:`seqjax.train.tbptt`) and sampling (:mod:`seqjax.models.sample`) run on. A TCN has no carry
(its
"state" is its input window; ``apply`` returns ``None`` for it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.core.cells import cell_kinds
from seqjax.core.layers import dropout
from seqjax.core.tcn import TCN
from seqjax.models.encoder import Encoder, check_arch, check_backend, model_archs
from seqjax.models.sequence import check_params, check_token_ids, embed_tokens

Array = jax.Array

__all__ = ["LanguageModel", "LM_ARCHS", "RECURRENT_LM_ARCHS", "bits_per_token"]

#: The registered cell kinds at import (the model validates against
#: :func:`seqjax.models.model_archs` at call time).
RECURRENT_LM_ARCHS = cell_kinds()
LM_ARCHS = model_archs()


def bits_per_token(mean_nats: float | Array) -> float | Array:
    """Mean cross-entropy in nats -> bits (``/ ln 2``): bits per character at char level."""
    return mean_nats / math.log(2.0)


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """A token-level language model.

    Args:
      arch: ``"tcn"`` or a recurrent cell kind (``"lstm"``, ``"gru"``, ``"rnn"``,
        ``"rnn_relu"``, ``"peephole_lstm"``, ``"gru_before"``).
      vocab_size: ``V``.
      embed_size: ``E``, the embedding width.
      hidden_size: recurrent hidden size, or TCN channels per level.
      num_layers: recurrent layers, or TCN levels.
      kernel_size: TCN kernel size (ignored by recurrent models).
      dropout_input: dropout on the embeddings.
      dropout_hidden: recurrent: between layers (as PyTorch's ``dropout``); TCN: inside every
        block (after each convolution's ReLU).
      dropout_output: dropout on the last layer's outputs, before the readout.
      tie_weights: share the embedding matrix with the readout (``W = E^T``); the last layer
        then has width ``embed_size``.
      backend: recurrent backend, passed to :func:`seqjax.rnn` (``"auto"``, ``"scan"``,
        ``"pallas"``).
      forget_bias: initial LSTM forget-gate bias.
      init_scale: the embedding and the untied readout weight are ``U(-s, s)`` (Zaremba et al.
        2014, PyTorch's word_language_model); readout bias 0.
      tcn_init: TCN conv init (see :meth:`seqjax.core.tcn.TCN.init`).
      residual: recurrent archs: pre-norm residual blocks instead of a plain stack (see
        :class:`seqjax.models.encoder.Encoder`); not with tied weights of another width.
      glu: with ``residual``: the LRU paper's GELU + GLU output per block (see
        :class:`seqjax.models.encoder.Encoder`; what a stack of LRUs needs to be nonlinear).
    """

    arch: str
    vocab_size: int
    embed_size: int
    hidden_size: int
    num_layers: int = 1
    kernel_size: int = 3
    dropout_input: float = 0.0
    dropout_hidden: float = 0.0
    dropout_output: float = 0.0
    tie_weights: bool = False
    backend: str = "auto"
    forget_bias: float = 1.0
    init_scale: float = 0.1
    tcn_init: str = "locuslab"
    residual: bool = False
    glu: bool = False

    def __post_init__(self):
        check_arch(self.arch, "LanguageModel")
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LanguageModel.{name} must be a positive int, got {value!r}")
        for name in ("dropout_input", "dropout_hidden", "dropout_output"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"LanguageModel.{name}={value} must be in [0, 1)")
        check_backend(self.backend, "LanguageModel")
        self.encoder  # noqa: B018  (validates the combination: residual, arch, widths)

    # ---------------------------------------------------------------------------------------
    @property
    def is_recurrent(self) -> bool:
        return self.arch != "tcn"

    @property
    def output_width(self) -> int:
        """Width of the last layer (the readout's input): ``embed_size`` when tied."""
        return self.embed_size if self.tie_weights else self.hidden_size

    @property
    def encoder(self) -> Encoder:
        """The model body (:class:`seqjax.models.encoder.Encoder`); its last layer is
        :attr:`output_width` wide."""
        return Encoder(self.arch, self.embed_size, self.hidden_size, self.num_layers,
                       kernel_size=self.kernel_size, dropout=self.dropout_hidden,
                       backend=self.backend, forget_bias=self.forget_bias,
                       tcn_init=self.tcn_init, last_size=self.output_width,
                       residual=self.residual, glu=self.glu)

    @property
    def cells(self) -> list:
        """The recurrent cells, one per layer."""
        if not self.is_recurrent:
            raise ValueError("a TCN language model has no cells")
        return self.encoder.cells

    @property
    def tcn(self) -> TCN:
        return self.encoder.tcn

    @property
    def receptive_field(self) -> int | None:
        """TCN: input tokens one output sees; recurrent: ``None`` (unbounded)."""
        return self.encoder.receptive_field

    def initial_carry(self, batch: int) -> list | None:
        """Zero carries, one per layer (``None`` for a TCN)."""
        return self.encoder.initial_carry(batch)

    def init(self, key: Array) -> dict:
        """Fresh params (see the module docstring for the layout); one jitted computation."""
        return _jitted_init(self, key)

    def _init(self, key: Array) -> dict:
        k_emb, k_enc, k_out = jax.random.split(key, 3)
        s = self.init_scale
        params: dict[str, Any] = {
            "embed": jax.random.uniform(k_emb, (self.vocab_size, self.embed_size),
                                        jnp.float32, -s, s)
        }
        params["encoder"] = self.encoder.init(k_enc)
        readout: dict[str, Array] = {"b": jnp.zeros((self.vocab_size,), jnp.float32)}
        if not self.tie_weights:
            readout["w"] = jax.random.uniform(k_out, (self.output_width, self.vocab_size),
                                              jnp.float32, -s, s)
        params["readout"] = readout
        return params

    def readout_weight(self, params: dict) -> Array:
        """``W [H_last, V]`` (``E^T`` when tied)."""
        return params["embed"].T if self.tie_weights else params["readout"]["w"]

    def check_params(self, params: Any) -> None:
        """Raises ``ValueError``/``TypeError`` unless ``params`` match :meth:`init`'s tree and
        shapes (see :func:`seqjax.models.check_params`): params of another vocabulary size,
        hidden size, depth or kind of cell are refused. Static: works under ``jit``."""
        check_params(self, params)

    def apply(
        self,
        params: dict,
        tokens: Array,
        carry: list | None = None,
        *,
        train: bool = False,
        key: Array | None = None,
        return_hidden: bool = False,
    ) -> tuple[Array, list | None]:
        """Logits for a chunk of tokens, starting from ``carry``.

        Args:
          params: from :meth:`init`.
          tokens: ``[B, T]`` int token ids in ``[0, vocab_size)``.
          carry: recurrent: one carry per layer (``None``: zeros); ignored by a TCN (whose
            outputs depend on ``tokens`` only; give it the context as part of ``tokens``).
          train: apply dropout (needs ``key`` when any rate is > 0).
          key: PRNG key for dropout.
          return_hidden: also return the last layer's outputs ``[B, T, H_last]``.

        Returns:
          ``(logits [B, T, V] float32, final carry)`` (the carry is ``None`` for a TCN); with
          ``return_hidden``, ``(logits, carry, hidden)``.

        Raises:
          TypeError: float (or bool) token ids, naming ``tokens`` and the dtype.
          ValueError: ``tokens`` not ``[B, T]``; ids outside ``[0, vocab_size)`` (the message
            gives the offending min and max); params of another model (the first path whose
            shape differs, with both shapes); a carry of the wrong length or shapes.

        The id range is checked only where ``tokens`` is concrete. Under ``jit`` it cannot be:
        there a plain gather would clamp an out-of-range id (and wrap a negative one) and
        silently read another embedding row; this model reads a row of NaN instead
        (:func:`seqjax.models.embed_tokens`), so the logits of that step are NaN.
        """
        tokens = check_token_ids(tokens, self.vocab_size)
        self.check_params(params)
        self.encoder.check_carry(carry, tokens.shape[0])
        rates = (self.dropout_input, self.dropout_hidden, self.dropout_output)
        if train and max(rates) > 0 and key is None:
            raise ValueError("LanguageModel.apply(train=True) with dropout > 0 needs a key")
        keys = jax.random.split(key, 3) if (train and key is not None) else (None,) * 3
        xs = embed_tokens(params["embed"], tokens)
        xs = dropout(xs, self.dropout_input, keys[0])
        hs, carry = self.encoder.apply(params["encoder"], xs, carry=carry, train=train,
                                       key=keys[1])
        hidden = hs
        hs = dropout(hs, self.dropout_output, keys[2])
        logits = hs @ self.readout_weight(params) + params["readout"]["b"]
        logits = logits.astype(jnp.float32)
        return (logits, carry, hidden) if return_hidden else (logits, carry)

    def to_config(self) -> dict:
        """A JSON-able dict; ``LanguageModel(**config)`` rebuilds the model."""
        return dataclasses.asdict(self)


_jitted_init = jax.jit(LanguageModel._init, static_argnums=0)
