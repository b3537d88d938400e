"""The training loop: one jitted train step, and :func:`fit` around it.

A model is a params pytree and a loss function

    ``loss_fn(params, batch, key, train: bool) -> (loss, aux)``

with ``loss`` a float scalar and ``aux`` a dict of scalar metrics. Batches come from a function
of the step, ``train_batches(i) -> batch`` (a pytree of numpy arrays), deterministic in ``i``.

Step numbering, used everywhere (metrics rows, checkpoints, errors): *step* ``s`` (``s >= 1``)
is the ``s``-th update. It consumes ``train_batches(s - 1)`` and the key
``fold_in(state.key, s - 1)``, and leaves ``state.step == s``. A row ``{"step": s, ...}`` of
``metrics.jsonl`` describes that update (split ``"train"``) or the parameters after it (split
``"valid"``); checkpoint ``s`` holds the state after it. Because batches and keys depend only on
the step, a run resumed from checkpoint ``k`` repeats exactly the updates ``k + 1, ...`` of an
uninterrupted run, and ends with bit-for-bit the same parameters.

Files of a run (``run_dir``)::

    config.json            the config dict given to fit
    metrics.jsonl          one JSON object per line: {"step", "split", <metrics>..., "time"}
    checkpoints/<step>/    orbax checkpoints of the whole TrainState
    best/<step>/, best.json  with keep_best: the params of the best validation row
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from seqjax.train.best import BEST_DIR, BEST_FILE, BestParams
from seqjax.train.checkpoint import (
    check_run_dir,
    checkpoint_dir,
    open_manager,
    quiet_orbax,
    restore_step,
)
from seqjax.train.optim import learning_rate_of
from seqjax.train.plot import plot_curves  # noqa: F401  (re-exported: loop.plot_curves)
from seqjax.train.state import TrainState, as_raw_key

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "FitResult",
    "LossFn",
    "NonFiniteLossError",
    "fit",
    "load_history",
    "make_eval_fn",
    "make_train_step",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, dict[str, jax.Array]]]
"""``loss_fn(params, batch, key, train) -> (loss scalar, aux dict of scalars)``."""

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
_RESERVED = ("step", "split", "time", "loss", "grad_norm", "lr", "lr_scale")


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) of a training step was NaN or infinite.

    Attributes:
      step: the failing step (the update on ``train_batches(step - 1)``).
      metric: ``"loss"`` or ``"grad_norm"``.
      value: the non-finite value.
      last_checkpoint: the newest checkpoint step on disk (all ``< step``), or ``None``.
      metrics: all metrics of the failing step, as floats.
    """

    def __init__(self, step: int, value: float, *, metric: str = "loss",
                 last_checkpoint: int | None = None, checkpoint_path: Path | None = None,
                 metrics: Mapping[str, float] | None = None) -> None:
        self.step = step
        self.metric = metric
        self.value = value
        self.last_checkpoint = last_checkpoint
        self.metrics = dict(metrics or {})
        where = ("no checkpoint was saved" if last_checkpoint is None else
                 f"last good checkpoint: step {last_checkpoint} in {checkpoint_path}")
        super().__init__(f"non-finite {metric} {value} at step {step} (the update on "
                         f"train_batches({step - 1})); stopped without saving it; {where}")


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
      state: the final :class:`TrainState`.
      history: all metric rows of the run (restored ones included), as in ``metrics.jsonl``.
      wall_s: wall-clock seconds of this call (compilation, evaluation and checkpoints included).
      steps_per_s: training steps per second of this call: the time of the steps only, not
        counting the first call (which compiles), evaluation and checkpoints (when only one
        call ran: steps over ``wall_s``).
      start_step: the step this call started from (``> 0`` after a resume).
      best_step, best_value, best_params: with ``keep_best``, the step, validation value and
        params of the best validation row of the whole run (resumed parts included); ``None``
        otherwise.
    """

    state: TrainState
    history: list[dict[str, Any]]
    wall_s: float
    steps_per_s: float
    start_step: int = 0
    best_step: int | None = None
    best_value: float | None = None
    best_params: Any = None


# --------------------------------------------------------------------------------------------
# The train step.


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    donate: bool = True,
    stateful: bool = False,
    mesh: Any = None,
    grad_hook: Callable[[Any], Mapping[str, jax.Array]] | None = None,
    steps_per_call: int = 1,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the jitted update ``step_fn(state, batch) -> (state, metrics)``.

    With ``s = state.step`` and ``k = fold_in(state.key, s)``:

    .. math::

        (\\ell, \\mathrm{aux}), g &= \\mathrm{value\\_and\\_grad}(\\mathrm{loss\\_fn})
            (\\theta, \\mathrm{batch}, k, \\mathrm{train{=}True}) \\\\
        u, o' &= \\mathrm{optimizer.update}(g, o, \\theta, \\mathrm{value}{=}\\ell) \\\\
        \\theta' &= \\theta + u, \\quad s' = s + 1

    Args:
      loss_fn: ``loss_fn(params, batch, key, train) -> (loss, aux)``; ``loss`` a float scalar.
      optimizer: any optax transformation; plain ones are wrapped with
        :func:`optax.with_extra_args_support`, so ``value=loss`` is always passed and used by
        the stages that want it (reduce-on-plateau).
      donate: donate the input state's buffers to the output (the input state is unusable
        after the call).
      stateful: the loss threads state from step to step (truncated BPTT's carry): it is
        called as ``loss_fn(params, batch, key, train, extra) -> (loss, aux, new_extra)`` with
        ``extra = state.extra``, and the new state holds ``new_extra`` (not differentiated:
        gradients are taken with respect to ``params`` only).
      mesh: a :class:`jax.sharding.Mesh` for data parallelism (see
        :mod:`seqjax.train.parallel`), or ``None``. The maths is the same; the new state and
        the metrics come out replicated over the mesh (the batch is expected sharded on its
        leading axis, e.g. by :func:`~seqjax.train.parallel.shard_batch`, and XLA all-reduces
        the gradients).
      grad_hook: ``grad_hook(grads) -> {name: scalar}``, called (traced) on the raw gradient
        of every step; its entries join the metrics (e.g. the norm after clipping, see
        :func:`seqjax.analysis.training.track_grad_norms`). Names must not clash with the
        reserved ones or with ``aux``.
      steps_per_call: ``K >= 1`` updates per call. With ``K > 1``, ``step_fn(state, batches)``
        takes ``K`` batches stacked on a new leading axis (every leaf ``[K, ...]``; any
        leading size ``n`` works, one compilation per ``n``) and runs the ``n`` updates in one
        jitted ``lax.scan``, with the same keys as ``n`` single calls (``fold_in(key, s)``
        for ``s = state.step, ..., state.step + n - 1``); its metrics are stacked ``[n]``.
        One dispatch and no host round trip per ``n`` steps; the numbers equal single calls'
        up to floating-point rounding (XLA may fuse the scan body differently).

    Returns:
      ``step_fn``; its metrics are ``loss``, ``grad_norm`` (global L2 norm of the raw gradient,
      before any clipping), ``lr`` (or ``lr_scale``) when the optimiser state exposes it (see
      :func:`~seqjax.train.optim.learning_rate_of`), every entry of ``aux`` and of
      ``grad_hook``'s dict.

    Raises:
      ValueError: (at the first call) if the loss is not a float scalar or ``aux`` reuses a
        reserved metric name.
      TypeError: (at the first call) if ``aux`` is not a dict.
      ValueError: if ``steps_per_call`` is not a positive int.
    """
    if (not isinstance(steps_per_call, (int, np.integer)) or isinstance(steps_per_call, bool)
            or steps_per_call < 1):
        raise ValueError(f"steps_per_call={steps_per_call!r} must be an int >= 1")
    optimizer = optax.with_extra_args_support(optimizer)

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.key, state.step)

        def objective(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
            if stateful:
                loss, aux, extra = loss_fn(params, batch, key, True, state.extra)
            else:
                (loss, aux), extra = loss_fn(params, batch, key, True), state.extra
            _check_loss_and_aux(loss, aux)
            return loss, (aux, extra)

        (loss, (aux, extra)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": _global_norm(grads),
                   **learning_rate_of(opt_state), **aux}
        metrics.update(_hooked_metrics(grad_hook, grads, aux))
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                                  extra=extra)
        return new_state, metrics

    one_step = train_step
    if steps_per_call > 1:
        def train_step(state: TrainState, batches: Any) -> tuple[TrainState, dict[str, jax.Array]]:
            return jax.lax.scan(one_step, state, batches)

    return _jit_step(train_step, donate=donate, mesh=mesh)


def _hooked_metrics(grad_hook: Callable | None, grads: Any, aux: Mapping) -> dict:
    """``grad_hook(grads)`` as metrics (``{}`` without a hook); its names may not clash."""
    if grad_hook is None:
        return {}
    hooked = dict(grad_hook(grads))
    clash = sorted(set(hooked) & (set(_RESERVED) | set(aux)))
    if clash:
        raise ValueError(f"grad_hook keys {clash} clash with reserved metric names "
                         f"{_RESERVED} or with aux")
    return hooked


def _jit_step(train_step: Callable, *, donate: bool, mesh: Any) -> Callable:
    """``jax.jit`` of a step, the state donated if ``donate``; with a ``mesh``, the new state
    and the metrics constrained to their data-parallel shardings."""
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(train_step, donate_argnums=donate_argnums)
    from seqjax.train.parallel import constrain_state, replicated_sharding

    def sharded_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        new_state, metrics = train_step(state, batch)
        metrics = jax.lax.with_sharding_constraint(metrics, replicated_sharding(mesh))
        return constrain_state(new_state, mesh), metrics

    return jax.jit(sharded_step, donate_argnums=donate_argnums)


def _global_norm(tree: Any) -> jax.Array:
    """``sqrt(sum of squares)`` over all leaves, accumulated in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def _check_loss_and_aux(loss: jax.Array, aux: Any) -> None:
    if getattr(loss, "shape", None) != () or not np.issubdtype(loss.dtype, np.floating):
        raise ValueError(f"loss_fn must return a float scalar loss; got shape="
                         f"{getattr(loss, 'shape', None)} dtype={getattr(loss, 'dtype', None)}")
    if not isinstance(aux, Mapping):
        raise TypeError(f"loss_fn must return (loss, aux) with aux a dict; got {type(aux)}")
    clash = sorted(set(aux) & set(_RESERVED))
    if clash:
        raise ValueError(f"aux keys {clash} clash with reserved metric names {_RESERVED}")


def make_eval_fn(
    loss_fn: LossFn,
    batches: Iterable[Any],
    *,
    key: int | jax.Array = 0,
) -> Callable[[Any], dict[str, float]]:
    """Builds ``eval_fn(params) -> {"loss": ..., **aux}``: means over a fixed set of batches.

    Each batch is evaluated with ``loss_fn(params, batch, key, train=False)`` (jitted) and the
    scalar metrics are averaged with equal weight per batch.

    Args:
      loss_fn: the model's loss function.
      batches: the evaluation batches (materialised once, kept in memory).
      key: the key passed to ``loss_fn`` (int seed or key); unused by deterministic models.

    Returns:
      ``eval_fn`` suitable for :func:`fit`'s ``eval_fn``.

    Raises:
      ValueError: if ``batches`` is empty.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("make_eval_fn needs at least one batch; got an empty batches")
    raw_key = as_raw_key(key)

    @jax.jit
    def evaluate(params: Any, batch: Any) -> dict[str, jax.Array]:
        loss, aux = loss_fn(params, batch, raw_key, False)
        return {"loss": loss, **aux}

    def eval_fn(params: Any) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in batches:
            for name, value in _scalars(jax.device_get(evaluate(params, batch))).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        return {name: total / len(batches) for name, total in totals.items()}

    return eval_fn


# --------------------------------------------------------------------------------------------
# fit and its files.


def fit(
    *, params: Any, loss_fn: LossFn, optimizer: optax.GradientTransformation,
    train_batches: Callable[[int], Any], num_steps: int, run_dir: str | os.PathLike | None,
    seed: int = 0, eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
    eval_every: int = 0, checkpoint_every: int = 0, log_every: int = 10, max_to_keep: int = 3,
    resume: bool = False, overwrite: bool = False, config: Mapping[str, Any] | None = None,
    progress: bool = True, desc: str = "", extra: Any = None, mesh: Any = None,
    keep_best: tuple[str, str] | None = None, steps_per_call: int = 1,
    sync_every: int | None = None,
) -> FitResult:
    """Trains ``params`` for ``num_steps`` updates, with logs, checkpoints and resume.

    Each step ``s = 1..num_steps`` runs the jitted update on ``train_batches(s - 1)``. The host
    does not wait for a step: it builds the next batch while the device works, and fetches the
    metrics every ``sync_every`` steps and before an evaluation or a checkpoint. The outcome
    is that of checking after every step, in this order:

    1. a non-finite loss or gradient norm raises :class:`NonFiniteLossError` naming ``s``; no
       state from ``s`` on is saved, and the pending checkpoints (all ``< s``) are completed;
    2. every ``log_every`` steps and at the last, a ``"train"`` row goes to the history and to
       ``metrics.jsonl``;
    3. every ``eval_every`` steps (if ``> 0``) and at the last, ``eval_fn(params)`` gives a
       ``"valid"`` row (and with ``keep_best``, the params are kept if it is the best so far);
    4. every ``checkpoint_every`` steps (if ``> 0``) and at the last, the whole state is saved.

    An exception out of the loop (``KeyboardInterrupt`` included) first saves the state of the
    last completed step, then propagates; a later ``fit(..., resume=True)`` continues from it.

    Args:
      params: the initial parameters (copied, never donated). On resume only their structure,
        shapes and dtypes are used.
      loss_fn: ``loss_fn(params, batch, key, train) -> (loss, aux)``.
      optimizer: an optax transformation, e.g. from
        :func:`~seqjax.train.optim.make_optimizer`.
      train_batches: ``train_batches(i) -> batch``, deterministic in ``i`` (0-based).
      num_steps: total number of updates of the run (a resumed run stops at the same total).
      run_dir: where ``config.json``, ``metrics.jsonl`` and ``checkpoints/`` go; ``None`` keeps
        everything in memory (no files, no checkpoints, no resume).
      seed: the run's base key is ``PRNGKey(seed)``; step keys are ``fold_in(key, s - 1)``.
      eval_fn: ``eval_fn(params) -> {name: float}``, e.g. from :func:`make_eval_fn`.
      eval_every: evaluation period in steps; 0: only after the last step.
      checkpoint_every: checkpoint period in steps; 0: only after the last step.
      log_every: period of the ``"train"`` rows (the last step is always logged).
      max_to_keep: number of newest checkpoints kept.
      resume: continue from the newest checkpoint in ``run_dir`` (a fresh start if there is
        none); history rows after that checkpoint's step are dropped and redone.
      overwrite: with ``resume=False``, delete an existing run's checkpoints and metrics in
        ``run_dir`` instead of refusing.
      config: the resolved configuration, written to ``config.json``.
      progress: show a tqdm progress bar with the live loss.
      desc: the progress bar's label.
      extra: if not ``None``, the loss is stateful (see :func:`make_train_step`'s
        ``stateful``): ``loss_fn(params, batch, key, train, extra) -> (loss, aux, new_extra)``,
        starting from this ``extra`` (e.g. a zero carry); it lives in ``TrainState.extra``, is
        checkpointed and restored on resume.
      mesh: a :class:`jax.sharding.Mesh` (e.g. :func:`~seqjax.train.parallel.make_mesh`) to
        train data-parallel: the state is replicated over it and each batch split on its
        leading axis over the ``data`` axis (the batch size must be divisible by the device
        count). With several processes, ``train_batches`` returns this process's slice of the
        global batch. Only process 0 writes ``config.json`` and ``metrics.jsonl``; checkpoints
        are written through orbax's multi-process support. ``None``: today's single-device
        behaviour.
      keep_best: ``(metric, "min" | "max")``: keep the params of the best validation row by
        that metric (:class:`~seqjax.train.best.BestParams`; on disk in ``best/``), returned as
        ``FitResult.best_params``: the model selection of the usual protocol. Needs ``eval_fn``.
      steps_per_call: ``K``: run the updates ``K`` at a time in one jitted call (a ``lax.scan``
        over ``K`` stacked batches, see :func:`make_train_step`); calls cover steps
        ``[jK, (j+1)K)``, so ``eval_every`` and ``checkpoint_every`` must be multiples of ``K``
        (a resumed run then repeats the calls of an uninterrupted one, bit for bit). The
        numbers may differ from ``K=1``'s by floating-point rounding. Worth it when a step is
        short against the dispatch of a call (small recurrent models); a TCN's convolutions
        run much slower inside a loop on XLA:CPU. Not with ``mesh``.
      sync_every: fetch the metrics (and check them for NaN/inf, update the progress bar) at
        least every this many steps; ``None``: ``log_every``.

    Returns:
      A :class:`FitResult`.

    Raises:
      NonFiniteLossError: on a NaN/inf loss or gradient norm.
      FileExistsError: if ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
      NotADirectoryError: if ``run_dir`` or its ``checkpoints`` is a file.
      ValueError: on invalid arguments, or a checkpoint beyond ``num_steps``.
      CheckpointError: (a ``ValueError``) on resume, if the newest checkpoint is unreadable or
        its tree or shapes differ from the state of ``params``/``optimizer``/``extra`` (e.g. a
        run resumed with other model sizes); raised before any training step.
    """
    t_start = time.perf_counter()
    sync_every = log_every if sync_every is None else sync_every
    _validate_fit_args(num_steps=num_steps, eval_every=eval_every, log_every=log_every,
                       checkpoint_every=checkpoint_every, max_to_keep=max_to_keep,
                       run_dir=run_dir, resume=resume, keep_best=keep_best, eval_fn=eval_fn,
                       steps_per_call=steps_per_call, sync_every=sync_every, mesh=mesh)
    step_fn = make_train_step(loss_fn, optimizer, stateful=extra is not None, mesh=mesh,
                              steps_per_call=steps_per_call)
    train_batches = _global_batches(train_batches, mesh)
    with contextlib.ExitStack() as stack:
        files = _RunFiles(run_dir, max_to_keep=max_to_keep, t_start=t_start, stack=stack)
        state = files.start(TrainState.create(params, optimizer, seed, extra), resume=resume,
                            overwrite=overwrite, num_steps=num_steps, config=config)
        state = _place_state(state, mesh)
        best = None if keep_best is None else BestParams(*keep_best, run_dir,
                                                         primary=files.primary)
        start = int(state.step)
        with _progress_bar(num_steps, start, desc, progress and jax.process_index() == 0) as bar:
            state, train_s, timed_steps = _run_steps(
                step_fn, state, train_batches, num_steps, files=files, bar=bar, best=best,
                eval_fn=eval_fn, eval_every=eval_every, log_every=log_every,
                checkpoint_every=checkpoint_every, steps_per_call=steps_per_call,
                sync_every=sync_every)

    steps_per_s = _steps_per_s(num_steps - start, time.perf_counter() - t_start, train_s,
                               timed_steps)
    return _fit_result(state, files.history, best, t_start, steps_per_s, start)


def _fit_result(state: TrainState, history: list[dict[str, Any]], best: BestParams | None,
                t_start: float, steps_per_s: float, start: int) -> FitResult:
    return FitResult(state=state, history=history, wall_s=time.perf_counter() - t_start,
                     steps_per_s=steps_per_s, start_step=start,
                     best_step=None if best is None else best.step,
                     best_value=None if best is None else best.value,
                     best_params=None if best is None else best.params(state.params))


def _place_state(state: TrainState, mesh: Any) -> TrainState:
    """``state`` unchanged without a mesh; else placed (replicated) on it."""
    if mesh is None:
        return state
    from seqjax.train.parallel import place_state

    return place_state(state, mesh)


def _global_batches(train_batches: Callable[[int], Any], mesh: Any) -> Callable[[int], Any]:
    """``train_batches`` unchanged without a mesh; else its batches made global arrays."""
    if mesh is None:
        return train_batches
    from seqjax.train.parallel import host_local_batch_to_global

    def global_batches(i: int) -> Any:
        return host_local_batch_to_global(train_batches(i), mesh)

    return global_batches


def _call_ends(start: int, num_steps: int, steps_per_call: int) -> list[int]:
    """The step each call of the loop ends at: calls cover ``[jK, (j+1)K)`` in absolute step
    numbers (so a run resumed at a multiple of ``K`` repeats the calls of an uninterrupted one),
    cut at ``num_steps``."""
    ends, s = [], start
    while s < num_steps:
        s = min((s // steps_per_call + 1) * steps_per_call, num_steps)
        ends.append(s)
    return ends


def _stack_batches(batches: list[Any]) -> Any:
    """``n`` batches -> one batch whose leaves have a new leading axis ``[n, ...]``."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


class _Pending:
    """Metrics of steps that ran but were not yet fetched from the device (no host sync per
    step): fetched together at the next sync point, checked for finiteness in step order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, Any]] = []  # (first step, number of steps, metrics)

    def add(self, first: int, n: int, metrics: Any) -> None:
        self.calls.append((first, n, metrics))

    def fetch(self) -> list[tuple[int, dict[str, float | int]]]:
        """``[(step, scalar metrics)]`` of every pending step, oldest first; clears the list."""
        calls, self.calls = self.calls, []
        fetched = jax.device_get([m for _, _, m in calls])
        rows = []
        for (first, n, _), values in zip(calls, fetched):
            if n == 1 and not any(np.ndim(v) for v in values.values()):
                rows.append((first + 1, _scalars(values)))
                continue
            for j in range(n):
                rows.append((first + j + 1, _scalars({k: np.asarray(v)[j]
                                                      for k, v in values.items()})))
        return rows


def _run_steps(step_fn: Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]],
               state: TrainState, train_batches: Callable[[int], Any], num_steps: int, *,
               files: _RunFiles, bar: Any, best: BestParams | None,
               eval_fn: Callable[[Any], Mapping[str, float]] | None, eval_every: int,
               log_every: int, checkpoint_every: int, steps_per_call: int = 1,
               sync_every: int = 1) -> tuple[TrainState, float, int]:
    """:func:`fit`'s loop from ``state.step`` to ``num_steps``.

    The host never waits for a step: it dispatches the call, builds the next batch while the
    device runs (JAX dispatches asynchronously), and fetches the metrics only at a sync point:
    after the first call (its end starts the clock), every ``sync_every`` steps, and at an
    evaluation, a checkpoint or the last step. There the pending metrics are checked in step
    order (a non-finite one raises before anything later is saved), the ``"train"`` rows of the
    log steps are written, then come evaluation and checkpoint, off the clock.

    Returns the final state, the training seconds (the time between sync points minus the
    first call, evaluation and checkpoints) and the number of steps they cover. An exception
    other than :class:`NonFiniteLossError` saves the last state first if its steps were finite.
    """
    start = int(state.step)
    pending = _Pending()
    postfix: dict[str, str] = {}
    clock: dict[str, Any] = {"train_s": 0.0, "steps": 0, "mark": None, "mark_step": start,
                             "verified": start}

    def sync(s: int) -> None:
        """Fetches and checks the pending metrics (all steps ``<= s``); writes their rows."""
        for step, values in pending.fetch():
            bad = _first_non_finite(values)
            if bad is not None:
                raise files.non_finite_error(step, bad, values)
            clock["verified"] = step
            if step % log_every == 0 or step == num_steps:
                files.emit({"step": step, "split": "train", **values})
            postfix["loss"] = f"{values['loss']:.4g}"
        bar.set_postfix(postfix, refresh=False)
        now = time.perf_counter()
        if clock["mark"] is not None:
            clock["train_s"] += now - clock["mark"]
            clock["steps"] += s - clock["mark_step"]
        clock["mark"], clock["mark_step"] = now, s  # restarted after eval/checkpoint below
        bar.update(s - bar.n)

    ends = _call_ends(start, num_steps, steps_per_call)
    try:
        def batch_for(end: int, first: int) -> Any:
            if steps_per_call == 1:
                return train_batches(first)
            return _stack_batches([train_batches(i) for i in range(first, end)])

        next_batch = batch_for(ends[0], start) if ends else None
        first = start
        for n_call, end in enumerate(ends):
            state, metrics = step_fn(state, next_batch)
            pending.add(first, end - first, metrics)
            # build the next batch while the device runs this call
            if n_call + 1 < len(ends):
                next_batch = batch_for(ends[n_call + 1], end)
            s, first = end, end
            last = s == num_steps
            evaluate = eval_fn is not None and ((eval_every and s % eval_every == 0) or last)
            save = (checkpoint_every and s % checkpoint_every == 0) or last
            if not (n_call == 0 or evaluate or save
                    or s - clock["mark_step"] >= sync_every):
                continue
            sync(s)  # after the first call: the clock starts (its compilation excluded)
            if evaluate:
                valid = {k: float(v) for k, v in eval_fn(state.params).items()}
                files.emit({"step": s, "split": "valid", **valid})
                if best is not None:
                    best.consider(s, state.params, valid)
                postfix.update({f"valid_{k}": f"{v:.4g}" for k, v in valid.items()})
                bar.set_postfix(postfix, refresh=False)
            if save:
                files.save(s, state)
            clock["mark"] = time.perf_counter()
    except NonFiniteLossError:
        raise
    except BaseException:
        _save_on_exit(state, start, files.save, lambda: sync(int(state.step)),
                      lambda: clock["verified"])
        raise
    return state, clock["train_s"], clock["steps"]


def _steps_per_s(ran: int, wall_s: float, train_s: float, timed_steps: int) -> float:
    """Training steps per second: over the timed steps (the first call, which compiles,
    evaluation and checkpoints excluded) when there are any, else over the wall time."""
    if timed_steps > 0:
        return timed_steps / max(train_s, 1e-9)
    return ran / max(wall_s, 1e-9)


def load_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads the metric rows of a run from ``<run_dir>/metrics.jsonl``.

    A torn last line (the process was killed while writing it) is skipped.

    Args:
      run_dir: the run directory.

    Returns:
      The rows in file order; ``[]`` if the file does not exist.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping unreadable line %d of %s: %r", n, path, line[:80])
    return rows


# --------------------------------------------------------------------------------------------
# Helpers.


class _RunFiles:
    """The files of one fit call: config, metric rows and checkpoints.

    With ``run_dir=None`` it only keeps the history in memory. ``stack`` closes the metrics file
    and completes pending checkpoint writes when the caller's ``with`` block ends.
    """

    def __init__(self, run_dir: str | os.PathLike | None, *, max_to_keep: int, t_start: float,
                 stack: contextlib.ExitStack) -> None:
        self.run_path = None if run_dir is None else Path(run_dir)
        self.max_to_keep = max_to_keep
        self.t_start = t_start
        self.time_offset = 0.0
        self.history: list[dict[str, Any]] = []
        self.manager: ocp.CheckpointManager | None = None
        self.last_saved: int | None = None
        self._stack = stack
        self._metrics_file: Any = None
        self.primary = jax.process_index() == 0  # only process 0 writes config and metrics

    def start(self, state: TrainState, *, resume: bool, overwrite: bool, num_steps: int,
              config: Mapping[str, Any] | None) -> TrainState:
        """Prepares ``run_dir`` and returns the state to start from (restored on resume)."""
        if self.run_path is None:
            return state
        check_run_dir(self.run_path)  # neither run_dir nor its checkpoints a file
        self.run_path.mkdir(parents=True, exist_ok=True)
        if not resume and self.primary:
            _clear_previous_run(self.run_path, overwrite)
        with quiet_orbax():  # a damaged directory: the error below says it in one line
            self.manager = open_manager(self.run_path, max_to_keep=self.max_to_keep)
            self._stack.callback(self.manager.close)
            self._stack.callback(self.manager.wait_until_finished)
            restored = self.manager.latest_step() if resume else None
        if restored is not None:
            if restored > num_steps:
                raise ValueError(f"the newest checkpoint in {checkpoint_dir(self.run_path)} is "
                                 f"at step {restored}, past {num_steps=}")
            state = restore_step(self.manager, restored, state)
            self.last_saved = restored
            logger.info("resumed %s from step %d", self.run_path, restored)
        metrics_path = self.run_path / METRICS_FILE
        if not self.primary:  # history in memory only; process 0 owns the files
            self.history = [r for r in load_history(self.run_path)
                            if int(r.get("step", 0)) <= (restored or 0)]
            return state
        self.history = _truncate_history(metrics_path, restored or 0)
        self.time_offset = max((row.get("time", 0.0) for row in self.history), default=0.0)
        _write_config(self.run_path / CONFIG_FILE, config, check_against_previous=resume)
        self._metrics_file = self._stack.enter_context(open(metrics_path, "a"))  # noqa: SIM115
        return state

    def emit(self, row: dict[str, Any]) -> None:
        """Appends a metrics row (stamped with the run's elapsed ``time``) to history and file."""
        row["time"] = round(self.time_offset + time.perf_counter() - self.t_start, 4)
        self.history.append(row)
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(row) + "\n")
            self._metrics_file.flush()

    def save(self, step: int, state: TrainState) -> None:
        """Checkpoints ``state`` as ``step`` (once per step; no-op without a run_dir)."""
        if self.manager is not None and self.last_saved != step:
            self.manager.save(step, args=ocp.args.StandardSave(state))
            self.last_saved = step

    def non_finite_error(self, step: int, bad: tuple[str, float],
                         values: Mapping[str, float]) -> NonFiniteLossError:
        """Completes the pending checkpoints (all older than ``step``) and builds the error."""
        latest = None
        if self.manager is not None:
            self.manager.wait_until_finished()
            latest = self.manager.latest_step()
        return NonFiniteLossError(
            step, bad[1], metric=bad[0], metrics=values, last_checkpoint=latest,
            checkpoint_path=None if self.run_path is None else checkpoint_dir(self.run_path))


def _validate_fit_args(*, num_steps: int, eval_every: int, log_every: int,
                       checkpoint_every: int, max_to_keep: int,
                       run_dir: str | os.PathLike | None, resume: bool,
                       keep_best: tuple[str, str] | None = None,
                       eval_fn: Callable[..., Any] | None = None, steps_per_call: int = 1,
                       sync_every: int = 1, mesh: Any = None) -> None:
    for name, value, low in (("num_steps", num_steps, 0), ("eval_every", eval_every, 0),
                             ("checkpoint_every", checkpoint_every, 0),
                             ("log_every", log_every, 1), ("max_to_keep", max_to_keep, 1),
                             ("steps_per_call", steps_per_call, 1),
                             ("sync_every", sync_every, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}")
    if steps_per_call > 1:
        if mesh is not None:
            raise ValueError(f"{steps_per_call=} > 1 is not supported with a mesh")
        for name, value in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
            if value % steps_per_call:
                raise ValueError(f"{name}={value} must be a multiple of {steps_per_call=}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir to resume from; got run_dir=None")
    if keep_best is not None and eval_fn is None:
        raise ValueError(f"{keep_best=} needs an eval_fn (it selects on the validation rows)")


def _clear_previous_run(run_path: Path, overwrite: bool) -> None:
    ckpt = checkpoint_dir(run_path)
    metrics = run_path / METRICS_FILE
    has_ckpt = ckpt.is_dir() and any(ckpt.iterdir())
    has_metrics = metrics.exists() and metrics.stat().st_size > 0
    if not (has_ckpt or has_metrics):
        return
    if not overwrite:
        raise FileExistsError(f"{run_path} already holds a run (checkpoints or {METRICS_FILE}); "
                              "pass resume=True to continue it, overwrite=True to replace it, "
                              "or use another run_dir")
    if ckpt.is_dir():
        shutil.rmtree(ckpt)
    metrics.unlink(missing_ok=True)
    shutil.rmtree(run_path / BEST_DIR, ignore_errors=True)
    (run_path / BEST_FILE).unlink(missing_ok=True)


def _truncate_history(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keeps the rows with ``step <= last_step`` and rewrites the file with exactly those."""
    rows = [r for r in load_history(path.parent) if int(r.get("step", 0)) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


def _write_config(path: Path, config: Mapping[str, Any] | None,
                  check_against_previous: bool) -> None:
    text = json.dumps(dict(config or {}), indent=2, default=str)
    if check_against_previous and path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        new = json.loads(text)
        if isinstance(old, dict) and old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            logger.warning("resuming %s with a different config (keys %s); config.json is "
                           "replaced by the new one", path.parent, changed)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


_FIRST = ("loss", "grad_norm", "lr", "lr_scale")


def _scalars(tree: Mapping[str, Any]) -> dict[str, float | int]:
    """Keeps the scalar entries of a metrics dict, as Python numbers (loss, grad_norm first)."""
    out: dict[str, float | int] = {}
    names = [n for n in _FIRST if n in tree] + [n for n in tree if n not in _FIRST]
    for name in names:
        value = tree[name]
        arr = np.asarray(value)
        if arr.ndim != 0:
            continue
        out[name] = int(arr) if np.issubdtype(arr.dtype, np.integer) else float(arr)
    return out


def _first_non_finite(values: Mapping[str, float]) -> tuple[str, float] | None:
    for name in ("loss", "grad_norm"):
        if name in values and not math.isfinite(values[name]):
            return name, values[name]
    return None


def _is_deleted(tree: Any) -> bool:
    return any(getattr(leaf, "is_deleted", lambda: False)()
               for leaf in jax.tree_util.tree_leaves(tree))


def _save_on_exit(state: TrainState, start: int, save: Callable[[int, TrainState], None],
                  sync: Callable[[], None], verified: Callable[[], int]) -> None:
    """Saves the last state (if past ``start``) when an exception ends fit, once its pending
    metrics are fetched and finite (``verified()`` is then its step)."""
    if _is_deleted(state):  # interrupted inside a call that had taken (donated) the state
        logger.warning("interrupted inside a train step: no state to save; the newest "
                       "checkpoint on disk is the one to resume from")
        return
    try:
        step = int(state.step)
        if step == start:
            return  # nothing new since the start (or the restored checkpoint)
        with contextlib.suppress(Exception):  # best effort while an exception propagates
            sync()
        if verified() != step:
            logger.warning("interrupted: the metrics of step %d are not all finite or could "
                           "not be fetched; not saved", step)
            return
        save(step, state)
        logger.warning("interrupted: saved a checkpoint at step %d", step)
    except Exception as exc:  # noqa: BLE001 - the original exception matters more
        logger.warning("interrupted: saving a checkpoint failed: %r", exc)


def _progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc or None, disable=not enabled,
                dynamic_ncols=True, leave=True)
