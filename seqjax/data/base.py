"""Core data types and helpers shared by every task: :class:`Batch`, :class:`Task`, padding,
deterministic random streams, data-directory lookup and masked loss helpers.

A task turns ``(seed, step)`` into a numpy :class:`Batch` deterministically, gives fixed
evaluation batches, and knows its own loss (as sums, so that evaluation can add terms over
batches of any size) and its headline metric.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

#: Environment variable holding the default data directory.
DATA_DIR_ENV = "SEQJAX_DATA"

#: Splits accepted by :meth:`Task.eval_batches`.
EVAL_SPLITS = ("valid", "test")

# Stream identifiers mixed into every random seed, so that the training stream, the
# validation set and the test set of a task never share random numbers.
STREAM_TRAIN = 0
STREAM_VALID = 1
STREAM_TEST = 2
STREAM_FIXED = 3  # fixed constants such as the pixel permutation or a dataset split


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """One batch of a task, as numpy arrays (a JAX pytree: it can be passed to ``jit``).

    Attributes:
        inputs: ``[B, T, D]`` float32 features, or ``[B, T]`` int32 token ids when the task has
            ``token_inputs``.
        targets: task-specific targets (see each task's docstring).
        lengths: ``[B]`` int32, the number of valid steps of each sequence (``== T`` for
            fixed-length tasks). Steps ``t >= lengths[b]`` are padding.
    """

    inputs: np.ndarray
    targets: np.ndarray
    lengths: np.ndarray

    @property
    def batch_size(self) -> int:
        """``B``, the number of sequences."""
        return int(self.inputs.shape[0])

    @property
    def num_steps(self) -> int:
        """``T``, the padded number of time steps."""
        return int(self.inputs.shape[1])


jax.tree_util.register_dataclass(
    Batch, data_fields=["inputs", "targets", "lengths"], meta_fields=[]
)


class Task(abc.ABC):
    """A sequence task: deterministic batches, loss terms, metrics and a trivial baseline.

    Attributes:
        name: the task's registry name (``get_task(name)``).
        input_size: feature size ``D``, or the vocabulary size when ``token_inputs``.
        output_size: number of values the model emits per step (logits or regression values).
        token_inputs: whether ``Batch.inputs`` holds ``[B, T]`` int32 token ids.
        metric_name: key of the headline metric in :meth:`metrics`.
        lower_is_better: direction of the headline metric.
        baseline: headline metric of a trivial predictor, ``None`` where none is defined.
    """

    name: str
    input_size: int
    output_size: int
    token_inputs: bool
    metric_name: str
    lower_is_better: bool
    baseline: float | None

    @abc.abstractmethod
    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        """Returns the training batch number ``step``, a pure function of ``(seed, step)``.

        Args:
            step: non-negative training step.
            batch_size: ``B``, number of sequences.
            seed: non-negative seed of the training stream.
        """

    @abc.abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Yields fixed batches that cover the whole ``split`` exactly once.

        Args:
            split: ``"valid"`` or ``"test"``.
            batch_size: maximum ``B`` of each batch (the last one may be smaller).
        """

    @abc.abstractmethod
    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Summed loss terms of one batch (``jnp``, jittable).

        Args:
            outputs: ``[B, T, output_size]`` model outputs, one per input step.
            batch: the batch the outputs were computed from.

        Returns:
            Scalars: ``"loss"`` (sum of per-item losses), ``"count"`` (number of items) and
            task-specific extras (e.g. ``"correct"``). The training loss is ``loss / count``.
        """

    @abc.abstractmethod
    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """Metrics from loss terms summed over an evaluation set; includes ``metric_name``."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, "
            f"output_size={self.output_size}, metric={self.metric_name!r})"
        )


# ---------------------------------------------------------------------------------------------
# Argument checks and deterministic randomness
# ---------------------------------------------------------------------------------------------


def check_positive(name: str, value: int) -> int:
    """Returns ``int(value)`` or raises ``ValueError`` unless it is a positive integer.

    The data layer's own copy of ``seqjax.core.cells.check_positive_int``: ``seqjax.data``
    imports nothing else of seqjax (``tests/test_layout.py``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def check_non_negative(name: str, value: int) -> int:
    """Returns ``int(value)`` or raises ``ValueError`` unless it is an integer ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer")
    return int(value)


def check_split(split: str) -> str:
    """Raises ``ValueError`` unless ``split`` is one of :data:`EVAL_SPLITS`."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split={split!r} must be one of {EVAL_SPLITS}")
    return split


def rng(*keys: int) -> np.random.Generator:
    """A numpy generator that is a pure function of the non-negative integer ``keys``."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def train_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of training step ``step`` of stream ``seed`` (checks both arguments)."""
    check_non_negative("seed", seed)
    check_non_negative("step", step)
    return rng(STREAM_TRAIN, seed, step)


def eval_rng(split: str) -> np.random.Generator:
    """The fixed generator of an evaluation split of a synthetic task."""
    check_split(split)
    return rng(STREAM_VALID if split == "valid" else STREAM_TEST)


def epoch_indices(num_items: int, step: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """Example indices of training step ``step`` for a finite training set.

    The training stream is the concatenation of per-epoch random permutations of
    ``range(num_items)`` (the permutation of epoch ``e`` depends only on ``(seed, e)``), cut into
    consecutive batches: every epoch visits every example once, and the result depends only on
    ``(seed, step, batch_size)``.

    Args:
        num_items: size of the training set.
        step: non-negative step.
        batch_size: ``B``.
        seed: non-negative seed.

    Returns:
        ``[B]`` int64 indices into the training set.
    """
    check_positive("num_items", num_items)
    check_non_negative("step", step)
    check_positive("batch_size", batch_size)
    check_non_negative("seed", seed)
    out = []
    pos, stop = step * batch_size, (step + 1) * batch_size
    while pos < stop:
        epoch, offset = divmod(pos, num_items)
        perm = rng(STREAM_TRAIN, seed, epoch).permutation(num_items)
        take = min(stop - pos, num_items - offset)
        out.append(perm[offset : offset + take])
        pos += take
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------


def pad_batch(
    arrays: Sequence[np.ndarray], *, multiple: int = 1, pad_value: float = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks variable-length sequences into one padded array.

    Args:
        arrays: ``B`` arrays of shapes ``[T_b, ...]`` with equal trailing shapes.
        multiple: pad the time axis up to a multiple of this (fewer distinct shapes, fewer
            recompilations under ``jit``); 1 pads to the longest sequence exactly.
        pad_value: value of the padding steps.

    Returns:
        ``(padded, lengths)``: ``[B, T, ...]`` with ``T = max_b T_b`` rounded up to
        ``multiple``, in the arrays' common dtype, and ``[B]`` int32 lengths ``T_b``.
    """
    if isinstance(arrays, (str, bytes, dict)) or not hasattr(arrays, "__len__"):
        raise TypeError(f"arrays must be a sequence (list or tuple) of [T_b, ...] arrays, got "
                        f"{type(arrays).__name__}")
    if len(arrays) == 0:
        raise ValueError("pad_batch needs at least one array, got an empty sequence")
    check_positive("multiple", multiple)
    arrays = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrays):
        if a.dtype == object or a.dtype.kind in "USV":
            raise TypeError(f"arrays[{i}].dtype={a.dtype} must be numeric (ragged or "
                            "non-numeric data?)")
    trailing = arrays[0].shape[1:]
    for i, a in enumerate(arrays):
        if a.ndim < 1 or a.shape[1:] != trailing:
            raise ValueError(
                f"arrays[{i}].shape={a.shape} must be (T, *{trailing}) like arrays[0].shape="
                f"{arrays[0].shape}"
            )
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int32)
    num_steps = int(lengths.max()) if len(lengths) else 0
    num_steps = -(-num_steps // multiple) * multiple
    dtype = np.result_type(*arrays)
    fill = _pad_fill(pad_value, dtype)
    padded = np.full((len(arrays), num_steps, *trailing), fill, dtype=dtype)
    for i, a in enumerate(arrays):
        padded[i, : a.shape[0]] = a
    return padded, lengths


def _pad_fill(pad_value: float, dtype: np.dtype) -> np.ndarray:
    """``pad_value`` in ``dtype``; a value the dtype cannot hold exactly (0.5 or NaN in an
    integer array) is a ``ValueError`` instead of a silently different padding."""
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            fill = np.asarray(pad_value).astype(dtype)
        same = np.ndim(pad_value) == 0 and (
            bool(fill == pad_value)
            or (fill.dtype.kind in "fc" and bool(np.isnan(fill)) and bool(np.isnan(pad_value))))
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(f"pad_value={pad_value!r} cannot be stored exactly in the arrays' "
                         f"dtype {dtype}")
    return fill


# ---------------------------------------------------------------------------------------------
# Data directory and file lookup
# ---------------------------------------------------------------------------------------------


#: The ``data/`` folder of the repository (PTB, tiny-shakespeare, the music ``.mat`` files, MR),
#: the default data directory of a source checkout or an editable install.
SHIPPED_DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory to read: ``data_dir``, else ``$SEQJAX_DATA``, else the shipped one.

    The shipped one is :data:`SHIPPED_DATA_DIR` (the repository's ``data/``); ``None`` only when
    none is given and the package was installed without the repository beside it.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        return SHIPPED_DATA_DIR if SHIPPED_DATA_DIR.is_dir() else None
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(
            f"data_dir must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"data_dir {str(path)!r} is a file, not a directory")
    return path


def find_file(
    task: str,
    candidates: Sequence[str | os.PathLike],
    *,
    expected: str,
    source: str,
) -> Path:
    """Returns the first existing path among ``candidates``.

    Args:
        task: task name, for the error message.
        candidates: paths to try, in order of preference.
        expected: how to write the expected path in the error (the first candidate, or a
            ``<data_dir>/...`` pattern when no data directory is known).
        source: where the standard file comes from, for the error message.

    Raises:
        FileNotFoundError: none exists; the message names ``expected``, every path tried and
            ``source``.
    """
    for path in candidates:
        if Path(path).is_file():
            return Path(path)
    tried = ", ".join(str(p) for p in candidates) or "nothing (no data directory)"
    hint = (
        ""
        if candidates
        else f" Pass data_dir=... (--data-dir) or set the environment variable {DATA_DIR_ENV}."
    )
    raise FileNotFoundError(
        f"task {task!r} needs the file {expected} (tried: {tried}).{hint} {source}"
    )


# ---------------------------------------------------------------------------------------------
# Loss helpers (jnp, jittable)
# ---------------------------------------------------------------------------------------------


def check_outputs(outputs: jax.Array, batch: Batch, output_size: int) -> None:
    """Raises ``ValueError`` unless ``outputs.shape == (B, T, output_size)`` (static check),
    ``TypeError`` unless ``batch`` is a :class:`Batch` and ``outputs`` floating."""
    if not isinstance(batch, Batch):
        raise TypeError(f"batch must be a seqjax.data.Batch, got {type(batch).__name__}")
    if not hasattr(outputs, "shape") or not hasattr(outputs, "dtype"):
        raise TypeError(f"outputs must be an array [B, T, {output_size}], got "
                        f"{type(outputs).__name__}")
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(f"outputs.dtype={outputs.dtype} must be floating (model outputs)")
    if len(batch.inputs.shape) < 2:
        raise ValueError(f"batch.inputs.shape={tuple(batch.inputs.shape)} must be [B, T, ...]")
    b, t = batch.inputs.shape[:2]
    if tuple(outputs.shape) != (b, t, output_size):
        raise ValueError(
            f"outputs.shape={tuple(outputs.shape)} must be (B, T, output_size)="
            f"{(b, t, output_size)} for batch.inputs.shape={tuple(batch.inputs.shape)}"
        )


def step_mask(lengths: jax.Array, num_steps: int) -> jax.Array:
    """``[B, T]`` bool mask, ``mask[b, t] = t < lengths[b]``."""
    return jnp.arange(num_steps)[None, :] < jnp.asarray(lengths)[:, None]


def last_valid(outputs: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Outputs at the last valid step of each sequence.

    Args:
        outputs: ``[B, T, O]``.
        lengths: ``[B]`` valid steps.

    Returns:
        ``([B, O]`` values at step ``lengths - 1``, ``[B]`` bool ``lengths > 0)``; rows of
        length 0 hold zeros (whatever the padding held, NaN included; no gradient reaches
        it) and should still be masked with the second value.
    """
    lengths = jnp.asarray(lengths)
    idx = jnp.clip(lengths - 1, 0, outputs.shape[1] - 1).astype(jnp.int32)
    last = jnp.take_along_axis(outputs, idx[:, None, None], axis=1)[:, 0]
    valid = lengths > 0
    return jnp.where(valid[:, None], last, jnp.zeros((), last.dtype)), valid


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-item cross-entropy ``-log softmax(logits)[label]`` in float32.

    Args:
        logits: ``[..., C]``.
        labels: ``[...]`` integer classes in ``[0, C)``.

    Returns:
        ``[...]`` float32.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def classification_terms(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Summed cross-entropy, count and number correct over the items where ``mask`` holds.

    Items outside ``mask`` change neither a value nor a gradient, even when their logits are
    NaN or inf: they are replaced by zeros before the cross-entropy, and the sums select
    (``jnp.where``) rather than multiply by the mask.

    Args:
        logits: ``[..., C]``.
        labels: ``[...]`` integer classes.
        mask: ``[...]`` bool, items that count.
    """
    mask = jnp.asarray(mask).astype(bool)
    logits = jnp.where(mask[..., None], logits, jnp.zeros((), jnp.result_type(logits)))
    labels = jnp.where(mask, jnp.asarray(labels), 0)
    ce = softmax_cross_entropy(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask
    return {
        "loss": jnp.sum(jnp.where(mask, ce, 0.0)),
        "count": jnp.sum(mask.astype(jnp.float32)),
        "correct": jnp.sum(correct.astype(jnp.float32)),
    }


def ratio(totals: dict[str, float], num: str, den: str = "count") -> float:
    """``totals[num] / totals[den]``, raising ``ValueError`` on a zero or missing count."""
    for key in (num, den):
        if key not in totals:
            raise ValueError(f"totals has no {key!r}; keys: {sorted(totals)}")
    d = float(totals[den])
    if d <= 0:
        raise ValueError(f"totals[{den!r}]={d} must be positive to compute a metric")
    return float(totals[num]) / d
