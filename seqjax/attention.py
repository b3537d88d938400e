"""Attention over padded encoder states: additive (Bahdanau) and multiplicative (Luong).

A decoder query ``q [B, Q]`` attends over encoder states ``keys [B, S, K]`` (the values are the
keys, as in Bahdanau et al. 2014 and Luong et al. 2015) with a source mask ``mask [B, S]``
(``True`` on valid positions). Scores by kind:

.. math::
    \\text{additive (Bahdanau):}\\quad e_s &= v^\\top \\tanh(W_q q + W_k k_s + b) \\\\
    \\text{dot (Luong):}\\quad e_s &= q^\\top k_s \\qquad (Q = K) \\\\
    \\text{general (Luong):}\\quad e_s &= q^\\top W k_s

then a masked softmax and the context

.. math::
    a_s = \\frac{m_s \\exp(e_s - \\max_{s': m_{s'}} e_{s'})}{\\sum_{s'} m_{s'}
          \\exp(e_{s'} - \\max e)}, \\qquad c = \\sum_s a_s k_s .

Masked positions get exactly zero weight (their scores never enter an ``exp``, so they cannot
change the context, nor produce NaN gradients); a row with no valid position gets all-zero
weights and a zero context.

The key-side half of the score (``W_k k_s`` or ``W k_s``) does not depend on the decoder step:
:meth:`Attention.precompute` computes it once per source sentence, and :meth:`Attention.attend`
uses it at every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.cells import glorot_uniform

Array = jax.Array

__all__ = ["Attention", "KINDS", "masked_softmax", "attention"]

#: Score functions; ``"luong"`` is an alias of ``"general"``, ``"additive"`` of ``"bahdanau"``.
KINDS = ("bahdanau", "dot", "general")
_ALIASES = {"luong": "general", "additive": "bahdanau", "concat": "bahdanau"}


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax of ``scores [..., S]`` over the positions where ``mask [..., S]`` is ``True``.

    Masked positions get exactly 0; an all-masked row gets all zeros (not NaN). Masked scores are
    replaced before the ``exp``, so gradients stay finite whatever their values (inf included).
    """
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    mask = jnp.broadcast_to(mask, scores.shape)
    peak = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    shifted = jnp.where(mask, scores - peak, 0.0)
    e = jnp.where(mask, jnp.exp(shifted), 0.0)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


@dataclasses.dataclass(frozen=True)
class Attention:
    """Attention of a decoder query over encoder states, a frozen (hashable) config.

    Args:
      kind: ``"bahdanau"`` (additive, alias ``"additive"``), ``"dot"`` or ``"general"`` (alias
        ``"luong"``).
      query_size: ``Q``, the decoder state size.
      key_size: ``K``, the encoder state size (``2H`` for a concatenating bidirectional encoder).
      attn_size: ``A``, the hidden size of the additive score (default ``query_size``).

    Params: additive ``{"w_q": [Q, A], "w_k": [K, A], "b": [A], "v": [A]}``; general
    ``{"w": [Q, K]}``; dot ``{}``.
    """

    kind: str
    query_size: int
    key_size: int
    attn_size: int = 0

    def __post_init__(self):
        kind = _ALIASES.get(self.kind, self.kind)
        if kind not in KINDS:
            valid = sorted(set(KINDS) | set(_ALIASES))
            raise ValueError(f"Attention.kind={self.kind!r} must be one of {valid}")
        object.__setattr__(self, "kind", kind)
        for name in ("query_size", "key_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Attention.{name} must be a positive int, got {value!r}")
        if not isinstance(self.attn_size, int) or self.attn_size < 0:
            raise ValueError(f"Attention.attn_size must be an int >= 0, got {self.attn_size!r}")
        if kind == "dot" and self.query_size != self.key_size:
            raise ValueError(f"dot attention needs query_size == key_size, got "
                             f"query_size={self.query_size}, key_size={self.key_size}; use "
                             f"'general'")

    @property
    def hidden(self) -> int:
        return self.attn_size or self.query_size

    def init(self, key: Array, dtype: Any = jnp.float32) -> dict[str, Array]:
        """Glorot-uniform weights, zero bias; ``v ~ U(-1/sqrt(A), 1/sqrt(A))``."""
        kq, kk, kv = jax.random.split(key, 3)
        q, k, a = self.query_size, self.key_size, self.hidden
        if self.kind == "bahdanau":
            bound = 1.0 / jnp.sqrt(a)
            return {"w_q": glorot_uniform(kq, (q, a), dtype),
                    "w_k": glorot_uniform(kk, (k, a), dtype),
                    "b": jnp.zeros((a,), dtype),
                    "v": jax.random.uniform(kv, (a,), dtype, -bound, bound)}
        if self.kind == "general":
            return {"w": glorot_uniform(kq, (q, k), dtype)}
        return {}

    def precompute(self, params: dict, keys: Array) -> Array:
        """The query-independent half of the score for ``keys [B, S, K]``.

        Additive: ``keys @ w_k + b [B, S, A]``; general: ``keys @ w.T [B, S, Q]``; dot: ``keys``.
        """
        if self.kind == "bahdanau":
            return keys @ params["w_k"] + params["b"]
        if self.kind == "general":
            return keys @ params["w"].T
        return keys

    def scores(self, params: dict, query: Array, pre: Array) -> Array:
        """Scores ``e [B, S]`` of ``query [B, Q]`` against precomputed keys ``pre``."""
        if self.kind == "bahdanau":
            hid = jnp.tanh(pre + (query @ params["w_q"])[:, None, :])
            return hid @ params["v"]
        return jnp.einsum("bq,bsq->bs", query, pre)

    def attend(self, params: dict, query: Array, keys: Array, pre: Array,
               mask: Array | None) -> tuple[Array, Array]:
        """``(context [B, K], weights [B, S])`` from precomputed ``pre`` (see :meth:`precompute`).
        """
        weights = masked_softmax(self.scores(params, query, pre), mask)
        context = jnp.einsum("bs,bsk->bk", weights, keys)
        return context, weights

    def apply(self, params: dict, query: Array, keys: Array,
              mask: Array | None = None) -> tuple[Array, Array]:
        """Attend: ``query [B, Q]``, ``keys [B, S, K]``, ``mask [B, S]`` bool (``True``: valid).

        Returns:
          ``(context [B, K], weights [B, S])``; weights sum to 1 over the valid positions of a
          row and are 0 elsewhere (all 0 for a row without valid positions).

        Raises:
          ValueError: naming the argument whose shape does not match.
        """
        query, keys = jnp.asarray(query), jnp.asarray(keys)
        if query.ndim != 2 or query.shape[1] != self.query_size:
            raise ValueError(f"query.shape={tuple(query.shape)} must be [B, {self.query_size}]")
        if keys.ndim != 3 or keys.shape[0] != query.shape[0] or keys.shape[2] != self.key_size:
            raise ValueError(f"keys.shape={tuple(keys.shape)} must be "
                             f"[{query.shape[0]}, S, {self.key_size}]")
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != keys.shape[:2]:
                raise ValueError(f"mask.shape={tuple(mask.shape)} must be {tuple(keys.shape[:2])}"
                                 f" (keys.shape={tuple(keys.shape)})")
            mask = mask.astype(bool)
        return self.attend(params, query, keys, self.precompute(params, keys), mask)


def attention(kind: str, params: dict, query: Array, keys: Array,
              mask: Array | None = None, attn_size: int = 0) -> tuple[Array, Array]:
    """Functional shortcut: ``Attention(kind, Q, K, attn_size).apply(params, query, keys, mask)``.
    """
    query, keys = jnp.asarray(query), jnp.asarray(keys)
    if query.ndim != 2 or keys.ndim != 3:
        raise ValueError(f"query.shape={tuple(query.shape)} must be [B, Q] and "
                         f"keys.shape={tuple(keys.shape)} [B, S, K]")
    att = Attention(kind, int(query.shape[1]), int(keys.shape[2]), attn_size)
    return att.apply(params, query, keys, mask)
