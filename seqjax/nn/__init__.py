"""Flax NNX modules: thin stateful wrappers over the functional core."""

from seqjax.nn.recurrent import GRU, LSTM, RNN, Recurrent

__all__ = ["GRU", "LSTM", "RNN", "Recurrent"]
