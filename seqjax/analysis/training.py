r"""Gradient-norm history during training, before and after clipping.

Clipping by global norm (``optax.clip_by_global_norm(c)``) rescales the raw gradient :math:`g`
to :math:`g \min(1, c / \lVert g \rVert)`, so the clipped norm is :math:`\min(\lVert g\rVert,
c)`. :func:`seqjax.train.fit` logs ``grad_norm``, the raw norm *before* clipping;
:func:`grad_norm_history` reads it from fit's history and adds the clipped norm.
:func:`track_grad_norms` is a small training loop that measures both norms directly (the
clipped one from the gradient actually handed to the optimiser), keeps going through non-finite
steps if asked, and records the loss, for experiments that compare runs with and without
clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["clipped_norm", "global_norm", "grad_norm_history", "track_grad_norms"]


def global_norm(tree: Any) -> jax.Array:
    """``sqrt(sum of squares)`` over all leaves, in float32 (as the train step logs it)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clipped_norm(norms: Any, clip_norm: float | None) -> np.ndarray:
    """Norm after ``clip_by_global_norm(clip_norm)`` of gradients of norm ``norms``:
    ``min(norm, clip_norm)`` (unchanged without clipping; non-finite norms stay non-finite)."""
    n = np.asarray(norms, np.float64)
    if clip_norm is None:
        return n.copy()
    if clip_norm <= 0:
        raise ValueError(f"{clip_norm=} must be > 0")
    return np.where(np.isfinite(n), np.minimum(n, clip_norm), n)


def grad_norm_history(history: Sequence[Mapping[str, Any]],
                      clip_norm: float | None = None) -> dict[str, np.ndarray]:
    """Gradient norms from :func:`seqjax.train.fit`'s history (its ``"train"`` rows).

    Args:
      history: ``FitResult.history`` or :func:`seqjax.train.load_history` rows.
      clip_norm: the ``clip_norm`` the optimiser was built with (``None``: no clipping).

    Returns:
      ``{"step", "loss", "before", "after"}`` numpy arrays over the logged steps.
    """
    if isinstance(history, (str, bytes, Mapping)) or not all(isinstance(r, Mapping)
                                                              for r in history):
        raise TypeError("history must be a list of metric rows (dicts), e.g. FitResult.history")
    rows = [r for r in history if r.get("split") == "train" and "grad_norm" in r]
    if not rows:
        raise ValueError("history has no 'train' rows with a 'grad_norm' (was it from fit?)")
    before = np.array([r["grad_norm"] for r in rows], np.float64)
    return {"step": np.array([r["step"] for r in rows], np.int64),
            "loss": np.array([r.get("loss", math.nan) for r in rows], np.float64),
            "before": before, "after": clipped_norm(before, clip_norm)}


def track_grad_norms(
    loss_fn: Callable[..., tuple[jax.Array, dict]],
    params: Any,
    optimizer: optax.GradientTransformation,
    train_batches: Callable[[int], Any],
    num_steps: int,
    *,
    clip_norm: float | None = None,
    seed: int = 0,
    stop_on_nonfinite: bool = True,
) -> dict[str, Any]:
    """Trains and records the gradient norm before and after clipping at every step.

    Step ``s = 1..num_steps`` uses ``train_batches(s - 1)`` and the key ``fold_in(PRNGKey(seed),
    s - 1)`` (as :func:`seqjax.train.fit` does):

    .. math::

        g = \\nabla_\\theta \\ell, \\quad \\tilde g = g \\min(1, c/\\lVert g\\rVert), \\quad
        u, o' = \\mathrm{optimizer}(\\tilde g, o, \\theta), \\quad \\theta' = \\theta + u.

    Args:
      loss_fn: ``loss_fn(params, batch, key, train) -> (loss, aux)`` (as for ``fit``).
      params: initial params.
      optimizer: the optimiser *without* clipping (clipping is this function's ``clip_norm``),
        e.g. ``make_optimizer("sgd", 0.1)``.
      train_batches: ``train_batches(i) -> batch``.
      num_steps: number of updates.
      clip_norm: global-norm clipping threshold, ``None`` for none.
      seed: base key seed.
      stop_on_nonfinite: stop at the first non-finite loss or gradient (the remaining entries are
        ``nan``); otherwise keep going (everything after is usually ``nan``).

    Returns:
      ``{"step": [S], "loss": [S], "before": [S], "after": [S], "clipped": [S] bool (clipping
      changed the gradient), "params": final params, "diverged_at": step or None}``.
    """
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"{clip_norm=} must be > 0 or None")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or \
            num_steps < 0:
        raise ValueError(f"num_steps={num_steps!r} must be a non-negative int")
    for name, fn in (("loss_fn", loss_fn), ("train_batches", train_batches)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    from seqjax.train.loop import make_train_step
    from seqjax.train.state import TrainState

    clip = optax.identity() if clip_norm is None else optax.clip_by_global_norm(clip_norm)

    def after_clip(grads: Any) -> dict[str, jax.Array]:
        clipped, _ = clip.update(grads, clip.init(grads))  # stateless
        return {"grad_norm_after_clip": global_norm(clipped)}

    # the one train step of the library; clipping is the optimiser's first stage
    optimizer = optax.chain(clip, optimizer)
    step = make_train_step(loss_fn, optimizer, donate=False, grad_hook=after_clip)
    state = TrainState.create(params, optimizer, seed)
    out = {k: np.full(num_steps, np.nan) for k in ("loss", "before", "after")}
    diverged = None
    for i in range(num_steps):
        new_state, metrics = step(state, train_batches(i))
        loss, before, after = (float(v) for v in jax.device_get(
            (metrics["loss"], metrics["grad_norm"], metrics["grad_norm_after_clip"])))
        out["loss"][i], out["before"][i], out["after"][i] = loss, before, after
        if not (math.isfinite(loss) and math.isfinite(before)):
            diverged = i + 1
            if stop_on_nonfinite:
                break
        state = new_state
    params = state.params
    out["step"] = np.arange(1, num_steps + 1)
    out["clipped"] = (np.isfinite(out["before"]) & (clip_norm is not None)
                      & (out["before"] > (clip_norm or np.inf)))
    out["params"] = params
    out["diverged_at"] = diverged
    return out
