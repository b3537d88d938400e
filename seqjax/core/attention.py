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
weights and a zero context. The keys (and precomputed keys) at masked positions are replaced by
zeros with ``jnp.where`` before they are used, so padding holding NaN or inf changes neither
the context nor any gradient.

Every public function validates its arguments on static shapes (also under ``jit``, at trace
time) and raises ``ValueError``/``TypeError`` naming the argument, the expected and the received
shape or dtype; a mask must be boolean (or integer 0/1): a float mask (e.g. an additive
``0/-inf`` mask) is a ``TypeError``, not silently reinterpreted.

The key-side half of the score (``W_k k_s`` or ``W k_s``) does not depend on the decoder step:
:meth:`Attention.precompute` computes it once per source sentence, and :meth:`Attention.attend`
uses it at every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import check_array, check_key, check_tree, dtype_of, glorot_uniform, shape_of

Array = jax.Array

__all__ = ["Attention", "KINDS", "masked_softmax", "attention"]

#: Score functions; ``"luong"`` is an alias of ``"general"``, ``"additive"`` of ``"bahdanau"``.
KINDS = ("bahdanau", "dot", "general")
_ALIASES = {"luong": "general", "additive": "bahdanau", "concat": "bahdanau"}


def _as_mask(mask: Any, expected: tuple[int, ...], what: str) -> Array:
    """``mask`` validated (bool or integer dtype, shape ``expected``) as a bool array."""
    shape = shape_of(mask, "mask")
    dtype = dtype_of(mask, "mask")
    if not (jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.integer)):
        raise TypeError(f"mask.dtype={dtype} must be bool (True on valid positions) or integer "
                        f"0/1; a float (additive) mask is not accepted")
    if shape != tuple(expected):
        raise ValueError(f"mask.shape={shape} must be {tuple(expected)} ({what})")
    return jnp.asarray(mask).astype(bool)


def masked_softmax(scores: Array, mask: Array | None) -> Array:
    """Softmax of ``scores [..., S]`` over the positions where ``mask [..., S]`` is ``True``.

    Masked positions get exactly 0; an all-masked row gets all zeros (not NaN). Masked scores are
    replaced before the ``exp``, so gradients stay finite whatever their values (inf included).
    ``mask`` must broadcast to ``scores.shape`` and be bool (or integer 0/1).

    Raises:
      ValueError / TypeError: naming ``scores`` or ``mask`` and the shapes/dtypes.
    """
    s_shape = shape_of(scores, "scores")
    if not s_shape:
        raise ValueError(f"scores.shape={s_shape} must be [..., S] (rank >= 1)")
    if not jnp.issubdtype(dtype_of(scores, "scores"), jnp.floating):
        raise TypeError(f"scores.dtype={dtype_of(scores, 'scores')} must be floating")
    scores = jnp.asarray(scores)
    if mask is None:
        return jax.nn.softmax(scores, axis=-1)
    m_shape = shape_of(mask, "mask")
    try:
        ok = np.broadcast_shapes(m_shape, s_shape) == s_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"mask.shape={m_shape} must broadcast to scores.shape={s_shape}")
    mask = jnp.broadcast_to(_as_mask(mask, m_shape, "mask"), s_shape)
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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected parameter shapes: additive ``{"w_q": (Q, A), "w_k": (K, A), "b": (A,),
        "v": (A,)}``, general ``{"w": (Q, K)}``, dot ``{}``."""
        q, k, a = self.query_size, self.key_size, self.hidden
        if self.kind == "bahdanau":
            return {"w_q": (q, a), "w_k": (k, a), "b": (a,), "v": (a,)}
        if self.kind == "general":
            return {"w": (q, k)}
        return {}

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError``/``TypeError`` naming a missing or wrongly shaped parameter,
        e.g. ``params['w_q'].shape=(3, 8) must be (4, 8)``."""
        check_tree(params, self.param_shapes(), "params", self)

    @property
    def _pre_size(self) -> int:
        """Width of :meth:`precompute`'s output."""
        return self.hidden if self.kind == "bahdanau" else self.query_size

    def _check_query_keys(self, query: Any, keys: Any) -> tuple[int, int]:
        q_shape = check_array(query, "query", ("B", self.query_size), floating=True)
        batch = q_shape[0]
        k_shape = shape_of(keys, "keys")
        if len(k_shape) != 3 or k_shape[0] != batch or k_shape[2] != self.key_size:
            raise ValueError(f"keys.shape={k_shape} must be [{batch}, S, {self.key_size}] "
                             f"(query.shape={q_shape})")
        check_array(keys, "keys", (batch, "S", self.key_size), floating=True)
        return batch, k_shape[1]

    def init(self, key: Array, dtype: Any = jnp.float32) -> dict[str, Array]:
        """Glorot-uniform weights, zero bias; ``v ~ U(-1/sqrt(A), 1/sqrt(A))``."""
        check_key(key)
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

    def precompute(self, params: dict, keys: Array, mask: Array | None = None) -> Array:
        """The query-independent half of the score for ``keys [B, S, K]``.

        Additive: ``keys @ w_k + b [B, S, A]``; general: ``keys @ w.T [B, S, Q]``; dot: ``keys``.
        With ``mask [B, S]`` the keys at masked positions are replaced by zeros first.
        """
        self.check_params(params)
        k_shape = check_array(keys, "keys", ("B", "S", self.key_size), floating=True)
        keys = jnp.asarray(keys)
        if mask is not None:
            mask = _as_mask(mask, k_shape[:2], f"keys.shape={k_shape}")
            keys = jnp.where(mask[..., None], keys, jnp.zeros((), keys.dtype))
        return self._precompute(params, keys)

    def _precompute(self, params: dict, keys: Array) -> Array:
        if self.kind == "bahdanau":
            return keys @ params["w_k"] + params["b"]
        if self.kind == "general":
            return keys @ params["w"].T
        return keys

    def scores(self, params: dict, query: Array, pre: Array) -> Array:
        """Scores ``e [B, S]`` of ``query [B, Q]`` against precomputed keys ``pre [B, S, *]``."""
        self.check_params(params)
        q_shape = check_array(query, "query", ("B", self.query_size), floating=True)
        check_array(pre, "pre", (q_shape[0], "S", self._pre_size), floating=True)
        return self._scores(params, jnp.asarray(query), jnp.asarray(pre))

    def _scores(self, params: dict, query: Array, pre: Array) -> Array:
        if self.kind == "bahdanau":
            hid = jnp.tanh(pre + (query @ params["w_q"])[:, None, :])
            return hid @ params["v"]
        return jnp.einsum("bq,bsq->bs", query, pre)

    def attend(self, params: dict, query: Array, keys: Array, pre: Array,
               mask: Array | None) -> tuple[Array, Array]:
        """``(context [B, K], weights [B, S])`` from precomputed ``pre`` (see :meth:`precompute`).

        ``query [B, Q]``, ``keys [B, S, K]``, ``pre [B, S, *]``, ``mask [B, S]`` (or ``None``).
        Masked positions of ``keys`` and ``pre`` are replaced by zeros before use.

        Raises:
          ValueError / TypeError: naming the argument whose shape or dtype does not match.
        """
        self.check_params(params)
        batch, src = self._check_query_keys(query, keys)
        check_array(pre, "pre", (batch, src, self._pre_size), floating=True)
        if mask is not None:
            mask = _as_mask(mask, (batch, src), f"keys.shape={shape_of(keys, 'keys')}")
        return self._attend(params, jnp.asarray(query), jnp.asarray(keys), jnp.asarray(pre),
                            mask)

    def _attend(self, params, query, keys, pre, mask, zero_masked: bool = True):
        """:meth:`attend` without validation; ``zero_masked=False`` when ``keys`` and ``pre``
        are known to hold zeros (finite values) at masked positions already."""
        if mask is not None and zero_masked:  # NaN/inf there must not reach values or grads
            keys = jnp.where(mask[..., None], keys, jnp.zeros((), keys.dtype))
            pre = jnp.where(mask[..., None], pre, jnp.zeros((), pre.dtype))
        weights = masked_softmax(self._scores(params, query, pre), mask)
        context = jnp.einsum("bs,bsk->bk", weights, keys)
        return context, weights

    def apply(self, params: dict, query: Array, keys: Array,
              mask: Array | None = None) -> tuple[Array, Array]:
        """Attend: ``query [B, Q]``, ``keys [B, S, K]``, ``mask [B, S]`` bool (``True``: valid).

        Returns:
          ``(context [B, K], weights [B, S])``; weights sum to 1 over the valid positions of a
          row and are 0 elsewhere (all 0 for a row without valid positions). Keys at masked
          positions (NaN or inf included) change neither the result nor any gradient.

        Raises:
          ValueError: naming the argument whose shape does not match (``params`` by path).
          TypeError: a non-floating query/keys, or a mask that is not bool/integer.
        """
        self.check_params(params)
        batch, src = self._check_query_keys(query, keys)
        query, keys = jnp.asarray(query), jnp.asarray(keys)
        if mask is not None:
            mask = _as_mask(mask, (batch, src), f"keys.shape={tuple(keys.shape)}")
            keys = jnp.where(mask[..., None], keys, jnp.zeros((), keys.dtype))
        return self._attend(params, query, keys, self._precompute(params, keys), mask)


def attention(kind: str, params: dict, query: Array, keys: Array,
              mask: Array | None = None, attn_size: int = 0) -> tuple[Array, Array]:
    """Functional shortcut: ``Attention(kind, Q, K, attn_size).apply(params, query, keys, mask)``
    for ``query [B, Q]``, ``keys [B, S, K]``, ``mask [B, S]``.
    """
    q_shape, k_shape = shape_of(query, "query"), shape_of(keys, "keys")
    if len(q_shape) != 2 or len(k_shape) != 3:
        raise ValueError(f"query.shape={q_shape} must be [B, Q] and keys.shape={k_shape} "
                         f"[B, S, K]")
    att = Attention(kind, int(q_shape[1]), int(k_shape[2]), attn_size)
    return att.apply(params, query, keys, mask)
