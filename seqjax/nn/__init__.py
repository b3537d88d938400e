"""Flax NNX modules: thin stateful wrappers over the functional core."""

from seqjax.nn.classify import SequenceClassifier
from seqjax.nn.memory import DNC, NTM, Memory
from seqjax.nn.recurrent import GRU, LSTM, RNN, Recurrent
from seqjax.nn.seq2seq import Seq2Seq
from seqjax.nn.tcn import TCN

__all__ = [
    "DNC",
    "GRU",
    "LSTM",
    "Memory",
    "NTM",
    "RNN",
    "Recurrent",
    "Seq2Seq",
    "SequenceClassifier",
    "TCN",
]
