"""Optimisers as optax chains: clip, decay, optimise, then reduce on plateau.

:func:`make_optimizer` builds, in this order,

.. math::

    g &\\leftarrow g \\cdot \\min\\left(1, \\frac{c}{\\lVert g \\rVert_2}\\right)
        && \\text{(clip\\_by\\_global\\_norm, on the raw gradient)} \\\\
    g &\\leftarrow g + \\lambda \\theta
        && \\text{(L2 weight decay; adamw decays inside the optimiser instead)} \\\\
    u &= \\mathrm{opt}(g; \\eta_t)
        && \\text{(adam, adamw, an rmsprop or sgd with the scheduled rate } \\eta_t) \\\\
    u &\\leftarrow s \\cdot u
        && \\text{(reduce-on-plateau scale } s \\text{, fed the loss as } value=)

Clipping comes first, so it acts on the gradient itself (the locuslab/TCN scripts called their
clipping before ``backward()``, where it did nothing). The result is always an
:class:`optax.GradientTransformationExtraArgs`: the train step calls
``update(grads, opt_state, params, value=loss)`` whether or not the chain has a plateau stage.

The optimiser is wrapped in :func:`optax.inject_hyperparams`, so the learning rate used at each
step is kept in the optimiser state; :func:`learning_rate_of` reads it back (times the plateau
scale) and the train step reports it as the ``lr`` metric.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau

__all__ = [
    "OPTIMIZERS",
    "PLATEAU_KEYS",
    "SCHEDULES",
    "learning_rate_of",
    "make_optimizer",
    "make_schedule",
    "rmsprop_torch",
]


def rmsprop_torch(learning_rate: Any, alpha: float = 0.99, eps: float = 1e-8,
                  momentum: float | None = None, centered: bool = False,
                  ) -> optax.GradientTransformation:
    r"""PyTorch's ``torch.optim.RMSprop`` (its defaults) as an optax transformation.

    .. math::
        v_t = \alpha v_{t-1} + (1 - \alpha) g_t^2, \qquad
        u_t = -\eta\, g_t / (\sqrt{v_t} + \epsilon)

    (``momentum``: ``b_t = \mu b_{t-1} + g_t / (\sqrt{v_t} + \epsilon)``, ``u_t = -\eta b_t``).
    :func:`optax.rmsprop`'s defaults differ in two ways that matter for reproducing the papers
    run with PyTorch (locuslab/TCN's copy memory and pixel MNIST scripts): its decay is 0.9, not
    0.99, and its ``eps`` sits *inside* the square root, so a gradient component much smaller
    than ``sqrt(eps) = 1e-4`` gets a step ``eta g / 1e-4`` instead of about ``eta``: a small
    model near a plateau (the copy task's TCN at the trivial baseline) then barely moves.
    """
    return optax.rmsprop(learning_rate, decay=alpha, eps=eps, eps_in_sqrt=False,
                         centered=centered, momentum=momentum)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adam": optax.adam,
    "adamw": optax.adamw,
    "rmsprop": optax.rmsprop,
    "rmsprop-torch": rmsprop_torch,
    "sgd": optax.sgd,
}
"""Optimiser names accepted by :func:`make_optimizer` and their optax constructors."""

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear", "step", "exponential")
"""Schedule names accepted by :func:`make_schedule` (``None`` means ``"constant"``)."""

PLATEAU_KEYS: tuple[str, ...] = (
    "factor", "patience", "rtol", "atol", "cooldown", "accumulation_size", "min_scale",
)
"""Keys of the ``plateau`` dict: the arguments of :func:`optax.contrib.reduce_on_plateau`."""


def make_schedule(
    learning_rate: float,
    schedule: str | optax.Schedule | None = None,
    *,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_rate: float = 0.1,
) -> float | optax.Schedule:
    """Builds a learning-rate schedule ``eta(count)``.

    With ``warmup_steps = w > 0`` the rate first rises linearly from 0 to ``learning_rate`` over
    ``w`` steps, then follows the schedule (counted from the end of the warm-up).

    Args:
      learning_rate: the peak (initial, after warm-up) rate ``eta_0``.
      schedule: ``None`` or ``"constant"`` (``eta_0``); ``"cosine"`` (``eta_0 (1 + cos(pi t/T))/2``
        down to 0 at ``total_steps``); ``"linear"`` (``eta_0 (1 - t/T)``); ``"step"``
        (``eta_0 * decay_rate ** floor(t / decay_steps)``); ``"exponential"``
        (``eta_0 * decay_rate ** (t / decay_steps)``); or any callable optax schedule.
      total_steps: ``T``, the length of the run; needed by ``"cosine"`` and ``"linear"``, and
        by ``"step"``/``"exponential"`` when ``decay_steps`` is not given (then ``T // 3``).
      warmup_steps: linear warm-up length ``w >= 0``.
      decay_steps: the period of ``"step"`` and ``"exponential"``.
      decay_rate: the factor of ``"step"`` and ``"exponential"`` per period.

    Returns:
      A float (constant rate, no warm-up) or an optax schedule.

    Raises:
      ValueError: on an unknown schedule name or a missing/invalid length.
    """
    if learning_rate < 0:
        raise ValueError(f"{learning_rate=} must be >= 0")
    if warmup_steps < 0:
        raise ValueError(f"{warmup_steps=} must be >= 0")
    name = "constant" if schedule is None else schedule
    decay_len = None if total_steps is None else total_steps - warmup_steps

    if callable(name):
        main: float | optax.Schedule = name
    elif name not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: None, {', '.join(SCHEDULES)} "
                         "or a callable optax schedule")
    elif name == "constant":
        main = learning_rate
    elif name in ("cosine", "linear"):
        if decay_len is None or decay_len <= 0:
            raise ValueError(f"schedule={name!r} needs total_steps > warmup_steps; got "
                             f"{total_steps=}, {warmup_steps=}")
        if name == "cosine":
            main = optax.cosine_decay_schedule(learning_rate, decay_len)
        else:
            main = optax.linear_schedule(learning_rate, 0.0, decay_len)
    else:  # step, exponential
        if decay_steps is None:
            if decay_len is None or decay_len < 3:
                raise ValueError(f"schedule={name!r} needs decay_steps, or total_steps >= "
                                 f"warmup_steps + 3; got {decay_steps=}, {total_steps=}")
            decay_steps = decay_len // 3
        if decay_steps <= 0:
            raise ValueError(f"{decay_steps=} must be > 0")
        main = optax.exponential_decay(learning_rate, decay_steps, decay_rate,
                                       staircase=(name == "step"))

    if warmup_steps == 0:
        return main
    main_fn = main if callable(main) else optax.constant_schedule(main)
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, main_fn], [warmup_steps])


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    momentum: float | None = None,
    weight_decay: float = 0.0,
    schedule: str | optax.Schedule | None = None,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_steps: int | None = None,
    decay_rate: float = 0.1,
    plateau: Mapping[str, Any] | None = None,
    **optimizer_kwargs: Any,
) -> optax.GradientTransformationExtraArgs:
    """Builds ``clip -> weight decay -> optimiser(schedule) -> reduce-on-plateau``.

    Args:
      name: one of ``"adam"``, ``"adamw"``, ``"rmsprop"`` (optax's), ``"rmsprop-torch"``
        (PyTorch's: :func:`rmsprop_torch`), ``"sgd"``.
      learning_rate: the base (peak) learning rate.
      clip_norm: if set, ``optax.clip_by_global_norm(clip_norm)`` is the first stage: the raw
        gradient ``g`` becomes ``g * min(1, clip_norm / ||g||)``.
      clip_value: if set, every gradient component is clipped to ``[-clip_value, clip_value]``
        (``optax.clip``, after ``clip_norm``; the NTM and DNC papers clip to ``[-10, 10]``).
      momentum: momentum of ``"sgd"`` and the RMSprops (``None``: none).
      weight_decay: ``"adamw"``: decoupled decay passed to ``optax.adamw`` (0 makes it adam);
        other optimisers: L2 decay ``g + weight_decay * params`` added after clipping, as
        PyTorch's ``weight_decay`` does.
      schedule: learning-rate schedule, see :func:`make_schedule`.
      total_steps: run length for the schedule.
      warmup_steps: linear warm-up steps.
      decay_steps: period of the ``"step"``/``"exponential"`` schedules.
      decay_rate: factor of the ``"step"``/``"exponential"`` schedules.
      plateau: if set, ``optax.contrib.reduce_on_plateau(**plateau)`` ends the chain; keys are
        :data:`PLATEAU_KEYS` (e.g. ``{"factor": 0.5, "patience": 10}``). It is fed the training
        loss as ``value=`` at every step; with a noisy loss set ``accumulation_size``.
      **optimizer_kwargs: passed to the optax constructor (e.g. ``b1``, ``eps``, ``decay``,
        ``nesterov``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`; call its ``update`` with
      ``value=loss`` (ignored by the stages that do not use it).

    Raises:
      ValueError: unknown optimiser, schedule or plateau key, or a setting that does not apply
        to the chosen optimiser.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"{clip_norm=} must be > 0 or None")
    if clip_value is not None and not clip_value > 0:
        raise ValueError(f"{clip_value=} must be > 0 or None")
    if weight_decay < 0:
        raise ValueError(f"{weight_decay=} must be >= 0")
    if momentum is not None:
        if name not in ("sgd", "rmsprop", "rmsprop-torch"):
            raise ValueError(f"momentum={momentum} applies to 'sgd' and the RMSprops, not "
                             f"{name!r}")
        optimizer_kwargs["momentum"] = momentum
    if name == "adamw":
        optimizer_kwargs["weight_decay"] = weight_decay

    lr = make_schedule(learning_rate, schedule, total_steps=total_steps,
                       warmup_steps=warmup_steps, decay_steps=decay_steps, decay_rate=decay_rate)

    stages: list[optax.GradientTransformation] = []
    if clip_norm is not None:
        stages.append(optax.clip_by_global_norm(clip_norm))
    if clip_value is not None:
        stages.append(optax.clip(clip_value))
    if weight_decay > 0 and name != "adamw":
        stages.append(optax.add_decayed_weights(weight_decay))
    stages.append(optax.inject_hyperparams(OPTIMIZERS[name])(learning_rate=lr,
                                                             **optimizer_kwargs))
    if plateau is not None:
        unknown = sorted(set(plateau) - set(PLATEAU_KEYS))
        if unknown:
            raise ValueError(f"unknown plateau keys {unknown}; valid: {', '.join(PLATEAU_KEYS)}")
        stages.append(reduce_on_plateau(**plateau))
    return optax.chain(*stages)


def _is_inject_state(x: Any) -> bool:
    return hasattr(x, "hyperparams") and hasattr(x, "inner_state") and isinstance(
        x.hyperparams, Mapping)


def learning_rate_of(opt_state: Any) -> dict[str, jax.Array]:
    """Reads the effective learning rate of the last update out of an optimiser state.

    Looks for :func:`optax.inject_hyperparams` states (their ``learning_rate``) and
    :func:`optax.contrib.reduce_on_plateau` states (their ``scale``) anywhere in the tree.
    Works inside ``jit`` (the search is over the static tree structure).

    Args:
      opt_state: an optax optimiser state, e.g. from :func:`make_optimizer`.

    Returns:
      ``{"lr": rate * scale}`` when a learning rate was found, ``{"lr_scale": scale}`` when only a
      plateau scale was found, and ``{}`` otherwise.
    """
    def is_node(x: Any) -> bool:
        return _is_inject_state(x) or isinstance(x, ReduceLROnPlateauState)

    nodes = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=is_node) if is_node(x)]
    rates = [x.hyperparams["learning_rate"] for x in nodes
             if _is_inject_state(x) and "learning_rate" in x.hyperparams]
    scales = [x.scale for x in nodes if isinstance(x, ReduceLROnPlateauState)]
    scale = None
    for s in scales:
        scale = jnp.asarray(s, jnp.float32) if scale is None else scale * s
    if rates:
        lr = jnp.asarray(rates[0], jnp.float32)
        return {"lr": lr if scale is None else lr * scale}
    if scale is not None:
        return {"lr_scale": scale}
    return {}
