"""The functional core: cells, the time loop, the layers built on it, TCNs, attention.

- :mod:`seqjax.core.cells`: the cells (Elman RNN, LSTM, peephole LSTM, GRU both resets) and the
  cell protocol; :mod:`seqjax.core.memory`: the memory-augmented cells (NTM, DNC).
- :mod:`seqjax.core.linear`: cells linear in their state (minGRU, minLSTM, LRU) and the
  parallel (associative) scan that runs them (``rnn(..., backend="parallel")``).
- :mod:`seqjax.core.recurrent`: :func:`~seqjax.core.recurrent.rnn`, the one time loop;
  :mod:`seqjax.core.backend`: where its backend (scan or the fused kernels) is chosen.
- :mod:`seqjax.core.layers`: stacked, bidirectional and pyramid layers built on ``rnn``.
- :mod:`seqjax.core.tcn`: temporal convolutional networks (Bai, Kolter & Koltun 2018).
- :mod:`seqjax.core.attention`: additive and multiplicative attention over padded memories.
- :mod:`seqjax.core.interop`: weight conversion to and from PyTorch.

Nothing here imports the models, training or data above it.
"""

from seqjax.core import linear  # noqa: E402,F401  (registers "mingru", "minlstm", "lru")
