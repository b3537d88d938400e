"""Memory-augmented recurrent cells: the Neural Turing Machine (:class:`NTM`) and the
Differentiable Neural Computer (:class:`DNC`).

Both are :class:`seqjax.core.cells.Cell` s whose carry holds the memory, so :func:`seqjax.rnn` runs
them with ``lax.scan``, ``seq_lengths``, ``reverse``, ``remat`` and truncated BPTT like any other
cell. :func:`run_with_states` keeps every step's carry (read/write weightings for heat maps).
"""

from seqjax.core.memory import addressing
from seqjax.core.memory.base import MemoryCell, oneplus, run_with_states
from seqjax.core.memory.dnc import DNC, DNCState
from seqjax.core.memory.ntm import NTM, NTMState

__all__ = [
    "DNC",
    "DNCState",
    "MemoryCell",
    "NTM",
    "NTMState",
    "addressing",
    "oneplus",
    "run_with_states",
]
