"""Synthetic stress tests of long memory (Bai, Kolter & Koltun 2018, section 5): the adding
problem and the copy memory task. Both need no files; every batch is generated from
``(seed, step)`` and the evaluation sets from fixed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cached_property

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
    eval_rng,
    last_valid,
    ratio,
    step_mask,
    train_rng,
)

#: Number of symbols to memorise in the copy memory task.
COPY_MEMORY_LENGTH = 10
#: Token ids of the copy memory task: blank, symbols 1..8, delimiter.
COPY_BLANK, COPY_DELIMITER, COPY_NUM_SYMBOLS = 0, 9, 8


def adding_problem(
    rng: np.random.Generator, batch_size: int, seq_len: int, markers: str = "halves"
) -> tuple[np.ndarray, np.ndarray]:
    """Generates adding-problem examples.

    Channel 0 holds values ``u_t ~ U[0, 1)``; channel 1 is zero except for two 1s at
    positions ``p < q``. The target is ``u_p + u_q``.

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        seq_len: ``T >= 2``.
        markers: ``"halves"`` (first marker uniform in ``[0, T//2)``, second in ``[T//2, T)``,
            the classic protocol of Hochreiter & Schmidhuber 1997 / Le et al. 2015) or
            ``"anywhere"`` (two distinct positions uniform over ``[0, T)``, exactly what
            locuslab/TCN's ``data_generator`` draws).

    Returns:
        ``(x, y)``: ``[B, T, 2]`` float32 and ``[B, 1]`` float32.
    """
    b, t = batch_size, seq_len
    values = rng.random((b, t), dtype=np.float32)
    if markers == "halves":
        p = rng.integers(0, t // 2, size=b)
        q = rng.integers(t // 2, t, size=b)
    elif markers == "anywhere":
        p = rng.integers(0, t, size=b)
        q = rng.integers(0, t - 1, size=b)
        q = q + (q >= p)  # uniform over positions other than p
        p, q = np.minimum(p, q), np.maximum(p, q)
    else:
        raise ValueError(f"markers={markers!r} must be 'halves' or 'anywhere'")
    mask = np.zeros((b, t), dtype=np.float32)
    rows = np.arange(b)
    mask[rows, p] = 1.0
    mask[rows, q] = 1.0
    y = (values[rows, p] + values[rows, q])[:, None].astype(np.float32)
    return np.stack([values, mask], axis=-1), y


def copy_memory(
    rng: np.random.Generator, batch_size: int, blank_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generates copy-memory examples exactly as locuslab/TCN's ``copy_memory`` generator.

    With ``T = blank_len`` and ``s_1..s_10`` uniform in ``{1..8}``, each sequence has length
    ``T + 20``::

        x = [s_1..s_10, 0 * (T - 1), 9 * 11]     # the first 9 is the delimiter
        y = [0 * (T + 10), s_1..s_10]

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        blank_len: ``T >= 1``.

    Returns:
        ``(x, y)``: ``[B, T + 20]`` int32 each.
    """
    m = COPY_MEMORY_LENGTH
    b, t = batch_size, blank_len
    seq = rng.integers(1, COPY_NUM_SYMBOLS + 1, size=(b, m), dtype=np.int32)
    x = np.zeros((b, t + 2 * m), dtype=np.int32)
    x[:, :m] = seq
    x[:, m + t - 1 :] = COPY_DELIMITER
    y = np.zeros((b, t + 2 * m), dtype=np.int32)
    y[:, -m:] = seq
    return x, y


class AddingTask(Task):
    """The adding problem: regress the sum of the two marked values at the last step.

    Batches: ``inputs [B, T, 2]`` float32 (values, markers), ``targets [B, 1]`` float32,
    ``lengths [B] == T``. Loss: squared error of ``outputs[:, T - 1, 0]``. Metric: ``"mse"``;
    baseline ``1/6``, the variance of the sum of two ``U[0, 1]`` values, reached by always
    predicting 1.

    Args:
        seq_len: ``T >= 2``.
        eval_size: number of examples in each of the fixed valid and test sets.
        markers: marker placement, see :func:`adding_problem`.
    """

    def __init__(self, seq_len: int = 200, eval_size: int = 1000, markers: str = "halves"):
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
            raise ValueError(f"seq_len={seq_len!r} must be an integer >= 2 for the adding problem")
        if markers not in ("halves", "anywhere"):
            raise ValueError(f"markers={markers!r} must be 'halves' or 'anywhere'")
        self.seq_len = int(seq_len)
        self.eval_size = check_positive("eval_size", eval_size)
        self.markers = markers
        self.name = "adding"
        self.input_size = 2
        self.output_size = 1
        self.token_inputs = False
        self.metric_name = "mse"
        self.lower_is_better = True
        self.baseline = 1.0 / 6.0

    def _batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        return Batch(x, y, np.full(x.shape[0], self.seq_len, dtype=np.int32))

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        check_positive("batch_size", batch_size)
        x, y = adding_problem(train_rng(seed, step), batch_size, self.seq_len, self.markers)
        return self._batch(x, y)

    @cached_property
    def _eval_sets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            s: adding_problem(eval_rng(s), self.eval_size, self.seq_len, self.markers)
            for s in ("valid", "test")
        }

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        x, y = self._eval_sets[check_split(split)]
        check_positive("batch_size", batch_size)
        for i in range(0, self.eval_size, batch_size):
            yield self._batch(x[i : i + batch_size], y[i : i + batch_size])

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        check_outputs(outputs, batch, self.output_size)
        last, valid = last_valid(outputs, batch.lengths)
        err = (last[:, 0].astype(jnp.float32) - jnp.asarray(batch.targets)[:, 0]) ** 2
        # select, don't multiply: a NaN/inf in a padded row changes no value and no gradient
        return {"loss": jnp.sum(jnp.where(valid, err, 0.0)),
                "count": jnp.sum(valid.astype(jnp.float32))}

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        mse = ratio(totals, "loss")
        return {"mse": mse, "loss": mse}


class CopyMemoryTask(Task):
    """The copy memory task: recall 10 symbols after ``T`` blank steps.

    Batches (see :func:`copy_memory`): ``inputs [B, T + 20]`` int32 token ids in ``0..9``,
    ``targets [B, T + 20]`` int32 classes (9 never occurs as a target), ``lengths == T + 20``.
    Loss: cross-entropy at every step. Metric ``"loss"`` (mean cross-entropy per step); baseline
    ``10 ln 8 / (T + 20)``, reached by predicting blanks and then uniform over ``1..8`` for the
    last 10 steps. ``metrics`` also reports ``"accuracy"`` (all steps) and ``"accuracy_last10"``.

    Args:
        seq_len: ``T >= 1``, the blank length (1000 in the paper).
        eval_size: number of examples in each of the fixed valid and test sets.
    """

    def __init__(self, seq_len: int = 1000, eval_size: int = 1000):
        self.seq_len = check_positive("seq_len", seq_len)
        self.eval_size = check_positive("eval_size", eval_size)
        self.total_len = self.seq_len + 2 * COPY_MEMORY_LENGTH
        self.name = "copy"
        self.input_size = 10
        self.output_size = 10
        self.token_inputs = True
        self.metric_name = "loss"
        self.lower_is_better = True
        self.baseline = COPY_MEMORY_LENGTH * math.log(COPY_NUM_SYMBOLS) / self.total_len

    def _batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        return Batch(x, y, np.full(x.shape[0], self.total_len, dtype=np.int32))

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        check_positive("batch_size", batch_size)
        return self._batch(*copy_memory(train_rng(seed, step), batch_size, self.seq_len))

    @cached_property
    def _eval_sets(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            s: copy_memory(eval_rng(s), self.eval_size, self.seq_len) for s in ("valid", "test")
        }

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        x, y = self._eval_sets[check_split(split)]
        check_positive("batch_size", batch_size)
        for i in range(0, self.eval_size, batch_size):
            yield self._batch(x[i : i + batch_size], y[i : i + batch_size])

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        check_outputs(outputs, batch, self.output_size)
        t = outputs.shape[1]
        mask = step_mask(batch.lengths, t)
        terms = classification_terms(outputs, batch.targets, mask)
        last = mask & (jnp.arange(t) >= t - COPY_MEMORY_LENGTH)[None, :]
        tail = classification_terms(outputs, batch.targets, last)
        terms["correct_last10"] = tail["correct"]
        terms["count_last10"] = tail["count"]
        return terms

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return {
            "loss": ratio(totals, "loss"),
            "accuracy": ratio(totals, "correct"),
            "accuracy_last10": ratio(totals, "correct_last10", "count_last10"),
        }
