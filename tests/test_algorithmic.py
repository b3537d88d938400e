"""Tests of seqjax.data.algorithmic (the NTM paper's copy, repeat copy, associative recall and
priority sort): every batch decoded and its targets recomputed from the inputs in plain
python, masks, length distributions, loss terms against a numpy reference, baselines through
the tasks' own loss terms, determinism, registry and argument checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.data import (
    TASK_NAMES,
    AssociativeRecallTask,
    CopyTask,
    PrioritySortTask,
    RepeatCopyTask,
    get_task,
)
from seqjax.data.algorithmic import (
    associative_recall_sequences,
    copy_sequences,
    priority_sort_sequences,
    repeat_copy_sequences,
)

NAMES = {
    "ntm-copy": CopyTask,
    "repeat-copy": RepeatCopyTask,
    "associative-recall": AssociativeRecallTask,
    "priority-sort": PrioritySortTask,
}

# Small instances, fast to generate.
SMALL = [
    lambda: CopyTask(bits=5, min_len=2, max_len=9, eval_size=64),
    lambda: RepeatCopyTask(
        bits=4, min_len=1, max_len=5, min_repeats=2, max_repeats=4, eval_size=64
    ),
    lambda: AssociativeRecallTask(bits=3, item_len=2, min_items=2, max_items=5, eval_size=64),
    lambda: PrioritySortTask(bits=4, num_inputs=9, num_outputs=6, eval_size=64),
]
SMALL_IDS = ["copy", "repeat", "recall", "sort"]


def rows(a) -> list[tuple]:
    """A [n, bits] array as a list of python tuples of ints."""
    return [tuple(int(round(v)) for v in r) for r in np.asarray(a)]


def check_common(task, batch):
    """Shapes, dtypes, binary target bits, mask 0/1, nothing beyond lengths."""
    b, t = batch.inputs.shape[:2]
    assert batch.inputs.dtype == np.float32 and batch.targets.dtype == np.float32
    assert batch.lengths.dtype == np.int32 and batch.lengths.shape == (b,)
    assert batch.inputs.shape == (b, t, task.input_size)
    assert batch.targets.shape == (b, t, task.output_size + 1)
    assert t == batch.lengths.max()  # padded to the batch max exactly
    assert set(np.unique(batch.targets)) <= {0.0, 1.0}
    for i, n in enumerate(batch.lengths):
        assert not batch.inputs[i, n:].any() and not batch.targets[i, n:].any()
        unscored = batch.targets[i, :, -1] == 0
        assert not batch.targets[i, unscored, :-1].any()


def decode_copy(x, n, bits):
    """(sequence, L) from the inputs of one copy sequence of length n."""
    delim = [t for t in range(n) if x[t, bits] == 1]
    assert len(delim) == 1
    length = delim[0]
    assert n == 2 * length + 1
    assert not x[length, :bits].any() and not x[length + 1 : n].any()
    assert not x[:length, bits].any()
    return rows(x[:length, :bits]), length


def test_copy_targets_from_inputs():
    task = CopyTask(bits=6, min_len=1, max_len=12)
    batch = task.train_batch(3, 64, seed=1)
    check_common(task, batch)
    for x, y, n in zip(batch.inputs, batch.targets, batch.lengths):
        seq, length = decode_copy(x, n, 6)
        assert rows(y[length + 1 : n, :6]) == seq
        assert list(y[:, 6]) == [0] * (length + 1) + [1] * length + [0] * (len(y) - n)


def test_repeat_copy_targets_from_inputs():
    lo, hi = 2, 7
    task = RepeatCopyTask(bits=5, min_len=1, max_len=6, min_repeats=lo, max_repeats=hi)
    batch = task.train_batch(0, 64)
    check_common(task, batch)
    mean = (lo + hi) / 2
    std = math.sqrt(sum((k - mean) ** 2 for k in range(lo, hi + 1)) / (hi - lo + 1))
    seen = set()
    for x, y, n in zip(batch.inputs, batch.targets, batch.lengths):
        delim = [t for t in range(n) if x[t, 5] == 1]
        assert len(delim) == 1
        length = delim[0]
        reps = float(x[length + 1, 6]) * std + mean
        assert abs(reps - round(reps)) < 1e-4
        reps = round(reps)
        seen.add(reps)
        assert lo <= reps <= hi and n == length + 2 + reps * length + 1
        assert np.count_nonzero(x[:, 6]) <= 1 and not x[length + 2 : n].any()
        seq = rows(x[:length, :5])
        want = [s + (0,) for s in seq * reps] + [(0,) * 5 + (1,)]
        assert rows(y[length + 2 : n, :6]) == want
        assert list(y[:, 6]) == [0] * (length + 2) + [1] * (reps * length + 1) + [0] * (len(y) - n)
    assert seen == set(range(lo, hi + 1))


def test_repeat_copy_constant_count_channel_is_zero():
    task = RepeatCopyTask(bits=3, max_len=4, min_repeats=3, max_repeats=3)
    batch = task.train_batch(0, 16)
    assert not batch.inputs[:, :, 4].any()
    lengths = [(n - 3) // 4 for n in batch.lengths]  # T_b = L + 2 + 3L + 1
    assert all(4 * length + 3 == n for length, n in zip(lengths, batch.lengths))


def test_associative_recall_targets_from_inputs():
    task = AssociativeRecallTask(bits=4, item_len=3, min_items=2, max_items=6)
    batch = task.train_batch(5, 128)
    check_common(task, batch)
    counts, positions = set(), set()
    for x, y, n in zip(batch.inputs, batch.targets, batch.lengths):
        starts = [t for t in range(n) if x[t, 4] == 1]
        q1, q2 = [t for t in range(n) if x[t, 5] == 1]
        item_len = q2 - q1 - 1
        assert item_len == 3 and n == q2 + 1 + item_len
        assert starts == [i * (item_len + 1) for i in range(len(starts))]
        assert q1 == len(starts) * (item_len + 1)
        items = [rows(x[s + 1 : s + 1 + item_len, :4]) for s in starts]
        assert len({tuple(i) for i in items}) == len(items)  # distinct items
        query = rows(x[q1 + 1 : q2, :4])
        assert not x[q2 + 1 : n].any()
        matches = [i for i, item in enumerate(items) if item == query]
        assert len(matches) == 1 and matches[0] < len(items) - 1
        assert rows(y[n - item_len : n, :4]) == items[matches[0] + 1]
        assert list(y[:, 4]) == [0] * (n - item_len) + [1] * item_len + [0] * (len(y) - n)
        counts.add(len(items))
        positions.add(matches[0])
    assert counts == set(range(2, 7)) and positions == set(range(5))


def test_priority_sort_targets_from_inputs():
    task = PrioritySortTask(bits=5, num_inputs=12, num_outputs=7)
    batch = task.train_batch(2, 32)
    check_common(task, batch)
    assert batch.num_steps == 20 and (batch.lengths == 20).all()
    for x, y in zip(batch.inputs, batch.targets):
        prio = [float(p) for p in x[:12, 5]]
        assert all(-1 <= p <= 1 for p in prio) and not x[:12, 6].any()
        assert list(x[12]) == [0] * 6 + [1] and not x[13:].any()
        order = sorted(range(12), key=lambda i: prio[i], reverse=True)[:7]
        assert rows(y[13:, :5]) == [tuple(int(v) for v in x[i, :5]) for i in order]
        assert list(y[:, 5]) == [0] * 13 + [1] * 7
    assert abs(batch.inputs[:, :12, :5].mean() - 0.5) < 0.05  # Bernoulli(0.5) bits
    assert batch.inputs[:, :12, 5].min() < -0.9 and batch.inputs[:, :12, 5].max() > 0.9


def test_copy_length_distribution_and_eval_len():
    task = CopyTask(bits=3, min_len=3, max_len=7, eval_len=30, eval_size=50)
    lengths = (task.train_batch(0, 400).lengths - 1) // 2
    assert set(lengths) == set(range(3, 8))
    for split in ("valid", "test"):
        batches = list(task.eval_batches(split, 16))
        assert all((b.lengths == 61).all() and b.num_steps == 61 for b in batches)
    assert task.baseline == pytest.approx(3 / 2 * 30)
    assert CopyTask(bits=3, min_len=3, max_len=7).baseline == pytest.approx(3 / 2 * 5)


@pytest.mark.parametrize("make", SMALL, ids=SMALL_IDS)
def test_determinism_and_streams(make):
    task = make()
    a, b = task.train_batch(4, 8, seed=2), make().train_batch(4, 8, seed=2)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(u, v)
    for other in (task.train_batch(5, 8, seed=2), task.train_batch(4, 8, seed=3)):
        assert a.inputs.shape != other.inputs.shape or not np.array_equal(a.inputs, other.inputs)
    valid = next(task.eval_batches("valid", 8))
    test = next(task.eval_batches("test", 8))
    assert not np.array_equal(valid.inputs[:, :4], test.inputs[:, :4])


@pytest.mark.parametrize("make", SMALL, ids=SMALL_IDS)
def test_eval_batches_cover_the_set_once(make):
    task = make()
    whole = next(task.eval_batches("valid", task.eval_size))
    parts = list(task.eval_batches("valid", 24))
    assert [p.batch_size for p in parts] == [24, 24, 16]
    start = 0
    for p in parts:
        check_common(task, p)
        sl = slice(start, start + p.batch_size)
        np.testing.assert_array_equal(p.lengths, whole.lengths[sl])
        np.testing.assert_array_equal(p.inputs, whole.inputs[sl, : p.num_steps])
        np.testing.assert_array_equal(p.targets, whole.targets[sl, : p.num_steps])
        start += p.batch_size
    assert start == task.eval_size


def numpy_terms(logits, batch):
    """Reference loss terms in float64 numpy."""
    x = np.asarray(logits, dtype=np.float64)
    y, m = batch.targets[..., :-1], batch.targets[..., -1:]
    nats = np.logaddexp(0, -x) * y + np.logaddexp(0, x) * (1 - y)
    wrong = ((x > 0) != (y > 0.5)) * m
    per_seq = wrong.sum(axis=(1, 2))
    return {
        "loss": float((nats * m).sum() / math.log(2)),
        "count": float(batch.batch_size),
        "bit_errors": float(per_seq.sum()),
        "seq_correct": float((per_seq == 0).sum()),
    }


@pytest.mark.parametrize("make", SMALL, ids=SMALL_IDS)
def test_loss_terms(make):
    task = make()
    batch = task.train_batch(1, 16)
    loss_fn = jax.jit(task.loss_terms)
    y, m = batch.targets[..., :-1], batch.targets[..., -1:]
    scored_bits = m.sum() * task.output_size
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 5, y.shape).astype(np.float32)
    beyond = np.arange(batch.num_steps)[None, :, None] >= batch.lengths[:, None, None]

    # Perfect logits, garbage on unscored steps and NaN on padding.
    perfect = np.where(m > 0, 20 * (2 * y - 1), noise).astype(np.float32)
    perfect = np.where(beyond, np.nan, perfect)
    terms = {k: float(v) for k, v in loss_fn(jnp.asarray(perfect), batch).items()}
    assert terms["bit_errors"] == 0 and terms["count"] == 16 and terms["seq_correct"] == 16
    assert 0 <= terms["loss"] < 1e-6 * scored_bits
    metrics = task.metrics(terms)
    assert metrics["seq_accuracy"] == 1 and metrics["bit_errors"] == 0
    assert metrics["cost_bits"] == metrics["loss"] == pytest.approx(terms["loss"] / 16)

    # All-zero logits: exactly one bit of cost per scored bit.
    terms = {k: float(v) for k, v in loss_fn(jnp.zeros_like(perfect), batch).items()}
    assert terms["loss"] == pytest.approx(scored_bits, rel=1e-5)
    assert terms["bit_errors"] == (y * m).sum()
    assert task.metrics(terms)["cost_bits"] == pytest.approx(scored_bits / 16, rel=1e-5)

    # Flip exactly k scored bits of sequence 3.
    k = 5
    flipped = np.nan_to_num(perfect.copy())
    idx = np.argwhere(np.broadcast_to(m[3] > 0, y[3].shape))
    for t, c in idx[rng.choice(len(idx), k, replace=False)]:
        flipped[3, t, c] *= -1
    terms = {k: float(v) for k, v in loss_fn(jnp.asarray(flipped), batch).items()}
    assert terms["bit_errors"] == k and terms["seq_correct"] == 15
    assert task.metrics(terms)["seq_accuracy"] == pytest.approx(15 / 16)

    # Random logits against the numpy reference.
    logits = rng.normal(0, 3, y.shape).astype(np.float32)
    terms = {k: float(v) for k, v in loss_fn(jnp.asarray(logits), batch).items()}
    want = numpy_terms(logits, batch)
    assert terms["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for key in ("count", "bit_errors", "seq_correct"):
        assert terms[key] == want[key]

    with pytest.raises(ValueError, match="outputs.shape"):
        task.loss_terms(jnp.zeros((16, batch.num_steps, task.output_size + 1)), batch)


@pytest.mark.parametrize(
    "task, expected",
    [
        (CopyTask(eval_size=2000), 8 / 2 * 10.5),
        (RepeatCopyTask(eval_size=2000), 8 / 2 * 5.5 * 5.5 + 1),
        (AssociativeRecallTask(eval_size=2000), 6 / 2 * 3),
        (PrioritySortTask(eval_size=1000), 8 / 2 * 16),
    ],
    ids=SMALL_IDS,
)
def test_baseline_is_the_all_zero_predictor(task, expected):
    assert task.baseline == pytest.approx(expected)
    assert task.lower_is_better and task.metric_name == "bit_errors" and not task.token_inputs
    totals = {}
    for batch in task.eval_batches("test", 500):
        zeros = jnp.zeros((batch.batch_size, batch.num_steps, task.output_size))
        for k, v in task.loss_terms(zeros, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    assert totals["count"] == task.eval_size
    assert task.metrics(totals)["bit_errors"] == pytest.approx(task.baseline, rel=0.04)


def test_default_channel_layouts():
    for task, sizes in [
        (CopyTask(), (9, 8)),
        (RepeatCopyTask(), (10, 9)),
        (AssociativeRecallTask(), (8, 6)),
        (PrioritySortTask(), (10, 8)),
    ]:
        assert (task.input_size, task.output_size) == sizes


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: CopyTask(bits=0), "bits"),
        (lambda: CopyTask(min_len=0), "min_len"),
        (lambda: CopyTask(min_len=5, max_len=4), "min_len"),
        (lambda: CopyTask(eval_len=0), "eval_len"),
        (lambda: CopyTask(eval_size=0), "eval_size"),
        (lambda: RepeatCopyTask(bits=-1), "bits"),
        (lambda: RepeatCopyTask(min_len=3, max_len=2), "min_len"),
        (lambda: RepeatCopyTask(min_repeats=0), "min_repeats"),
        (lambda: RepeatCopyTask(min_repeats=4, max_repeats=3), "min_repeats"),
        (lambda: AssociativeRecallTask(min_items=1), "min_items"),
        (lambda: AssociativeRecallTask(min_items=4, max_items=3), "min_items"),
        (lambda: AssociativeRecallTask(item_len=0), "item_len"),
        (lambda: AssociativeRecallTask(bits=1, item_len=2, max_items=5), "max_items"),
        (lambda: PrioritySortTask(num_outputs=21), "num_outputs"),
        (lambda: PrioritySortTask(num_inputs=0), "num_inputs"),
        (lambda: PrioritySortTask(bits=2.5), "bits"),
        (lambda: copy_sequences(np.random.default_rng(0), 2, 0, 1, 2), "bits"),
        (lambda: copy_sequences(np.random.default_rng(0), 0, 2, 1, 2), "batch_size"),
        (lambda: repeat_copy_sequences(np.random.default_rng(0), 2, 2, 1, 2, 3, 1), "min_rep"),
        (lambda: associative_recall_sequences(np.random.default_rng(0), 2, 2, 1, 1, 3), "min_it"),
        (lambda: priority_sort_sequences(np.random.default_rng(0), 2, 2, 3, 4), "num_outputs"),
        (lambda: CopyTask().train_batch(0, 0), "batch_size"),
        (lambda: CopyTask().train_batch(-1, 2), "step"),
        (lambda: CopyTask().train_batch(0, 2, seed=-1), "seed"),
        (lambda: list(CopyTask(eval_size=4).eval_batches("train", 2)), "split"),
        (lambda: list(CopyTask(eval_size=4).eval_batches("valid", 0)), "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_recall_at_full_capacity_has_distinct_items():
    # bits * item_len = 2: exactly 4 distinct items, all of them in every sequence.
    task = AssociativeRecallTask(bits=1, item_len=2, min_items=4, max_items=4, eval_size=8)
    for x in task.train_batch(0, 8).inputs:
        items = {tuple(x[s + 1 : s + 3, 0]) for s in range(0, 12, 3)}
        assert len(items) == 4


def test_registry():
    assert set(NAMES) <= set(TASK_NAMES)
    for name, cls in NAMES.items():
        task = get_task(name, eval_size=40)
        assert type(task) is cls and task.name == name
        batches = list(task.eval_batches("test", 16))
        assert sum(b.batch_size for b in batches) == 40
    copy = get_task("ntm-copy", seq_len=5)
    assert copy.max_len == 5 and set((copy.train_batch(0, 200).lengths - 1) // 2) <= set(
        range(1, 6)
    )
    assert get_task("repeat-copy", seq_len=4).max_len == 4
    with pytest.raises(ValueError, match="seq_len"):
        get_task("ntm-copy", seq_len=5, max_len=6)
    for name in ("associative-recall", "priority-sort"):
        with pytest.raises(ValueError, match="seq_len"):
            get_task(name, seq_len=10)
    with pytest.raises(ValueError, match="max_len"):
        get_task("ntm-copy", seq_len=0)


@pytest.mark.parametrize("name", ["ntm-copy", "repeat-copy", "associative-recall",
                                  "priority-sort"])
def test_training_batches_have_one_shape_the_longest_possible(name):
    task = get_task(name)
    shapes = {task.train_batch(step, 4).inputs.shape for step in range(30)}
    assert shapes == {(4, task.max_steps, task.input_size)}
    longest = max(int(task.train_batch(step, 64).lengths.max()) for step in range(30))
    assert longest <= task.max_steps
    if name != "priority-sort":
        assert longest > task.max_steps // 2  # the bound is tight enough to be reached often
