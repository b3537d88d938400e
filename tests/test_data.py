"""Tests of seqjax.data: every generator against its definition, baselines recovered through
the tasks' own loss terms, determinism, splits, file loaders and error messages."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
import re
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from conftest import DATA_DIR, REPO_DATA  # noqa: E402

from seqjax.data import (
    TASK_NAMES,
    AddingTask,
    Batch,
    CopyMemoryTask,
    DigitsTask,
    PolyphonicMusicTask,
    PTBTask,
    epoch_indices,
    get_task,
    pad_batch,
    read_idx,
    task_arguments,
)
from seqjax.data import base as data_base
from seqjax.data.pixel import FASHION_SYSTEM_DIR

needs_data = pytest.mark.usefixtures("data_dir")  # fails loudly if the data folder is missing


def totals_of(task, split, batch_size, make_outputs, limit=None):
    """Sums task.loss_terms over the eval batches, outputs from make_outputs(batch)."""
    totals = {}
    for batch in itertools.islice(task.eval_batches(split, batch_size), limit):
        for k, v in task.loss_terms(make_outputs(batch), batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return totals


def assert_batches_equal(a: Batch, b: Batch):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_task_arguments_are_what_get_task_passes_on():
    """The arguments a task takes besides ``data_dir`` and ``seq_len`` (what
    ``tcn_vs_rnn.py --task-arg`` accepts): each reaches the task; the ones its factory fixes
    (the pixel tasks' ``permuted``, PTB's ``level``) are not listed."""
    assert task_arguments("adding") == ("eval_size", "markers")
    assert task_arguments("jsb") == ("max_len", "pad_multiple")
    assert task_arguments("digits") == task_arguments("ptb-word") == ()
    assert task_arguments("fashion-mnist") == ("permuted", "standardize", "valid_size")
    assert set(task_arguments("ntm-copy")) >= {"bits", "max_len"}
    assert get_task("adding", seq_len=5, eval_size=7, markers="anywhere").markers == "anywhere"
    for name in TASK_NAMES:
        assert isinstance(task_arguments(name), tuple)
    with pytest.raises(ValueError, match="unknown task 'nosuch'"):
        task_arguments("nosuch")


# ---------------------------------------------------------------------------------------------
# Batch, pad_batch, epoch_indices
# ---------------------------------------------------------------------------------------------


def test_batch_is_a_pytree_usable_under_jit():
    batch = AddingTask(seq_len=5).train_batch(0, 3)
    assert len(jax.tree_util.tree_leaves(batch)) == 3
    got = jax.jit(lambda b: (b.inputs.sum(), b.lengths * 2))(batch)
    np.testing.assert_allclose(got[0], batch.inputs.sum(), rtol=1e-6)
    np.testing.assert_array_equal(got[1], batch.lengths * 2)
    mapped = jax.tree_util.tree_map(lambda x: x[:1], batch)
    assert isinstance(mapped, Batch) and mapped.inputs.shape == (1, 5, 2)


def test_pad_batch_values_lengths_and_multiple():
    a, b = np.arange(6).reshape(3, 2), np.arange(2).reshape(1, 2) + 10
    padded, lengths = pad_batch([a, b])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert lengths.dtype == np.int32 and padded.shape == (2, 3, 2)
    np.testing.assert_array_equal(padded[0], a)
    np.testing.assert_array_equal(padded[1], [[10, 11], [0, 0], [0, 0]])
    padded, _ = pad_batch([a, b], multiple=4, pad_value=-1)
    assert padded.shape == (2, 4, 2) and (padded[1, 1:] == -1).all()
    with pytest.raises(ValueError, match="arrays\\[1\\].shape"):
        pad_batch([a, np.zeros((2, 3))])
    with pytest.raises(ValueError):
        pad_batch([])


def test_epoch_indices_visit_each_example_once_per_epoch():
    n, bs = 10, 4
    stream = np.concatenate([epoch_indices(n, s, bs, seed=3) for s in range(5)])  # 20 = 2 epochs
    for epoch in range(2):
        assert sorted(stream[epoch * n : (epoch + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(epoch_indices(n, 2, bs, seed=3), stream[8:12])
    assert not np.array_equal(
        stream[:n], np.concatenate([epoch_indices(n, s, bs, seed=4) for s in range(5)])[:n]
    )


# ---------------------------------------------------------------------------------------------
# Adding problem
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("markers", ["halves", "anywhere"])
@pytest.mark.parametrize("seq_len", [2, 3, 50])
def test_adding_structure(seq_len, markers):
    task = AddingTask(seq_len=seq_len, markers=markers)
    batch = task.train_batch(7, 256)
    x, y = batch.inputs, batch.targets
    assert x.shape == (256, seq_len, 2) and x.dtype == np.float32
    assert y.shape == (256, 1) and y.dtype == np.float32
    np.testing.assert_array_equal(batch.lengths, np.full(256, seq_len))
    assert ((x[..., 0] >= 0) & (x[..., 0] < 1)).all()
    assert set(np.unique(x[..., 1])) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[..., 1].sum(1), 2)  # exactly two markers
    marked = np.where(x[..., 1] == 1, x[..., 0], 0).sum(1)
    np.testing.assert_allclose(y[:, 0], marked, rtol=1e-6)
    pos = np.stack([np.flatnonzero(row) for row in x[..., 1]])  # [B, 2], sorted
    if markers == "halves":
        assert (pos[:, 0] < seq_len // 2).all() and (pos[:, 1] >= seq_len // 2).all()
    if seq_len == 50:  # both positions spread over their ranges
        assert len(np.unique(pos[:, 0])) > 10 and len(np.unique(pos[:, 1])) > 10


def test_adding_trivial_baseline_and_last_step_loss():
    task = get_task("adding", seq_len=20)
    assert task.metric_name == "mse" and task.lower_is_better and task.baseline == 1 / 6
    for split in ("valid", "test"):
        totals = totals_of(task, split, 300, lambda b: jnp.ones((*b.inputs.shape[:2], 1)))
        assert totals["count"] == task.eval_size == 1000
        assert abs(task.metrics(totals)["mse"] - 1 / 6) < 0.02  # 3 standard errors

    # Only the last step counts: perfect there, garbage elsewhere -> zero loss.
    batch = task.train_batch(0, 8)
    out = np.full((8, 20, 1), 1e3, np.float32)
    out[:, -1, 0] = batch.targets[:, 0]
    terms = jax.jit(task.loss_terms)(jnp.asarray(out), batch)
    assert float(terms["loss"]) == 0.0 and float(terms["count"]) == 8


def test_adding_rejects_short_sequences():
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match="seq_len"):
            get_task("adding", seq_len=bad)
    with pytest.raises(ValueError, match="markers"):
        AddingTask(markers="middle")


# ---------------------------------------------------------------------------------------------
# Copy memory
# ---------------------------------------------------------------------------------------------


def test_copy_structure_matches_locuslab_generator():
    t = 30
    task = get_task("copy", seq_len=t)
    assert task.token_inputs and task.input_size == 10 and task.output_size == 10
    batch = task.train_batch(3, 128)
    x, y = batch.inputs, batch.targets
    assert x.shape == y.shape == (128, t + 20) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(batch.lengths, np.full(128, t + 20))
    seq = x[:, :10]
    assert ((seq >= 1) & (seq <= 8)).all() and set(np.unique(seq)) == set(range(1, 9))
    assert (x[:, 10 : 10 + t - 1] == 0).all()  # T - 1 blanks
    assert (x[:, t + 9 :] == 9).all()  # 11 nines, the first is the delimiter
    assert (y[:, : t + 10] == 0).all()
    np.testing.assert_array_equal(y[:, t + 10 :], seq)


def test_copy_baseline_and_metrics():
    t = 40
    task = CopyMemoryTask(seq_len=t, eval_size=300)
    assert task.metric_name == "loss" and task.lower_is_better
    assert task.baseline == pytest.approx(10 * math.log(8) / (t + 20), rel=1e-12)

    def blank_then_uniform(batch):
        out = np.full((batch.inputs.shape[0], t + 20, 10), -1e4, np.float32)
        out[:, : t + 10, 0] = 0.0
        out[:, t + 10 :, 1:9] = 0.0
        return jnp.asarray(out)

    totals = totals_of(task, "test", 128, blank_then_uniform)
    assert totals["count"] == 300 * (t + 20)
    assert abs(task.metrics(totals)["loss"] - task.baseline) < 1e-4

    def perfect(batch):
        return jax.nn.one_hot(batch.targets, 10) * 50.0

    metrics = task.metrics(totals_of(task, "valid", 128, perfect))
    assert metrics["accuracy"] == 1.0 and metrics["accuracy_last10"] == 1.0
    assert metrics["loss"] < 1e-6


def test_cross_entropy_against_numpy_reference():
    task = CopyMemoryTask(seq_len=5)
    batch = task.train_batch(0, 4)
    logits = np.random.default_rng(0).normal(size=(4, 25, 10)).astype(np.float32) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, batch.targets[..., None], -1)[..., 0]
    terms = jax.jit(task.loss_terms)(jnp.asarray(logits), batch)
    np.testing.assert_allclose(float(terms["loss"]), ce.sum(), rtol=1e-5)
    np.testing.assert_allclose(float(terms["correct"]), (logits.argmax(-1) == batch.targets).sum())
    tail = logits[:, -10:].argmax(-1) == batch.targets[:, -10:]
    np.testing.assert_allclose(float(terms["correct_last10"]), tail.sum())
    assert float(terms["count_last10"]) == 40


# ---------------------------------------------------------------------------------------------
# Determinism (synthetic and file-based tasks)
# ---------------------------------------------------------------------------------------------


def _deterministic_tasks():
    tasks = [
        pytest.param(lambda: AddingTask(seq_len=10, eval_size=50), id="adding"),
        pytest.param(lambda: CopyMemoryTask(seq_len=10, eval_size=50), id="copy"),
        pytest.param(lambda: DigitsTask(permuted=True), id="pdigits"),
    ]
    if DATA_DIR.is_dir():
        tasks += [
            pytest.param(lambda: get_task("jsb", data_dir=DATA_DIR, max_len=20), id="jsb"),
            pytest.param(lambda: get_task("ptb-char", data_dir=DATA_DIR, seq_len=30), id="ptb"),
        ]
    return tasks


@pytest.mark.parametrize("make", _deterministic_tasks())
def test_batches_are_deterministic(make):
    task, other = make(), make()
    a = task.train_batch(5, 8, seed=1)
    assert_batches_equal(a, other.train_batch(5, 8, seed=1))
    for different in (task.train_batch(6, 8, seed=1), task.train_batch(5, 8, seed=2)):
        assert not np.array_equal(a.inputs, different.inputs)
    first = list(itertools.islice(task.eval_batches("valid", 16), 3))
    again = list(itertools.islice(other.eval_batches("valid", 16), 3))
    for x, y in zip(first, again, strict=True):
        assert_batches_equal(x, y)
    test = next(task.eval_batches("test", 16))
    assert not np.array_equal(test.inputs, first[0].inputs)
    with pytest.raises(ValueError, match="split"):
        next(task.eval_batches("train", 16))


# ---------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------


def test_digits_split_and_values():
    from sklearn.datasets import load_digits

    digits = load_digits()
    task = get_task("digits")
    assert task.input_size == 1 and task.output_size == 10 and task.metric_name == "accuracy"
    assert not task.lower_is_better and 0.09 <= task.baseline <= 0.12
    idx = task.split_indices
    assert [len(idx[s]) for s in ("train", "valid", "test")] == [1297, 250, 250]
    assert sorted(np.concatenate(list(idx.values()))) == list(range(1797))  # disjoint, complete
    batches = list(task.eval_batches("valid", 100))
    assert [b.inputs.shape[0] for b in batches] == [100, 100, 50]
    x = np.concatenate([b.inputs for b in batches])
    assert x.shape == (250, 64, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], digits.data[idx["valid"]] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(
        np.concatenate([b.targets for b in batches]), digits.target[idx["valid"]]
    )

    # Predicting the label at the last step only: accuracy 1, loss ~0.
    def last_step_one_hot(b):
        out = np.zeros((b.inputs.shape[0], 64, 10), np.float32)
        out[:, -1] = np.eye(10)[b.targets] * 40
        out[:, :-1] = np.eye(10)[(b.targets + 1) % 10][:, None] * 40
        return jnp.asarray(out)

    metrics = task.metrics(totals_of(task, "test", 128, last_step_one_hot))
    assert metrics["accuracy"] == 1.0 and metrics["loss"] < 1e-6


def test_pdigits_is_a_fixed_permutation_of_digits():
    plain, perm = get_task("digits"), get_task("pdigits")
    assert perm.name == "pdigits" and plain.permutation is None
    assert sorted(perm.permutation) == list(range(64))
    assert not np.array_equal(perm.permutation, np.arange(64))
    np.testing.assert_array_equal(perm.permutation, get_task("pdigits").permutation)
    a, b = plain.train_batch(2, 32), perm.train_batch(2, 32)
    np.testing.assert_array_equal(b.inputs, a.inputs[:, perm.permutation])
    np.testing.assert_array_equal(a.targets, b.targets)
    with pytest.raises(ValueError, match="fixed sequence length"):
        get_task("pdigits", seq_len=32)


# ---------------------------------------------------------------------------------------------
# MNIST idx files (tiny files written here)
# ---------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Independent idx writer: magic (0, 0, type, ndim), big-endian dims, big-endian data."""
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder: Path, compress: bool, n_train=12, n_test=5, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    data = {
        "train": (
            r.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            r.integers(0, 10, n_train).astype(np.uint8),
        ),
        "t10k": (
            r.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            r.integers(0, 10, n_test).astype(np.uint8),
        ),
    }
    sfx = ".gz" if compress else ""
    for prefix, (images, labels) in data.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", labels, compress)
    return data


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path, compress, dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    path = tmp_path / "a.idx"
    write_idx(path, array, compress)
    got = read_idx(path)
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)
    path.write_bytes(
        path.read_bytes()[:-1] if not compress else gzip.compress(b"\0\0\x08\x01\0\0\0\x05ab")
    )
    with pytest.raises(ValueError, match="a.idx"):
        read_idx(path)


@pytest.mark.parametrize("compress, subdir", [(False, ""), (True, "mnist")])
def test_mnist_loader(tmp_path, compress, subdir):
    data = write_mnist(tmp_path / subdir if subdir else tmp_path, compress)
    task = get_task("mnist", data_dir=tmp_path, valid_size=4)
    assert task.input_size == 1 and task.output_size == 10
    train_x, train_y = data["train"]
    batches = list(task.eval_batches("valid", 3))
    x = np.concatenate([b.inputs for b in batches])
    assert x.shape == (4, 784, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], train_x[-4:].reshape(4, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b.targets for b in batches]), train_y[-4:])
    test = next(iter(task.eval_batches("test", 10)))
    np.testing.assert_allclose(test.inputs[..., 0], data["t10k"][0].reshape(5, -1) / 255.0)
    # The training stream covers exactly the first 8 images in an epoch.
    seen = np.concatenate([task.train_batch(s, 4).inputs[..., 0] for s in range(2)])
    seen = np.rint(seen * 255).astype(np.uint8)
    assert sorted(r.tobytes() for r in seen) == sorted(r.tobytes() for r in train_x[:8])
    # Permuted and standardised variants.
    ptask = get_task("pmnist", data_dir=tmp_path, valid_size=4, standardize=True)
    pb = next(ptask.eval_batches("valid", 4))
    np.testing.assert_allclose(
        pb.inputs[..., 0], (x[:, ptask.permutation, 0] - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6
    )


def test_mnist_and_fashion_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_task("mnist", data_dir=tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte") in str(err.value)
    if not FASHION_SYSTEM_DIR.is_dir():
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            get_task("fashion-mnist", data_dir=tmp_path)
    write_mnist(tmp_path / "fashion-mnist", compress=True, seed=1)
    task = get_task("fashion-mnist", data_dir=tmp_path, valid_size=2)
    assert task.name == "fashion-mnist" and task.train_batch(0, 2).inputs.shape == (2, 784, 1)


# ---------------------------------------------------------------------------------------------
# Polyphonic music (the real JSB Chorales file)
# ---------------------------------------------------------------------------------------------


@needs_data
def test_jsb_loader_batches_and_coverage():
    mat = scipy.io.loadmat(DATA_DIR / "music" / "JSB_Chorales.mat")
    raw = {s: [np.asarray(a) for a in mat[f"{s}data"][0]] for s in ("train", "valid", "test")}
    assert [len(raw[s]) for s in ("train", "valid", "test")] == [229, 76, 77]
    task = get_task("jsb", data_dir=DATA_DIR)
    assert isinstance(task, PolyphonicMusicTask) and task.baseline is None
    assert task.input_size == task.output_size == 88 and task.metric_name == "nll"
    for split in ("valid", "test"):
        want = {hashlib.sha1(r.astype(np.uint8).tobytes()).hexdigest(): 0 for r in raw[split]}
        frames = 0
        for b in task.eval_batches(split, 16):
            assert b.inputs.dtype == b.targets.dtype == np.float32
            assert b.inputs.shape[1] == b.lengths.max()
            for x, y, n in zip(b.inputs, b.targets, b.lengths):
                np.testing.assert_array_equal(x[1:n], y[: n - 1])  # targets are inputs shifted
                assert not x[n:].any() and not y[n:].any()
                roll = np.concatenate([x[:n], y[n - 1 : n]]).astype(np.uint8)
                want[hashlib.sha1(roll.tobytes()).hexdigest()] += 1
            frames += int(b.lengths.sum())
        assert all(v == 1 for v in want.values())  # every sequence exactly once
        assert frames == sum(len(r) - 1 for r in raw[split])
        zero = totals_of(task, split, 32, lambda b: jnp.zeros(b.targets.shape))
        assert zero["count"] == frames
        assert task.metrics(zero)["nll"] == pytest.approx(88 * math.log(2), rel=1e-5)


@needs_data
def test_music_loss_against_numpy_and_train_crops():
    task = get_task("jsb", data_dir=DATA_DIR, seq_len=16)
    assert task.max_len == 16
    batch = task.train_batch(0, 6, seed=2)
    assert batch.inputs.shape[1] <= 16 and (batch.lengths <= 16).all()
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    logits = np.random.default_rng(1).normal(size=batch.targets.shape).astype(np.float32) * 2
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    nll = -(batch.targets * np.log(p) + (1 - batch.targets) * np.log(1 - p)).sum(-1)
    mask = np.arange(batch.inputs.shape[1])[None] < batch.lengths[:, None]
    terms = jax.jit(task.loss_terms)(jnp.asarray(logits), batch)
    np.testing.assert_allclose(float(terms["loss"]), (nll * mask).sum(), rtol=1e-5)
    assert float(terms["count"]) == batch.lengths.sum()


@needs_data
@pytest.mark.parametrize("name", ["nottingham", "muse", "piano"])
def test_other_music_sets_load(name):
    task = get_task(name, data_dir=DATA_DIR)
    assert all(len(task.splits[s]) > 0 for s in ("train", "valid", "test"))
    assert task.train_batch(0, 2).inputs.shape[2] == 88


# ---------------------------------------------------------------------------------------------
# Penn Treebank
# ---------------------------------------------------------------------------------------------


@needs_data
def test_ptb_word_vocabulary_and_token_count():
    path = DATA_DIR / "ptb" / "ptb.train.txt"
    with open(path, encoding="utf-8") as f:
        plain_count = sum(len(line.split()) + 1 for line in f)  # words + <eos> per line
    assert plain_count == 929_589
    task = get_task("ptb-word", data_dir=DATA_DIR)
    assert isinstance(task, PTBTask) and task.metric_name == "ppl" and task.token_inputs
    assert len(task.vocab) == task.input_size == task.output_size == 10_000
    assert "<unk>" in task.vocab and "<eos>" in task.vocab
    assert len(task.data["train"]) == plain_count
    assert task.decode(task.encode("the cat <unk>\n")) == "the cat <unk> <eos>"
    first_line = path.read_text(encoding="utf-8").split("\n")[0]
    assert task.decode(task.data["train"][: len(first_line.split())]) == " ".join(
        first_line.split()
    )
    batch = task.train_batch(0, 2)
    assert batch.inputs.shape == (2, 80) and batch.inputs.dtype == np.int32
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    terms = task.loss_terms(jnp.zeros((2, 80, 10_000)), batch)
    assert task.metrics(terms)["ppl"] == pytest.approx(10_000, rel=1e-4)
    assert 100 < task.baseline < 10_000  # unigram perplexity


@needs_data
def test_ptb_char_eval_covers_every_token_and_uniform_bpc():
    task = get_task("ptb-char", data_dir=DATA_DIR, seq_len=1000)
    assert task.metric_name == "bpc" and len(task.vocab) == 50 and "\n" in task.vocab
    text = (DATA_DIR / "ptb" / "ptb.valid.txt").read_text(encoding="utf-8")
    ids = task.data["valid"]
    assert task.decode(ids) == text
    targets, inputs, count = [], [], 0
    for b in task.eval_batches("valid", 64):
        assert b.inputs.shape[1] == 1000
        for x, y, n in zip(b.inputs, b.targets, b.lengths):
            inputs.append(x[:n])
            targets.append(y[:n])
            assert not x[n:].any() and not y[n:].any()
        count += int(b.lengths.sum())
    assert count == len(text) - 1
    np.testing.assert_array_equal(np.concatenate(inputs), ids[:-1])
    np.testing.assert_array_equal(np.concatenate(targets), ids[1:])
    uniform = totals_of(task, "test", 64, lambda b: jnp.zeros((*b.inputs.shape, 50)), limit=2)
    assert task.metrics(uniform)["bpc"] == pytest.approx(math.log2(50), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown task 'mnits'") as err:
        get_task("mnits")
    for name in TASK_NAMES:
        assert name in str(err.value)
    assert {
        "adding",
        "copy",
        "digits",
        "pdigits",
        "mnist",
        "pmnist",
        "fashion-mnist",
        "jsb",
        "nottingham",
        "muse",
        "piano",
        "ptb-char",
        "ptb-word",
        "ntm-copy",
        "repeat-copy",
        "associative-recall",
        "priority-sort",
    } == set(TASK_NAMES)


def test_missing_files_name_the_expected_path(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        get_task("jsb", data_dir=tmp_path)
    assert str(tmp_path / "music" / "JSB_Chorales.mat") in str(err.value)
    assert "Boulanger-Lewandowski" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        get_task("ptb-word", data_dir=tmp_path)
    assert str(tmp_path / "ptb" / "ptb.train.txt") in str(err.value)
    assert "simple-examples" in str(err.value)
    monkeypatch.delenv("SEQJAX_DATA", raising=False)
    monkeypatch.setattr(data_base, "SHIPPED_DATA_DIR", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="SEQJAX_DATA") as err:
        get_task("piano")
    assert "<data_dir>/music/Piano_midi.mat" in str(err.value)


@needs_data
def test_data_dir_from_environment(monkeypatch):
    monkeypatch.setenv("SEQJAX_DATA", str(DATA_DIR))
    assert len(get_task("jsb").splits["train"]) == 229


def test_default_data_dir_is_the_repository_data_folder(monkeypatch, tmp_path):
    """A fresh clone reads data/ with no flag and no environment; a given directory wins."""
    monkeypatch.delenv("SEQJAX_DATA", raising=False)
    assert data_base.resolve_data_dir(None) == REPO_DATA
    assert len(get_task("jsb").splits["train"]) == 229
    assert data_base.resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("SEQJAX_DATA", str(tmp_path))
    assert data_base.resolve_data_dir(None) == tmp_path
    with pytest.raises(NotADirectoryError, match="data_dir"):
        data_base.resolve_data_dir(REPO_DATA / "README.md")
    with pytest.raises(TypeError, match="data_dir"):
        data_base.resolve_data_dir(3)


def test_shipped_data_checksums():
    """Every file listed in data/README.md is there with the md5 written beside it."""
    readme = (REPO_DATA / "README.md").read_text()
    listed = re.findall(r"^([0-9a-f]{32})  (\S+)$", readme, flags=re.M)
    assert len(listed) == 10, listed
    for digest, name in listed:
        assert hashlib.md5((REPO_DATA / name).read_bytes()).hexdigest() == digest, name
    on_disk = {p.relative_to(REPO_DATA).as_posix() for p in REPO_DATA.rglob("*") if p.is_file()}
    assert on_disk - {"README.md"} == {name for _, name in listed}


def test_bad_arguments():
    task = AddingTask(seq_len=4)
    batch = task.train_batch(0, 2)
    with pytest.raises(ValueError, match="outputs.shape"):
        task.loss_terms(jnp.zeros((2, 3, 1)), batch)
    for kwargs in ({"step": -1, "batch_size": 2}, {"step": 0, "batch_size": 0}):
        with pytest.raises(ValueError):
            task.train_batch(**kwargs)
    with pytest.raises(ValueError, match="seed"):
        task.train_batch(0, 2, seed=-1)
    with pytest.raises(ValueError, match="count"):
        task.metrics({"loss": 1.0, "count": 0.0})
