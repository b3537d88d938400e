"""A memory cell with a per-step linear readout: the NTM's and DNC's whole network.

:class:`MemoryModel` has the interface of :class:`seqjax.models.SequenceModel`
(``init(key)``, ``apply(params, inputs, lengths, *, train, key) -> [B, T, O]``), so
:func:`seqjax.train.task_loss_fn`, :func:`seqjax.train.make_task_evaluator` and
:func:`seqjax.train.fit` train it on any :class:`seqjax.data.Task`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.core.cells import Cell, check_key, check_tree, glorot_uniform
from seqjax.core.memory.base import run_with_states
from seqjax.models.encoder import Encoder

Array = jax.Array

__all__ = ["MemoryModel"]


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """``y_t = [h_t, r_t] W_y + b_y`` on top of ``cell`` (any :class:`seqjax.core.cells.Cell`).

    Args:
      cell: an :class:`~seqjax.core.memory.NTM`, a :class:`~seqjax.core.memory.DNC` or any other
        cell.
      output_size: ``O`` outputs (logits) per step.
      remat: recompute each step in the backward pass (memory ``O(T)`` carries only).
    """

    cell: Cell
    output_size: int
    remat: bool = False

    def __post_init__(self):
        if not isinstance(self.cell, Cell):
            raise TypeError(f"MemoryModel.cell must be a seqjax Cell, got {type(self.cell)}")
        if not isinstance(self.output_size, int) or self.output_size <= 0:
            raise ValueError(f"MemoryModel.output_size must be a positive int, "
                             f"got {self.output_size!r}")

    @property
    def encoder(self) -> Encoder:
        """The model body: :class:`seqjax.models.encoder.Encoder` of ``arch="cell"``."""
        return Encoder("cell", self.cell.input_size, cell=self.cell, remat=self.remat,
                       backend="scan")

    @property
    def hidden_size(self) -> int:
        """Width of the cell's output (for an NTM/DNC ``H + R W``)."""
        return self.cell.hidden_size

    @property
    def num_layers(self) -> int:
        return 1

    @property
    def receptive_field(self) -> None:
        return None

    def init(self, key: Array) -> dict:
        """``{"cell": cell params, "readout": {"w": [H_out, O], "b": [O]}}``."""
        check_key(key)
        kc, ko = jax.random.split(key)
        return {
            "cell": self.encoder.init(kc),
            "readout": {"w": glorot_uniform(ko, (self.hidden_size, self.output_size)),
                        "b": jnp.zeros((self.output_size,))},
        }

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError``/``TypeError`` naming a missing or wrongly shaped parameter by
        its path (``params['readout']['w']``, ``params['cell']['controller']['w_h']``, ...)."""
        check_tree(params, {"cell": {}, "readout": {"w": (self.hidden_size, self.output_size),
                                                    "b": (self.output_size,)}}, "params", self)
        if hasattr(self.cell, "param_shapes"):
            check_tree(params["cell"], self.cell.param_shapes(), "params['cell']", self.cell)

    def apply(self, params: dict, inputs: Array, lengths: Array | None = None, *,
              train: bool = False, key: Array | None = None) -> Array:
        """Logits ``[B, T, O]`` for ``inputs [B, T, D]``; steps past ``lengths`` give ``b_y``.
        ``train`` and ``key`` are accepted for the training loop's interface (no dropout).

        Raises:
          ValueError / TypeError: as :func:`seqjax.rnn` (``inputs``, ``lengths``; values of
            ``lengths`` only when not under ``jit``), and for ``params`` of the wrong shapes.
        """
        del train, key
        self.check_params(params)
        hs, _ = self.encoder.apply(params["cell"], inputs, lengths)
        return hs @ params["readout"]["w"] + params["readout"]["b"]

    def trace(self, params: dict, inputs: Array) -> tuple[Array, Any]:
        """``(logits [B, T, O], carries)`` with every step's carry (see
        :func:`seqjax.core.memory.run_with_states`), for heat maps of read/write weightings."""
        self.check_params(params)
        hs, carries = run_with_states(self.cell, params["cell"], inputs)
        return hs @ params["readout"]["w"] + params["readout"]["b"], carries
