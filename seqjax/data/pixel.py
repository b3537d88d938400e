"""Pixel-by-pixel image classification: sequential and permuted digits (scikit-learn's
``load_digits``, 64 steps) and pixel MNIST / Fashion-MNIST (idx files, 784 steps).

An image is read in raster order (or through a fixed permutation of the pixels) as a sequence
of ``P`` steps of one feature; the class is predicted at the last step.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from seqjax.data.base import (
    STREAM_FIXED,
    Batch,
    Task,
    check_outputs,
    check_positive,
    check_split,
    classification_terms,
    epoch_indices,
    find_file,
    last_valid,
    ratio,
    resolve_data_dir,
    rng,
)

#: Seed of the fixed pixel permutation of the permuted tasks (a constant of the library).
PERMUTATION_SEED = 20180304
#: Seed of the fixed train/valid/test split of ``load_digits``.
DIGITS_SPLIT_SEED = 0
#: Sizes of the digits split (1797 images in all).
DIGITS_SPLIT = (1297, 250, 250)
#: MNIST training images kept for validation (the last ones of the training file).
MNIST_VALID_SIZE = 5000
#: Mean and standard deviation of MNIST pixels in [0, 1] (the usual ``Normalize`` constants).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (the MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``n``, then ``n`` big-endian uint32
    sizes; the data follow in C order, big-endian.

    Args:
        path: file path; gzip is detected from the file's magic bytes, not its name.

    Returns:
        The array, of shape given by the header, in native byte order.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: an empty, truncated or corrupt file, or one that is not an idx file; the
            message names the file and what is wrong.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:  # truncated or corrupt gzip stream
            raise ValueError(f"{path} is a corrupt or truncated gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        what = "an empty file" if not raw else f"header bytes {raw[:4]!r}"
        raise ValueError(f"{path} is not an idx file: {what}")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, {ndim} dimensions "
                         f"need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} of {dtype} ({expected} bytes) but the file has "
            f"{len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def fixed_permutation(num_pixels: int) -> np.ndarray:
    """The library's fixed permutation of ``range(num_pixels)`` (seeded, a constant)."""
    return rng(STREAM_FIXED, PERMUTATION_SEED, num_pixels).permutation(num_pixels)


class ImageSequenceTask(Task):
    """Classification of images read as sequences of pixels (base of the pixel tasks).

    Batches: ``inputs [B, P, 1]`` float32 pixels (scaled to ``[0, 1]``, optionally
    standardised), in raster order or permuted by :attr:`permutation`; ``targets [B]`` int32
    classes; ``lengths == P``. Loss: cross-entropy of the logits at the last step. Metric
    ``"accuracy"`` (also ``"loss"``); baseline: the test accuracy of always predicting the most
    frequent training class.

    Args:
        name: task name.
        splits: ``{"train", "valid", "test"}`` -> ``(images [N, P] uint8, labels [N])``.
        max_value: pixel value that maps to 1.0.
        num_classes: number of classes.
        permuted: read the pixels through :func:`fixed_permutation`.
        mean: subtracted from the ``[0, 1]`` pixels.
        std: divides the centred pixels.
    """

    def __init__(
        self,
        name: str,
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        *,
        max_value: float,
        num_classes: int = 10,
        permuted: bool = False,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        if not isinstance(splits, dict) or set(splits) != {"train", "valid", "test"}:
            keys = sorted(splits) if isinstance(splits, dict) else type(splits).__name__
            raise ValueError(f"splits must be a dict with keys 'train', 'valid', 'test', got "
                             f"{keys}")
        num_classes = check_positive("num_classes", num_classes)
        if not (isinstance(max_value, (int, float, np.number)) and max_value > 0):
            raise ValueError(f"max_value={max_value!r} must be a positive number")
        if not (isinstance(std, (int, float, np.number)) and std > 0):
            raise ValueError(f"std={std!r} must be a positive number")
        for k, pair in splits.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"splits[{k!r}] must be a pair (images [N, P], labels [N])")
            x, y = np.asarray(pair[0]), np.asarray(pair[1])
            if x.ndim != 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
                raise ValueError(f"splits[{k!r}] images (shape {x.shape}, dtype {x.dtype}) must "
                                 "be a non-empty numeric [N, P] array")
            if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"splits[{k!r}] labels (shape {y.shape}, dtype {y.dtype}) must "
                                 f"be [{x.shape[0]}] integer classes")
            if y.min() < 0 or y.max() >= num_classes:
                raise ValueError(f"splits[{k!r}] labels must lie in [0, num_classes="
                                 f"{num_classes}), got min {y.min()} max {y.max()}")
        pixels = {k: np.shape(pair[0])[1] for k, pair in splits.items()}
        if len(set(pixels.values())) != 1:
            raise ValueError(f"every split must have the same number of pixels, got {pixels}")
        self.name = name
        self.splits = {
            k: (np.ascontiguousarray(x), np.asarray(y, np.int32)) for k, (x, y) in splits.items()
        }
        self.num_pixels = int(self.splits["train"][0].shape[1])
        self.permutation = fixed_permutation(self.num_pixels) if permuted else None
        self.permuted = bool(permuted)
        self.seq_len = self.num_pixels
        self._scale = (1.0 / max_value, mean, std)
        self.input_size = 1
        self.output_size = int(num_classes)
        self.token_inputs = False
        self.metric_name = "accuracy"
        self.lower_is_better = False
        train_labels, test_labels = self.splits["train"][1], self.splits["test"][1]
        majority = np.bincount(train_labels, minlength=num_classes).argmax()
        self.baseline = float(np.mean(test_labels == majority))

    def _batch(self, images: np.ndarray, labels: np.ndarray) -> Batch:
        scale, mean, std = self._scale
        x = images.astype(np.float32) * np.float32(scale)
        if mean != 0.0 or std != 1.0:
            x = (x - np.float32(mean)) / np.float32(std)
        if self.permutation is not None:
            x = x[:, self.permutation]
        lengths = np.full(x.shape[0], self.num_pixels, dtype=np.int32)
        return Batch(x[:, :, None], labels.astype(np.int32), lengths)

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        x, y = self.splits["train"]
        idx = epoch_indices(len(y), step, batch_size, seed)
        return self._batch(x[idx], y[idx])

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        x, y = self.splits[check_split(split)]
        check_positive("batch_size", batch_size)
        for i in range(0, len(y), batch_size):
            yield self._batch(x[i : i + batch_size], y[i : i + batch_size])

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        check_outputs(outputs, batch, self.output_size)
        last, valid = last_valid(outputs, batch.lengths)
        return classification_terms(last, batch.targets, valid)

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        return {"accuracy": ratio(totals, "correct"), "loss": ratio(totals, "loss")}


class DigitsTask(ImageSequenceTask):
    """Sequential (or permuted) digits: scikit-learn's ``load_digits`` as 64-step sequences.

    1797 images of 8x8 pixels with values ``0..16`` (scaled to ``[0, 1]``), split once with a
    fixed seed into 1297 train, 250 valid and 250 test images. See
    :class:`ImageSequenceTask` for batches, loss and metrics.

    Args:
        permuted: read the pixels through the fixed permutation (task ``"pdigits"``).
    """

    def __init__(self, permuted: bool = False):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.data.astype(np.uint8)  # [1797, 64], values 0..16
        labels = digits.target.astype(np.int32)
        order = rng(STREAM_FIXED, DIGITS_SPLIT_SEED).permutation(len(labels))
        n_train, n_valid, _ = DIGITS_SPLIT
        parts = np.split(order, [n_train, n_train + n_valid])
        self.split_indices = dict(zip(("train", "valid", "test"), parts))
        splits = {k: (images[i], labels[i]) for k, i in self.split_indices.items()}
        super().__init__(
            "pdigits" if permuted else "digits", splits, max_value=16.0, permuted=permuted
        )


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SOURCE = {
    "mnist": (
        "The standard files are the four idx files of MNIST (LeCun, Cortes & Burges), e.g. "
        "train-images-idx3-ubyte.gz from http://yann.lecun.com/exdb/mnist/ or a mirror; put "
        "them (gzipped or not) in <data_dir> or <data_dir>/mnist."
    ),
    "fashion-mnist": (
        "Install them with `apt-get install dataset-fashion-mnist` (Debian package, files under "
        f"{FASHION_SYSTEM_DIR}/), or download the idx files from "
        "https://github.com/zalandoresearch/fashion-mnist into <data_dir>/fashion-mnist."
    ),
}


def mnist_search_dirs(variant: str, data_dir: Path | None) -> list[Path]:
    """Directories searched for the idx files of ``variant`` (``"mnist"``/``"fashion-mnist"``).

    MNIST: ``data_dir``, ``data_dir/mnist``. Fashion-MNIST: ``data_dir/fashion-mnist``,
    ``data_dir/fashion_mnist``, then :data:`FASHION_SYSTEM_DIR` (never ``data_dir`` itself, so
    that MNIST files there are not mistaken for Fashion-MNIST).
    """
    if variant == "mnist":
        return [] if data_dir is None else [data_dir, data_dir / "mnist"]
    if variant == "fashion-mnist":
        local = [] if data_dir is None else [data_dir / "fashion-mnist", data_dir / "fashion_mnist"]
        return [*local, FASHION_SYSTEM_DIR]
    raise ValueError(f"variant={variant!r} must be 'mnist' or 'fashion-mnist'")


def find_idx_file(task: str, stem: str, dirs: Sequence[Path], source: str) -> Path:
    """Finds ``stem`` or ``stem.gz`` in ``dirs`` (in order; the plain file first)."""
    candidates = [d / name for d in dirs for name in (stem, stem + ".gz")]
    expected = str(candidates[1]) if candidates else f"<data_dir>/{stem}.gz"
    return find_file(task, candidates, expected=expected, source=source)


def load_mnist(
    variant: str = "mnist", data_dir: str | os.PathLike | None = None, *, task: str | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads MNIST or Fashion-MNIST from idx files.

    Args:
        variant: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: data directory (default: env ``SEQJAX_DATA``); see :func:`mnist_search_dirs`.
        task: task name for error messages (default: ``variant``).

    Returns:
        ``{"train", "test"}`` -> ``(images [N, 784] uint8, labels [N] int32)``.
    """
    dirs = mnist_search_dirs(variant, resolve_data_dir(data_dir))
    out = {}
    for split, (img_stem, lbl_stem) in _MNIST_FILES.items():
        imgs = read_idx(find_idx_file(task or variant, img_stem, dirs, _MNIST_SOURCE[variant]))
        lbls = read_idx(find_idx_file(task or variant, lbl_stem, dirs, _MNIST_SOURCE[variant]))
        if imgs.dtype != np.uint8 or not np.issubdtype(lbls.dtype, np.integer):
            raise ValueError(
                f"{variant} {split}: images.dtype={imgs.dtype} must be uint8 and labels.dtype="
                f"{lbls.dtype} integer (idx files {img_stem}, {lbl_stem})"
            )
        if imgs.ndim != 3 or lbls.shape != imgs.shape[:1]:
            raise ValueError(
                f"{variant} {split}: images.shape={imgs.shape} must be (N, H, W) with "
                f"labels.shape={lbls.shape} == (N,)"
            )
        out[split] = (imgs.reshape(len(imgs), -1).astype(np.uint8), lbls.astype(np.int32))
    return out


class MNISTTask(ImageSequenceTask):
    """Pixel MNIST / permuted MNIST / pixel Fashion-MNIST (784 steps of one pixel).

    The last 5000 training images are the validation set, ``t10k`` the test set. Pixels are
    scaled to ``[0, 1]``; with ``standardize=True`` also normalised with the MNIST mean and
    standard deviation (0.1307, 0.3081), as locuslab/TCN does. See :class:`ImageSequenceTask`.

    Args:
        variant: ``"mnist"`` or ``"fashion-mnist"``.
        permuted: read the pixels through the fixed permutation (task ``"pmnist"``).
        data_dir: data directory (default: env ``SEQJAX_DATA``); see :func:`mnist_search_dirs`.
        standardize: subtract the mean and divide by the standard deviation.
        valid_size: number of training images held out for validation.
    """

    def __init__(
        self,
        variant: str = "mnist",
        permuted: bool = False,
        data_dir: str | os.PathLike | None = None,
        standardize: bool = False,
        valid_size: int = MNIST_VALID_SIZE,
    ):
        name = {"mnist": "pmnist" if permuted else "mnist"}.get(
            variant, f"p{variant}" if permuted else variant
        )
        raw = load_mnist(variant, data_dir, task=name)
        x, y = raw["train"]
        if isinstance(valid_size, bool) or not isinstance(valid_size, (int, np.integer)) or \
                not 0 < valid_size < len(y):
            raise ValueError(f"valid_size={valid_size} must be in (0, {len(y)})")
        splits = {
            "train": (x[:-valid_size], y[:-valid_size]),
            "valid": (x[-valid_size:], y[-valid_size:]),
            "test": raw["test"],
        }
        self.variant = variant
        mean, std = (MNIST_MEAN, MNIST_STD) if standardize else (0.0, 1.0)
        super().__init__(name, splits, max_value=255.0, permuted=permuted, mean=mean, std=std)
