"""seqjax: sequence modelling in JAX.

The functional core: cells (:mod:`seqjax.core.cells`), :func:`rnn` and the layers built on it
(:mod:`seqjax.core.layers`), weight conversion from PyTorch (:mod:`seqjax.core.interop`). Flax NNX
modules live in :mod:`seqjax.nn`, data in :mod:`seqjax.data`, training in :mod:`seqjax.train`,
fused kernels in :mod:`seqjax.kernels`, the memory-augmented cells (NTM, DNC) in
:mod:`seqjax.core.memory`.
"""

from seqjax.core.backend import BackendChoice, resolve_backend
from seqjax.core.cells import (
    GRU,
    LSTM,
    Cell,
    PeepholeLSTM,
    SimpleRNN,
    cell_kinds,
    make_cell,
    register_cell,
)
from seqjax.core.layers import bidirectional, init_stack, pyramid, reduce_time, stack_cells, stacked
from seqjax.core.linear import LRU, MinGRU, MinLSTM  # registers "mingru", "minlstm", "lru"
from seqjax.core.recurrent import length_mask, reverse_padded, rnn

__version__ = "0.1.0"

__all__ = [
    "BackendChoice",
    "Cell",
    "GRU",
    "LRU",
    "LSTM",
    "MinGRU",
    "MinLSTM",
    "PeepholeLSTM",
    "SimpleRNN",
    "bidirectional",
    "cell_kinds",
    "init_stack",
    "length_mask",
    "make_cell",
    "pyramid",
    "reduce_time",
    "register_cell",
    "resolve_backend",
    "reverse_padded",
    "rnn",
    "stack_cells",
    "stacked",
]
