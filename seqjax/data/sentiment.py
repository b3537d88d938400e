"""The MR sentence-polarity data set (Pang & Lee 2005; the MR benchmark of Kim 2014).

Files ``<data_dir>/rt-polarity/rt-polarity.{pos,neg}``: one already tokenised, lower-cased
sentence per line, Latin-1 encoded; 5,331 of each. There is no official split: 10-fold
cross-validation is the convention (:func:`cv_folds`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["MR", "load_mr", "build_vocab", "encode", "cv_folds", "bucket_batches", "PAD", "UNK"]

PAD, UNK = "<pad>", "<unk>"
_SOURCE = "https://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz"


@dataclasses.dataclass
class MR:
    """``sentences`` (token lists) and ``labels [N]`` (1 positive, 0 negative)."""

    sentences: list[list[str]]
    labels: np.ndarray


def load_mr(data_dir: str | Path) -> MR:
    """Read MR from ``<data_dir>/rt-polarity`` (positives first, then negatives)."""
    folder = Path(data_dir) / "rt-polarity"
    sents: list[list[str]] = []
    labels: list[int] = []
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; MR (sentence polarity v1.0) comes from "
                                    f"{_SOURCE}")
        with open(path, encoding="latin-1") as f:
            for line in f:
                toks = line.split()
                if toks:
                    sents.append(toks)
                    labels.append(label)
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        if label not in labels:
            raise ValueError(f"{folder / name} holds no sentence (an empty file?)")
    return MR(sents, np.array(labels, dtype=np.int32))


def _check_sentences(sentences: Sequence[Sequence[str]]) -> None:
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be a list of token lists, got a str")
    for i, s in enumerate(sentences):
        if isinstance(s, (str, bytes)):
            raise TypeError(f"sentences[{i}] is a str ({s[:30]!r}); each sentence must be a "
                            "list of tokens (split it first)")


def build_vocab(sentences: Sequence[Sequence[str]], min_count: int = 1) -> list[str]:
    """``[PAD, UNK, words by decreasing count...]``; id 0 is padding, id 1 unknown."""
    _check_sentences(sentences)
    counts = Counter(w for s in sentences for w in s)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return [PAD, UNK, *words]


def encode(sentences: Sequence[Sequence[str]], vocab: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each sentence (unknown words -> 1, ``<unk>``)."""
    _check_sentences(sentences)
    if isinstance(vocab, str) or list(vocab[:2]) != [PAD, UNK]:
        raise ValueError(f"vocab must start with [{PAD!r}, {UNK!r}] (see build_vocab), got "
                         f"{list(vocab[:2]) if not isinstance(vocab, str) else vocab[:20]!r}")
    index = {w: i for i, w in enumerate(vocab)}
    return [np.array([index.get(w, 1) for w in s], dtype=np.int32) for s in sentences]


def cv_folds(n: int, k: int = 10, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train_idx, test_idx) splits of a seeded permutation; test sets are disjoint and
    cover ``range(n)``, fold sizes differ by at most one."""
    for name, v in (("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}={v!r} must be an int")
    if not 2 <= k <= n:
        raise ValueError(f"k={k} must be in [2, n={n}]")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, k)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(parts[i]))
            for i in range(k)]


def bucket_batches(ids: Sequence[np.ndarray], labels: np.ndarray, batch_size: int, *,
                   shuffle: bool = False, seed: int = 0, pad_multiple: int = 16,
                   max_len: int | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Length-bucketed, padded batches ``(tokens [B, T] int32, lengths [B], labels [B])``.

    Sentences are sorted by length (inside shuffled pools of 50 batches when ``shuffle``), cut
    into batches, and each batch is padded with id 0 to a multiple of ``pad_multiple`` (few
    distinct shapes, so few compilations). A last short batch is padded to ``batch_size`` with
    length-1 rows of label -1 (ignored by :func:`seqjax.models.classify.evaluate`; training skips
    it).
    Sentences longer than ``max_len`` are truncated.
    """
    for name, v in (("batch_size", batch_size), ("pad_multiple", pad_multiple),
                    ("max_len", 1 if max_len is None else max_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive int")
    labels = np.asarray(labels)
    if labels.shape != (len(ids),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels (shape {labels.shape}, dtype {labels.dtype}) must be "
                         f"[{len(ids)}] ints, one per sequence of ids")
    for i, x in enumerate(ids):
        x = np.asarray(x)
        if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"ids[{i}] (shape {x.shape}, dtype {x.dtype}) must be [L] ints")
    n = len(ids)
    lens = np.array([len(x) if max_len is None else min(len(x), max_len) for x in ids])
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle else np.arange(n)
    pool = batch_size * 50
    chunks = []
    for s in range(0, n, pool):
        part = order[s:s + pool]
        part = part[np.argsort(lens[part], kind="stable")]
        chunks += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    if shuffle:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for idx in chunks:
        t = max(1, int(lens[idx].max()))
        t = -(-t // pad_multiple) * pad_multiple
        tokens = np.zeros((batch_size, t), np.int32)
        lengths = np.ones(batch_size, np.int32)
        labs = np.full(batch_size, -1, np.int32)
        for r, i in enumerate(idx):
            tokens[r, :lens[i]] = ids[i][:lens[i]]
            lengths[r] = max(lens[i], 1)
            labs[r] = labels[i]
        yield tokens, lengths, labs
