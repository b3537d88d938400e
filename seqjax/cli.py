"""Command-line helpers shared by the scripts in ``experiments/``.

Bad input reaches the user as one line, never as a traceback:

* argument types that reject nonsense while parsing (:func:`positive_int`,
  :func:`non_negative_int`, :func:`positive_float`, :func:`non_negative_float`,
  :func:`fraction`, :func:`comma_list`), so that ``--steps 0`` is an argparse error naming the
  flag (exit status 2) instead of silently meaning the preset's value;
* checks of paths given on the command line, run before any data is read or anything is
  compiled (:func:`check_dir`, :func:`check_file`, :func:`check_output_dir`,
  :func:`read_json`), whose messages name the flag and the path;
* :func:`run_main`, which every script's ``if __name__ == "__main__":`` calls: it runs
  ``main(argv)`` and turns a user error (:class:`UserError`, ``ValueError``, ``TypeError``,
  ``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError``,
  ``PermissionError``, ``json.JSONDecodeError``, the checkpoint errors of
  :mod:`seqjax.train.checkpoint`) into ``error: <message>`` on stderr and exit status 2
  (a non-finite training loss, :class:`seqjax.train.NonFiniteLossError`: exit status 1).
  ``--debug`` anywhere in the arguments, or ``SEQJAX_DEBUG=1`` in the environment, re-raises
  with the full traceback instead.

A script's ``main(argv)`` itself raises those exceptions normally, so tests and notebooks that
call it see the exception; only the command line gets the one-line form.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DEBUG_ENV",
    "EXIT_NON_FINITE",
    "EXIT_USER_ERROR",
    "USER_ERRORS",
    "UserError",
    "check_devices",
    "check_dir",
    "check_file",
    "check_output_dir",
    "comma_list",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "read_json",
    "read_run",
    "run_main",
    "tune_allocator",
]

DEBUG_ENV = "SEQJAX_DEBUG"
TUNE_MALLOC_ENV = "SEQJAX_TUNE_MALLOC"
EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 1

T = TypeVar("T")


class UserError(ValueError):
    """An input of the user (a flag, a file, a run directory) that the script cannot use.

    A ``ValueError``, so that code catching ``ValueError`` keeps working; :func:`run_main`
    prints its message as one line.
    """


#: The exceptions :func:`run_main` reports as one line (``json.JSONDecodeError`` and the
#: checkpoint errors are ``ValueError`` subclasses).
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
    FileExistsError, PermissionError,
)


# ---------------------------------------------------------------------------------------------
# argparse types: ``ap.add_argument("--steps", type=positive_int)``. An ArgumentTypeError makes
# argparse print ``argument --steps: <message>`` and exit with status 2.


def _number(text: str, kind: type[T], what: str) -> T:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and value != value:  # NaN compares false with every bound below
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ``>= 1`` (sizes, counts, steps)."""
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ``>= 0`` (e.g. ``--devices``, where 0 means all)."""
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number ``> 0`` (learning rates, clipping thresholds)."""
    value = _number(text, float, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number ``>= 0``."""
    value = _number(text, float, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value:g}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in ``[0, 1)`` (dropout rates)."""
    value = _number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def comma_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """argparse type: a comma-separated list of ``item`` (e.g. ``comma_list(positive_float)``);
    empty entries are skipped, so ``""`` is ``[]``."""

    def parse(text: str) -> list[T]:
        out = []
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                out.append(item(part.strip()))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{text!r}: entry {part.strip()!r}: {exc}") \
                    from None
        return out

    parse.__name__ = f"comma_list({getattr(item, '__name__', 'item')})"
    return parse


# ---------------------------------------------------------------------------------------------
# Paths given on the command line.


def check_dir(flag: str, path: str | os.PathLike) -> Path:
    """An existing directory given as ``flag``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      NotADirectoryError: if it is a file.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such directory")
    if not p.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a directory")
    return p


def check_file(flag: str, path: str | os.PathLike, *, nonempty: bool = True) -> Path:
    """An existing (by default non-empty) file given as ``flag``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      IsADirectoryError: if it is a directory.
      UserError: if it is empty and ``nonempty``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a directory, not a file")
    if nonempty and p.stat().st_size == 0:
        raise UserError(f"{flag} {path} is empty")
    return p


def check_output_dir(flag: str, path: str | os.PathLike) -> Path:
    """A directory to write into, given as ``flag``: it may be missing (it is created later),
    but neither it nor any of its existing ancestors may be a file.

    Raises:
      FileExistsError: if ``path`` is an existing file.
      NotADirectoryError: if one of its ancestors is a file.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"{flag} {path} is an existing file; it must be a directory")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag} {path}: {parent} is a file, not a directory")
            break
    return p


def read_json(path: str | os.PathLike, *, flag: str | None = None, what: str = "a JSON file",
              expect: type | None = dict) -> Any:
    """Reads a JSON file that the user pointed at (a run's ``run.json``, ...).

    Args:
      path: the file.
      flag: the command-line flag that led here, named in the messages.
      what: what the file should be, for the messages (``"a run directory's run.json"``).
      expect: the type of the top-level value (``None``: any).

    Raises:
      FileNotFoundError: if the file does not exist.
      UserError: if it is not valid JSON or not of type ``expect``.
    """
    p = Path(path)
    where = f"{flag} {p.parent}: " if flag else ""
    if not p.is_file():
        raise FileNotFoundError(f"{where}{p} not found; expected {what}")
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}{p} is not valid JSON ({exc}); expected {what}") from None
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{where}{p} holds a {type(value).__name__}, not a "
                        f"{expect.__name__}; expected {what}")
    return value



def read_run(run_root: str | os.PathLike, *, script: str, layout: str) -> dict:
    """The ``run.json`` of a script's run directory, for ``--resume``, checked (one-line errors).

    Args:
      run_root: the run directory given to ``--resume``.
      script: the script that wrote it (``"memory_tasks.py"``), named in the messages.
      layout: where such directories live (``"<out>/<task>/<timestamp>"``), for the messages.

    Returns:
      The ``run.json`` dict; its ``"argv"`` is a list of strings.

    Raises:
      NotADirectoryError, FileNotFoundError: if ``run_root`` or its ``run.json`` is missing.
      UserError: if ``run.json`` is not a JSON dict with an ``argv`` list of strings.
    """
    run_root = Path(run_root)
    check_dir("--resume", run_root)
    saved = read_json(run_root / "run.json", flag="--resume",
                      what=f"the run.json of a {script} run directory ({layout})")
    argv = saved.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise UserError(f"--resume {run_root}: {run_root / 'run.json'} has no 'argv' list of "
                        f"strings; is it a run directory of {script}?")
    return saved

def check_devices(devices: int, batch_size: int, *, model: int = 1,
                  batch_flag: str = "--batch-size") -> Any:
    """The mesh of ``--devices`` (and ``--model-parallel``), checked before any training.

    Returns:
      :func:`seqjax.train.mesh_for` ``(devices, model)``: ``None`` for one device.

    Raises:
      UserError: if there are not that many devices, or (one process) ``batch_size`` does not
        split evenly over the mesh's ``data`` axis.
    """
    import jax

    from seqjax.train.parallel import mesh_for

    try:
        mesh = mesh_for(devices, model)
    except ValueError as exc:
        what = f"--devices {devices}" + (f" --model-parallel {model}" if model != 1 else "")
        raise UserError(f"{what}: {one_line(exc)}") from None
    if mesh is not None and jax.process_count() == 1:
        n = mesh.shape[mesh.axis_names[0]]
        if batch_size % n:
            raise UserError(f"{batch_flag} {batch_size} is not divisible by the {n} devices of "
                            f"--devices {devices}; use a multiple of {n}")
    return mesh


# ---------------------------------------------------------------------------------------------
# The entry point.


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (whitespace runs, newlines included, become one
    space); an exception without a message gives its type name."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_allocator() -> bool:
    """Have glibc's ``malloc`` keep freed memory for reuse instead of returning it to the OS.

    XLA:CPU allocates a program's buffers afresh on every call; glibc hands allocations of
    32 MiB and more (and, on threads other than the main one, anything its 64 MiB per-thread
    heaps cannot hold) straight from ``mmap`` and unmaps them when freed, so every call
    touches new pages, and each first touch is a page fault (microseconds in a VM). One
    arena, no ``mmap`` below 1 GiB and no trimming of the heap's top remove most of them: on a
    2-core VM, the adding task's paper-size LSTM trained at 9.2 steps/s against 7.3 and the
    TCN at 7.0 against 6.0, with identical results (issue #19, ``benchmarks/README.md``). The
    cost: the process keeps its peak heap, as a training process does anyway.

    :func:`run_main` calls it for every script of ``experiments/`` before anything is
    computed (``mallopt`` settings apply to allocations made after them, and one arena only to
    threads that have not allocated yet). Skipped, returning ``False``, with
    ``SEQJAX_TUNE_MALLOC=0``, where the user set glibc's own ``MALLOC_*`` variables (or its
    ``glibc.malloc`` tunables), or on a C library other than glibc; ``True`` once applied.
    """
    if os.environ.get(TUNE_MALLOC_ENV, "1") == "0":
        return False
    if (any(k.startswith("MALLOC_") for k in os.environ)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False  # the user tuned glibc's malloc themselves
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1)))


def run_main(main: Callable[[list[str]], T], argv: Sequence[str] | None = None) -> T:
    """Runs ``main(argv)`` for a script's command line; user errors become one line.

    First :func:`tune_allocator`. ``argv`` defaults to ``sys.argv[1:]``; ``--debug`` is
    removed from it before ``main`` sees it. On one of :data:`USER_ERRORS` it prints
    ``error: <message>`` (one line) to stderr and raises ``SystemExit(2)``; on a
    :class:`~seqjax.train.NonFiniteLossError` the same with status 1. With ``--debug`` or
    ``SEQJAX_DEBUG=1`` the exception propagates with its traceback. Argparse errors
    (``SystemExit`` from ``ap.error``) pass through unchanged.

    Returns:
      What ``main`` returns.
    """
    tune_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    from seqjax.train.loop import NonFiniteLossError

    try:
        return main(argv)
    except NonFiniteLossError as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NON_FINITE) from None
    except USER_ERRORS as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
