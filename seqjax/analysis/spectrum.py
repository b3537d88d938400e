r"""Spectra of recurrent weights and of the step Jacobian.

The gradient through time is a product of step Jacobians,

.. math::

    \frac{\partial L}{\partial h_t} = J_{t+1}^\top \cdots J_T^\top
    \frac{\partial L}{\partial h_T}, \qquad J_s = \frac{\partial h_s}{\partial h_{s-1}},

so its growth is governed by the singular values of the :math:`J_s`. For an Elman RNN
:math:`J_s = \mathrm{diag}(\phi'(a_s)) W_h^\top` (column convention), hence
:math:`\lVert J_s \rVert \le \sigma_{\max}(W_h)` for tanh: the largest singular value (and, for
normal matrices, the spectral radius) of :math:`W_h` bounds the rate at which gradients can grow.

Conventions: seqjax stores the recurrent weight input-major, :math:`h_t = \phi(\dots + h_{t-1}
W_h)`; :math:`W_h` and :math:`W_h^\top` have the same singular values and eigenvalues, so the
spectra below do not depend on it. Jacobians are returned in the column convention
``J[i, j] = d h_t[i] / d h_{t-1}[j]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import GRU, LSTM, Cell, state_dtype

Array = jax.Array

__all__ = [
    "GATE_NAMES",
    "jacobian_spectrum",
    "recurrent_blocks",
    "singular_values",
    "spectral_radius",
    "step_jacobian",
    "weight_spectrum",
]

#: Names of the gate blocks of ``w_h`` (PyTorch / cuDNN order).
GATE_NAMES: dict[type, tuple[str, ...]] = {LSTM: ("i", "f", "g", "o"), GRU: ("r", "z", "n")}


def singular_values(w: Any, k: int | None = None) -> np.ndarray:
    """The ``k`` largest singular values of ``w [..., M, N]``, descending (all if ``k`` is None)."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 2 or 0 in w.shape[-2:]:
        raise ValueError(f"w.shape={w.shape} must be [..., M, N] with M, N >= 1")
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k={k!r} must be a positive int or None")
    s = np.linalg.svd(w, compute_uv=False)
    return s if k is None else s[..., :k]


def spectral_radius(w: Any) -> np.ndarray | float:
    """``max |eigenvalue|`` of a square ``w [..., N, N]`` (a float for one matrix)."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 2 or w.shape[-1] != w.shape[-2] or w.shape[-1] == 0:
        raise ValueError(f"w.shape={w.shape} must be [..., N, N] (square)")
    r = np.abs(np.linalg.eigvals(w)).max(axis=-1)
    return float(r) if r.ndim == 0 else r


def recurrent_blocks(cell: Cell, params: dict) -> dict[str, np.ndarray]:
    """The square ``[H, H]`` recurrent weight blocks of a cell.

    ``{"h": W_h}`` for single-gate cells (Elman and linear RNNs); one block per gate for LSTMs
    (``i, f, g, o``) and GRUs (``r, z, n``).
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax cell, got {type(cell).__name__}")
    if not isinstance(params, dict) or "w_h" not in params:
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a cell's params with a recurrent weight 'w_h', got "
                         f"{keys}")
    w = np.asarray(params["w_h"])
    hid = cell.hidden_size
    names = next((n for t, n in GATE_NAMES.items() if isinstance(cell, t)), None)
    if names is None:
        if w.shape != (hid, hid):
            raise ValueError(f"params['w_h'].shape={w.shape} must be ({hid}, {hid}) for {cell!r}")
        return {"h": w}
    if w.shape != (hid, len(names) * hid):
        raise ValueError(f"params['w_h'].shape={w.shape} must be ({hid}, {len(names) * hid})")
    return {name: w[:, k * hid:(k + 1) * hid] for k, name in enumerate(names)}


def weight_spectrum(cell: Cell, params: dict, k: int = 8) -> dict[str, dict[str, Any]]:
    """Top-``k`` singular values and the spectral radius of every recurrent block.

    Returns:
      ``{block: {"singular_values": [k] numpy, "spectral_radius": float}}`` (blocks as in
      :func:`recurrent_blocks`).
    """
    return {name: {"singular_values": singular_values(w, k), "spectral_radius": spectral_radius(w)}
            for name, w in recurrent_blocks(cell, params).items()}


def _flat(cell: Cell, carry: Any, full_carry: bool) -> Array:
    if full_carry:
        return jnp.concatenate(jax.tree.leaves(carry), axis=-1)
    return cell.carry_hidden(carry)


def _unflat(cell: Cell, carry: Any, vec: Array, full_carry: bool) -> Any:
    if full_carry:
        leaves, tree = jax.tree.flatten(carry)
        sizes = np.cumsum([leaf.shape[-1] for leaf in leaves])[:-1]
        return jax.tree.unflatten(tree, jnp.split(vec, sizes, axis=-1))
    return cell.with_hidden(carry, vec)


def step_jacobian(cell: Cell, params: dict, carry: Any, x_t: Array, *,
                  full_carry: bool = False) -> Array:
    """Jacobian of one step, ``J[b, i, j] = d s_t[i] / d s_{t-1}[j]`` (column convention).

    Args:
      cell: a seqjax cell.
      params: its params.
      carry: the carry before the step (``h [B, H]``; LSTMs ``(h, c)``).
      x_t: the step's input ``[B, D]``.
      full_carry: the state ``s`` is the whole carry (LSTMs: ``[h, c]``, size ``2H``); by
        default it is the hidden state ``h`` alone (for LSTMs with ``c`` held fixed).

    Returns:
      ``[B, N, N]`` (``N = H``, or ``2H`` for a full LSTM carry).
    """
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a seqjax cell, got {type(cell).__name__}")
    if jnp.ndim(x_t) != 2 or jnp.shape(x_t)[-1] != cell.input_size:
        raise ValueError(f"x_t.shape={tuple(jnp.shape(x_t))} must be [B, {cell.input_size}]")
    want = jax.eval_shape(lambda: cell.initial_carry(jnp.shape(x_t)[0]))
    got = [tuple(jnp.shape(c)) for c in jax.tree.leaves(carry)]
    if (jax.tree.structure(carry) != jax.tree.structure(want)
            or got != [tuple(c.shape) for c in jax.tree.leaves(want)]):
        raise ValueError(f"carry shapes {got} must be "
                         f"{[tuple(c.shape) for c in jax.tree.leaves(want)]} "
                         f"(cell.initial_carry(B={jnp.shape(x_t)[0]}))")
    gx = cell.project(params, x_t)

    def one(carry_b, gx_b):
        def f(s):
            c = _unflat(cell, carry_b, s[None], full_carry)
            new, _ = cell.step(params, c, gx_b[None])
            return _flat(cell, new, full_carry)[0]

        return jax.jacfwd(f)(_flat(cell, carry_b, full_carry)[0])

    carry_b = jax.tree.map(lambda c: c[:, None], carry)  # [B, 1, ...] so each example is a batch
    return jax.vmap(one)(carry_b, gx)


def jacobian_spectrum(cell: Cell, params: dict, xs: Array, *, k: int = 4,
                      full_carry: bool = False, initial_carry: Any = None) -> dict[str, np.ndarray]:
    """Spectra of the step Jacobians along the trajectory of ``xs [B, T, D]``.

    Returns:
      ``{"singular_values": [B, T, k], "spectral_radius": [B, T]}``; entry ``t`` is the Jacobian
      of step ``t`` (``s_t`` with respect to ``s_{t-1}``, ``s_{-1}`` the initial carry).
    """
    from seqjax.analysis.flow import cell_states

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r} must be a positive int")
    states = cell_states(cell, params, xs, initial_carry)  # checks cell, params and xs
    batch, steps = xs.shape[:2]
    acc = state_dtype(xs.dtype)
    carry0 = cell.initial_carry(batch, acc) if initial_carry is None else initial_carry
    carry0 = jax.tree.map(lambda c: jnp.asarray(c, acc), carry0)
    # states: [B, T, ...], from carry0 (the same initial carry)
    prev = jax.tree.map(lambda c0, s: jnp.concatenate([c0[:, None], s[:, :-1]], axis=1),
                        carry0, states)
    # fold time into the batch: [B*T, ...]
    prev = jax.tree.map(lambda c: c.reshape((batch * steps,) + c.shape[2:]), prev)
    x = xs.reshape((batch * steps,) + xs.shape[2:])
    jac = _step_jacobian_jit(cell, params, prev, x, full_carry=full_carry)
    jac = np.asarray(jac, np.float64).reshape(batch, steps, *jac.shape[1:])
    return {"singular_values": singular_values(jac, k), "spectral_radius": spectral_radius(jac)}


_step_jacobian_jit = jax.jit(step_jacobian, static_argnums=(0,), static_argnames=("full_carry",))
