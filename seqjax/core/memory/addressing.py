r"""Differentiable memory addressing of the Neural Turing Machine (Graves, Wayne & Danihelka
2014, section 3.3), batched over heads. Every function is pure ``jnp`` with a leading
``[B, K]`` (batch, heads) and a memory of ``N`` rows of width ``W``.

The four stages of one head's weighting :math:`w_t` over memory rows:

.. math::

    w^c_t(i) &= \operatorname{softmax}_i\big(\beta_t\,K[k_t, M_t(i)]\big),
      \qquad K[u, v] = \frac{u \cdot v}{\lVert u\rVert\,\lVert v\rVert}
      &&\text{(content, 3.3.1)} \\
    w^g_t &= g_t\, w^c_t + (1 - g_t)\, w_{t-1} &&\text{(interpolation)} \\
    \tilde w_t(i) &= \textstyle\sum_{j} w^g_t(j)\, s_t(i - j) &&\text{(circular shift)} \\
    w_t(i) &= \tilde w_t(i)^{\gamma_t} \big/ \textstyle\sum_j \tilde w_t(j)^{\gamma_t}
      &&\text{(sharpening)}

Numerical guards: norms are :math:`\sqrt{\lVert u\rVert^2 + \epsilon}` (finite gradients for a
zero memory or key) and sharpening raises :math:`\tilde w + \epsilon` to :math:`\gamma`.

Every function checks the ranks and the shared axes of its arguments (statically, so also under
``jit`` at trace time) and raises ``ValueError`` naming the argument, the expected and the
received shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax.core.cells import check_dims

Array = jax.Array

__all__ = [
    "EPS",
    "cosine_similarity",
    "content_weighting",
    "interpolate",
    "circular_shift",
    "sharpen",
    "ntm_address",
    "read",
    "erase_and_add",
]

#: The epsilon of the guarded norms and of sharpening.
EPS = 1e-6


def cosine_similarity(memory: Array, keys: Array, eps: float = EPS) -> Array:
    """``K[k, M(i)]`` for every head and row.

    Args:
      memory: ``[B, N, W]``.
      keys: ``[B, K, W]``.

    Returns:
      ``[B, K, N]``: ``k . M(i) / (sqrt(|k|^2 + eps) sqrt(|M(i)|^2 + eps))``.
    """
    check_dims(memory=(memory, "B N W"), keys=(keys, "B K W"))
    dot = jnp.einsum("bkw,bnw->bkn", keys, memory)
    key_norm = jnp.sqrt(jnp.sum(keys * keys, axis=-1) + eps)  # [B, K]
    mem_norm = jnp.sqrt(jnp.sum(memory * memory, axis=-1) + eps)  # [B, N]
    return dot / (key_norm[:, :, None] * mem_norm[:, None, :])


def content_weighting(memory: Array, keys: Array, strengths: Array, eps: float = EPS) -> Array:
    """``softmax_i(beta K[k, M(i)])``: ``memory [B, N, W]``, ``keys [B, K, W]``,
    ``strengths [B, K]`` (``>= 0``) -> ``[B, K, N]``."""
    check_dims(memory=(memory, "B N W"), keys=(keys, "B K W"), strengths=(strengths, "B K"))
    return jax.nn.softmax(strengths[..., None] * cosine_similarity(memory, keys, eps), axis=-1)


def interpolate(w_content: Array, w_prev: Array, gate: Array) -> Array:
    """``g w^c + (1 - g) w_{t-1}``: weightings ``[B, K, N]``, ``gate [B, K]`` in ``[0, 1]``."""
    check_dims(w_content=(w_content, "B K N"), w_prev=(w_prev, "B K N"), gate=(gate, "B K"))
    g = gate[..., None]
    return g * w_content + (1.0 - g) * w_prev


def circular_shift(w: Array, shift: Array) -> Array:
    """Circular convolution of ``w [B, K, N]`` with a shift distribution ``shift [B, K, S]``.

    ``S = 2 r + 1`` covers the offsets ``-r .. r`` (index ``r`` is "stay"); offset ``+1`` moves
    the weighting one row forward: ``out(i) = sum_k shift(k) w(i - offset_k mod N)``.
    """
    s = check_dims(w=(w, "B K N"), shift=(shift, "B K S"))["S"]
    if s % 2 != 1:
        raise ValueError(f"shift.shape[-1]={s} must be odd (offsets -r..r)")
    r = s // 2
    return sum(shift[..., k, None] * jnp.roll(w, k - r, axis=-1) for k in range(s))


def sharpen(w: Array, gamma: Array, eps: float = EPS) -> Array:
    """``(w + eps)^gamma`` renormalised: ``w [B, K, N]``, ``gamma [B, K]`` (``>= 1``)."""
    check_dims(w=(w, "B K N"), gamma=(gamma, "B K"))
    p = jnp.power(w + eps, gamma[..., None])
    return p / jnp.sum(p, axis=-1, keepdims=True)


def ntm_address(
    memory: Array,
    w_prev: Array,
    keys: Array,
    strengths: Array,
    gates: Array,
    shifts: Array,
    gammas: Array,
    eps: float = EPS,
) -> Array:
    """The NTM weighting of ``K`` heads: content -> interpolation -> shift -> sharpening.

    Args:
      memory: ``[B, N, W]``.
      w_prev: ``[B, K, N]`` previous weightings.
      keys: ``[B, K, W]``; strengths, gates, gammas: ``[B, K]``; shifts: ``[B, K, S]``.

    Returns:
      ``[B, K, N]`` weightings (each sums to 1).
    """
    check_dims(memory=(memory, "B N W"), w_prev=(w_prev, "B K N"), keys=(keys, "B K W"),
               strengths=(strengths, "B K"), gates=(gates, "B K"), shifts=(shifts, "B K S"),
               gammas=(gammas, "B K"))
    w = content_weighting(memory, keys, strengths, eps)
    w = interpolate(w, w_prev, gates)
    w = circular_shift(w, shifts)
    return sharpen(w, gammas, eps)


def read(memory: Array, weights: Array) -> Array:
    """``r = sum_i w(i) M(i)``: ``memory [B, N, W]``, ``weights [B, K, N]`` -> ``[B, K, W]``."""
    check_dims(memory=(memory, "B N W"), weights=(weights, "B K N"))
    return jnp.einsum("bkn,bnw->bkw", weights, memory)


def erase_and_add(memory: Array, weights: Array, erase: Array, add: Array) -> Array:
    r"""The NTM write of ``K`` heads at once (section 3.2):
    :math:`M_t = M_{t-1} \circ \prod_k (1 - w_k e_k^\top) + \sum_k w_k a_k^\top`.

    Args:
      memory: ``[B, N, W]``.
      weights: ``[B, K, N]``.
      erase: ``[B, K, W]`` in ``[0, 1]``.
      add: ``[B, K, W]``.
    """
    check_dims(memory=(memory, "B N W"), weights=(weights, "B K N"), erase=(erase, "B K W"),
               add=(add, "B K W"))
    keep = jnp.prod(1.0 - weights[..., :, None] * erase[..., None, :], axis=1)  # [B, N, W]
    return memory * keep + jnp.einsum("bkn,bkw->bnw", weights, add)
