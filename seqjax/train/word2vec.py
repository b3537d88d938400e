"""Training word2vec (:mod:`seqjax.models.word2vec`) with the one training step.

Plain SGD on the summed loss of each mini-batch, the learning rate decaying linearly from
``lr`` to ``lr * min_lr_fraction`` over the run (the reference C code), ``steps_per_call``
mini-batches per jitted call: :func:`seqjax.train.make_train_step` with
``optax.sgd(schedule)`` and ``steps_per_call``, the step every model in seqjax trains with.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seqjax.models.word2vec import (
    Word2Vec,
    Word2VecModel,
    _check_tokens,
    build_vocab,
    cbow_examples,
    cbow_loss,
    init_params,
    keep_probabilities,
    noise_distribution,
    skipgram_loss,
    skipgram_pairs,
    subsample,
)
from seqjax.train.loop import make_train_step
from seqjax.train.state import TrainState

__all__ = ["train_word2vec"]


def _corpus_ids(tokens, ids, words, counts, min_count: int):
    """``(ids [N] int32, words, counts [V])`` from a token list or from given ids."""
    if ids is None:
        if tokens is None:
            raise ValueError("give tokens (a list of words), or ids with words and counts")
        _check_tokens(tokens)
        tokens = list(tokens)
        words, counts = build_vocab(tokens, min_count)
        index = {w: i for i, w in enumerate(words)}
        return np.array([index[t] for t in tokens if t in index], dtype=np.int32), words, counts
    if words is None or counts is None:
        raise ValueError("ids needs words and counts")
    _check_tokens(words, "words")
    ids, counts = np.asarray(ids), np.asarray(counts)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"ids (shape {ids.shape}, dtype {ids.dtype}) must be [N] ints")
    if counts.shape != (len(words),):
        raise ValueError(f"counts.shape={counts.shape} must be ({len(words)},), one count "
                         "per word")
    if ids.size and (ids.min() < 0 or ids.max() >= len(words)):
        raise ValueError(f"ids must lie in [0, len(words)={len(words)}), got min "
                         f"{ids.min()} max {ids.max()}")
    return ids, words, counts


def _epoch_batches(cfg: Word2Vec, ids, keep, noise_cdf, rng, epoch: int):
    """One epoch's examples, padded with weight-0 rows to whole calls: ``(arrays, n)`` where
    every array is ``[calls, steps_per_call, batch_size, ...]`` (the last is the weights)."""
    kept = subsample(ids, keep, rng)
    data = (skipgram_pairs if cfg.mode == "skipgram" else cbow_examples)(kept, cfg.window, rng)
    n = data[0].shape[0]
    if n == 0:
        raise ValueError(f"epoch {epoch + 1}: no training examples from {len(ids)} tokens "
                         f"({len(kept)} after subsampling with sample={cfg.sample}); give "
                         "a longer corpus or a smaller sample")
    chunk = cfg.batch_size * cfg.steps_per_call
    n_pad = -(-n // chunk) * chunk
    weights = np.zeros(n_pad, np.float32)
    weights[:n] = 1.0
    data = tuple(np.concatenate([d, np.zeros((n_pad - n, *d.shape[1:]), d.dtype)])
                 for d in data)
    negs = np.searchsorted(noise_cdf, rng.random((n_pad, cfg.negative))).astype(np.int32)
    negs = np.minimum(negs, len(noise_cdf) - 1)
    arrays = (*data, negs, weights)
    return tuple(a.reshape(-1, cfg.steps_per_call, cfg.batch_size, *a.shape[1:])
                 for a in arrays), n


def train_word2vec(tokens: Sequence[str] | None, config: Word2Vec = Word2Vec(), *, seed: int = 0,
                   ids: np.ndarray | None = None, words: list[str] | None = None,
                   counts: np.ndarray | None = None, verbose: bool = False) -> Word2VecModel:
    """Train word2vec on a token stream (or on ``ids`` with their ``words``/``counts``).

    Examples are regenerated each epoch (fresh subsampling, windows, noise words); the lr decays
    linearly over the expected total number of steps. A final partial batch is padded with
    weight-0 examples, so every call keeps one shape.

    Raises:
      TypeError: ``tokens`` is a str (split it first) or ``config`` is not a ``Word2Vec``.
      ValueError: ``ids`` without ``words``/``counts``, ids out of range, or an epoch with no
        training example (a corpus too short for the window and subsampling).
    """
    cfg = config
    if not isinstance(cfg, Word2Vec):
        raise TypeError(f"config must be a Word2Vec, got {type(cfg).__name__}")
    rng = np.random.default_rng(seed)
    ids, words, counts = _corpus_ids(tokens, ids, words, counts, cfg.min_count)
    noise_cdf = np.cumsum(noise_distribution(counts, cfg.power))
    keep = keep_probabilities(counts, cfg.sample)
    # the lr schedule's length, from the expected subsampled corpus size
    per_token = (cfg.window + 1) if cfg.mode == "skipgram" else 1.0  # E[2b] = W + 1
    total_steps = max(1, int(cfg.epochs * float(keep[ids].sum()) * per_token / cfg.batch_size))

    def lr(count):
        frac = jnp.minimum(count / total_steps, 1.0)
        return cfg.lr * jnp.maximum(1.0 - frac, cfg.min_lr_fraction)

    loss = skipgram_loss if cfg.mode == "skipgram" else cbow_loss
    optimizer = optax.sgd(lr)
    step = make_train_step(lambda p, batch, key, train: (loss(p, *batch), {}), optimizer,
                           steps_per_call=cfg.steps_per_call)
    state = TrainState.create(init_params(jax.random.key(seed), len(words), cfg.dim),
                              optimizer, seed)
    history, t0 = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        calls, n = _epoch_batches(cfg, ids, keep, noise_cdf, rng, epoch)
        losses = []
        for c in range(calls[0].shape[0]):
            state, metrics = step(state, tuple(a[c] for a in calls))
            losses.append(float(metrics["loss"].sum()) / max(calls[-1][c].sum(), 1.0))
        row = {"epoch": epoch + 1, "examples": int(n), "loss": float(np.mean(losses)),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if verbose:
            print(row, flush=True)
    return Word2VecModel(list(words), np.asarray(counts), np.asarray(state.params["in"]),
                         history)
