"""Plain-text corpora for language models: tiny-shakespeare, PTB, or any text file.

A :class:`Corpus` is a :class:`~seqjax.data.text.Vocabulary` and three token streams
(``train``, ``valid``, ``test``). :func:`load_corpus` knows the built-in names

==================  =========================================  =====  ======================
name                file(s) under ``data_dir``                 level  splits
==================  =========================================  =====  ======================
tinyshakespeare     ``tinyshakespeare/input.txt``              char   90/5/5 % contiguous
ptb-char            ``ptb/ptb.{train,valid,test}.txt``         char   the files
ptb-word            ``ptb/ptb.{train,valid,test}.txt``         word   the files
==================  =========================================  =====  ======================

and takes any other value as the path of a UTF-8 text file, split 90/5/5 % (by characters, or
by words at word level) into contiguous train/valid/test parts. A character vocabulary of a
single file is built from the whole file (so that no valid/test character is unknown), PTB's
from its training split. :func:`save_vocabulary` / :func:`load_vocabulary` keep the vocabulary
beside a checkpoint (``vocab.json``) so that a saved run can be sampled from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from seqjax.data.base import find_file, resolve_data_dir
from seqjax.data.text import Vocabulary, load_ptb, read_text_file, word_tokens

__all__ = [
    "CORPORA",
    "Corpus",
    "load_corpus",
    "load_vocabulary",
    "save_vocabulary",
    "unigram_entropy_bits",
]

#: Built-in corpus names.
CORPORA = ("tinyshakespeare", "ptb-char", "ptb-word")

_SHAKESPEARE_SOURCE = (
    "The standard file is Karpathy's tiny-shakespeare, https://raw.githubusercontent.com/"
    "karpathy/char-rnn/master/data/tinyshakespeare/input.txt; put it in "
    "<data_dir>/tinyshakespeare/input.txt."
)
#: Default split fractions of a single-file corpus.
DEFAULT_SPLIT = (0.9, 0.05, 0.05)


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenised corpus.

    Attributes:
      name: the corpus name (or the file path given).
      vocab: its :class:`Vocabulary`.
      splits: ``{"train", "valid", "test"}`` -> ``[N]`` int32 token ids.
      source: the file(s) read.
    """

    name: str
    vocab: Vocabulary
    splits: dict[str, np.ndarray]
    source: tuple[str, ...]

    @property
    def level(self) -> str:
        return self.vocab.level

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v):,}" for k, v in self.splits.items())
        return f"Corpus({self.name!r}, {self.level}, V={len(self.vocab)}, {sizes})"


def _check_split(fractions: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"split={fractions!r} must be three positive fractions summing to 1"
                         ) from None
    if len(values) != 3 or any(not f > 0 for f in values) or abs(sum(values) - 1) > 1e-9:
        raise ValueError(f"split={fractions!r} must be three positive fractions summing to 1")
    return values  # type: ignore[return-value]


def _split_contiguous(ids: np.ndarray, fractions: tuple[float, float, float],
                      path: str | os.PathLike = "the corpus") -> dict:
    fractions = _check_split(fractions)
    n = len(ids)
    if n == 0:
        raise ValueError(f"{path} holds no tokens (an empty file?)")
    a = int(n * fractions[0])
    b = a + int(n * fractions[1])
    out = {"train": ids[:a], "valid": ids[a:b], "test": ids[b:]}
    for k, v in out.items():
        if len(v) < 2:
            raise ValueError(f"{path}: the {k} split of its {n} tokens has {len(v)} tokens; "
                             f"need >= 2 (the file is too small for split={fractions})")
    return out


def _from_text(name: str, path: Path, level: str, split: tuple[float, float, float]) -> Corpus:
    split = _check_split(split)
    text = read_text_file(path)
    if not text.strip():
        raise ValueError(f"{path} holds no tokens (an empty or blank file)")
    if level == "char":
        vocab = Vocabulary.build(text, "char")
        ids = vocab.encode(text)
    else:
        words = word_tokens(text)
        vocab = Vocabulary(list(dict.fromkeys(words)), "word")
        ids = np.array([vocab.index[w] for w in words], np.int32)
    return Corpus(name, vocab, _split_contiguous(ids, split, path), (str(path),))


def load_corpus(
    name: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    level: str | None = None,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
) -> Corpus:
    """Loads a built-in corpus (:data:`CORPORA`) or a text file.

    Args:
      name: ``"tinyshakespeare"``, ``"ptb-char"``, ``"ptb-word"`` or a file path.
      data_dir: data directory of the built-in corpora (default: env ``SEQJAX_DATA``).
      level: ``"char"`` or ``"word"`` for a file (default ``"char"``); must match a built-in
        corpus's level if given.
      split: train/valid/test fractions of a single-file corpus.

    Raises:
      FileNotFoundError: a built-in corpus's file is missing (the message names the path and
        where the file comes from), or ``name`` is neither a built-in corpus nor a file (the
        message lists the built-in names and the path tried).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a corpus name or a file path, got {type(name).__name__}")
    key = str(name)
    if level is not None and level not in ("char", "word"):
        raise ValueError(f"level={level!r} must be 'char' or 'word'")
    builtin_level = {"tinyshakespeare": "char", "ptb-char": "char", "ptb-word": "word"}
    if key in builtin_level:
        if level is not None and level != builtin_level[key]:
            raise ValueError(f"corpus {key!r} is {builtin_level[key]}-level, got {level=}")
        if key.startswith("ptb"):
            vocab, data = load_ptb(builtin_level[key], data_dir, task=key)
            root = resolve_data_dir(data_dir)
            return Corpus(key, vocab, data, (str(root / "ptb") if root else "ptb",))
        root = resolve_data_dir(data_dir)
        candidates = [] if root is None else [root / "tinyshakespeare" / "input.txt",
                                              root / "tinyshakespeare.txt", root / "input.txt"]
        expected = str(candidates[0]) if candidates else "<data_dir>/tinyshakespeare/input.txt"
        path = find_file(key, candidates, expected=expected, source=_SHAKESPEARE_SOURCE)
        return _from_text(key, path, "char", split)
    path = Path(key).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"corpus {key!r} is neither a built-in corpus ({', '.join(CORPORA)}) nor an "
            f"existing file: {path.absolute()} not found")
    return _from_text(key, path, level or "char", split)


def unigram_entropy_bits(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Bits per token on ``eval_ids`` of the add-one-smoothed unigram model of ``train_ids``.

    The trivial baseline a language model must beat (a character model that ignores context).

    Raises:
      ValueError: empty or non-integer id arrays, ids outside ``[0, vocab_size)``.
    """
    for arg, ids in (("train_ids", train_ids), ("eval_ids", eval_ids)):
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{arg} (shape {arr.shape}, dtype {arr.dtype}) must be a non-empty "
                             "[N] array of integer token ids")
        if arr.min() < 0 or arr.max() >= vocab_size:
            raise ValueError(f"{arg} must lie in [0, vocab_size={vocab_size}), got min "
                             f"{arr.min()} max {arr.max()}")
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[np.asarray(eval_ids)].mean())


# ---------------------------------------------------------------------------------------------
# Vocabulary files
# ---------------------------------------------------------------------------------------------

VOCAB_FILE = "vocab.json"


def save_vocabulary(vocab: Vocabulary, path: str | os.PathLike) -> Path:
    """Writes ``{"level": ..., "tokens": [...]}`` as JSON (a directory gets ``vocab.json``).

    Returns:
      The file written.
    """
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"level": vocab.level, "tokens": list(vocab.tokens)},
                              ensure_ascii=False))
    os.replace(tmp, path)
    return path


def load_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """Reads a file written by :func:`save_vocabulary` (or ``<dir>/vocab.json``).

    Raises:
      FileNotFoundError: naming the path.
      ValueError: the file is not a vocabulary.
    """
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no vocabulary file at {path.absolute()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Vocabulary(data["tokens"], data["level"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a vocabulary file ({exc!r})") from exc

