"""Flax NNX wrapper of :class:`seqjax.models.seq2seq.Seq2Seq`.

The module holds the functional model's params pytree with one ``nnx.Param`` per array (as
:class:`seqjax.nn.Recurrent` does) and calls the functional core; no maths is written here.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from seqjax.models import seq2seq as _s2s

__all__ = ["Seq2Seq"]


class Seq2Seq(nnx.Module):
    """Encoder-decoder with attention (see :class:`seqjax.models.seq2seq.Seq2Seq` for the
    arguments).

    Example::

        model = Seq2Seq(src_vocab=60, tgt_vocab=15, attention="bahdanau", rngs=nnx.Rngs(0))
        logits, weights = model(src, src_lengths, tgt)        # teacher forcing
        loss, aux = model.loss(src, src_lengths, tgt, tgt_lengths)
        out = model.beam_search(src, src_lengths, max_len=12, beam_size=4)
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, *, rngs: nnx.Rngs, **config: Any):
        self.config = _s2s.Seq2Seq(src_vocab, tgt_vocab, **config)
        params = self.config.init(rngs.params())
        self.weights = nnx.data(jax.tree.map(nnx.Param, params))

    @property
    def params(self) -> dict:
        """The current parameters as the plain pytree the functional core takes."""
        return jax.tree.map(lambda v: v.get_value(), self.weights,
                            is_leaf=lambda x: isinstance(x, nnx.Variable))

    def __call__(self, src: jax.Array, src_lengths: jax.Array, tgt: jax.Array,
                 tgt_lengths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Teacher forcing: ``(logits [B, T, V_t], attention weights [B, T, S])``."""
        return self.config.apply(self.params, src, src_lengths, tgt, tgt_lengths)

    def loss(self, src, src_lengths, tgt, tgt_lengths):
        """Masked cross-entropy and ``{"token_acc", "seq_acc"}``."""
        return self.config.loss(self.params, src, src_lengths, tgt, tgt_lengths)

    def greedy(self, src, src_lengths, max_len: int) -> _s2s.Greedy:
        return self.config.greedy(self.params, src, src_lengths, max_len)

    def beam_search(self, src, src_lengths, max_len: int, *, beam_size: int = 4,
                    length_penalty: float = 0.0) -> _s2s.Beam:
        return self.config.beam_search(self.params, src, src_lengths, max_len,
                                       beam_size=beam_size, length_penalty=length_penalty)
