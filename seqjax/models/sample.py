"""Sampling from a language model one token at a time: prime, temperature, top-k, greedy.

The lectures' loop: feed the prime, then repeatedly turn the last logits into a token and feed
that token back. The model runs one step per token with its decoding state:

* recurrent models: the state is the carry, and one step is ``apply`` on a ``[B, 1]`` chunk;
  the prefix is never re-run.
* TCN: the state is a sliding window of the last ``receptive_field`` tokens (left-aligned while
  fewer have been seen); one step runs the TCN over the window and reads the output at the
  newest position. An output of a TCN depends on exactly its receptive field, so this gives the
  logits of a run over the whole prefix.

:func:`make_step_fn` gives the one jitted step function; :func:`generate` scans it (prime, then
``n`` sampled tokens) inside one ``jit``. Randomness: step ``i`` draws with
``fold_in(PRNGKey(seed), i)``, so a seed fixes the text.

Token choice from logits ``z`` (:func:`choose`): greedy ``argmax z``; otherwise
``softmax(z / temperature)`` restricted to the ``top_k`` largest logits (ties at the k-th value
are kept). ``temperature -> 0`` is greedy; ``temperature == 0`` means greedy.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.data.text import EOS, UNK, Vocabulary

Array = jax.Array

__all__ = ["DecodeState", "choose", "decode_init", "decode_step", "decode_tokens",
           "encode_prime", "generate", "make_step_fn", "sample_text"]


DecodeState = Any
"""Recurrent: the carry (one per layer). TCN: ``(window [B, W] int32, seen int32 scalar)``."""


_MODEL_ATTRS = ("vocab_size", "is_recurrent", "apply", "initial_carry", "receptive_field")


def _check_model(model: Any) -> None:
    missing = [a for a in _MODEL_ATTRS if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model must be a seqjax.models.lm.LanguageModel (or have {_MODEL_ATTRS}), "
                        f"got {type(model).__name__} without {missing}")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


def decode_init(model: Any, batch: int) -> DecodeState:
    """The decoding state before any token."""
    _check_model(model)
    batch = _check_int("batch", batch, 1)
    if model.is_recurrent:
        return model.initial_carry(batch)
    width = model.receptive_field
    return (jnp.zeros((batch, width), jnp.int32), jnp.zeros((), jnp.int32))


def decode_step(model: Any, params: Any, state: DecodeState,
                tokens: Array) -> tuple[Array, DecodeState]:
    """Feed one token per sequence: ``tokens [B]`` -> ``(logits [B, V], new state)``.

    ``tokens`` must be integer ids in ``[0, vocab_size)``; the range is checked where they are
    concrete (under ``jit``, e.g. in :func:`make_step_fn`, an out-of-range id gives NaN logits,
    see :meth:`seqjax.models.lm.LanguageModel.apply`).
    """
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    dtype = tokens.dtype
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"tokens.dtype={dtype} must be an integer dtype (token ids)")
    if jnp.ndim(tokens) != 1:
        raise ValueError(f"tokens.shape={tuple(jnp.shape(tokens))} must be (batch,): one token "
                         "per sequence")
    tokens = jnp.asarray(tokens, jnp.int32)
    if model.is_recurrent:
        logits, carry = model.apply(params, tokens[:, None], state)
        return logits[:, 0], carry
    window, seen = state
    width = window.shape[1]
    full = seen >= width
    shifted = jnp.concatenate([window[:, 1:], tokens[:, None]], axis=1)
    placed = jax.lax.dynamic_update_slice(window, tokens[:, None],
                                          (jnp.int32(0), jnp.minimum(seen, width - 1)))
    window = jnp.where(full, shifted, placed)
    logits, _ = model.apply(params, window, None)
    last = jnp.minimum(seen, width - 1)
    out = jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False)
    return out, (window, seen + 1)


def make_step_fn(model: Any):
    """The jitted ``step(params, state, tokens [B]) -> (logits [B, V], state)``."""
    return jax.jit(functools.partial(decode_step, model))


def choose(logits: Array, key: Array, *, temperature: float = 1.0, top_k: int | None = None,
           greedy: bool = False) -> Array:
    """Pick one token per row of ``logits [B, V]`` (see the module docstring).

    Returns:
      ``[B]`` int32.
    """
    _check_sampling(temperature, top_k)
    if jnp.ndim(logits) < 1 or jnp.shape(logits)[-1] < 1:
        raise ValueError(f"logits.shape={tuple(jnp.shape(logits))} must be (batch, vocab)")
    if greedy or temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z >= kth, z, -jnp.inf)
    return jax.random.categorical(key, z, axis=-1).astype(jnp.int32)


def _check_sampling(temperature: float, top_k: int | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a positive int or None")


@functools.partial(jax.jit, static_argnames=("model", "num", "temperature", "top_k", "greedy"))
def _generate(model, params, prime, key, *, num, temperature, top_k, greedy):
    batch = prime.shape[0]
    state = decode_init(model, batch)

    def feed(state, tok):
        logits, state = decode_step(model, params, state, tok)
        return state, logits

    state, prime_logits = jax.lax.scan(feed, state, prime.T)
    first = choose(prime_logits[-1], jax.random.fold_in(key, 0), temperature=temperature,
                   top_k=top_k, greedy=greedy)

    def body(carry, i):
        state, tok = carry
        logits, state = decode_step(model, params, state, tok)
        nxt = choose(logits, jax.random.fold_in(key, i), temperature=temperature, top_k=top_k,
                     greedy=greedy)
        return (state, nxt), tok

    (_, _), toks = jax.lax.scan(body, (state, first), jnp.arange(1, num + 1))
    return toks.T


def generate(
    model: Any,
    params: Any,
    prime: Any,
    num: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    seed: int = 0,
    num_samples: int = 1,
) -> np.ndarray:
    """Tokens following ``prime``, sampled one at a time.

    Args:
      model: a :class:`seqjax.models.lm.LanguageModel`.
      params: its params.
      prime: ``[P]`` (or ``[B, P]``) token ids, ``P >= 1``; fed first, one step each.
      num: tokens to generate.
      temperature, top_k, greedy: see :func:`choose`.
      seed: the sampling seed (same seed, same tokens).
      num_samples: independent samples of a ``[P]`` prime.

    Returns:
      ``[B, num]`` int32 generated tokens (the prime excluded).

    Raises:
      TypeError: ``model`` is not a language model, float ``prime`` ids, a non-int ``seed``.
      ValueError: ``prime`` of another shape or with ids outside ``[0, vocab_size)`` (the
        message gives the offending min and max), ``params`` of another model (the first path
        whose shape differs), a bad ``num``, ``num_samples``, ``temperature`` or ``top_k``.

    Everything is checked here, before the jitted loop (inside it, ids could not be checked and
    an out-of-range one would give NaN logits).
    """
    _check_model(model)
    _check_sampling(temperature, top_k)
    num = _check_int("num", num, 0)
    num_samples = _check_int("num_samples", num_samples, 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed={seed!r} must be an int")
    if hasattr(model, "check_params"):
        model.check_params(params)
    if not hasattr(prime, "dtype"):
        prime = np.asarray(prime)
    if prime.dtype == np.bool_ or not np.issubdtype(prime.dtype, np.integer):
        raise TypeError(f"prime.dtype={prime.dtype} must be an integer dtype (token ids)")
    prime = np.asarray(prime)
    if prime.ndim == 1:
        prime = np.broadcast_to(prime, (num_samples, prime.shape[0]))
    if prime.ndim != 2 or prime.shape[1] == 0:
        raise ValueError(f"prime.shape={prime.shape} must be (P,) or (batch, P) token ids with "
                         "P >= 1")
    if prime.min() < 0 or prime.max() >= model.vocab_size:
        raise ValueError(f"prime must lie in [0, vocab_size={model.vocab_size}), got min "
                         f"{prime.min()} max {prime.max()}")
    if num == 0:
        return np.zeros((prime.shape[0], 0), np.int32)
    toks = _generate(model, params, jnp.asarray(prime, jnp.int32), jax.random.PRNGKey(seed),
                     num=num, temperature=float(temperature), top_k=top_k, greedy=bool(greedy))
    return np.asarray(toks)


def encode_prime(vocab: Vocabulary, text: str) -> np.ndarray:
    """Token ids of a prime: characters, or whitespace-separated words (no ``<eos>`` added).

    Raises:
      ValueError: an empty prime, or characters (words, when the vocabulary has no ``<unk>``)
        that the vocabulary lacks; the message lists them.
      TypeError: ``text`` is not a str or ``vocab`` not a :class:`Vocabulary`.
    """
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a seqjax.data.Vocabulary, got {type(vocab).__name__}")
    if not isinstance(text, str):
        raise TypeError(f"the prime must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("the prime text is empty; give at least one token (e.g. '\\n')")
    if vocab.level == "char":
        missing = sorted(set(text) - set(vocab.tokens))
        if missing:
            raise ValueError(f"prime {text!r} holds characters not in the model's vocabulary: "
                             f"{missing} (the vocabulary has {len(vocab)} characters)")
        return vocab.encode(text)
    words: list[str] = []
    for i, line in enumerate(text.split("\n")):
        if i > 0:
            words.append(EOS)  # a line break in the prime ends a sentence
        words.extend(line.split())
    unk = vocab.index.get(UNK)
    missing = sorted({w for w in words if w not in vocab.index})
    if missing and unk is None:
        raise ValueError(f"prime {text!r} holds words not in the vocabulary: {missing}")
    if not words:
        raise ValueError(f"the prime {text!r} holds no words")
    return np.array([vocab.index.get(w, unk) for w in words], np.int32)


def decode_tokens(vocab: Vocabulary, ids: Any) -> str:
    """Text of generated ids; at word level ``<eos>`` becomes a line break.

    Raises:
      ValueError: ids outside ``[0, len(vocab))`` (see :meth:`Vocabulary.decode`).
    """
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a seqjax.data.Vocabulary, got {type(vocab).__name__}")
    if vocab.level == "char":
        return vocab.decode(ids)
    return vocab.decode(ids).replace(" <eos> ", "\n").replace("<eos>", "\n")


def sample_text(
    model: Any,
    params: Any,
    vocab: Vocabulary,
    prime: str,
    num: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    seed: int = 0,
) -> str:
    """``prime`` followed by ``num`` sampled tokens, as text (see :func:`generate`)."""
    _check_model(model)
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a seqjax.data.Vocabulary, got {type(vocab).__name__}")
    if len(vocab) != model.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocab)} tokens, the model "
                         f"{model.vocab_size}")
    ids = encode_prime(vocab, prime)
    out = generate(model, params, ids, num, temperature=temperature, top_k=top_k,
                   greedy=greedy, seed=seed)[0]
    sep = "" if vocab.level == "char" else " "
    return prime + sep + decode_tokens(vocab, out)
