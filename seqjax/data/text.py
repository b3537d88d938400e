"""Language modelling on token streams: Penn Treebank at word and character level.

A split is one long stream of token ids. Training batches are ``B`` windows of ``T + 1``
tokens at random offsets (inputs are the first ``T``, targets the last ``T``); evaluation cuts
the split into consecutive non-overlapping windows that predict every token after the first
exactly once.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.data.base import (
    Batch,
    Task,
    check_outputs,
    check_positive,
    check_split,
    classification_terms,
    find_file,
    ratio,
    resolve_data_dir,
    step_mask,
    train_rng,
)

#: End-of-sentence token appended to every line at word level.
EOS = "<eos>"
#: Out-of-vocabulary token at word level (present in PTB's training text).
UNK = "<unk>"
#: Default window length ``T`` per level (as in Bai et al. 2018's PTB experiments).
DEFAULT_SEQ_LEN = {"char": 320, "word": 80}

_PTB_SOURCE = (
    "The standard files are Mikolov's Penn Treebank (data/ptb.{train,valid,test}.txt of "
    "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz); put them in <data_dir>/ptb/."
)


def word_tokens(text: str) -> list[str]:
    """Whitespace-split words of each line, each line followed by ``<eos>``.

    Args:
        text: the file's text; lines end with ``"\\n"`` (a missing final newline is allowed).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


class Vocabulary:
    """A token <-> id mapping for word- or character-level text.

    Args:
        tokens: the tokens, id ``i`` is ``tokens[i]``.
        level: ``"word"`` (text is split by :func:`word_tokens`, unknown words map to
            ``<unk>`` when the vocabulary has it) or ``"char"`` (text is read character by
            character, so ``"\\n"`` is the end-of-line token; unknown characters are an error).
    """

    def __init__(self, tokens: Sequence[str], level: str):
        if level not in DEFAULT_SEQ_LEN:
            raise ValueError(f"level={level!r} must be 'word' or 'char'")
        if isinstance(tokens, (str, bytes)):
            raise TypeError(f"tokens must be a sequence of str tokens, got a "
                            f"{type(tokens).__name__} ({tokens[:20]!r}); use "
                            "Vocabulary.build(text, level) to build one from text")
        tokens = tuple(tokens)
        bad = [t for t in tokens if not isinstance(t, str)]
        if bad:
            raise TypeError(f"tokens must all be str, got {type(bad[0]).__name__} {bad[0]!r}")
        self.tokens = tokens
        self.level = level
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("tokens must be distinct")
        if level == "char":
            if any(len(t) != 1 for t in self.tokens):
                raise ValueError("a character vocabulary holds single characters")
            codes = np.array([ord(t) for t in self.tokens], dtype=np.uint32)
            self._order = np.argsort(codes)
            self._sorted_codes = codes[self._order]

    @classmethod
    def build(cls, text: str, level: str) -> Vocabulary:
        """The vocabulary of ``text``: words in order of first appearance, or sorted characters."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if level == "word":
            return cls(dict.fromkeys(word_tokens(text)), level)
        return cls(sorted(set(text)), level)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``.

        Returns:
            ``[N]`` int32.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.level == "word":
            unk = self.index.get(UNK)
            words = word_tokens(text)
            if unk is None:
                missing = [w for w in set(words) if w not in self.index]
                if missing:
                    raise ValueError(f"words not in the vocabulary (and no {UNK}): {missing[:10]}")
            get = self.index.get
            return np.fromiter((get(w, unk) for w in words), dtype=np.int32, count=len(words))
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        if codes.size and not self.tokens:
            raise ValueError(f"characters not in the vocabulary: {sorted(set(text))[:10]} (the "
                             "vocabulary is empty)")
        pos = np.searchsorted(self._sorted_codes, codes)
        pos = np.minimum(pos, len(self._sorted_codes) - 1)
        bad = self._sorted_codes[pos] != codes
        if bad.any():
            missing = sorted({chr(c) for c in codes[bad]})
            raise ValueError(f"characters not in the vocabulary: {missing[:10]}")
        return self._order[pos].astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids: characters concatenated, or words joined by spaces.

        Raises:
            TypeError: non-integer ids.
            ValueError: ids outside ``[0, len(self))``.
        """
        arr = np.asarray(ids)
        if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"ids.dtype={arr.dtype} must be an integer dtype (token ids)")
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.tokens)):
            raise ValueError(f"ids must lie in [0, {len(self.tokens)}) (the vocabulary size), "
                             f"got min {arr.min()} max {arr.max()}")
        toks = [self.tokens[int(i)] for i in arr.ravel()]
        return ("" if self.level == "char" else " ").join(toks)


@functools.lru_cache(maxsize=4)
def _load_corpus(
    paths: tuple[str, str, str], stamps: tuple[int, ...], level: str
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    texts = [read_text_file(p) for p in paths]
    vocab = Vocabulary.build(texts[0], level)
    data = {}
    for path, split, text in zip(paths, ("train", "valid", "test"), texts):
        try:
            ids = vocab.encode(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc} (the vocabulary is that of {paths[0]})") from None
        if len(ids) < 2:
            raise ValueError(f"{path}: the {split} split holds {len(ids)} tokens, need >= 2 "
                             "(an empty or truncated file?)")
        ids.flags.writeable = False
        data[split] = ids
    return vocab, data


def read_text_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path``; a file that is not UTF-8 text is a ``ValueError`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a UTF-8 text file (byte {exc.start}: {exc.reason})"
                         ) from None


def load_ptb(
    level: str, data_dir: str | os.PathLike | None = None, *, task: str | None = None
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    """Loads Penn Treebank, encoded with the vocabulary of its training split.

    Looks for ``<data_dir>/ptb/ptb.<split>.txt``, then ``<data_dir>/ptb.<split>.txt``. Results
    are cached per (files, level) in this process.

    Args:
        level: ``"word"`` or ``"char"``.
        data_dir: data directory (default: env ``SEQJAX_DATA``).
        task: task name for error messages.

    Returns:
        ``(vocab, {"train", "valid", "test"} -> [N] int32 read-only token ids)``.
    """
    if level not in DEFAULT_SEQ_LEN:
        raise ValueError(f"level={level!r} must be 'word' or 'char'")
    root = resolve_data_dir(data_dir)
    paths = []
    for split in ("train", "valid", "test"):
        file = f"ptb.{split}.txt"
        candidates = [] if root is None else [root / "ptb" / file, root / file]
        expected = str(candidates[0]) if candidates else f"<data_dir>/ptb/{file}"
        path = find_file(task or f"ptb-{level}", candidates, expected=expected, source=_PTB_SOURCE)
        paths.append(path.resolve())
    stamps = tuple(v for p in paths for v in (p.stat().st_mtime_ns, p.stat().st_size))
    vocab, data = _load_corpus(tuple(str(p) for p in paths), stamps, level)
    return vocab, dict(data)


class LanguageModelTask(Task):
    """Next-token prediction on token streams (base of the PTB tasks).

    Batches: ``inputs [B, T]`` int32 token ids, ``targets [B, T]`` int32 next tokens,
    ``lengths [B]`` (``== T`` except in the last evaluation window; padding ids are 0). Loss:
    cross-entropy at every valid step. Metric ``"bpc"`` (char: mean cross-entropy / ln 2) or
    ``"ppl"`` (word: exp of the mean cross-entropy), also ``"loss"`` (nats per token); baseline:
    the test metric of the add-one-smoothed unigram distribution of the training split.

    Args:
        name: task name.
        vocab: the :class:`Vocabulary` (kept as :attr:`vocabulary`; :attr:`vocab` is the list
            of its tokens, id ``i`` is ``vocab[i]``).
        data: ``{"train", "valid", "test"}`` -> ``[N]`` int token ids.
        seq_len: window length ``T`` (default: 320 char, 80 word).
    """

    def __init__(
        self,
        name: str,
        vocab: Vocabulary,
        data: dict[str, np.ndarray],
        seq_len: int | None = None,
    ):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        if not isinstance(data, dict) or set(data) != {"train", "valid", "test"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"data must be a dict with keys 'train', 'valid', 'test', got {keys}")
        data = {k: np.asarray(v) for k, v in data.items()}
        for split, ids in data.items():
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(f"{name}: data[{split!r}] (shape {ids.shape}, dtype {ids.dtype}) "
                                 "must be [N] integer token ids")
            if len(ids) < 2:
                raise ValueError(f"{name}: the {split} split has {len(ids)} tokens, need >= 2")
            if ids.min() < 0 or ids.max() >= len(vocab):
                raise ValueError(f"{name}: data[{split!r}] ids must lie in [0, {len(vocab)}) "
                                 f"(the vocabulary size), got min {ids.min()} max {ids.max()}")
        self.name = name
        self.vocabulary = vocab
        self.vocab = list(vocab.tokens)
        self.level = vocab.level
        self.data = data
        self.seq_len = check_positive(
            "seq_len", DEFAULT_SEQ_LEN[self.level] if seq_len is None else seq_len)
        n_train = len(data["train"])
        if n_train < self.seq_len + 1:
            raise ValueError(
                f"seq_len={self.seq_len} needs at least {self.seq_len + 1} training tokens, "
                f"{name} has {n_train}"
            )
        self.input_size = len(vocab)
        self.output_size = len(vocab)
        self.token_inputs = True
        self.metric_name = "bpc" if self.level == "char" else "ppl"
        self.lower_is_better = True
        counts = np.bincount(data["train"], minlength=len(vocab)) + 1.0
        logp = np.log(counts / counts.sum())
        self.baseline = self._headline(float(-logp[data["test"][1:]].mean()))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``, ``[N]`` int32 (see :meth:`Vocabulary.encode`)."""
        return self.vocabulary.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids (see :meth:`Vocabulary.decode`)."""
        return self.vocabulary.decode(ids)

    def _headline(self, loss: float) -> float:
        return loss / math.log(2.0) if self.level == "char" else math.exp(loss)

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        check_positive("batch_size", batch_size)
        ids, t = self.data["train"], self.seq_len
        starts = train_rng(seed, step).integers(0, len(ids) - t, size=batch_size)
        windows = ids[starts[:, None] + np.arange(t + 1)[None, :]]
        lengths = np.full(batch_size, t, dtype=np.int32)
        return Batch(windows[:, :-1].astype(np.int32), windows[:, 1:].astype(np.int32), lengths)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        ids = self.data[check_split(split)]
        check_positive("batch_size", batch_size)
        t, n = self.seq_len, len(ids)
        num_windows = -(-(n - 1) // t)
        for w0 in range(0, num_windows, batch_size):
            starts = np.arange(w0, min(w0 + batch_size, num_windows)) * t
            pos = starts[:, None] + np.arange(t + 1)[None, :]
            lengths = np.minimum(n - 1 - starts, t).astype(np.int32)
            windows = np.where(pos < n, ids[np.minimum(pos, n - 1)], 0).astype(np.int32)
            inputs = np.where(np.arange(t)[None, :] < lengths[:, None], windows[:, :-1], 0)
            yield Batch(inputs.astype(np.int32), windows[:, 1:], lengths)

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        check_outputs(outputs, batch, self.output_size)
        mask = step_mask(batch.lengths, outputs.shape[1])
        return classification_terms(outputs, jnp.asarray(batch.targets), mask)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        loss = ratio(totals, "loss")
        out = {self.metric_name: self._headline(loss), "loss": loss}
        if "correct" in totals:
            out["accuracy"] = ratio(totals, "correct")
        return out


class PTBTask(LanguageModelTask):
    """Penn Treebank language modelling (task names ``"ptb-word"`` and ``"ptb-char"``).

    Word level: words of each line plus ``<eos>``, the 10,000-word vocabulary of the training
    split in order of first appearance. Character level: the same text read character by
    character (``"\\n"`` ends a line; 50 symbols). See :class:`LanguageModelTask`.

    Args:
        level: ``"word"`` or ``"char"``.
        data_dir: data directory (default: env ``SEQJAX_DATA``).
        seq_len: window length ``T`` (default 80 word, 320 char).
    """

    def __init__(
        self,
        level: str = "word",
        data_dir: str | os.PathLike | None = None,
        seq_len: int | None = None,
    ):
        name = f"ptb-{level}"
        vocab, data = load_ptb(level, data_dir, task=name)
        super().__init__(name, vocab, data, seq_len)
