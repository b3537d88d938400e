r"""The Neural Turing Machine (Graves, Wayne & Danihelka 2014) as a :class:`seqjax.core.cells.Cell`.

A controller cell (an LSTM by default) reads the input and the previous read vectors and emits an
interface vector that parameterises ``R`` read heads and ``E`` write heads over a memory
``M [N, W]``. Each head addresses the memory with :func:`seqjax.core.memory.addressing.ntm_address`
(content, interpolation, circular shift, sharpening). At step ``t``, with :math:`\xi_t` split
per head (non-linearities as in Collier & Beel 2018, *Implementing Neural Turing Machines*):

.. math::

    k = \tanh(\cdot),\quad \beta = \operatorname{softplus}(\cdot),\quad
    g = \sigma(\cdot),\quad s = \operatorname{softmax}(\cdot),\quad
    \gamma = 1 + \operatorname{softplus}(\cdot),\quad e = \sigma(\cdot),\quad a = \tanh(\cdot)

    w^{\rm w}_t &= \text{address}(M_{t-1}, w^{\rm w}_{t-1}; k, \beta, g, s, \gamma)
      &&\text{(every write head)} \\
    M_t &= M_{t-1} \circ \textstyle\prod_j (1 - w^{\rm w}_{t,j} e_j^\top)
          + \sum_j w^{\rm w}_{t,j} a_j^\top &&\text{(erase, then add)} \\
    w^{\rm r}_t &= \text{address}(M_t, w^{\rm r}_{t-1}; k, \beta, g, s, \gamma),
      \qquad r_t = {w^{\rm r}_t}^\top M_t &&\text{(every read head)}

The heads write before they read (as in the DNC), so a read at step ``t`` sees that step's write.
The carry starts with every memory cell at ``memory_init`` (Collier & Beel's constant init, the
one they found to train fastest), every weighting one-hot on row 0 (so location-based shifts
have a definite start) and the read vectors equal to that row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.core.cells import check_batch
from seqjax.core.memory import addressing
from seqjax.core.memory.base import MemoryCell

Array = jax.Array

__all__ = ["NTM", "NTMState"]


class NTMState(NamedTuple):
    """The NTM's carry (every field batch-major).

    Attributes:
      controller: the controller cell's carry (an LSTM's ``(h, c)``).
      memory: ``[B, N, W]``.
      read_weights: ``[B, R, N]`` the read heads' last weightings.
      write_weights: ``[B, E, N]`` the write heads' last weightings.
      reads: ``[B, R, W]`` the last read vectors.
    """

    controller: Any
    memory: Array
    read_weights: Array
    write_weights: Array
    reads: Array


@dataclasses.dataclass(frozen=True)
class NTM(MemoryCell):
    """Neural Turing Machine cell; output ``[h_t, r_t]`` of width ``H + R W``.

    Args:
      input_size: ``D``.
      controller_size: ``H``, the controller's hidden size (the paper's copy task: 100).
      memory_size: ``N`` rows (paper: 128).
      word_size: ``W`` (paper: 20).
      num_reads: ``R`` read heads.
      num_writes: ``E`` write heads.
      shift_range: ``r``: shifts over offsets ``-r .. r`` (paper: 1).
      controller: a :func:`seqjax.core.cells.make_cell` kind (``"lstm"``, ``"gru"``, ``"rnn"``,
        ...).
      memory_init: the constant every memory cell starts at.
      clip_value: the interface vector is clipped to ``[-clip_value, clip_value]``.

    Params: ``{"controller": {...}, "interface": {"w": [H, P], "b": [P]}}`` with
    ``P = (R + E)(W + 2r + 4) + 2 E W`` (per head: key, strength, gate, shift, sharpening; per
    write head also erase and add).
    """

    input_size: int
    controller_size: int = 100
    memory_size: int = 128
    word_size: int = 20
    num_reads: int = 1
    num_writes: int = 1
    shift_range: int = 1
    controller: str = "lstm"
    memory_init: float = 1e-6
    clip_value: float | None = 20.0

    def __post_init__(self):
        self._check_fields()
        if not isinstance(self.num_writes, int) or isinstance(self.num_writes, bool) \
                or self.num_writes <= 0:
            raise ValueError(f"NTM.num_writes must be a positive int, got {self.num_writes!r}")
        if not isinstance(self.shift_range, int) or not 0 <= self.shift_range < self.memory_size:
            raise ValueError(f"NTM.shift_range={self.shift_range!r} must be an int in "
                             f"[0, memory_size={self.memory_size})")

    @property
    def _num_shifts(self) -> int:
        return 2 * self.shift_range + 1

    def _sizes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The interface's fields in order, with their shapes (without the batch)."""
        k, w, s, e = self.num_reads + self.num_writes, self.word_size, self._num_shifts, \
            self.num_writes
        return [("keys", (k, w)), ("strengths", (k,)), ("gates", (k,)), ("shifts", (k, s)),
                ("gammas", (k,)), ("erase", (e, w)), ("add", (e, w))]

    def split_interface(self, xi: Array) -> dict[str, Array]:
        """``xi [B, P]`` -> the heads' parameters, activated (read heads first, then write):
        ``keys [B, R+E, W]``, ``strengths``, ``gates``, ``gammas [B, R+E]``,
        ``shifts [B, R+E, 2r+1]``, ``erase``, ``add [B, E, W]``."""
        out = self._split_raw(xi)
        return {
            "keys": jnp.tanh(out["keys"]),
            "strengths": jax.nn.softplus(out["strengths"]),
            "gates": jax.nn.sigmoid(out["gates"]),
            "shifts": jax.nn.softmax(out["shifts"], axis=-1),
            "gammas": 1.0 + jax.nn.softplus(out["gammas"]),
            "erase": jax.nn.sigmoid(out["erase"]),
            "add": jnp.tanh(out["add"]),
        }

    def initial_carry(self, batch: int, dtype: Any = jnp.float32) -> NTMState:
        check_batch(batch)
        n, w = self.memory_size, self.word_size
        memory = jnp.full((batch, n, w), self.memory_init, dtype)
        first = jnp.zeros((n,), dtype).at[0].set(1.0)
        return NTMState(
            controller=self.controller_cell.initial_carry(batch, dtype),
            memory=memory,
            read_weights=jnp.broadcast_to(first, (batch, self.num_reads, n)),
            write_weights=jnp.broadcast_to(first, (batch, self.num_writes, n)),
            reads=jnp.full((batch, self.num_reads, w), self.memory_init, dtype),
        )

    def _memory_step(self, carry: NTMState, controller_carry: Any, xi: Array) -> NTMState:
        p = self.split_interface(xi)
        r = self.num_reads

        def head(sl):
            return [p[k][:, sl] for k in ("keys", "strengths", "gates", "shifts", "gammas")]

        w_write = addressing.ntm_address(carry.memory, carry.write_weights,
                                         *head(slice(r, None)))
        memory = addressing.erase_and_add(carry.memory, w_write, p["erase"], p["add"])
        w_read = addressing.ntm_address(memory, carry.read_weights, *head(slice(0, r)))
        return NTMState(controller_carry, memory, w_read, w_write,
                        addressing.read(memory, w_read))
