"""Translation data: generated tasks, tab-separated parallel corpora, vocabularies, batches.

Generated tasks (offline, deterministic in the seed; the languages come from well-kept libraries,
not hand-written rules):

* ``numbers-en-fr``: integers written out in English -> in French (``num2words``), e.g.
  ``"ninety-seven thousand, three hundred and twenty-two"`` ->
  ``"quatre-vingt-dix-sept mille trois cent vingt-deux"``; word level.
* ``dates``: dates written in many human formats and locales (``babel.dates.format_date``:
  CLDR medium/long/full formats of 8 locales and the short ones with four-digit years) -> ISO
  8601 (``"mercredi 5 avril 2023"`` -> ``"2023-04-05"``); character level. Every format used
  is unambiguous (no two-digit years, only day-first numeric formats), which
  :func:`date_examples` checks.

A :class:`ParallelData` holds vocabularies and deterministic train/valid/test splits (split by
distinct source sentence, so no source of the test split is seen in training). Batches are
numpy ``(src [B, S], src_lengths [B], tgt [B, T], tgt_lengths [B])``: sources padded with
``<pad>``, targets ``y_1 .. y_n, <eos>`` then ``<pad>``, ``tgt_lengths = n + 1`` (the
convention of :mod:`seqjax.models.seq2seq`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "PAD", "BOS", "EOS", "UNK", "SPECIALS",
    "Vocab", "ParallelData", "DateExample",
    "number_pairs", "date_examples", "date_pairs", "date_patterns", "tokenize", "detokenize",
    "load_tsv", "split_pairs", "pad_batch",
    "make_translation_data", "TRANSLATION_TASKS", "DATE_LOCALES",
]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
#: The special tokens, with ids 0, 1, 2, 3 in every vocabulary.
SPECIALS = (PAD, BOS, EOS, UNK)
TRANSLATION_TASKS = ("numbers-en-fr", "dates")
DATE_LOCALES = ("en_US", "en_GB", "fr_FR", "de_DE", "es_ES", "it_IT", "nl_NL", "pt_BR")
LEVELS = ("char", "word")


# ---------------------------------------------------------------------------------------------
# Vocabularies


def tokenize(text: str, level: str) -> list[str]:
    """``"char"``: the characters; ``"word"``: whitespace-separated words."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise ValueError(f"level={level!r} must be one of {LEVELS}")


def detokenize(tokens: Sequence[str], level: str) -> str:
    """Inverse of :func:`tokenize` (``"word"``: joined with single spaces)."""
    return ("" if level == "char" else " ").join(tokens)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Token <-> id map with ``<pad>=0, <bos>=1, <eos>=2, <unk>=3`` first.

    Args:
      tokens: every token, specials first (use :meth:`build`).
      level: ``"char"`` or ``"word"`` tokenisation.
    """

    tokens: tuple[str, ...]
    level: str = "char"

    def __post_init__(self):
        if tuple(self.tokens[:4]) != SPECIALS:
            raise ValueError(f"Vocab.tokens must start with {SPECIALS}, got {self.tokens[:4]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("Vocab.tokens has duplicates")
        if self.level not in LEVELS:
            raise ValueError(f"Vocab.level={self.level!r} must be one of {LEVELS}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "char", min_freq: int = 1) -> Vocab:
        """Vocabulary of ``texts``: specials, then tokens seen ``>= min_freq`` times, by
        decreasing frequency (ties in first-seen order, so the result is deterministic)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, level))
        kept = [t for t, c in counts.most_common() if c >= min_freq and t not in SPECIALS]
        return cls(SPECIALS + tuple(kept), level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (unknown tokens -> ``<unk>``), without ``<bos>``/``<eos>``."""
        index = self._index  # type: ignore[attr-defined]
        return [index.get(t, self.unk_id) for t in tokenize(text, self.level)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first ``<eos>`` (``<pad>`` and ``<bos>`` skipped)."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        return detokenize(out, self.level)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0,
              length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [N, T] int32, lengths [N] int32)``; ``T = length`` or the longest sequence."""
    if length is not None and (isinstance(length, bool) or not isinstance(length, (int, np.integer))
                               or length < 0):
        raise ValueError(f"length={length!r} must be a non-negative int or None")
    for i, s in enumerate(seqs):
        arr = np.asarray(s)
        if isinstance(s, str) or arr.ndim != 1 or (arr.size and not
                                                    np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"seqs[{i}] (shape {arr.shape}, dtype {arr.dtype}) must be a "
                             "sequence of int ids")
    lengths = np.array([len(s) for s in seqs], np.int32)
    width = int(lengths.max(initial=0)) if length is None else length
    if lengths.size and lengths.max() > width:
        raise ValueError(f"length={width} is shorter than the longest sequence "
                         f"({int(lengths.max())})")
    out = np.full((len(seqs), width), pad_id, np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


# ---------------------------------------------------------------------------------------------
# Generated tasks


def number_pairs(n: int, seed: int = 0, max_value: int = 99_999,
                 src_lang: str = "en", tgt_lang: str = "fr") -> list[tuple[str, str]]:
    """``n`` distinct random integers in ``[0, max_value]`` written out by ``num2words``:
    ``(source language words, target language words)``, deterministic in ``seed``."""
    from num2words import num2words

    for name, v in (("n", n), ("max_value", max_value)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative int")
    if n > max_value + 1:
        raise ValueError(f"n={n} distinct numbers do not fit in [0, {max_value}]")
    rng = np.random.default_rng(seed)
    values = rng.choice(max_value + 1, size=n, replace=False)
    return [(num2words(int(v), lang=src_lang), num2words(int(v), lang=tgt_lang)) for v in values]


@dataclasses.dataclass(frozen=True)
class DateExample:
    """A date written by babel: ``source = format_date(date, pattern, locale)``."""

    source: str
    target: str  #: ``date.isoformat()``
    date: datetime.date
    locale: str
    pattern: str


def date_patterns(locales: Sequence[str] = DATE_LOCALES) -> list[tuple[str, str]]:
    """``(locale, CLDR pattern)`` pairs used by :func:`date_examples`: every locale's medium,
    long and full formats, and its short format when that has a four-digit, day-first year."""
    from babel.dates import get_date_format

    out = []
    for loc in locales:
        for width in ("short", "medium", "long", "full"):
            pattern = get_date_format(width, locale=loc).pattern
            if width == "short" and ("yy" in pattern.replace("yyyy", "")
                                     or pattern.index("d") > pattern.index("M")):
                continue  # two-digit years or month-first numbers are ambiguous
            out.append((loc, pattern))
    return list(dict.fromkeys(out))


def date_examples(n: int, seed: int = 0, *, start: datetime.date = datetime.date(1950, 1, 1),
                  end: datetime.date = datetime.date(2049, 12, 31),
                  locales: Sequence[str] = DATE_LOCALES) -> list[DateExample]:
    """``n`` examples with distinct sources: a uniform date in ``[start, end]`` written in a
    uniform (locale, pattern) of :func:`date_patterns`; deterministic in ``seed``.

    Raises:
      ValueError: if two dates would be written the same way (an ambiguous format).
    """
    from babel.dates import format_date

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r} must be a non-negative int")
    if not (isinstance(start, datetime.date) and isinstance(end, datetime.date)) or end < start:
        raise ValueError(f"start={start!r} and end={end!r} must be dates with start <= end")
    if isinstance(locales, str):
        raise TypeError(f"locales must be a sequence of locale names, got the str {locales!r}")
    patterns = date_patterns(locales)
    rng = np.random.default_rng(seed)
    span = (end - start).days + 1
    seen: dict[str, str] = {}
    out: list[DateExample] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"cannot draw n={n} distinct dates in [{start}, {end}]")
        day = start + datetime.timedelta(days=int(rng.integers(span)))
        loc, pattern = patterns[int(rng.integers(len(patterns)))]
        source = format_date(day, pattern, locale=loc)
        target = day.isoformat()
        if source in seen:
            if seen[source] != target:
                raise ValueError(f"ambiguous date format: {source!r} is both {seen[source]} "
                                 f"and {target} ({loc}, {pattern!r})")
            continue
        seen[source] = target
        out.append(DateExample(source, target, day, loc, pattern))
    return out


def date_pairs(n: int, seed: int = 0, **kwargs) -> list[tuple[str, str]]:
    """``(human date, ISO 8601)`` pairs from :func:`date_examples`."""
    return [(e.source, e.target) for e in date_examples(n, seed, **kwargs)]


# ---------------------------------------------------------------------------------------------
# Parallel corpora


def load_tsv(path: str | os.PathLike, *, columns: tuple[int, int] = (0, 1),
             max_pairs: int | None = None, lowercase: bool = False) -> list[tuple[str, str]]:
    """``(source, target)`` pairs from a tab-separated file, one pair per line.

    ``columns`` picks the source and target fields (a Tatoeba "sentence pairs" export
    ``id<TAB>text<TAB>id<TAB>text`` needs ``columns=(1, 3)``). Empty lines are skipped; fields
    are stripped; pairs with an empty side are dropped.

    Raises:
      FileNotFoundError: naming the path (and where such files come from).
      ValueError: naming the line that has too few fields, or if no pair is read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"parallel corpus {str(path)!r} not found: expected a UTF-8 file of "
            f"'source<TAB>target' lines (e.g. a Tatoeba sentence-pairs export from "
            f"https://tatoeba.org/downloads, or manythings.org/anki)")
    if (not isinstance(columns, (tuple, list)) or len(columns) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                       for c in columns)):
        raise ValueError(f"columns={columns!r} must be two non-negative ints (source, target)")
    need = max(columns) + 1
    try:
        return _read_tsv(path, columns, need, max_pairs, lowercase)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a UTF-8 text file (byte {exc.start}: {exc.reason})"
                         ) from None


def _read_tsv(path: Path, columns: tuple[int, int], need: int, max_pairs: int | None,
              lowercase: bool) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or all(not x.strip() for x in row):
                continue
            if len(row) < need:
                raise ValueError(f"{path}:{lineno}: {len(row)} tab-separated field(s), need at "
                                 f"least {need} for columns={columns}: {row!r}")
            src, tgt = row[columns[0]].strip(), row[columns[1]].strip()
            if lowercase:
                src, tgt = src.lower(), tgt.lower()
            if src and tgt:
                pairs.append((src, tgt))
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
    if not pairs:
        raise ValueError(f"{path}: no 'source<TAB>target' pair found")
    return pairs


def split_pairs(pairs: Sequence[tuple[str, str]], fractions: tuple[float, float] = (0.1, 0.1),
                seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Deterministic ``{"train", "valid", "test"}`` split by distinct source sentence.

    All pairs sharing a source go to the same split; ``fractions`` are the valid and test
    shares of the distinct sources (at least one source each when there are >= 3).
    """
    try:
        fv, ft = (float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"fractions={fractions!r} must be two shares (valid, test) in [0, 1) "
                         "summing to < 1") from None
    for i, p in enumerate(pairs):
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise ValueError(f"pairs[{i}]={p!r} must be a (source, target) pair")
    if not (0 <= fv < 1 and 0 <= ft < 1 and fv + ft < 1):
        raise ValueError(f"fractions={fractions} must be two shares in [0, 1) summing to < 1")
    sources = list(dict.fromkeys(s for s, _ in pairs))
    order = np.random.default_rng(seed).permutation(len(sources))
    n = len(sources)
    n_valid = max(int(round(fv * n)), 1 if fv > 0 and n >= 3 else 0)
    n_test = max(int(round(ft * n)), 1 if ft > 0 and n >= 3 else 0)
    which: dict[str, str] = {}
    for rank, i in enumerate(order):
        which[sources[i]] = ("test" if rank < n_test else
                             "valid" if rank < n_test + n_valid else "train")
    out: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        out[which[pair[0]]].append(pair)
    return out


@dataclasses.dataclass
class ParallelData:
    """Vocabularies and splits of a parallel corpus, with deterministic batches.

    Vocabularies are built from the training split only.
    """

    name: str
    splits: dict[str, list[tuple[str, str]]]
    src_vocab: Vocab
    tgt_vocab: Vocab

    @classmethod
    def from_pairs(cls, name: str, pairs: Sequence[tuple[str, str]], *, src_level: str = "char",
                   tgt_level: str = "char", seed: int = 0,
                   fractions: tuple[float, float] = (0.1, 0.1), min_freq: int = 1) -> ParallelData:
        splits = split_pairs(pairs, fractions, seed)
        if not splits["train"]:
            raise ValueError(f"{name}: the training split is empty ({len(pairs)} pairs)")
        src_vocab = Vocab.build((s for s, _ in splits["train"]), src_level, min_freq)
        tgt_vocab = Vocab.build((t for _, t in splits["train"]), tgt_level, min_freq)
        return cls(name, splits, src_vocab, tgt_vocab)

    def encode(self, pairs: Sequence[tuple[str, str]], *, fixed: bool = True):
        """``(src [N, S], src_lengths [N], tgt [N, T], tgt_lengths [N])`` int32 numpy arrays.

        ``fixed=True`` pads to the longest source and target of the whole corpus
        (:attr:`max_src_len`, :attr:`max_tgt_len`), so every batch has the same shape and a
        jitted step compiles once; ``False`` pads to the longest of ``pairs``.
        """
        src = [self.src_vocab.encode(s) for s, _ in pairs]
        tgt = [self.tgt_vocab.encode(t) + [Vocab.eos_id] for _, t in pairs]
        s_len, t_len = (self.max_src_len, self.max_tgt_len) if fixed else (None, None)
        return (*pad_batch(src, length=s_len), *pad_batch(tgt, length=t_len))

    def arrays(self, split: str):
        """The whole split, encoded (see :meth:`encode`)."""
        if split not in self.splits:
            raise ValueError(f"split={split!r} must be one of {sorted(self.splits)}")
        return self.encode(self.splits[split])

    @functools.cached_property
    def max_src_len(self) -> int:
        """Longest source of all splits, in tokens."""
        return max(len(tokenize(s, self.src_vocab.level)) for p in self.splits.values()
                   for s, _ in p)

    @functools.cached_property
    def max_tgt_len(self) -> int:
        """Longest target of all splits in tokens, ``<eos>`` included."""
        return 1 + max(len(tokenize(t, self.tgt_vocab.level)) for p in self.splits.values()
                       for _, t in p)

    def train_batch(self, step: int, batch_size: int, seed: int = 0):
        """Batch ``step`` of a shuffled pass over the training split (a new permutation per
        epoch, from ``(seed, epoch)``); deterministic in ``(step, batch_size, seed)``."""
        for name, v, low in (("step", step, 0), ("batch_size", batch_size, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name}={v!r} must be an int >= {low}")
        train = self.splits["train"]
        per_epoch = max(len(train) // batch_size, 1)
        epoch, k = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(train))
        idx = order[(k * batch_size + np.arange(batch_size)) % len(train)]
        return self.encode([train[i] for i in idx])

    def batches(self, split: str, batch_size: int):
        """The split in order, in batches (the last one may be smaller)."""
        if split not in self.splits:
            raise ValueError(f"split={split!r} must be one of {sorted(self.splits)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        pairs = self.splits[split]
        for i in range(0, len(pairs), batch_size):
            yield self.encode(pairs[i : i + batch_size])


def make_translation_data(task: str, *, seed: int = 0, num_examples: int | None = None,
                          level: str | None = None, lowercase: bool = False,
                          columns: tuple[int, int] = (0, 1)) -> ParallelData:
    """``"numbers-en-fr"``, ``"dates"``, or the path of a TSV parallel corpus.

    Args:
      task: a name of :data:`TRANSLATION_TASKS` or a file path.
      seed: generation and split seed.
      num_examples: pairs to generate (default 20000 numbers, 20000 dates) or to read (all).
      level: tokenisation of both sides (default: ``"word"`` for numbers and files,
        ``"char"`` for dates).
      lowercase, columns: for files, see :func:`load_tsv`.
    """
    if not isinstance(task, (str, os.PathLike)):
        raise TypeError(f"task must be a name of {TRANSLATION_TASKS} or a file path, got "
                        f"{type(task).__name__}")
    task = os.fspath(task)
    if num_examples is not None and (isinstance(num_examples, bool) or not isinstance(
            num_examples, (int, np.integer)) or num_examples < 1):
        raise ValueError(f"num_examples={num_examples!r} must be a positive int or None")
    if level is not None and level not in LEVELS:
        raise ValueError(f"level={level!r} must be one of {LEVELS}")
    if task == "numbers-en-fr":
        pairs = number_pairs(num_examples or 20_000, seed)
        return ParallelData.from_pairs(task, pairs, src_level=level or "word",
                                       tgt_level=level or "word", seed=seed)
    if task == "dates":
        pairs = date_pairs(num_examples or 20_000, seed)
        return ParallelData.from_pairs(task, pairs, src_level=level or "char",
                                       tgt_level=level or "char", seed=seed)
    if os.sep in task or task.endswith((".tsv", ".txt")) or Path(task).exists():
        pairs = load_tsv(task, columns=columns, max_pairs=num_examples, lowercase=lowercase)
        return ParallelData.from_pairs(Path(task).stem, pairs, src_level=level or "word",
                                       tgt_level=level or "word", seed=seed)
    raise ValueError(f"task={task!r} must be one of {TRANSLATION_TASKS} or a TSV file path")
