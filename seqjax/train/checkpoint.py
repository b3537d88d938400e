"""Checkpoints of a whole :class:`~seqjax.train.state.TrainState` with orbax.

A run keeps its checkpoints in ``<run_dir>/checkpoints/<step>/``, one directory per saved step,
where ``step`` is the number of completed updates. Orbax writes each one to a temporary directory
and renames it when complete, so a killed process never leaves a half-written checkpoint that
:func:`latest_step` would report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = [
    "CHECKPOINT_SUBDIR",
    "checkpoint_dir",
    "latest_step",
    "open_manager",
    "restore_checkpoint",
]

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Returns ``<run_dir>/checkpoints`` as an absolute path."""
    return Path(run_dir).absolute() / CHECKPOINT_SUBDIR


def open_manager(run_dir: str | os.PathLike, *, max_to_keep: int | None = 3,
                 create: bool = True) -> ocp.CheckpointManager:
    """Opens the orbax ``CheckpointManager`` of a run.

    Args:
      run_dir: the run directory; checkpoints live in ``<run_dir>/checkpoints``.
      max_to_keep: how many of the newest checkpoints to keep (``None``: all).
      create: create the directory if missing.

    Returns:
      The manager; close it with ``.close()`` when done.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def latest_step(run_dir: str | os.PathLike) -> int | None:
    """Returns the newest complete checkpoint step of a run, or ``None`` if it has none."""
    if not checkpoint_dir(run_dir).is_dir():
        return None
    manager = open_manager(run_dir, create=False)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_checkpoint(run_dir: str | os.PathLike, like: Any, step: int | None = None) -> Any:
    """Restores a saved state of a run.

    Args:
      run_dir: the run directory.
      like: a pytree with the structure, shapes and dtypes of the saved state, e.g.
        ``TrainState.create(params, optimizer, 0)``; its values are not used.
      step: the step to restore; ``None``: the newest.

    Returns:
      The restored pytree, with the structure of ``like``.

    Raises:
      FileNotFoundError: if the run has no checkpoint (at ``step``).
    """
    manager = open_manager(run_dir, create=False) if checkpoint_dir(run_dir).is_dir() else None
    try:
        steps = [] if manager is None else list(manager.all_steps())
        if step is None and steps:
            step = max(steps)
        if step is None or step not in steps:
            raise FileNotFoundError(f"no checkpoint at step={step} in {checkpoint_dir(run_dir)}; "
                                    f"saved steps: {sorted(steps)}")
        return manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
    finally:
        if manager is not None:
            manager.close()
