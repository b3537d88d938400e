r"""The Differentiable Neural Computer (Graves et al. 2016, *Hybrid computing using a neural
network with dynamic external memory*, Nature 538, Methods) as a :class:`seqjax.core.cells.Cell`.

One write head and ``R`` read heads over a memory ``M [N, W]``. On top of the NTM's content
addressing the DNC keeps

* a *usage* ``u [N]`` per row (raised by writing, lowered by reads whose free gate is open), from
  which the write head can *allocate* the least used row;
* a *temporal link matrix* ``L [N, N]`` (``L[i, j]``: how much row ``i`` was written right after
  row ``j``) and a *precedence* ``p [N]`` (how much each row was the last written), so that a
  read head can step *forward* or *backward* in the order of writes.

The step follows DeepMind's reference implementation (``dnc/access.py``, ``dnc/addressing.py``):
update usage, write, update the links, then read. Every piece is a pure function of this module,
batched over ``[B]`` (and over read heads where there are several):

* :func:`usage_update`: usage from the previous weightings and the free gates;
* :func:`allocation_weighting`: the allocation weighting from the usage (a sort);
* :func:`write_weighting`: the gated mix of allocation and content;
* :func:`link_update`: the temporal link matrix;
* :func:`precedence_update`: the precedence weighting;
* :func:`directional_weightings`: the read heads' forward and backward weightings;
* :func:`read_weighting`: the read modes' mix of backward, content and forward.

The memory write is :func:`seqjax.core.memory.addressing.erase_and_add` with one head, the content
weightings :func:`seqjax.core.memory.addressing.content_weighting` and the reads
:func:`seqjax.core.memory.addressing.read`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from seqjax.core.cells import check_batch, check_dims, dtype_of
from seqjax.core.memory import addressing
from seqjax.core.memory.base import MemoryCell, oneplus

Array = jax.Array

__all__ = [
    "DNC",
    "DNCState",
    "EPS_ALLOC",
    "usage_update",
    "allocation_weighting",
    "write_weighting",
    "link_update",
    "precedence_update",
    "directional_weightings",
    "read_weighting",
]

#: Usage is mapped to ``EPS_ALLOC + (1 - EPS_ALLOC) u`` before the allocation's cumulative
#: product, so that a fully free memory still gives finite, non-degenerate gradients
#: (DeepMind's ``_EPSILON``).
EPS_ALLOC = 1e-6


# ------------------------------------------------------------------------------------------
# Dynamic memory allocation
# ------------------------------------------------------------------------------------------


def usage_update(usage: Array, write_weights: Array, free_gates: Array,
                 read_weights: Array) -> Array:
    r"""The usage after the previous step's write and this step's frees.

    .. math::

        \psi_t = \textstyle\prod_{i=1}^R (1 - f^i_t\, w^{r,i}_{t-1}), \qquad
        u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} \circ w^w_{t-1}) \circ \psi_t

    As in DeepMind's code, no gradient flows into ``write_weights`` through the usage
    (``stop_gradient``); it still flows into ``free_gates``, ``read_weights`` and ``usage``.

    Args:
      usage: ``[B, N]`` :math:`u_{t-1}`, in ``[0, 1]``.
      write_weights: ``[B, N]`` :math:`w^w_{t-1}`.
      free_gates: ``[B, R]`` :math:`f_t`, in ``[0, 1]``.
      read_weights: ``[B, R, N]`` :math:`w^r_{t-1}`.

    Returns:
      ``[B, N]`` :math:`u_t`.
    """
    check_dims(usage=(usage, "B N"), write_weights=(write_weights, "B N"),
               free_gates=(free_gates, "B R"), read_weights=(read_weights, "B R N"))
    write_weights = jax.lax.stop_gradient(write_weights)
    usage = usage + write_weights - usage * write_weights
    retention = jnp.prod(1.0 - free_gates[..., None] * read_weights, axis=-2)  # psi [B, N]
    return usage * retention


def _product_with_zeros(before: Array, usage: Array) -> Array:
    r""":math:`\prod_{i:\ before[i, j]} u_i` for every ``j`` when some ``u_i`` may be exactly 0
    (``eps = 0``): finite values and exact gradients, as the sort's cumulative product gives.

    The log runs over the non-zero factors only (where-guarded: no ``log(0)`` in values or
    gradients) and the zero factors are counted. No zero before ``j``: ``exp(log-sum)``. One
    zero ``u_k``: the value is 0 and the derivative by ``u_k`` is the product of the others,
    ``exp(log-sum)`` (``at_zero`` is 0 in value and 1 in derivative). Two or more: 0, and every
    derivative 0.
    """
    zero = usage == 0
    log_u = jnp.log(jnp.where(zero, jnp.ones_like(usage), usage))
    log_before = jnp.einsum("...ij,...i->...j", before, log_u)
    zeros_before = jnp.einsum("...ij,...i->...j", before, zero.astype(usage.dtype))
    at_zero = jnp.einsum("...ij,...i->...j", before, jnp.where(zero, usage, 0.0))
    scale = jnp.where(zeros_before == 0, 1.0, jnp.where(zeros_before == 1, at_zero, 0.0))
    return jnp.exp(log_before) * scale


def allocation_weighting(usage: Array, eps: float = EPS_ALLOC, *,
                         method: str = "auto") -> Array:
    r"""Allocate the least used rows: with :math:`\phi` the rows sorted by ascending usage
    (the free list; ties go to the lower index first),

    .. math::

        a_t[\phi_j] = (1 - u_t[\phi_j]) \textstyle\prod_{i<j} u_t[\phi_i]

    computed on :math:`\epsilon + (1 - \epsilon)\, u_t` (DeepMind's guard: a fully free memory
    allocates ``1 - eps`` to row 0, ``(1 - eps) eps`` to row 1, ...).

    Two computations of the same quantity (they agree to float rounding; both are tested against
    a numpy sort):

    * ``"sort"``: sort, exclusive cumulative product, unsort (DeepMind's);
    * ``"pairwise"``: for every row ``j`` the product over the rows that precede it in the free
      list, ``exp(sum_i before[i, j] log u_i)``, with ``before[i, j] = u_i < u_j`` or (``u_i ==
      u_j`` and ``i < j``). No sort: ``O(N^2)`` work that vectorises; on a 2-core CPU, batch 16,
      3.9x faster than the sort forward and 3.7x backward at ``N = 128``, 2.3x at ``N = 512``
      (``benchmarks/memory.py``). Its ``[B, N, N]`` mask is kept for the backward pass, like
      the link matrix, hence the sort above ``N = 256``. With ``eps = 0`` (a usage of exactly 0
      possible) it takes a zero-safe form (no ``log(0)``; zero factors counted) whose values and
      gradients equal the sort's.

    Args:
      usage: ``[B, N]`` :math:`u_t`, in ``[0, 1]``.
      eps: the usage floor (``>= 0``; 0 allowed).
      method: ``"sort"``, ``"pairwise"`` or ``"auto"`` (pairwise for ``N <= 256``).

    Returns:
      ``[B, N]`` :math:`a_t` in memory order (sums to at most 1).
    """
    if method not in ("auto", "sort", "pairwise"):
        raise ValueError(f"method={method!r} must be 'auto', 'sort' or 'pairwise'")
    check_dims(usage=(usage, "... N"))
    if not jnp.issubdtype(dtype_of(usage, "usage"), jnp.floating):
        raise TypeError(f"usage.dtype={dtype_of(usage, 'usage')} must be floating")
    if isinstance(eps, bool) or (isinstance(eps, (int, float)) and not 0.0 <= eps < 1.0):
        raise ValueError(f"eps={eps!r} must be a float in [0, 1)")
    usage = eps + (1.0 - eps) * jnp.asarray(usage)
    n = usage.shape[-1]
    if method == "pairwise" or (method == "auto" and n <= 256):
        u_i, u_j = usage[..., :, None], usage[..., None, :]
        index = jnp.arange(n)
        before = ((u_i < u_j) | ((u_i == u_j) & (index[:, None] < index[None, :]))).astype(
            usage.dtype)
        if isinstance(eps, (int, float)) and eps >= float(jnp.finfo(usage.dtype).tiny):
            # usage >= eps > 0 for usage in [0, 1]: no factor is 0, the plain log-sum is safe
            return (1.0 - usage) * jnp.exp(jnp.einsum("...ij,...i->...j", before,
                                                      jnp.log(usage)))
        return (1.0 - usage) * _product_with_zeros(before, usage)
    order = jnp.argsort(usage, axis=-1, stable=True)  # phi: free list, [B, N]
    sorted_usage = jnp.take_along_axis(usage, order, axis=-1)
    ones = jnp.ones_like(sorted_usage[..., :1])
    before = jnp.cumprod(jnp.concatenate([ones, sorted_usage[..., :-1]], -1), axis=-1)
    sorted_alloc = (1.0 - sorted_usage) * before  # exclusive cumulative product
    inverse = jnp.argsort(order, axis=-1)  # the permutation back to memory order
    return jnp.take_along_axis(sorted_alloc, inverse, axis=-1)


def write_weighting(content: Array, allocation: Array, allocation_gate: Array,
                    write_gate: Array) -> Array:
    r"""The write head's weighting:
    :math:`w^w_t = g^w_t \big(g^a_t\, a_t + (1 - g^a_t)\, c^w_t\big)`.

    Args:
      content: ``[B, N]`` :math:`c^w_t`, the content weighting on :math:`M_{t-1}`.
      allocation: ``[B, N]`` :math:`a_t`.
      allocation_gate: ``[B]`` :math:`g^a_t`, in ``[0, 1]``.
      write_gate: ``[B]`` :math:`g^w_t`, in ``[0, 1]``.

    Returns:
      ``[B, N]`` :math:`w^w_t`.
    """
    check_dims(content=(content, "B N"), allocation=(allocation, "B N"),
               allocation_gate=(allocation_gate, "B"), write_gate=(write_gate, "B"))
    ga, gw = allocation_gate[..., None], write_gate[..., None]
    return gw * (ga * allocation + (1.0 - ga) * content)


# ------------------------------------------------------------------------------------------
# Temporal memory linkage
# ------------------------------------------------------------------------------------------


def link_update(link: Array, precedence: Array, write_weights: Array) -> Array:
    r"""The temporal link matrix, with :math:`p_{t-1}` the *previous* precedence:

    .. math::

        L_t[i, j] = (1 - w^w_t[i] - w^w_t[j])\, L_{t-1}[i, j] + w^w_t[i]\, p_{t-1}[j],
        \qquad L_t[i, i] = 0

    Args:
      link: ``[B, N, N]`` :math:`L_{t-1}`.
      precedence: ``[B, N]`` :math:`p_{t-1}`.
      write_weights: ``[B, N]`` :math:`w^w_t`.

    Returns:
      ``[B, N, N]`` :math:`L_t`.
    """
    check_dims(link=(link, "B N N"), precedence=(precedence, "B N"),
               write_weights=(write_weights, "B N"))
    w_i, w_j = write_weights[..., :, None], write_weights[..., None, :]
    new = (1.0 - w_i - w_j) * link + w_i * precedence[..., None, :]
    n = link.shape[-1]
    return new * (1.0 - jnp.eye(n, dtype=new.dtype))


def precedence_update(precedence: Array, write_weights: Array) -> Array:
    r""":math:`p_t = (1 - \sum_i w^w_t[i])\, p_{t-1} + w^w_t`.

    Args:
      precedence: ``[B, N]`` :math:`p_{t-1}`.
      write_weights: ``[B, N]`` :math:`w^w_t`.

    Returns:
      ``[B, N]`` :math:`p_t`.
    """
    check_dims(precedence=(precedence, "B N"), write_weights=(write_weights, "B N"))
    return (1.0 - jnp.sum(write_weights, -1, keepdims=True)) * precedence + write_weights


def directional_weightings(link: Array, read_weights: Array) -> tuple[Array, Array]:
    r"""Step every read head one write forward or backward:
    :math:`f^i_t = L_t\, w^{r,i}_{t-1}`, :math:`b^i_t = L_t^\top w^{r,i}_{t-1}`.

    Args:
      link: ``[B, N, N]`` :math:`L_t`.
      read_weights: ``[B, R, N]`` :math:`w^r_{t-1}`.

    Returns:
      ``(forward, backward)``, each ``[B, R, N]``.
    """
    check_dims(link=(link, "B N N"), read_weights=(read_weights, "B R N"))
    forward = jnp.einsum("bij,brj->bri", link, read_weights)
    backward = jnp.einsum("bij,bri->brj", link, read_weights)
    return forward, backward


def read_weighting(modes: Array, backward: Array, content: Array, forward: Array) -> Array:
    r""":math:`w^{r,i}_t = \pi^i_t[0]\, b^i_t + \pi^i_t[1]\, c^{r,i}_t + \pi^i_t[2]\, f^i_t`.

    Args:
      modes: ``[B, R, 3]`` :math:`\pi_t` (each row a distribution over backward, content,
        forward).
      backward: ``[B, R, N]`` :math:`b_t`.
      content: ``[B, R, N]`` :math:`c^r_t`.
      forward: ``[B, R, N]`` :math:`f_t`.

    Returns:
      ``[B, R, N]`` :math:`w^r_t`.
    """
    check_dims(modes=(modes, "B R 3"), backward=(backward, "B R N"), content=(content, "B R N"),
               forward=(forward, "B R N"))
    return (modes[..., 0:1] * backward + modes[..., 1:2] * content
            + modes[..., 2:3] * forward)


# ------------------------------------------------------------------------------------------
# The cell
# ------------------------------------------------------------------------------------------


class DNCState(NamedTuple):
    """The DNC's carry (every field batch-major).

    Attributes:
      controller: the controller cell's carry (an LSTM's ``(h, c)``).
      memory: ``[B, N, W]`` :math:`M_t`.
      usage: ``[B, N]`` :math:`u_t`.
      link: ``[B, N, N]`` :math:`L_t`.
      precedence: ``[B, N]`` :math:`p_t`.
      read_weights: ``[B, R, N]`` :math:`w^r_t`.
      write_weights: ``[B, N]`` :math:`w^w_t`.
      reads: ``[B, R, W]`` :math:`r_t`.
    """

    controller: Any
    memory: Array
    usage: Array
    link: Array
    precedence: Array
    read_weights: Array
    write_weights: Array
    reads: Array


@dataclasses.dataclass(frozen=True)
class DNC(MemoryCell):
    r"""Differentiable Neural Computer cell (one write head); output ``[h_t, r_t]`` of width
    ``H + R W``.

    The interface vector :math:`\xi_t` (length ``P = R W + 3 W + 5 R + 3``) splits, in this
    order, into read keys :math:`k^r [R, W]`, read strengths :math:`\beta^r [R]` (oneplus),
    write key :math:`k^w [W]`, write strength :math:`\beta^w` (oneplus), erase :math:`e [W]`
    (sigmoid), write vector :math:`v [W]`, free gates :math:`f [R]` (sigmoid), allocation gate
    :math:`g^a` (sigmoid), write gate :math:`g^w` (sigmoid) and read modes :math:`\pi [R, 3]`
    (softmax over backward, content, forward); keys and write vector are linear. Then, with
    :math:`\mathcal{C}(M, k, \beta) = \operatorname{softmax}(\beta \cos(k, M(\cdot)))`:

    .. math::

        \psi_t &= \textstyle\prod_i (1 - f^i_t\, w^{r,i}_{t-1}), \quad
          u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} \circ w^w_{t-1}) \circ \psi_t
          &&\text{(usage)} \\
        a_t[\phi_j] &= (1 - u_t[\phi_j]) \textstyle\prod_{i<j} u_t[\phi_i]
          &&\text{(allocation, } \phi \text{ sorts } u_t \text{ ascending)} \\
        w^w_t &= g^w_t \big(g^a_t\, a_t + (1 - g^a_t)\, \mathcal{C}(M_{t-1}, k^w_t, \beta^w_t)\big)
          &&\text{(write weighting)} \\
        M_t &= M_{t-1} \circ (1 - w^w_t e_t^\top) + w^w_t v_t^\top &&\text{(write)} \\
        L_t[i, j] &= (1 - w^w_t[i] - w^w_t[j])\, L_{t-1}[i, j] + w^w_t[i]\, p_{t-1}[j],
          \quad L_t[i, i] = 0 &&\text{(links)} \\
        p_t &= (1 - \textstyle\sum_i w^w_t[i])\, p_{t-1} + w^w_t &&\text{(precedence)} \\
        f^i_t &= L_t\, w^{r,i}_{t-1}, \quad b^i_t = L_t^\top w^{r,i}_{t-1}
          &&\text{(forward, backward)} \\
        w^{r,i}_t &= \pi^i_t[0]\, b^i_t + \pi^i_t[1]\, \mathcal{C}(M_t, k^{r,i}_t, \beta^{r,i}_t)
          + \pi^i_t[2]\, f^i_t &&\text{(read weighting)} \\
        r^i_t &= M_t^\top w^{r,i}_t &&\text{(read)}

    The initial carry has every memory cell at ``memory_init`` and everything else zero: usage,
    links, precedence and all weightings, and the read vectors (the read of the initial memory
    with zero weightings). The allocation uses ``EPS_ALLOC + (1 - EPS_ALLOC) u_t``
    (:func:`allocation_weighting`) and no gradient flows through the usage into the previous
    write weighting (:func:`usage_update`), both as in DeepMind's code.

    Args:
      input_size: ``D``.
      controller_size: ``H``, the controller's hidden size.
      memory_size: ``N`` rows.
      word_size: ``W``.
      num_reads: ``R`` read heads.
      controller: a :func:`seqjax.core.cells.make_cell` kind (``"lstm"``, ``"gru"``, ``"rnn"``,
        ...).
      memory_init: the constant every memory cell starts at.
      clip_value: the interface vector is clipped to ``[-clip_value, clip_value]`` (``None``:
        no clipping).

    Params: ``{"controller": {...}, "interface": {"w": [H, P], "b": [P]}}``.
    """

    input_size: int
    controller_size: int = 64
    memory_size: int = 32
    word_size: int = 16
    num_reads: int = 4
    controller: str = "lstm"
    memory_init: float = 1e-6
    clip_value: float | None = 20.0

    def __post_init__(self):
        self._check_fields()

    def _sizes(self) -> list[tuple[str, tuple[int, ...]]]:
        """The interface's fields in order, with their shapes (without the batch)."""
        r, w = self.num_reads, self.word_size
        return [("read_keys", (r, w)), ("read_strengths", (r,)), ("write_key", (w,)),
                ("write_strength", ()), ("erase", (w,)), ("write_vector", (w,)),
                ("free_gates", (r,)), ("allocation_gate", ()), ("write_gate", ()),
                ("read_modes", (r, 3))]

    def split_interface(self, xi: Array) -> dict[str, Array]:
        """``xi [B, P]`` -> the heads' parameters, activated: ``read_keys [B, R, W]``,
        ``read_strengths [B, R]``, ``write_key [B, W]``, ``write_strength [B]``,
        ``erase [B, W]``, ``write_vector [B, W]``, ``free_gates [B, R]``,
        ``allocation_gate [B]``, ``write_gate [B]``, ``read_modes [B, R, 3]``."""
        raw = self._split_raw(xi)
        return {
            "read_keys": raw["read_keys"],
            "read_strengths": oneplus(raw["read_strengths"]),
            "write_key": raw["write_key"],
            "write_strength": oneplus(raw["write_strength"]),
            "erase": jax.nn.sigmoid(raw["erase"]),
            "write_vector": raw["write_vector"],
            "free_gates": jax.nn.sigmoid(raw["free_gates"]),
            "allocation_gate": jax.nn.sigmoid(raw["allocation_gate"]),
            "write_gate": jax.nn.sigmoid(raw["write_gate"]),
            "read_modes": jax.nn.softmax(raw["read_modes"], axis=-1),
        }

    def initial_carry(self, batch: int, dtype: Any = jnp.float32) -> DNCState:
        check_batch(batch)
        n, w, r = self.memory_size, self.word_size, self.num_reads
        zeros = lambda *shape: jnp.zeros((batch,) + shape, dtype)
        return DNCState(
            controller=self.controller_cell.initial_carry(batch, dtype),
            memory=jnp.full((batch, n, w), self.memory_init, dtype),
            usage=zeros(n),
            link=zeros(n, n),
            precedence=zeros(n),
            read_weights=zeros(r, n),
            write_weights=zeros(n),
            reads=zeros(r, w),
        )

    def _memory_step(self, carry: DNCState, controller_carry: Any, xi: Array) -> DNCState:
        p = self.split_interface(xi)
        # 1-3. usage, allocation and the write weighting (content on the previous memory)
        usage = usage_update(carry.usage, carry.write_weights, p["free_gates"],
                             carry.read_weights)
        allocation = allocation_weighting(usage)
        content_w = addressing.content_weighting(carry.memory, p["write_key"][:, None],
                                                 p["write_strength"][:, None])[:, 0]
        w_write = write_weighting(content_w, allocation, p["allocation_gate"], p["write_gate"])
        # 4. erase, then add
        memory = addressing.erase_and_add(carry.memory, w_write[:, None], p["erase"][:, None],
                                          p["write_vector"][:, None])
        # 5. temporal links (from the previous precedence), then the precedence
        link = link_update(carry.link, carry.precedence, w_write)
        precedence = precedence_update(carry.precedence, w_write)
        # 6-8. read: backward / content / forward from the previous read weightings
        forward, backward = directional_weightings(link, carry.read_weights)
        content_r = addressing.content_weighting(memory, p["read_keys"], p["read_strengths"])
        w_read = read_weighting(p["read_modes"], backward, content_r, forward)
        return DNCState(controller_carry, memory, usage, link, precedence, w_read, w_write,
                        addressing.read(memory, w_read))
