"""The algorithmic tasks of the Neural Turing Machine paper (Graves, Wayne & Danihelka 2014,
arXiv:1410.5401, section 4): copy, repeat copy, associative recall and priority sort. None
needs files; every batch is generated from ``(seed, step)`` and the evaluation sets from
fixed seeds. Random bit vectors are uniform Bernoulli(0.5) over ``bits`` channels.

Batch layout, common to the four tasks:

- ``inputs [B, T, input_size]`` float32. Sequences of one batch have different lengths and
  are padded with zeros: training batches to the longest sequence the task can draw
  (``T = task.max_steps``, one shape for every step), evaluation batches to their longest.
- ``lengths [B]`` int32, the total number of valid steps of each sequence (input phase and
  answer phase together).
- ``targets [B, T, output_size + 1]`` float32. Channels ``[:output_size]`` hold the target
  bits; the last channel is a 0/1 mask of the scored steps: 1 exactly on the answer phase,
  0 on the input phase and on padding. Target bits are 0 wherever the mask is 0.

The model emits one logit per output bit and step, ``outputs [B, T, output_size]``, and the
loss is sigmoid binary cross-entropy over the scored steps. :meth:`loss_terms` returns sums
over the batch: ``"loss"`` (cross-entropy in bits), ``"count"`` (number of sequences),
``"bit_errors"`` (wrong bits, predicting 1 where ``outputs > 0``) and ``"seq_correct"``
(sequences without a wrong bit). The headline metric is ``"bit_errors"`` per sequence;
``"cost_bits"`` (== ``"loss"``) is the paper's "cost per sequence (bits)". The baseline of
every task is the expected number of wrong bits per sequence of the predictor that always
outputs logit 0 (predicts bit 0 everywhere): the expected number of 1s among the scored target
bits of one sequence of the evaluation sets.
"""

from __future__ import annotations

import abc
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
    eval_rng,
    pad_batch,
    ratio,
    step_mask,
    train_rng,
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check_range(low_name: str, low: int, high_name: str, high: int) -> tuple[int, int]:
    """Checks ``1 <= low <= high`` (positive integers) and returns them as ints."""
    low, high = check_positive(low_name, low), check_positive(high_name, high)
    if low > high:
        raise ValueError(f"{low_name}={low} must be <= {high_name}={high}")
    return low, high


def _random_bits(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform Bernoulli(0.5) bits as float32."""
    return rng.integers(0, 2, size=shape).astype(np.float32)


def _stack(xs: list[np.ndarray], ys: list[np.ndarray]) -> Arrays:
    inputs, lengths = pad_batch(xs)
    targets, _ = pad_batch(ys)
    return inputs.astype(np.float32), targets.astype(np.float32), lengths


# ---------------------------------------------------------------------------------------------
# Generators
# ---------------------------------------------------------------------------------------------


def copy_sequences(
    rng: np.random.Generator, batch_size: int, bits: int, min_len: int, max_len: int
) -> Arrays:
    """Generates copy-task examples (NTM paper, section 4.1).

    Each sequence draws ``L`` uniform in ``[min_len, max_len]`` and has ``T_b = 2L + 1`` steps:
    ``L`` random bit vectors, one delimiter step (delimiter channel 1, bits 0), then ``L``
    blank steps during which the target is the sequence::

        inputs  channels [bits | delimiter]:   x_1..x_L, (0, 1), 0 * L
        targets channels [bits | mask]:        0 * (L + 1), (x_1, 1)..(x_L, 1)

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        bits: width of each vector.
        min_len, max_len: range of ``L`` (inclusive).

    Returns:
        ``(inputs, targets, lengths)``: ``[B, T, bits + 1]`` float32, ``[B, T, bits + 1]``
        float32 and ``[B]`` int32, zero-padded to ``T = max_b T_b``.
    """
    batch_size = check_positive("batch_size", batch_size)
    bits = check_positive("bits", bits)
    min_len, max_len = _check_range("min_len", min_len, "max_len", max_len)
    seq_lens = rng.integers(min_len, max_len + 1, size=batch_size)
    xs, ys = [], []
    for n in seq_lens:
        seq = _random_bits(rng, (n, bits))
        x = np.zeros((2 * n + 1, bits + 1), dtype=np.float32)
        x[:n, :bits] = seq
        x[n, bits] = 1.0
        y = np.zeros((2 * n + 1, bits + 1), dtype=np.float32)
        y[n + 1 :, :bits] = seq
        y[n + 1 :, bits] = 1.0
        xs.append(x)
        ys.append(y)
    return _stack(xs, ys)


def repeat_normalisation(min_repeats: int, max_repeats: int) -> tuple[float, float]:
    """``(mean, scale)`` of the repeat-count channel of the repeat copy task.

    The channel holds ``(n - mean) / scale``: ``mean = (min + max) / 2`` and ``scale`` the
    standard deviation ``sqrt(((max - min + 1)^2 - 1) / 12)`` of the discrete uniform
    distribution over ``[min_repeats, max_repeats]``, so the channel has mean 0 and variance 1
    as in the paper. When ``min_repeats == max_repeats`` that deviation is 0 and ``scale`` is 1
    instead: the channel is then always 0 (the count is a constant and carries no information).
    """
    min_repeats, max_repeats = _check_range("min_repeats", min_repeats, "max_repeats", max_repeats)
    mean = (min_repeats + max_repeats) / 2.0
    width = max_repeats - min_repeats + 1
    std = math.sqrt((width * width - 1) / 12.0)
    return mean, (std if std > 0 else 1.0)


def repeat_copy_sequences(
    rng: np.random.Generator,
    batch_size: int,
    bits: int,
    min_len: int,
    max_len: int,
    min_repeats: int,
    max_repeats: int,
) -> Arrays:
    """Generates repeat-copy examples (NTM paper, section 4.2).

    Each sequence draws ``L`` uniform in ``[min_len, max_len]`` and the repeat count ``n``
    uniform in ``[min_repeats, max_repeats]``, and has ``T_b = L + 2 + n L + 1`` steps: ``L``
    random vectors, one delimiter step, one step whose repeat channel holds
    ``(n - mean) / scale`` (see :func:`repeat_normalisation`), then ``n L + 1`` blank steps
    during which the target is the sequence repeated ``n`` times followed by one step with the
    end marker (end channel 1, bits 0)::

        inputs  channels [bits | delimiter | repeats]:  x_1..x_L, (0,1,0), (0,0,r), 0 * (nL+1)
        targets channels [bits | end | mask]:  0 * (L+2), (x,0,1) * n (L steps each), (0,1,1)

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        bits: width of each vector.
        min_len, max_len: range of ``L`` (inclusive).
        min_repeats, max_repeats: range of ``n`` (inclusive).

    Returns:
        ``(inputs, targets, lengths)``: ``[B, T, bits + 2]`` float32, ``[B, T, bits + 2]``
        float32 and ``[B]`` int32, zero-padded to ``T = max_b T_b``.
    """
    batch_size = check_positive("batch_size", batch_size)
    bits = check_positive("bits", bits)
    min_len, max_len = _check_range("min_len", min_len, "max_len", max_len)
    mean, scale = repeat_normalisation(min_repeats, max_repeats)
    seq_lens = rng.integers(min_len, max_len + 1, size=batch_size)
    repeats = rng.integers(min_repeats, max_repeats + 1, size=batch_size)
    xs, ys = [], []
    for n, r in zip(seq_lens, repeats):
        seq = _random_bits(rng, (n, bits))
        start, total = n + 2, n + 2 + r * n + 1
        x = np.zeros((total, bits + 2), dtype=np.float32)
        x[:n, :bits] = seq
        x[n, bits] = 1.0
        x[n + 1, bits + 1] = (r - mean) / scale
        y = np.zeros((total, bits + 2), dtype=np.float32)
        y[start : total - 1, :bits] = np.tile(seq, (r, 1))
        y[total - 1, bits] = 1.0
        y[start:, bits + 1] = 1.0
        xs.append(x)
        ys.append(y)
    return _stack(xs, ys)


def _distinct_items(
    rng: np.random.Generator, num_items: int, item_len: int, bits: int
) -> np.ndarray:
    """``[num_items, item_len, bits]`` random items, pairwise different (resampled)."""
    items = np.zeros((num_items, item_len, bits), dtype=np.float32)
    seen: set[bytes] = set()
    for i in range(num_items):
        while True:
            item = _random_bits(rng, (item_len, bits))
            key = item.tobytes()
            if key not in seen:
                break
        seen.add(key)
        items[i] = item
    return items


def _check_recall(
    bits: int, item_len: int, min_items: int, max_items: int
) -> tuple[int, int, int, int]:
    """Checks the arguments of the associative recall task and returns them as ints."""
    bits = check_positive("bits", bits)
    item_len = check_positive("item_len", item_len)
    min_items, max_items = _check_range("min_items", min_items, "max_items", max_items)
    if min_items < 2:
        raise ValueError(f"min_items={min_items} must be >= 2 (the query is not the last item)")
    width = bits * item_len
    if width < 64 and max_items > 2**width:
        raise ValueError(
            f"max_items={max_items} must be <= 2**(bits * item_len)={2**width}, the number of "
            "distinct items"
        )
    return bits, item_len, min_items, max_items


def associative_recall_sequences(
    rng: np.random.Generator,
    batch_size: int,
    bits: int,
    item_len: int,
    min_items: int,
    max_items: int,
) -> Arrays:
    """Generates associative-recall examples (NTM paper, section 4.3).

    Each sequence draws ``k`` uniform in ``[min_items, max_items]`` pairwise different items of
    ``item_len`` random vectors and a query index ``q`` uniform in ``[0, k - 2]``. The input is
    every item preceded by an item-delimiter step, then a query-delimiter step, item ``q``
    again, a second query-delimiter step, and ``item_len`` blank steps during which the target
    is item ``q + 1``. ``T_b = k (item_len + 1) + 2 + 2 item_len``::

        inputs  channels [bits | item delimiter | query delimiter]:
            ((0,1,0), item_1) .. ((0,1,0), item_k), (0,0,1), item_q, (0,0,1), 0 * item_len
        targets channels [bits | mask]:  0 * (T_b - item_len), (item_{q+1}, 1)

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        bits: width of each vector.
        item_len: vectors per item.
        min_items, max_items: range of ``k`` (inclusive), ``min_items >= 2``.

    Returns:
        ``(inputs, targets, lengths)``: ``[B, T, bits + 2]`` float32, ``[B, T, bits + 1]``
        float32 and ``[B]`` int32, zero-padded to ``T = max_b T_b``.
    """
    batch_size = check_positive("batch_size", batch_size)
    bits, item_len, min_items, max_items = _check_recall(bits, item_len, min_items, max_items)
    counts = rng.integers(min_items, max_items + 1, size=batch_size)
    queries = rng.integers(0, counts - 1)
    xs, ys = [], []
    step = item_len + 1
    for k, q in zip(counts, queries):
        items = _distinct_items(rng, k, item_len, bits)
        total = k * step + 2 + 2 * item_len
        x = np.zeros((total, bits + 2), dtype=np.float32)
        for i in range(k):
            x[i * step, bits] = 1.0
            x[i * step + 1 : (i + 1) * step, :bits] = items[i]
        query = k * step
        x[query, bits + 1] = 1.0
        x[query + 1 : query + 1 + item_len, :bits] = items[q]
        x[query + 1 + item_len, bits + 1] = 1.0
        y = np.zeros((total, bits + 1), dtype=np.float32)
        y[total - item_len :, :bits] = items[q + 1]
        y[total - item_len :, bits] = 1.0
        xs.append(x)
        ys.append(y)
    return _stack(xs, ys)


def priority_sort_sequences(
    rng: np.random.Generator, batch_size: int, bits: int, num_inputs: int, num_outputs: int
) -> Arrays:
    """Generates priority-sort examples (NTM paper, section 4.5).

    Each sequence has ``T = num_inputs + 1 + num_outputs`` steps: ``num_inputs`` random vectors
    with a priority uniform in ``[-1, 1)`` on the priority channel, one delimiter step, then
    ``num_outputs`` blank steps during which the target is the ``num_outputs`` vectors of
    highest priority, by descending priority (the float32 priorities of the inputs; ties, of
    probability ~0, keep input order)::

        inputs  channels [bits | priority | delimiter]:  (x_i, p_i, 0) * num_inputs, (0,0,1),
                                                         0 * num_outputs
        targets channels [bits | mask]:  0 * (num_inputs + 1), (x_(1), 1)..(x_(num_outputs), 1)

    Args:
        rng: numpy generator.
        batch_size: ``B``.
        bits: width of each vector.
        num_inputs: vectors to sort.
        num_outputs: vectors to emit, ``<= num_inputs``.

    Returns:
        ``(inputs, targets, lengths)``: ``[B, T, bits + 2]`` float32, ``[B, T, bits + 1]``
        float32 and ``[B]`` int32 (all ``T``).
    """
    b = check_positive("batch_size", batch_size)
    bits = check_positive("bits", bits)
    n = check_positive("num_inputs", num_inputs)
    m = check_positive("num_outputs", num_outputs)
    if m > n:
        raise ValueError(f"num_outputs={m} must be <= num_inputs={n}")
    seq = _random_bits(rng, (b, n, bits))
    priority = rng.uniform(-1.0, 1.0, size=(b, n)).astype(np.float32)
    order = np.argsort(-priority, axis=1, kind="stable")[:, :m]
    x = np.zeros((b, n + 1 + m, bits + 2), dtype=np.float32)
    x[:, :n, :bits] = seq
    x[:, :n, bits] = priority
    x[:, n, bits + 1] = 1.0
    y = np.zeros((b, n + 1 + m, bits + 1), dtype=np.float32)
    y[:, n + 1 :, :bits] = np.take_along_axis(seq, order[:, :, None], axis=1)
    y[:, n + 1 :, bits] = 1.0
    return x, y, np.full(b, n + 1 + m, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


class _BitsTask(Task):
    """Shared batching, loss and metrics of the algorithmic tasks (see the module docstring).

    Subclasses set the attributes and ``eval_size`` and implement :meth:`_generate`.
    """

    eval_size: int

    @abc.abstractmethod
    def _generate(self, rng: np.random.Generator, batch_size: int, split: str | None) -> Arrays:
        """``(inputs, targets, lengths)`` of ``batch_size`` examples; ``split`` is ``None`` for
        training, else the evaluation split."""

    def _init_common(self, name: str, input_size: int, output_size: int, baseline: float):
        self.name = name
        self.input_size = input_size
        self.output_size = output_size
        self.token_inputs = False
        self.metric_name = "bit_errors"
        self.lower_is_better = True
        self.baseline = float(baseline)

    @property
    @abc.abstractmethod
    def max_steps(self) -> int:
        """The longest training sequence ``T_b`` the task can draw."""

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        """A training batch zero-padded to :attr:`max_steps`, so that every training batch
        has one shape and a jitted step compiles once."""
        check_positive("batch_size", batch_size)
        x, y, lengths = self._generate(train_rng(seed, step), batch_size, None)
        pad = ((0, 0), (0, self.max_steps - x.shape[1]), (0, 0))
        return Batch(np.pad(x, pad), np.pad(y, pad), lengths)

    @cached_property
    def _eval_sets(self) -> dict[str, Arrays]:
        return {s: self._generate(eval_rng(s), self.eval_size, s) for s in ("valid", "test")}

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        x, y, lengths = self._eval_sets[check_split(split)]
        check_positive("batch_size", batch_size)
        for i in range(0, self.eval_size, batch_size):
            lens = lengths[i : i + batch_size]
            t = int(lens.max())  # pad each batch only to its own longest sequence
            yield Batch(x[i : i + batch_size, :t], y[i : i + batch_size, :t], lens)

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Sums over the batch: ``"loss"`` (sigmoid cross-entropy in bits over the scored steps
        and bits), ``"count"`` (sequences with a scored step), ``"bit_errors"`` (bits where
        ``outputs > 0`` differs from ``target > 0.5``) and ``"seq_correct"`` (sequences with
        no bit error)."""
        check_outputs(outputs, batch, self.output_size)
        logits = outputs.astype(jnp.float32)
        targets = jnp.asarray(batch.targets, dtype=jnp.float32)
        bits, mask = targets[..., :-1], targets[..., -1] > 0.5
        mask = mask & step_mask(batch.lengths, logits.shape[1])
        m = mask[..., None]
        # Unscored steps and padding change no value and no gradient, even when NaN/inf:
        # zero them before the maths (a NaN times a zero cotangent would still be NaN).
        logits = jnp.where(m, logits, 0.0)
        bits = jnp.where(m, bits, 0.0)
        nats = -(bits * jax.nn.log_sigmoid(logits) + (1.0 - bits) * jax.nn.log_sigmoid(-logits))
        wrong = m & ((logits > 0) != (bits > 0.5))
        errors = jnp.sum(wrong.astype(jnp.float32), axis=(1, 2))
        scored = jnp.any(mask, axis=1)
        return {
            "loss": jnp.sum(jnp.where(m, nats, 0.0)) / math.log(2.0),
            "count": jnp.sum(scored.astype(jnp.float32)),
            "bit_errors": jnp.sum(errors),
            "seq_correct": jnp.sum((scored & (errors == 0)).astype(jnp.float32)),
        }

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        cost = ratio(totals, "loss")
        return {
            "bit_errors": ratio(totals, "bit_errors"),
            "cost_bits": cost,
            "loss": cost,
            "seq_accuracy": ratio(totals, "seq_correct"),
        }


class CopyTask(_BitsTask):
    """The NTM copy task: read a sequence of bit vectors, then write it back.

    Batches (see :func:`copy_sequences`): ``inputs [B, T, bits + 1]`` (bits, delimiter),
    ``targets [B, T, bits + 1]`` (bits, mask), ``T_b = 2L + 1``; scored: the last ``L`` steps.
    Metric ``"bit_errors"`` per sequence; baseline ``bits / 2 * E[L]`` over the evaluation
    lengths (``(min_len + max_len) / 2``, or ``eval_len``).

    Args:
        bits: width of each vector (8 in the paper).
        min_len, max_len: range of the sequence length ``L`` (1 to 20 in the paper).
        eval_len: if given, the valid and test sets use exactly this ``L`` (length
            generalisation, e.g. 30 to 120 in the paper); training still uses
            ``[min_len, max_len]``.
        eval_size: number of examples in each of the fixed valid and test sets.
    """

    def __init__(
        self,
        bits: int = 8,
        min_len: int = 1,
        max_len: int = 20,
        eval_len: int | None = None,
        eval_size: int = 1000,
    ):
        self.bits = check_positive("bits", bits)
        self.min_len, self.max_len = _check_range("min_len", min_len, "max_len", max_len)
        self.eval_len = None if eval_len is None else check_positive("eval_len", eval_len)
        self.eval_size = check_positive("eval_size", eval_size)
        lo, hi = (
            (self.min_len, self.max_len) if eval_len is None else (self.eval_len, self.eval_len)
        )
        self._init_common("ntm-copy", self.bits + 1, self.bits, self.bits / 2 * (lo + hi) / 2)

    @property
    def max_steps(self) -> int:
        return 2 * self.max_len + 1

    def _generate(self, rng: np.random.Generator, batch_size: int, split: str | None) -> Arrays:
        lo, hi = self.min_len, self.max_len
        if split is not None and self.eval_len is not None:
            lo = hi = self.eval_len
        return copy_sequences(rng, batch_size, self.bits, lo, hi)


class RepeatCopyTask(_BitsTask):
    """The NTM repeat copy task: read a sequence and a repeat count ``n``, write the sequence
    ``n`` times, then an end marker.

    Batches (see :func:`repeat_copy_sequences`): ``inputs [B, T, bits + 2]`` (bits, delimiter,
    normalised repeat count), ``targets [B, T, bits + 2]`` (bits, end marker, mask),
    ``T_b = L + 2 + nL + 1``; scored: the last ``nL + 1`` steps, every output channel. Metric
    ``"bit_errors"`` per sequence; baseline ``bits / 2 * E[L] * E[n] + 1`` (the end marker).

    Args:
        bits: width of each vector (8 in the paper).
        min_len, max_len: range of the sequence length ``L`` (1 to 10 in the paper).
        min_repeats, max_repeats: range of ``n`` (1 to 10 in the paper).
        eval_size: number of examples in each of the fixed valid and test sets.
    """

    def __init__(
        self,
        bits: int = 8,
        min_len: int = 1,
        max_len: int = 10,
        min_repeats: int = 1,
        max_repeats: int = 10,
        eval_size: int = 1000,
    ):
        self.bits = check_positive("bits", bits)
        self.min_len, self.max_len = _check_range("min_len", min_len, "max_len", max_len)
        self.min_repeats, self.max_repeats = _check_range(
            "min_repeats", min_repeats, "max_repeats", max_repeats
        )
        self.repeat_mean, self.repeat_scale = repeat_normalisation(min_repeats, max_repeats)
        self.eval_size = check_positive("eval_size", eval_size)
        mean_len = (self.min_len + self.max_len) / 2
        baseline = self.bits / 2 * mean_len * self.repeat_mean + 1.0
        self._init_common("repeat-copy", self.bits + 2, self.bits + 1, baseline)

    @property
    def max_steps(self) -> int:
        return self.max_len + 2 + self.max_repeats * self.max_len + 1

    def _generate(self, rng: np.random.Generator, batch_size: int, split: str | None) -> Arrays:
        return repeat_copy_sequences(
            rng,
            batch_size,
            self.bits,
            self.min_len,
            self.max_len,
            self.min_repeats,
            self.max_repeats,
        )


class AssociativeRecallTask(_BitsTask):
    """The NTM associative recall task: after a list of items and a query item, write the item
    that followed the query in the list.

    Batches (see :func:`associative_recall_sequences`): ``inputs [B, T, bits + 2]`` (bits, item
    delimiter, query delimiter), ``targets [B, T, bits + 1]`` (bits, mask),
    ``T_b = k (item_len + 1) + 2 + 2 item_len``; scored: the last ``item_len`` steps. Metric
    ``"bit_errors"`` per sequence; baseline ``bits / 2 * item_len``.

    Args:
        bits: width of each vector (6 in the paper).
        item_len: vectors per item (3 in the paper).
        min_items, max_items: range of the number of items ``k`` (2 to 6 in the paper).
        eval_size: number of examples in each of the fixed valid and test sets.
    """

    def __init__(
        self,
        bits: int = 6,
        item_len: int = 3,
        min_items: int = 2,
        max_items: int = 6,
        eval_size: int = 1000,
    ):
        self.bits, self.item_len, self.min_items, self.max_items = _check_recall(
            bits, item_len, min_items, max_items
        )
        self.eval_size = check_positive("eval_size", eval_size)
        baseline = self.bits / 2 * self.item_len
        self._init_common("associative-recall", self.bits + 2, self.bits, baseline)

    @property
    def max_steps(self) -> int:
        return self.max_items * (self.item_len + 1) + 2 + 2 * self.item_len

    def _generate(self, rng: np.random.Generator, batch_size: int, split: str | None) -> Arrays:
        return associative_recall_sequences(
            rng, batch_size, self.bits, self.item_len, self.min_items, self.max_items
        )


class PrioritySortTask(_BitsTask):
    """The NTM priority sort task: read vectors with priorities, write the ``num_outputs``
    vectors of highest priority by descending priority.

    Batches (see :func:`priority_sort_sequences`): ``inputs [B, T, bits + 2]`` (bits, priority,
    delimiter), ``targets [B, T, bits + 1]`` (bits, mask), fixed
    ``T = num_inputs + 1 + num_outputs``; scored: the last ``num_outputs`` steps. Metric
    ``"bit_errors"`` per sequence; baseline ``bits / 2 * num_outputs``.

    Args:
        bits: width of each vector (8 in the paper).
        num_inputs: vectors to sort (20 in the paper).
        num_outputs: vectors to emit (16 in the paper), ``<= num_inputs``.
        eval_size: number of examples in each of the fixed valid and test sets.
    """

    def __init__(
        self, bits: int = 8, num_inputs: int = 20, num_outputs: int = 16, eval_size: int = 1000
    ):
        self.bits = check_positive("bits", bits)
        self.num_inputs = check_positive("num_inputs", num_inputs)
        self.num_outputs = check_positive("num_outputs", num_outputs)
        if self.num_outputs > self.num_inputs:
            raise ValueError(
                f"num_outputs={self.num_outputs} must be <= num_inputs={self.num_inputs}"
            )
        self.eval_size = check_positive("eval_size", eval_size)
        self.seq_len = self.num_inputs + 1 + self.num_outputs
        baseline = self.bits / 2 * self.num_outputs
        self._init_common("priority-sort", self.bits + 2, self.bits, baseline)

    @property
    def max_steps(self) -> int:
        return self.seq_len

    def _generate(self, rng: np.random.Generator, batch_size: int, split: str | None) -> Arrays:
        return priority_sort_sequences(
            rng, batch_size, self.bits, self.num_inputs, self.num_outputs
        )
