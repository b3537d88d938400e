r"""word2vec: skip-gram and CBOW with negative sampling (Mikolov et al. 2013a, 2013b).

Both models keep two tables, input vectors :math:`V \in \mathbb{R}^{|W| \times D}` and output
vectors :math:`U \in \mathbb{R}^{|W| \times D}`. For a hidden vector :math:`h` (skip-gram: the
centre word's input vector :math:`v_c`; CBOW: the mean of the context words' input vectors), a
target word :math:`o` and :math:`K` noise words :math:`k_1..k_K` drawn from the noise
distribution :math:`P_n(w) \propto \mathrm{count}(w)^{3/4}`, the loss of one example is

.. math::

    \ell = -\log \sigma(u_o^\top h) - \sum_{j=1}^{K} \log \sigma(-u_{k_j}^\top h).

Frequent words are subsampled: each occurrence of word :math:`w` with relative frequency
:math:`f(w)` is kept with probability (Mikolov et al. 2013b, eq. 5)

.. math::

    P_\mathrm{keep}(w) = \min\left(1, \sqrt{t / f(w)}\right).

Training (:func:`seqjax.train.word2vec.train_word2vec`, on the one training step
:func:`seqjax.train.make_train_step`) is plain SGD on the summed loss of a mini-batch with a
learning rate that decays linearly from ``lr`` to ``lr * min_lr_fraction`` over the run, as in
the reference C code, ``steps_per_call`` mini-batches per jitted call.

Vectors save to and load from the standard word2vec *text* format: a header ``"<V> <D>"`` then
one line per word ``"word x_1 ... x_D"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Word2Vec", "Word2VecModel", "build_vocab", "noise_distribution", "keep_probabilities",
    "subsample", "skipgram_pairs", "cbow_examples", "negative_sampling_loss", "skipgram_loss",
    "cbow_loss", "init_params", "nearest", "analogy", "save_word2vec_text",
    "load_word2vec_text", "normalize",
]

Array = jax.Array


# ----------------------------------------------------------------------------- vocabulary
def _check_tokens(tokens: Any, name: str = "tokens") -> None:
    if isinstance(tokens, (str, bytes)):
        raise TypeError(f"{name} must be a list of words, got a {type(tokens).__name__} "
                        f"({tokens[:30]!r}...); split it first, e.g. text.split()")


def _check_ids(ids: np.ndarray, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{name} (shape {ids.shape}, dtype {ids.dtype}) must be [N] word ids")
    return ids


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r} must be a positive int")
    return int(window)


def build_vocab(tokens: Iterable[str], min_count: int = 1) -> tuple[list[str], np.ndarray]:
    """Words with ``count >= min_count``, most frequent first (ties: first appearance).

    Returns:
        ``(words, counts [V] int64)``.

    Raises:
        TypeError: ``tokens`` is a string (it would count characters, not words).
    """
    _check_tokens(tokens)
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or \
            min_count < 1:
        raise ValueError(f"min_count={min_count!r} must be a positive int")
    counter = Counter(tokens)
    items = [(w, c) for w, c in counter.items() if c >= min_count]
    items.sort(key=lambda wc: -wc[1])  # stable: ties keep first-appearance order
    if not items:
        raise ValueError(f"no word occurs at least min_count={min_count} times")
    return [w for w, _ in items], np.array([c for _, c in items], dtype=np.int64)


def noise_distribution(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    r"""The negative-sampling noise distribution :math:`P_n(w) = c_w^p / \sum_v c_v^p`, ``[V]``."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or not counts.sum() > 0:
        raise ValueError(f"counts (shape {counts.shape}) must be a non-empty [V] array of "
                         "non-negative counts with a positive sum")
    p = counts**power
    return p / p.sum()


def keep_probabilities(counts: np.ndarray, t: float = 1e-4) -> np.ndarray:
    r"""Subsampling keep probability :math:`\min(1, \sqrt{t / f(w)})`, ``f = c / \sum c``, ``[V]``.

    ``t <= 0`` disables subsampling (all ones).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts (shape {counts.shape}) must be a [V] array of non-negative "
                         "counts")
    if t <= 0:
        return np.ones_like(counts)
    f = counts / counts.sum()
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, np.sqrt(t / f))


def subsample(ids: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop each occurrence of word ``w`` in ``ids [N]`` with probability ``1 - keep[w]``."""
    ids = _check_ids(ids)
    keep = np.asarray(keep)
    if keep.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= len(keep))):
        raise ValueError(f"keep (shape {keep.shape}) must be [V] with every id of ids in "
                         f"[0, V)")
    return ids[rng.random(ids.shape[0]) < keep[ids]]


def skipgram_pairs(ids: np.ndarray, window: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(centre, context) pairs with Mikolov's dynamic window: for each centre a window size
    ``b`` is drawn uniformly from ``[1, window]`` and the words within ``b`` are its contexts.

    Returns:
        ``(centres [P], contexts [P])`` int32.
    """
    ids = _check_ids(ids).astype(np.int32)
    window = _check_window(window)
    n = ids.shape[0]
    b = rng.integers(1, window + 1, size=n)
    cs, os_ = [], []
    pos = np.arange(n)
    for off in range(1, window + 1):
        for sign in (-1, 1):
            j = pos + sign * off
            ok = (b >= off) & (j >= 0) & (j < n)
            cs.append(ids[pos[ok]])
            os_.append(ids[j[ok]])
    centres, contexts = np.concatenate(cs), np.concatenate(os_)
    perm = rng.permutation(centres.shape[0])
    return centres[perm], contexts[perm]


def cbow_examples(ids: np.ndarray, window: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CBOW examples with a dynamic window.

    Returns:
        ``(contexts [N, 2W] int32, mask [N, 2W] float32, targets [N] int32)``, shuffled;
        positions without a context word have mask 0 (examples with no context are dropped).
    """
    ids = _check_ids(ids).astype(np.int32)
    window = _check_window(window)
    n = ids.shape[0]
    b = rng.integers(1, window + 1, size=n)
    pos = np.arange(n)
    offs = [o for o in range(-window, window + 1) if o != 0]
    j = pos[:, None] + np.array(offs)[None, :]
    mask = (np.abs(np.array(offs))[None, :] <= b[:, None]) & (j >= 0) & (j < n)
    ctx = ids[np.clip(j, 0, n - 1)]
    ok = mask.any(axis=1)
    perm = rng.permutation(int(ok.sum()))
    return (ctx[ok][perm], mask[ok][perm].astype(np.float32), ids[ok][perm])


# ----------------------------------------------------------------------------- losses
def negative_sampling_loss(h: Array, out: Array, targets: Array, negatives: Array,
                           weights: Array | None = None) -> Array:
    r"""Summed negative-sampling loss :math:`\sum_b w_b \ell_b` (see the module docstring).

    Args:
        h: hidden vectors ``[B, D]``.
        out: output table ``U [V, D]``.
        targets: ``[B]`` ids.
        negatives: ``[B, K]`` ids.
        weights: optional ``[B]`` (0 drops padding examples).

    Shapes are checked (statically, also under ``jit``); ids are not range-checked.
    """
    b = jnp.shape(h)[0] if jnp.ndim(h) == 2 else None
    if (jnp.ndim(h) != 2 or jnp.ndim(out) != 2 or jnp.shape(out)[1] != jnp.shape(h)[1]
            or tuple(jnp.shape(targets)) != (b,) or jnp.ndim(negatives) != 2
            or jnp.shape(negatives)[0] != b
            or (weights is not None and tuple(jnp.shape(weights)) != (b,))):
        raise ValueError(
            f"shapes h={tuple(jnp.shape(h))}, out={tuple(jnp.shape(out))}, targets="
            f"{tuple(jnp.shape(targets))}, negatives={tuple(jnp.shape(negatives))}"
            + ("" if weights is None else f", weights={tuple(jnp.shape(weights))}")
            + " must be [B, D], [V, D], [B], [B, K] (and [B])")
    pos = jnp.einsum("bd,bd->b", h, out[targets])
    neg = jnp.einsum("bd,bkd->bk", h, out[negatives])
    ell = -jax.nn.log_sigmoid(pos) - jax.nn.log_sigmoid(-neg).sum(-1)
    if weights is not None:
        ell = ell * weights
    return ell.sum()


def skipgram_loss(params: dict, centres: Array, contexts: Array, negatives: Array,
                  weights: Array | None = None) -> Array:
    """Skip-gram: ``h = V[centre]``, target the context word."""
    return negative_sampling_loss(params["in"][centres], params["out"], contexts, negatives,
                                  weights)


def cbow_loss(params: dict, contexts: Array, mask: Array, targets: Array, negatives: Array,
              weights: Array | None = None) -> Array:
    """CBOW: ``h`` = mean of the context words' input vectors (``mask [B, 2W]``)."""
    emb = params["in"][contexts] * mask[..., None]
    h = emb.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
    return negative_sampling_loss(h, params["out"], targets, negatives, weights)


def init_params(key: Array, vocab_size: int, dim: int) -> dict:
    """word2vec's init: input vectors ``U(-0.5/D, 0.5/D)``, output vectors zero."""
    for name, n in (("vocab_size", vocab_size), ("dim", dim)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name}={n!r} must be a positive int")
    v = jax.random.uniform(key, (vocab_size, dim), jnp.float32, -0.5 / dim, 0.5 / dim)
    return {"in": v, "out": jnp.zeros((vocab_size, dim), jnp.float32)}


# ----------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class Word2Vec:
    """word2vec hyperparameters (defaults follow the reference C code, ``-sample`` aside).

    Attributes:
        dim: vector size ``D``.
        mode: ``"skipgram"`` or ``"cbow"``.
        window: maximum window ``W`` (dynamic window, uniform in ``[1, W]``).
        negative: noise words per example ``K``.
        sample: subsampling threshold ``t`` (0 disables).
        min_count: words rarer than this are dropped.
        lr: initial learning rate (C code: 0.025 skip-gram, 0.05 CBOW).
        min_lr_fraction: final lr is ``lr * min_lr_fraction`` (C code: 1e-4).
        epochs: passes over the corpus.
        batch_size: examples per SGD step.
        steps_per_call: steps fused into one jitted ``lax.scan`` call.
        power: noise-distribution exponent (0.75).
    """

    dim: int = 100
    mode: str = "skipgram"
    window: int = 5
    negative: int = 5
    sample: float = 1e-4
    min_count: int = 1
    lr: float = 0.025
    min_lr_fraction: float = 1e-4
    epochs: int = 1
    batch_size: int = 256
    steps_per_call: int = 200
    power: float = 0.75

    def __post_init__(self):
        if self.mode not in ("skipgram", "cbow"):
            raise ValueError(f"mode={self.mode!r} must be 'skipgram' or 'cbow'")
        for name in ("dim", "window", "negative", "epochs", "batch_size", "steps_per_call",
                     "min_count"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        for name, ok, want in (("lr", lambda v: 0 < v < math.inf, "> 0 and finite"),
                               ("sample", lambda v: 0 <= v < math.inf, ">= 0 (0: off)"),
                               ("min_lr_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
                               ("power", lambda v: 0 <= v < math.inf, ">= 0")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"{name}={v!r} must be a number {want}")


@dataclasses.dataclass
class Word2VecModel:
    """Trained vectors: ``words [V]``, ``counts [V]``, ``vectors [V, D]`` (input table)."""

    words: list[str]
    counts: np.ndarray
    vectors: np.ndarray
    history: list[dict] = dataclasses.field(default_factory=list)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def nearest(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        idx = self.index
        if word not in idx:
            raise KeyError(f"word {word!r} not in the vocabulary of {len(self.words)} words")
        ids, sims = nearest(self.vectors, self.vectors[idx[word]], k, exclude=[idx[word]])
        return [(self.words[i], float(s)) for i, s in zip(ids, sims)]

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """``a : b :: c : ?`` (``b - a + c``)."""
        idx = self.index
        for w in (a, b, c):
            if w not in idx:
                raise KeyError(f"word {w!r} not in the vocabulary of {len(self.words)} words")
        ids, sims = analogy(self.vectors, idx[a], idx[b], idx[c], k)
        return [(self.words[i], float(s)) for i, s in zip(ids, sims)]


# ----------------------------------------------------------------------------- queries
def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norm == 0, 1.0, norm)


def nearest(vectors: np.ndarray, query: np.ndarray, k: int = 10,
            exclude: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors [V, D]`` with the highest cosine similarity to ``query [D]``.

    Returns:
        ``(ids [k], cosines [k])``, most similar first (ties: lower id first).
    """
    vectors, query = np.asarray(vectors), np.asarray(query)
    if vectors.ndim != 2 or query.shape != vectors.shape[1:]:
        raise ValueError(f"vectors.shape={vectors.shape} must be [V, D] and query.shape="
                         f"{query.shape} [D]")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    exclude = list(exclude)
    if exclude and (min(exclude) < 0 or max(exclude) >= len(vectors)):
        raise ValueError(f"exclude ids must lie in [0, {len(vectors)}), got {exclude}")
    sims = normalize(vectors) @ normalize(query[None])[0]
    sims = sims.copy()
    sims[list(exclude)] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return order, sims[order]


def analogy(vectors: np.ndarray, a: int, b: int, c: int, k: int = 1
            ) -> tuple[np.ndarray, np.ndarray]:
    """3CosAdd: nearest (by cosine) to ``n(b) - n(a) + n(c)``, excluding ``a, b, c``."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"vectors.shape={vectors.shape} must be [V, D]")
    for name, i in (("a", a), ("b", b), ("c", c)):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not \
                0 <= i < len(vectors):
            raise ValueError(f"{name}={i!r} must be a word id in [0, {len(vectors)})")
    n = normalize(vectors)
    return nearest(vectors, n[b] - n[a] + n[c], k, exclude=[a, b, c])


# ----------------------------------------------------------------------------- text format
def save_word2vec_text(path: str | Path, words: Sequence[str], vectors: np.ndarray) -> None:
    """Write the word2vec text format (UTF-8): ``"V D"`` then ``"word x_1 ... x_D"`` per line."""
    _check_tokens(words, "words")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise ValueError(f"vectors.shape={vectors.shape} must be ({len(words)}, D)")
    for w in words:
        if not w or any(ch.isspace() for ch in w):
            raise ValueError(f"word {w!r} is empty or holds whitespace; the format cannot store it")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{vectors.shape[0]} {vectors.shape[1]}\n")
        for w, v in zip(words, vectors):
            f.write(w + " " + " ".join(repr(float(x)) for x in v) + "\n")


def load_word2vec_text(path: str | Path, encoding: str = "utf-8") -> tuple[list[str], np.ndarray]:
    """Read the word2vec text format. Returns ``(words, vectors [V, D] float32)``.

    Raises:
        ValueError: a file that is not in the format (binary, a bad header, a line with another
            number of values or a value that is not a number), naming the file and the line.
    """
    try:
        return _read_word2vec_text(path, encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a {encoding} text file (the binary word2vec format? "
                         f"byte {exc.start}: {exc.reason})") from None


def _read_word2vec_text(path: str | Path, encoding: str) -> tuple[list[str], np.ndarray]:
    with open(path, encoding=encoding, errors="strict") as f:
        header = f.readline().split()
        if len(header) != 2 or not all(h.isdigit() for h in header):
            raise ValueError(f"{path}: first line {header} must be '<vocab size> <dim>'")
        n, d = int(header[0]), int(header[1])
        words, rows = [], []
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip().split(" ")
            if len(parts) != d + 1:
                raise ValueError(f"{path}:{lineno}: {len(parts) - 1} values, expected {d}")
            words.append(parts[0])
            try:
                rows.append([float(x) for x in parts[1:]])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: the values of {parts[0]!r} are not all "
                                 "numbers") from None
    if len(words) != n:
        raise ValueError(f"{path}: header says {n} words, file holds {len(words)}")
    return words, np.array(rows, dtype=np.float32).reshape(n, d)
