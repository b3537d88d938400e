r"""Many-to-one sequence classifiers (functional core).

``tokens [B, T]`` with ``seq_lengths [B]`` go through

.. math::

    e_t &= E[x_t] \quad (\text{random, or word2vec; frozen or fine-tuned}) \\
    c_t &= \mathrm{ReLU}(\mathrm{Conv1D}_\text{same}(e)_t) \quad (\text{optional}) \\
    h_{1..T} &= \mathrm{(bi)RNN}(c, \text{seq\_lengths}) \quad \text{or} \quad \mathrm{TCN}(c) \\
    z &= \mathrm{pool}(h) \in
         \{h_\text{final}, \max_t h_t, \tfrac{1}{L}\textstyle\sum_{t<L} h_t\} \\
    \text{logits} &= W z + b

Padding never changes a prediction: embeddings past each length are zeroed before the
convolution (so a "same" convolution sees the zeros it would see on the sequence alone), the
recurrent layers mask inside the step, and the pools read only ``t < L``. ``final`` pooling of
a recurrent model reads the carry at each sequence's length (for a bidirectional model, the
forward carry at ``L`` concatenated with the backward carry at position 0); of a TCN, the
output at ``L - 1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax.core.layers import dropout
from seqjax.core.tcn import TCN
from seqjax.models.encoder import Encoder, check_arch
from seqjax.models.sequence import check_params, check_tokens, embed_tokens

__all__ = ["Classifier", "cross_entropy", "accuracy", "evaluate"]

Array = jax.Array
_POOLS = ("final", "max", "mean")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """Static configuration of a many-to-one classifier (hashable, a ``jit`` static argument).

    Attributes:
        vocab_size: embedding rows ``V`` (id 0 is conventionally padding, but any id is allowed
            since padding is masked by ``seq_lengths``).
        embed_dim: embedding size ``E``.
        num_classes: output classes ``C``.
        arch: ``"tcn"`` or a registered cell kind (``"lstm"``, ``"gru"``, ``"rnn"``, ...;
            :func:`seqjax.models.model_archs`).
        hidden_size: recurrent hidden size ``H`` (per direction), or TCN channels per level.
        num_layers: recurrent layers, or TCN levels.
        bidirectional: recurrent models only.
        pool: ``"final"``, ``"max"`` or ``"mean"``.
        conv_channels: channels of an optional 1D convolution in front (0: none).
        conv_width: its kernel width (odd, "same" padding).
        tcn_kernel_size: TCN kernel size.
        dropout: dropout rate on the embeddings and on the pooled features (training only).
        freeze_embeddings: ``stop_gradient`` on the embedding table.
    """

    vocab_size: int
    embed_dim: int = 128
    num_classes: int = 2
    arch: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 1
    bidirectional: bool = True
    pool: str = "final"
    conv_channels: int = 0
    conv_width: int = 3
    tcn_kernel_size: int = 3
    dropout: float = 0.0
    freeze_embeddings: bool = False

    def __post_init__(self):
        check_arch(self.arch, "Classifier")
        if self.pool not in _POOLS:
            raise ValueError(f"pool={self.pool!r} must be one of {_POOLS}")
        if self.arch == "tcn" and self.bidirectional:
            raise ValueError("bidirectional=True is for recurrent kinds; set it False for 'tcn'")
        if self.conv_channels and self.conv_width % 2 != 1:
            raise ValueError(f"conv_width={self.conv_width} must be odd ('same' padding)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        for name in ("vocab_size", "embed_dim", "num_classes", "hidden_size", "num_layers",
                     "conv_width", "tcn_kernel_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        if (isinstance(self.conv_channels, bool) or not isinstance(self.conv_channels, int)
                or self.conv_channels < 0):
            raise ValueError(f"conv_channels={self.conv_channels!r} must be an int >= 0 "
                             "(0: no convolution)")

    # ------------------------------------------------------------------ structure
    @property
    def _seq_input(self) -> int:
        return self.conv_channels or self.embed_dim

    @property
    def encoder(self) -> Encoder:
        """The model body (:class:`seqjax.models.encoder.Encoder`): always the scan backend,
        the TCN with the paper's init."""
        return Encoder(self.arch, self._seq_input, self.hidden_size, self.num_layers,
                       kernel_size=self.tcn_kernel_size, backend="scan", tcn_init="paper",
                       bidirectional=self.bidirectional)

    @property
    def cells(self) -> list:
        return self.encoder.cells

    @property
    def tcn(self) -> TCN:
        return self.encoder.tcn

    @property
    def feature_size(self) -> int:
        return self.encoder.output_width

    def init(self, key: Array, embeddings: np.ndarray | Array | None = None) -> dict:
        """Params ``{"embed" [V, E], "conv"?, "seq", "out": {"w" [F, C], "b" [C]}}``.

        ``embeddings [V, E]`` (e.g. word2vec vectors aligned to the vocabulary) replace the
        random ``N(0, 0.1^2)`` table.
        """
        ke, kc, ks, ko = jax.random.split(key, 4)
        if embeddings is None:
            embed = 0.1 * jax.random.normal(ke, (self.vocab_size, self.embed_dim))
        else:
            embed = jnp.asarray(embeddings, jnp.float32)
            if embed.shape != (self.vocab_size, self.embed_dim):
                raise ValueError(f"embeddings.shape={embed.shape} must be "
                                 f"({self.vocab_size}, {self.embed_dim})")
        params: dict[str, Any] = {"embed": embed}
        if self.conv_channels:
            fan_in = self.conv_width * self.embed_dim
            lim = np.sqrt(6.0 / (fan_in + self.conv_channels))
            params["conv"] = {
                "w": jax.random.uniform(kc, (self.conv_width, self.embed_dim, self.conv_channels),
                                        minval=-lim, maxval=lim),
                "b": jnp.zeros((self.conv_channels,)),
            }
        params["seq"] = self.encoder.init(ks)
        lim = np.sqrt(6.0 / (self.feature_size + self.num_classes))
        params["out"] = {
            "w": jax.random.uniform(ko, (self.feature_size, self.num_classes), minval=-lim,
                                    maxval=lim),
            "b": jnp.zeros((self.num_classes,)),
        }
        return params

    # ------------------------------------------------------------------ forward
    def check_params(self, params: Any) -> None:
        """Raises ``ValueError``/``TypeError`` unless ``params`` match :meth:`init`'s tree and
        shapes (see :func:`seqjax.models.check_params`). Static: works under ``jit``."""
        check_params(self, params)

    def features(self, params: dict, tokens: Array, seq_lengths: Array, *, train: bool = False,
                 key: Array | None = None) -> Array:
        """Pooled features ``[B, F]`` for ``tokens [B, T]`` int and ``seq_lengths [B]``.

        Validation as in :meth:`apply`.
        """
        self.check_params(params)
        if seq_lengths is None:
            raise ValueError("seq_lengths=None: a classifier needs one length per sequence "
                             "([B] ints in [0, T]) to pool over")
        tokens, seq_lengths = check_tokens(tokens, self.vocab_size, seq_lengths,
                                           lengths_name="seq_lengths")
        t = tokens.shape[1]
        if train and self.dropout > 0 and key is None:
            raise ValueError("train=True with dropout > 0 needs a key")
        k1, k2 = jax.random.split(key) if key is not None else (None, None)
        mask = (jnp.arange(t)[None, :] < seq_lengths[:, None])[..., None]  # [B, T, 1]
        table = params["embed"]
        if self.freeze_embeddings:
            table = jax.lax.stop_gradient(table)
        x = jnp.where(mask, embed_tokens(table, tokens), 0.0)
        if train:
            x = dropout(x, self.dropout, k1)
        if self.conv_channels:
            x = jax.lax.conv_general_dilated(x, params["conv"]["w"], (1,), "SAME",
                                             dimension_numbers=("NWC", "WIO", "NWC"))
            x = jnp.where(mask, jax.nn.relu(x + params["conv"]["b"]), 0.0)
        ys, carries = self.encoder.apply(params["seq"], x, seq_lengths)
        if self.arch == "tcn":
            ys = jnp.where(mask, ys, 0.0)
            final = None
        else:
            last = carries[-1]
            h = (lambda c: c[0] if isinstance(c, tuple) else c)
            final = (jnp.concatenate([h(last[0]), h(last[1])], -1) if self.bidirectional
                     else h(last))
        if self.pool == "final":
            if final is None:  # TCN: the output at L - 1
                idx = jnp.clip(seq_lengths - 1, 0, t - 1)
                final = jnp.take_along_axis(ys, idx[:, None, None], axis=1)[:, 0]
            z = final
        elif self.pool == "max":
            z = jnp.where(mask, ys, -jnp.inf).max(1)
            z = jnp.where(seq_lengths[:, None] > 0, z, 0.0)
        else:
            z = ys.sum(1) / jnp.maximum(seq_lengths, 1)[:, None].astype(ys.dtype)
        if train:
            z = dropout(z, self.dropout, k2)
        return z

    def apply(self, params: dict, tokens: Array, seq_lengths: Array, *, train: bool = False,
              key: Array | None = None) -> Array:
        """Logits ``[B, C]`` for ``tokens [B, T]`` int ids and ``seq_lengths [B]`` in ``[0, T]``.

        Raises:
          TypeError: float (or bool) token ids or lengths, naming the argument and the dtype.
          ValueError: ``tokens`` not ``[B, T]``, ``seq_lengths`` not ``(B,)`` or outside
            ``[0, T]``, ids outside ``[0, vocab_size)`` at a valid step ``t < seq_lengths[b]``
            (padding may hold any id; the message gives the offending min and max), params of
            another model (the first path whose shape differs, with both shapes).

        Ids and lengths are range-checked only where they are concrete. Under ``jit`` they
        cannot be: there a plain gather would clamp an out-of-range id (and wrap a negative
        one) and silently read another embedding row; this model reads a row of NaN instead
        (:func:`seqjax.models.embed_tokens`), so the logits of that sequence are NaN.
        """
        z = self.features(params, tokens, seq_lengths, train=train, key=key)
        return z @ params["out"]["w"] + params["out"]["b"]


def _check_labels(logits: Array, labels: Array) -> None:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits.shape={tuple(jnp.shape(logits))} must be (batch, classes)")
    b, c = jnp.shape(logits)
    if tuple(jnp.shape(labels)) != (b,):
        raise ValueError(f"labels.shape={tuple(jnp.shape(labels))} must be ({b},)")
    dtype = labels.dtype
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"labels.dtype={dtype} must be an integer dtype (classes in [0, {c}))")
    if not isinstance(labels, jax.core.Tracer):
        v = np.asarray(labels)
        if v.size and (v.min() < 0 or v.max() >= c):
            raise ValueError(f"labels must lie in [0, {c}), got min {v.min()} max {v.max()} "
                             "(drop padding rows of label -1 first)")


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy, ``logits [B, C]``, ``labels [B]`` int in ``[0, C)``.

    Labels are range-checked where concrete; under ``jit`` they cannot be, and an
    out-of-range label (e.g. the -1 of a padding row) gives a meaningless loss silently:
    filter padding rows first.
    """
    labels = labels if hasattr(labels, "dtype") else np.asarray(labels)
    _check_labels(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows of ``logits [B, C]`` whose argmax is ``labels [B]``."""
    labels = labels if hasattr(labels, "dtype") else np.asarray(labels)
    _check_labels(logits, labels)
    return (logits.argmax(-1) == labels).mean()


def evaluate(model: Classifier, params: dict, batches) -> float:
    """Accuracy over ``(tokens, lengths, labels)`` batches (padding rows: label -1 are skipped)."""
    fwd = jax.jit(lambda p, x, n: model.apply(p, x, n))
    correct = total = 0
    for tokens, lengths, labels in batches:
        pred = np.asarray(fwd(params, tokens, lengths).argmax(-1))
        ok = labels >= 0
        correct += int((pred[ok] == labels[ok]).sum())
        total += int(ok.sum())
    return correct / max(total, 1)
