"""Memory-augmented recurrent cells: the Neural Turing Machine (:class:`NTM`) and the
Differentiable Neural Computer (:class:`DNC`).

Both are :class:`seqjax.cells.Cell` s whose carry holds the memory, so :func:`seqjax.rnn` runs
them with ``lax.scan``, ``seq_lengths``, ``reverse``, ``remat`` and truncated BPTT like any other
cell. :func:`run_with_states` keeps every step's carry (read/write weightings for heat maps).
"""

from seqjax.memory import addressing
from seqjax.memory.base import MemoryCell, oneplus, run_with_states
from seqjax.memory.dnc import DNC, DNCState
from seqjax.memory.model import MemoryModel
from seqjax.memory.ntm import NTM, NTMState

__all__ = [
    "DNC",
    "DNCState",
    "MemoryCell",
    "MemoryModel",
    "NTM",
    "NTMState",
    "addressing",
    "oneplus",
    "run_with_states",
]
