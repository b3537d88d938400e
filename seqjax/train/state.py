"""The training state: everything a run needs to continue, as one pytree.

A :class:`TrainState` holds the model parameters, the optimiser state, the number of completed
update steps and the run's base PRNG key. It is a frozen dataclass registered as a JAX pytree, so
it can be passed through ``jax.jit`` (and donated), saved whole by orbax, and restored into the
same structure.

Randomness: the key stored here never changes. The train step derives the key of update ``s``
as ``jax.random.fold_in(state.key, s)``, so the random numbers of a step depend only on the run
seed and the step number, which is what makes a resumed run bit-for-bit equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "as_raw_key"]


def as_raw_key(key: int | jax.Array) -> jax.Array:
    """Returns ``key`` as a raw ``uint32`` key array (the classic ``jax.random.PRNGKey`` form).

    Raw keys are plain arrays, which orbax saves and restores without special handling.

    Args:
      key: an int seed, a raw ``uint32`` key of shape ``(2,)`` or a typed key from
        ``jax.random.key`` (default threefry implementation).

    Returns:
      A ``uint32`` array of shape ``(2,)``.

    Raises:
      ValueError: if ``key`` is neither a seed nor a single default-implementation key.
    """
    if isinstance(key, int):
        return jax.random.PRNGKey(key)
    key = jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    expected = jax.random.PRNGKey(0)
    if key.shape != expected.shape or key.dtype != expected.dtype:
        raise ValueError(
            f"key must be an int seed or one default-implementation PRNG key; got {key.shape=} "
            f"{key.dtype=}, expected shape {expected.shape} dtype {expected.dtype}"
        )
    return key


def _copy_leaves(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Parameters, optimiser state, step counter and base key of a run.

    Attributes:
      params: the model parameter pytree.
      opt_state: the optax optimiser state for ``params``.
      step: ``int32`` scalar array, the number of completed update steps.
      key: raw ``uint32`` PRNG key of shape ``(2,)``; constant over the run (see module doc).
      extra: optional state that a stateful loss threads from one step to the next (e.g. the
        recurrent carry of truncated BPTT, :mod:`seqjax.train.tbptt`); ``None`` for ordinary
        runs. It is checkpointed with the rest, so a resumed run continues with it. A state
        with ``extra=None`` has exactly the pytree structure of the four other fields (old
        checkpoints restore unchanged).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    extra: Any = None

    @classmethod
    def create(
        cls,
        params: Any,
        optimizer: optax.GradientTransformation,
        key: int | jax.Array,
        extra: Any = None,
    ) -> TrainState:
        """Builds the state of a fresh run at step 0.

        Every leaf is a fresh buffer: the caller's ``params`` stay valid when the train step
        donates the state, and no two leaves share a buffer (donation would refuse that).

        Args:
          params: the initial parameter pytree.
          optimizer: the optax transformation whose ``init`` builds ``opt_state``.
          key: the run's base key (int seed, raw key or typed key; see :func:`as_raw_key`).
          extra: the initial :attr:`extra` (copied), or ``None``.

        Returns:
          A new :class:`TrainState` with ``step == 0``.
        """
        params = _copy_leaves(params)
        # optax's init may return one buffer under two names (rmsprop: nu and initial_scale);
        # a donated state must hold distinct buffers, so every leaf is copied.
        return cls(
            params=params,
            opt_state=_copy_leaves(optimizer.init(params)),
            step=jnp.zeros((), jnp.int32),
            key=as_raw_key(key),
            extra=None if extra is None else _copy_leaves(extra),
        )

    def replace(self, **changes: Any) -> TrainState:
        """Returns a copy with the given fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_FIELDS = ("params", "opt_state", "step", "key")


def _flatten_with_keys(state: TrainState) -> tuple[list[tuple[Any, Any]], bool]:
    # ``extra`` is a child only when set, so that a state without it keeps the structure (and
    # the checkpoint layout) it had before the field existed.
    names = _FIELDS + (("extra",) if state.extra is not None else ())
    children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names]
    return children, state.extra is not None


def _unflatten(has_extra: bool, children: Any) -> TrainState:
    children = list(children)
    extra = children.pop() if has_extra else None
    return TrainState(*children, extra=extra)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten_with_keys, _unflatten)
