"""Sequence tasks and datasets for the TCN-vs-RNN comparison (Bai, Kolter & Koltun 2018).

``get_task(name)`` builds a :class:`Task`; a task gives deterministic numpy :class:`Batch` es
from ``(seed, step)``, fixed evaluation batches, its loss terms, metrics and trivial baseline.

========================  ====================================  ===========  ==============
name                      class                                 metric       needs files
========================  ====================================  ===========  ==============
adding                    :class:`AddingTask`                   mse          no
copy                      :class:`CopyMemoryTask`               loss         no
digits, pdigits           :class:`DigitsTask`                   accuracy     no
mnist, pmnist             :class:`MNISTTask`                    accuracy     idx files
fashion-mnist             :class:`MNISTTask`                    accuracy     idx files
jsb, nottingham, muse,    :class:`PolyphonicMusicTask`          nll          .mat file
piano
ptb-char, ptb-word        :class:`PTBTask`                      bpc / ppl    ptb.*.txt
ntm-copy                  :class:`CopyTask`                     bit_errors   no
repeat-copy               :class:`RepeatCopyTask`               bit_errors   no
associative-recall        :class:`AssociativeRecallTask`        bit_errors   no
priority-sort             :class:`PrioritySortTask`             bit_errors   no
========================  ====================================  ===========  ==============

Files are looked up in ``data_dir``, else the environment variable ``SEQJAX_DATA``, else the
repository's ``data/`` folder, which ships PTB, tiny-shakespeare, the music files and MR.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable

from seqjax.data.algorithmic import (
    AssociativeRecallTask,
    CopyTask,
    PrioritySortTask,
    RepeatCopyTask,
)
from seqjax.data.base import (
    DATA_DIR_ENV,
    Batch,
    Task,
    epoch_indices,
    pad_batch,
    resolve_data_dir,
)
from seqjax.data.corpus import (
    CORPORA,
    Corpus,
    load_corpus,
    load_vocabulary,
    save_vocabulary,
    unigram_entropy_bits,
)
from seqjax.data.music import MUSIC_FILES, PolyphonicMusicTask, load_music
from seqjax.data.pixel import (
    DigitsTask,
    ImageSequenceTask,
    MNISTTask,
    fixed_permutation,
    load_mnist,
    read_idx,
)
from seqjax.data.sentiment import MR, bucket_batches, cv_folds, load_mr
from seqjax.data.synthetic import AddingTask, CopyMemoryTask, adding_problem, copy_memory
from seqjax.data.text import LanguageModelTask, PTBTask, Vocabulary, load_ptb
from seqjax.data.translation import (
    TRANSLATION_TASKS,
    ParallelData,
    Vocab,
    date_examples,
    date_pairs,
    load_tsv,
    make_translation_data,
    number_pairs,
    split_pairs,
)

__all__ = [
    "MR",
    "bucket_batches",
    "cv_folds",
    "load_mr",
    "TRANSLATION_TASKS",
    "ParallelData",
    "Vocab",
    "date_examples",
    "date_pairs",
    "load_tsv",
    "make_translation_data",
    "number_pairs",
    "split_pairs",
    "CORPORA",
    "Corpus",
    "DATA_DIR_ENV",
    "TASK_NAMES",
    "AddingTask",
    "AssociativeRecallTask",
    "Batch",
    "CopyMemoryTask",
    "CopyTask",
    "DigitsTask",
    "ImageSequenceTask",
    "LanguageModelTask",
    "MNISTTask",
    "PTBTask",
    "PolyphonicMusicTask",
    "PrioritySortTask",
    "RepeatCopyTask",
    "Task",
    "Vocabulary",
    "adding_problem",
    "copy_memory",
    "epoch_indices",
    "fixed_permutation",
    "get_task",
    "load_corpus",
    "load_mnist",
    "load_music",
    "load_ptb",
    "load_vocabulary",
    "pad_batch",
    "read_idx",
    "resolve_data_dir",
    "save_vocabulary",
    "task_arguments",
    "unigram_entropy_bits",
]


def _fixed_length(name: str, seq_len: int | None, length: int) -> None:
    if seq_len is not None and seq_len != length:
        raise ValueError(f"task {name!r} has a fixed sequence length of {length}, got {seq_len=}")


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How :func:`get_task` builds one task: ``make(data_dir, seq_len, **kwargs)``, the task's
    class, and the arguments of that class ``make`` sets itself (the rest are the task's
    ``**kwargs``, :func:`task_arguments`)."""

    make: Callable[..., Task]
    cls: type
    fixed: frozenset[str] = frozenset()


def _music(name: str) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        # seq_len, when given, crops the training sequences (max_len); evaluation is uncropped.
        if seq_len is not None:
            kwargs.setdefault("max_len", seq_len)
        return PolyphonicMusicTask(name, data_dir=data_dir, **kwargs)

    return _Entry(make, PolyphonicMusicTask, frozenset({"name", "data_dir"}))


def _pixel(name: str, cls: type, length: int, **fixed) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        _fixed_length(name, seq_len, length)
        if cls is MNISTTask:
            kwargs["data_dir"] = data_dir
        return cls(**fixed, **kwargs)

    return _Entry(make, cls, frozenset(fixed) | ({"data_dir"} if cls is MNISTTask else set()))


def _max_len(cls: type) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        # seq_len, when given, is the longest sequence to copy (max_len).
        if seq_len is not None:
            if kwargs.get("max_len", seq_len) != seq_len:
                raise ValueError(f"got both {seq_len=} and max_len={kwargs['max_len']}")
            kwargs["max_len"] = seq_len
        return cls(**kwargs)

    return _Entry(make, cls)


def _no_seq_len(name: str, cls: type) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        if seq_len is not None:
            raise ValueError(
                f"task {name!r} takes no seq_len (its lengths follow from its "
                f"arguments), got {seq_len=}"
            )
        return cls(**kwargs)

    return _Entry(make, cls)


def _with_seq_len(cls: type, default_len: int) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        return cls(seq_len=default_len if seq_len is None else seq_len, **kwargs)

    return _Entry(make, cls, frozenset({"seq_len"}))


def _ptb(level: str) -> _Entry:
    def make(data_dir, seq_len, **kwargs):
        return PTBTask(level, data_dir, seq_len, **kwargs)

    return _Entry(make, PTBTask, frozenset({"level", "data_dir", "seq_len"}))


_REGISTRY: dict[str, _Entry] = {
    "adding": _with_seq_len(AddingTask, 200),
    "copy": _with_seq_len(CopyMemoryTask, 1000),
    "digits": _pixel("digits", DigitsTask, 64, permuted=False),
    "pdigits": _pixel("pdigits", DigitsTask, 64, permuted=True),
    "mnist": _pixel("mnist", MNISTTask, 784, variant="mnist", permuted=False),
    "pmnist": _pixel("pmnist", MNISTTask, 784, variant="mnist", permuted=True),
    "fashion-mnist": _pixel("fashion-mnist", MNISTTask, 784, variant="fashion-mnist"),
    **{name: _music(name) for name in MUSIC_FILES},
    "ptb-char": _ptb("char"),
    "ptb-word": _ptb("word"),
    "ntm-copy": _max_len(CopyTask),
    "repeat-copy": _max_len(RepeatCopyTask),
    "associative-recall": _no_seq_len("associative-recall", AssociativeRecallTask),
    "priority-sort": _no_seq_len("priority-sort", PrioritySortTask),
}

#: Names accepted by :func:`get_task`.
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seq_len: int | None = None,
    **kwargs,
) -> Task:
    """Builds the task ``name``.

    Args:
        name: one of :data:`TASK_NAMES`.
        data_dir: directory of the data files (default: env ``SEQJAX_DATA``); unused by the
            built-in tasks (adding, copy, digits, pdigits).
        seq_len: sequence length where the task has one to choose: ``T`` of the adding problem
            (default 200), the blank length of copy memory (default 1000), the window of the PTB
            tasks (default 320 char, 80 word), the training crop (``max_len``) of the music
            tasks, the longest sequence (``max_len``) of ntm-copy and repeat-copy. The pixel
            tasks accept only their fixed length (64 or 784) or ``None``; associative-recall
            and priority-sort only ``None``.
        **kwargs: passed to the task's class (e.g. ``eval_size``, ``max_len``, ``standardize``).

    Raises:
        TypeError: a name that is not a str, or an argument the task does not take
            (:func:`task_arguments` lists those it takes).
        ValueError: unknown name (the message lists the valid ones) or bad arguments.
        FileNotFoundError: a file the task needs is missing (the message names the path
            expected and where the standard file comes from).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a task name (str), got {type(name).__name__}; valid "
                        f"names: {', '.join(TASK_NAMES)}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
    allowed = task_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"task {name!r} takes no argument {', '.join(map(repr, unknown))}; its arguments "
            f"besides data_dir and seq_len: {', '.join(allowed) or 'none'}")
    task = _REGISTRY[name].make(data_dir, seq_len, **kwargs)
    task.name = name
    return task


def task_arguments(name: str) -> tuple[str, ...]:
    """The keyword arguments :func:`get_task` passes on to the task ``name`` (its ``**kwargs``,
    besides ``data_dir`` and ``seq_len``), in the order of the task's class.

    Raises:
        ValueError: unknown name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
    entry = _REGISTRY[name]
    return tuple(p for p in inspect.signature(entry.cls).parameters if p not in entry.fixed)
