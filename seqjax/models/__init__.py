"""Models built on the core: input -> encoder (TCN, stacked cells, memory cell) -> head.

- :mod:`seqjax.models.encoder`: :class:`Encoder`, the one model body the model classes below
  are presets of, and :func:`model_archs` (``"tcn"`` plus the registered cell kinds).

- :mod:`seqjax.models.sequence`: :class:`SequenceModel`, the per-step model of the task
  comparison, and the validation shared by the models (params, token ids, lengths).
- :mod:`seqjax.models.lm`: :class:`LanguageModel` (token embedding, tied output).
- :mod:`seqjax.models.classify`: :class:`Classifier` (many-to-one, pooled).
- :mod:`seqjax.models.memory`: :class:`MemoryModel` (a memory cell plus a readout).
- :mod:`seqjax.models.seq2seq`: encoder-decoder with attention, greedy and beam decoding.
- :mod:`seqjax.models.sample`: sampling from a language model.
- :mod:`seqjax.models.word2vec`: skip-gram / CBOW embeddings.
"""

from seqjax.models.classify import Classifier
from seqjax.models.encoder import Encoder, model_archs
from seqjax.models.lm import LanguageModel
from seqjax.models.memory import MemoryModel
from seqjax.models.seq2seq import Seq2Seq
from seqjax.models.sequence import (
    ARCHS,
    RECURRENT_ARCHS,
    SequenceModel,
    check_lengths,
    check_params,
    check_token_ids,
    check_tokens,
    embed_tokens,
    hidden_for_params,
    param_count,
)

__all__ = [
    "ARCHS",
    "RECURRENT_ARCHS",
    "Classifier",
    "Encoder",
    "LanguageModel",
    "MemoryModel",
    "Seq2Seq",
    "SequenceModel",
    "check_lengths",
    "check_params",
    "check_token_ids",
    "check_tokens",
    "embed_tokens",
    "model_archs",
    "hidden_for_params",
    "param_count",
]
