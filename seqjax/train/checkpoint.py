"""Checkpoints of a whole :class:`~seqjax.train.state.TrainState` with orbax.

A run keeps its checkpoints in ``<run_dir>/checkpoints/<step>/``, one directory per saved step,
where ``step`` is the number of completed updates. Orbax writes each one to a temporary directory
and renames it when complete, so a killed process never leaves a half-written checkpoint that
:func:`latest_step` would report.

Restoring checks what it reads: a step directory that orbax cannot read, or a checkpoint whose
tree or shapes differ from the state it is restored into (a run resumed with other model
sizes), raises :class:`CheckpointError` naming the directory and the first mismatching path
with both shapes, instead of orbax's multi-line traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = [
    "CHECKPOINT_SUBDIR",
    "CheckpointError",
    "check_checkpoint",
    "check_run_dir",
    "checkpoint_dir",
    "latest_step",
    "open_manager",
    "quiet_orbax",
    "restore_checkpoint",
    "restore_step",
]

CHECKPOINT_SUBDIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into the given state: unreadable (not an orbax
    checkpoint), or of another tree or other shapes. The message names the step directory and,
    for a mismatch, the first differing path with both shapes."""


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Returns ``<run_dir>/checkpoints`` as an absolute path."""
    return Path(run_dir).absolute() / CHECKPOINT_SUBDIR


def check_run_dir(run_dir: str | os.PathLike) -> Path:
    """Returns ``<run_dir>/checkpoints`` after checking that neither it nor ``run_dir`` is a file.

    Raises:
      NotADirectoryError: naming the path that is a file.
    """
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"run directory {run} is a file, not a directory")
    ckpt = checkpoint_dir(run_dir)
    if ckpt.exists() and not ckpt.is_dir():
        raise NotADirectoryError(f"{ckpt} is a file, not a checkpoint directory")
    return ckpt


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silences orbax's log records (the ``absl`` logger) inside the block.

    Listing or reading a damaged checkpoint directory makes orbax log warnings and errors
    about each file it misses; the error raised here says what is wrong in one line instead.
    """
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        absl.setLevel(level)


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
    """Returns the newest complete checkpoint step of a run, or ``None`` if it has none.

    Raises:
      NotADirectoryError: if ``run_dir`` or its ``checkpoints`` is a file.
    """
    if not check_run_dir(run_dir).is_dir():
        return None
    with quiet_orbax():
        manager = open_manager(run_dir, create=False)
        try:
            return manager.latest_step()
        finally:
            manager.close()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _path_name(path: tuple) -> str:
    """``('opt_state', '0', 'mu', 'w')`` -> ``opt_state.0.mu.w`` (orbax's own naming)."""
    return ".".join(str(k) for k in path) or "<root>"


def _saved_shapes(step_dir: Path) -> dict[tuple, tuple] | None:
    """``{path: shape}`` of the arrays saved in ``step_dir``, or ``None`` if unreadable."""
    handler = ocp.StandardCheckpointHandler()  # reads one item's metadata files, no threads
    try:
        with quiet_orbax():
            meta = handler.metadata(step_dir / _ITEM)
        tree = getattr(meta, "tree", meta)
        if tree is None:
            return None
        return {k: tuple(getattr(v, "shape", ()) or ()) for k, v in
                ocp.tree.to_flat_dict(tree).items()}
    except Exception:  # noqa: BLE001 - any failure means: not a readable checkpoint
        return None
    finally:
        handler.close()


def _first_mismatch(saved: dict[tuple, tuple], like: Any) -> str | None:
    """The first path (in the order of ``like``) whose presence or shape differs, described."""
    wanted = {k: tuple(getattr(v, "shape", ())) for k, v in ocp.tree.to_flat_dict(like).items()}
    for path, shape in wanted.items():
        if path not in saved:
            return f"{_path_name(path)} (shape {shape}) is not in the checkpoint"
        if saved[path] != shape:
            return (f"{_path_name(path)} has shape {saved[path]} in the checkpoint but "
                    f"{shape} in the state restored into")
    top = list(dict.fromkeys(path[0] for path in wanted if path))
    extra = sorted((p for p in saved if p not in wanted),
                   key=lambda p: (top.index(p[0]) if p and p[0] in top else len(top), p))
    if extra:
        return (f"{_path_name(extra[0])} (shape {saved[extra[0]]}) is in the checkpoint but "
                "not in the state restored into")
    return None


_ITEM = "default"  # the item name orbax gives a single-item checkpoint


def restore_step(manager: ocp.CheckpointManager, step: int, like: Any) -> Any:
    """Restores checkpoint ``step`` of ``manager`` into the structure of ``like``, checked.

    Args:
      manager: an open manager (:func:`open_manager`).
      step: an existing step of it.
      like: a pytree with the structure, shapes and dtypes of the saved state (abstract
        ``jax.ShapeDtypeStruct`` leaves or arrays); dtypes are cast as orbax does.

    Returns:
      The restored pytree, with the structure of ``like``.

    Raises:
      CheckpointError: if ``<checkpoints>/<step>`` is not a readable orbax checkpoint, or its
        tree or shapes differ from ``like`` (the message names the directory and the first
        mismatching path with both shapes).
    """
    step_dir = Path(manager.directory) / str(step)
    abstract = _abstract(like)
    # Compare with the saved metadata first: orbax reports a mismatch from inside its async
    # reads, as a multi-line error plus a logged traceback of the abandoned reads.
    saved = _saved_shapes(step_dir)
    what = None if saved is None else _first_mismatch(saved, abstract)
    if what is not None:
        raise CheckpointError(_mismatch(step_dir, what))
    try:
        with quiet_orbax():
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as exc:  # noqa: BLE001 - re-raised as CheckpointError, in one line
        if saved is None:
            raise CheckpointError(_unreadable(step_dir, exc)) from exc
        what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        raise CheckpointError(_mismatch(step_dir, what)) from exc


def check_checkpoint(run_dir: str | os.PathLike, like: Any, step: int | None = None) -> int | None:
    """Checks, without restoring, that checkpoint ``step`` of a run fits ``like``.

    For a script to reject a resume with other model sizes before it writes anything.

    Args:
      run_dir: the run directory.
      like: a pytree with the structure and shapes of the saved state (abstract leaves do).
      step: the step to check; ``None``: the newest (nothing to check if there is none).

    Returns:
      The step checked, or ``None`` if the run has no checkpoint.

    Raises:
      CheckpointError: if the checkpoint's metadata cannot be read, or its tree or shapes
        differ from ``like`` (naming the directory and the first mismatching path).
      NotADirectoryError: if ``run_dir`` or its ``checkpoints`` is a file.
    """
    if step is None:
        step = latest_step(run_dir)
        if step is None:
            return None
    step_dir = checkpoint_dir(run_dir) / str(step)
    saved = _saved_shapes(step_dir)
    if saved is None:
        raise CheckpointError(_unreadable(step_dir, None))
    what = _first_mismatch(saved, _abstract(like))
    if what is not None:
        raise CheckpointError(_mismatch(step_dir, what))
    return step


def _unreadable(step_dir: Path, exc: BaseException | None) -> str:
    if not (step_dir / _ITEM).is_dir():
        reason = f"no '{_ITEM}' item in it"
    elif exc is None:
        reason = f"its '{_ITEM}' item has no readable metadata"
    else:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return (f"{step_dir} is not a readable orbax checkpoint ({reason}); delete it to resume "
            "from an older one")


def _mismatch(step_dir: Path, what: str) -> str:
    return (f"checkpoint {step_dir} does not match the state it is restored into (another "
            f"model or optimiser?): {what}")


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
      NotADirectoryError: if ``run_dir`` or its ``checkpoints`` is a file.
      CheckpointError: if the checkpoint is unreadable or differs from ``like`` in tree or
        shapes.
    """
    if not Path(run_dir).exists():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    with quiet_orbax():
        manager = open_manager(run_dir, create=False) if check_run_dir(run_dir).is_dir() \
            else None
        steps = [] if manager is None else list(manager.all_steps())
    try:
        if step is None and steps:
            step = max(steps)
        if not steps:
            raise FileNotFoundError(f"{checkpoint_dir(run_dir)} holds no checkpoint (was the "
                                    "run stopped before its first one?)")
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint at step={step} in {checkpoint_dir(run_dir)}; "
                                    f"saved steps: {sorted(steps)}")
        return restore_step(manager, step, like)
    finally:
        if manager is not None:
            manager.close()
