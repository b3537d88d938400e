"""Truncated backpropagation through time on long token streams (and the TCN's window scheme).

A language-model corpus is one long stream of token ids ``ids [N]``. Training cuts it into
``B`` parallel streams (stream ``b`` is ``ids[b*L : (b+1)*L]``, ``L = N // B``) and walks along
them in chunks of ``k1`` steps::

    chunk c:  inputs  data[:, c*k1     : c*k1 + k1]        [B, k1]
              targets data[:, c*k1 + 1 : c*k1 + k1 + 1]    [B, k1]

Truncated BPTT (Williams & Peng 1990; Sutskever 2013, sec. 2.8.6) runs the recurrent model over
chunk ``c`` starting from the carry that chunk ``c - 1`` ended with, under ``stop_gradient``:
the forward pass sees the whole history, the gradient only the current chunk. The carry is reset
to zeros at the start of every epoch (the first chunk). With ``k2 < k1`` the first ``k1 - k2``
steps of a chunk only advance the carry (no gradient flows through them) and the loss is taken
on the last ``k2`` steps, through at most ``k2`` steps of history: Sutskever's TBPTT(k1, k2).

The carry lives in :attr:`seqjax.train.TrainState.extra` (``fit(..., extra=carry0)``), so it is
checkpointed and a resumed run continues with it: bit-for-bit the run it would have been.

The TCN language model uses Bai et al. (2018)'s scheme instead: windows of ``seq_len`` tokens
that advance by ``validseqlen``, the loss on the last ``validseqlen`` positions only (the first
``seq_len - validseqlen`` give the convolutions their history). :class:`TokenStreams` serves both
(``history=0`` gives TBPTT chunks) and :func:`evaluate_stream` scores every token of a split
exactly once with either.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import check_positive_int as _check_positive
from seqjax.data.base import classification_terms

Array = jax.Array

__all__ = [
    "StreamBatch",
    "TokenStreams",
    "stream_layout",
    "truncated_forward",
    "make_tbptt_loss_fn",
    "make_window_loss_fn",
    "evaluate_stream",
    "reset_carry",
]


@dataclasses.dataclass(frozen=True, eq=False)
class StreamBatch:
    """One chunk (or window) of ``B`` parallel streams.

    Attributes:
      inputs: ``[B, T]`` int32 token ids.
      targets: ``[B, T]`` int32 next tokens.
      mask: ``[B, T]`` bool, the positions the loss counts.
      reset: bool scalar, ``True`` on the first chunk of an epoch (the carry restarts at zero).
    """

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    reset: np.ndarray


jax.tree_util.register_dataclass(
    StreamBatch, data_fields=["inputs", "targets", "mask", "reset"], meta_fields=[]
)


def _check_ids(ids: Any, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer token stream, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    return ids


class TokenStreams:
    """Training chunks of a token stream split into ``B`` parallel streams.

    Args:
      ids: ``[N]`` int token ids.
      batch_size: ``B``, the number of parallel streams.
      seq_len: ``T``, tokens per chunk (TBPTT's ``k1``, or the TCN's window ``seq_len``).
      history: leading positions of each window that only give context and are not scored:
        0 for TBPTT (consecutive chunks, stride ``T``), ``seq_len - validseqlen`` for the TCN
        scheme (windows advance by ``validseqlen = T - history``).

    Step ``s`` (0-based, any non-negative int) is chunk ``c = s % chunks_per_epoch`` of epoch
    ``s // chunks_per_epoch``: a pure function of ``s``, as :func:`seqjax.train.fit` needs.
    """

    def __init__(self, ids: Any, batch_size: int, seq_len: int, history: int = 0):
        ids = _check_ids(ids)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.seq_len = _check_positive("seq_len", seq_len)
        if isinstance(history, bool) or not isinstance(history, int) or not (
                0 <= history < seq_len):
            raise ValueError(f"history={history!r} must be an int in [0, seq_len={seq_len})")
        self.history = history
        self.stride = seq_len - history
        length = len(ids) // batch_size
        if length < seq_len + 1:
            raise ValueError(
                f"{len(ids)} tokens in {batch_size} streams give {length} tokens per stream; "
                f"a chunk of seq_len={seq_len} needs at least {seq_len + 1}")
        self.data = np.ascontiguousarray(ids[: batch_size * length].reshape(batch_size, length),
                                         dtype=np.int32)
        self.chunks_per_epoch = (length - 1 - seq_len) // self.stride + 1
        mask = np.zeros((batch_size, seq_len), bool)
        mask[:, history:] = True
        self._mask = mask

    def __len__(self) -> int:
        return self.chunks_per_epoch

    def batch(self, step: int) -> StreamBatch:
        """The chunk of training step ``step`` (0-based)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step={step!r} must be a non-negative int")
        c = int(step) % self.chunks_per_epoch
        s = c * self.stride
        return StreamBatch(
            inputs=self.data[:, s : s + self.seq_len],
            targets=self.data[:, s + 1 : s + self.seq_len + 1],
            mask=self._mask,
            reset=np.asarray(c == 0),
        )

    __call__ = batch


def stream_layout(ids: Any, num_streams: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation layout: every one of the ``N - 1`` next-token targets exactly once.

    With ``L = ceil((N - 1) / num_streams)``, stream ``b`` predicts targets ``b*L + 1 ...``:
    ``inputs[b, t] = ids[b*L + t]``, ``targets[b, t] = ids[b*L + t + 1]``, valid while
    ``b*L + t + 1 < N``. Each stream starts from an empty history.

    Returns:
      ``(inputs [S, L] int32, targets [S, L] int32, valid [S, L] bool)``, padding ids 0.
    """
    ids = _check_ids(ids)
    num_streams = _check_positive("num_streams", num_streams)
    n = len(ids)
    if n < 2:
        raise ValueError(f"a stream of {n} tokens has nothing to predict; need >= 2")
    length = -(-(n - 1) // num_streams)
    pos = np.arange(num_streams)[:, None] * length + np.arange(length)[None, :]
    valid = pos + 1 < n
    padded = np.concatenate([ids, np.zeros(num_streams * length + 1 - n, ids.dtype)])
    return (padded[pos].astype(np.int32), padded[pos + 1].astype(np.int32), valid)


def reset_carry(carry: Any, reset: Array) -> Any:
    """``carry`` with every leaf zeroed where the scalar ``reset`` is true."""
    return jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), carry)


def truncated_forward(
    apply_fn: Callable[[Any, Any, int], tuple[Array, Any]],
    carry: Any,
    inputs: Array,
    k2: int | None = None,
) -> tuple[Array, Any]:
    """One TBPTT chunk: ``apply_fn`` over ``inputs [B, k1, ...]`` from a detached carry.

    .. math::

        c_0 = \\mathrm{sg}(\\text{carry}); \\quad
        (y_{1..k_1-k_2}, c_m) = f(x_{1..k_1-k_2}, c_0); \\quad
        (y_{k_1-k_2+1..k_1}, c_{k_1}) = f(x_{k_1-k_2+1..k_1}, \\mathrm{sg}(c_m))

    with the head outputs also under ``sg`` (stop_gradient), so the gradient of any loss on
    the outputs flows through at most the last ``k2`` steps and never into an earlier chunk.

    Args:
      apply_fn: ``apply_fn(inputs_part, carry, part) -> (outputs, carry)``; ``part`` is 0 for
        the head and 1 for the tail (e.g. to fold into a dropout key).
      carry: the carry at the start of the chunk (detached here).
      inputs: ``[B, k1, ...]``.
      k2: backpropagate through the last ``k2`` steps only; ``None`` or ``>= k1``: all.

    Returns:
      ``(outputs [B, k1, ...], final carry)``.
    """
    steps = inputs.shape[1]
    if k2 is not None:
        k2 = _check_positive("k2", k2)
    carry = jax.lax.stop_gradient(carry)
    if k2 is None or k2 >= steps:
        return apply_fn(inputs, carry, 1)
    head, carry = apply_fn(inputs[:, : steps - k2], carry, 0)
    head, carry = jax.lax.stop_gradient((head, carry))
    tail, carry = apply_fn(inputs[:, steps - k2 :], carry, 1)
    return jnp.concatenate([head, tail], axis=1), carry


def _sum_ce(logits: Array, targets: Array, mask: Array) -> tuple[Array, Array]:
    """Summed cross-entropy and count over ``mask``; masked-out positions change no value and
    no gradient, even when their logits are NaN (:func:`seqjax.data.base.classification_terms`)."""
    terms = classification_terms(logits, targets, mask)
    return terms["loss"], terms["count"]


def make_tbptt_loss_fn(model: Any, *, k2: int | None = None) -> Callable:
    """The stateful loss of truncated BPTT for :func:`seqjax.train.fit` (``extra`` = carry).

    ``loss_fn(params, batch: StreamBatch, key, train, carry) -> (loss, aux, new_carry)``:
    the carry is reset where ``batch.reset``, the chunk runs through :func:`truncated_forward`,
    ``loss`` is the mean cross-entropy (nats) over the masked positions of the last ``k2`` steps
    (all ``k1`` without ``k2``), ``aux["bits"]`` the mean over all masked positions in bits.

    Args:
      model: a recurrent :class:`seqjax.models.lm.LanguageModel` (anything with
        ``apply(params, tokens, carry, *, train, key) -> (logits, carry)``).
      k2: see :func:`truncated_forward`.

    Use with ``fit(..., loss_fn=make_tbptt_loss_fn(model), train_batches=TokenStreams(...),
    extra=model.initial_carry(B))``.
    """
    if k2 is not None:
        k2 = _check_positive("k2", k2)

    def loss_fn(params, batch, key, train, carry):
        carry = reset_carry(carry, batch.reset)

        def apply_fn(tokens, c, part):
            sub = jax.random.fold_in(key, part) if train else None
            return model.apply(params, tokens, c, train=train, key=sub)

        logits, carry = truncated_forward(apply_fn, carry, batch.inputs, k2)
        mask = jnp.asarray(batch.mask)
        steps = mask.shape[1]
        grad_mask = mask
        if k2 is not None and k2 < steps:
            grad_mask = mask & (jnp.arange(steps) >= steps - k2)[None, :]
        total, count = _sum_ce(logits, batch.targets, grad_mask)
        all_total, all_count = _sum_ce(logits, batch.targets, mask)
        aux = {"bits": jax.lax.stop_gradient(all_total / all_count) / math.log(2.0)}
        return total / jnp.maximum(count, 1.0), aux, jax.lax.stop_gradient(carry)

    return loss_fn


def make_window_loss_fn(model: Any) -> Callable:
    """The TCN scheme's loss for :func:`seqjax.train.fit`: ``loss_fn(params, batch, key, train)``.

    Mean cross-entropy (nats) over ``batch.mask`` (the last ``validseqlen`` positions of each
    window, see :class:`TokenStreams`); ``aux["bits"]`` is the same in bits.
    """

    def loss_fn(params, batch, key, train):
        logits, _ = model.apply(params, batch.inputs, None, train=train,
                                key=key if train else None)
        total, count = _sum_ce(logits, batch.targets, jnp.asarray(batch.mask))
        loss = total / jnp.maximum(count, 1.0)
        return loss, {"bits": jax.lax.stop_gradient(loss) / math.log(2.0)}

    return loss_fn


def evaluate_stream(
    model: Any,
    params: Any,
    ids: Any,
    *,
    batch_size: int = 10,
    seq_len: int = 128,
    history: int = 0,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Scores every next-token target of ``ids`` exactly once.

    The split is laid out by :func:`stream_layout` into ``batch_size`` streams and walked in
    windows. Every stream starts from a zero carry (or an empty TCN window), so fewer streams
    score closer to one pass over the split: a model trained with truncated BPTT has seen a
    zero carry only at epoch starts, and its first tokens after one can be much worse (the
    default of 10 streams is PyTorch word_language_model's evaluation batch).

    Recurrent models (``model.is_recurrent``): consecutive chunks of ``seq_len`` with
    the carry passed along (equal to one pass over each whole stream). TCN: windows of
    ``seq_len`` advancing by ``seq_len - history``; the first window scores all its positions,
    later ones the last ``seq_len - history`` (each token with at least ``history`` context).

    Args:
      model: a :class:`seqjax.models.lm.LanguageModel`.
      params: its params.
      ids: ``[N]`` token ids of the split.
      batch_size: parallel streams.
      seq_len: chunk / window length.
      history: TCN context positions (0 for recurrent models).
      max_tokens: score only the first ``max_tokens + 1`` tokens (a quick estimate).

    Returns:
      ``{"loss": mean nats per token, "bits": loss / ln 2, "ppl": exp(loss), "count": n}``.
    """
    ids = _check_ids(ids)
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    seq_len = _check_positive("seq_len", seq_len)
    recurrent = getattr(model, "is_recurrent", True)
    if recurrent and history:
        raise ValueError(f"history={history} applies to TCN windows; recurrent models use 0")
    if not 0 <= history < seq_len:
        raise ValueError(f"history={history} must be in [0, seq_len={seq_len})")
    x, y, valid = stream_layout(ids, min(batch_size, len(ids) - 1))
    streams, length = x.shape
    stride = seq_len - history
    num = max(1, -(-(length - history) // stride))
    pad = (num - 1) * stride + seq_len - length
    if pad > 0:
        x, y = (np.pad(a, ((0, 0), (0, pad))) for a in (x, y))
        valid = np.pad(valid, ((0, 0), (0, pad)))
    fn = _window_eval_fn(model)
    carry = model.initial_carry(streams) if recurrent else None
    total = count = 0.0
    for c in range(num):
        s = c * stride
        m = valid[:, s : s + seq_len].copy()
        if c > 0:
            m[:, :history] = False
        t, n, carry = fn(params, carry, x[:, s : s + seq_len], y[:, s : s + seq_len], m)
        total += float(t)
        count += float(n)
    loss = total / max(count, 1.0)
    return {"loss": loss, "bits": loss / math.log(2.0), "ppl": math.exp(min(loss, 700.0)),
            "count": count}


_EVAL_FNS: dict[Any, Callable] = {}


def _window_eval_fn(model: Any) -> Callable:
    """Jitted ``(params, carry, inputs, targets, mask) -> (sum ce, count, carry)``, cached."""
    if model not in _EVAL_FNS:
        @jax.jit
        def fn(params, carry, inputs, targets, mask):
            logits, carry = model.apply(params, inputs, carry)
            total, count = _sum_ce(logits, targets, mask)
            return total, count, carry

        _EVAL_FNS[model] = fn
    return _EVAL_FNS[model]
