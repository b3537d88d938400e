"""Glue between a per-step model and a :class:`seqjax.data.Task`: its loss and its evaluation.

A model here is anything with ``apply(params, inputs, lengths, *, train, key) -> [B, T, O]``
(e.g. :class:`seqjax.models.SequenceModel`).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import numpy as np
import optax

from seqjax.models.classify import Classifier, accuracy, cross_entropy
from seqjax.train.loop import FitResult, fit, make_train_step
from seqjax.train.state import TrainState

__all__ = ["task_loss_fn", "make_task_evaluator", "fit_task", "make_classifier_step"]


def task_loss_fn(model: Any, task: Any) -> Callable:
    """``loss_fn(params, batch, key, train) -> (mean loss, aux)`` for :func:`seqjax.train.fit`.

    The loss is ``loss / count`` of ``task.loss_terms``; ``aux`` holds the other terms divided
    by the count (e.g. the accuracy from ``correct``).
    """

    def loss_fn(params, batch, key, train):
        outputs = model.apply(params, batch.inputs, batch.lengths, train=train, key=key)
        terms = task.loss_terms(outputs, batch)
        count = terms["count"]
        aux = {k: v / count for k, v in terms.items() if k not in ("loss", "count")}
        return terms["loss"] / count, aux

    return loss_fn


def make_task_evaluator(
    model: Any, task: Any, batch_size: int, *, max_batches: int | None = None
) -> Callable[[Any, str], dict[str, float]]:
    """``evaluate(params, split) -> metrics`` over ``split`` (or its first ``max_batches``).

    Loss terms are summed over batches before :meth:`Task.metrics` turns them into metrics, so
    a smaller last batch is weighted by its size, not as a whole batch. The jitted forward is
    compiled once per batch shape and reused across calls.
    """
    terms_fn = jax.jit(
        lambda p, b: task.loss_terms(model.apply(p, b.inputs, b.lengths, train=False), b)
    )

    def evaluate(params: Any, split: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in itertools.islice(task.eval_batches(split, batch_size), max_batches):
            for name, value in jax.device_get(terms_fn(params, batch)).items():
                totals[name] = totals.get(name, 0.0) + float(value)
        if not totals:
            raise ValueError(f"task {task.name!r} has no {split!r} batches")
        return task.metrics(totals)

    return evaluate


def fit_task(
    model: Any,
    task: Any,
    *,
    params: Any,
    optimizer: Any,
    batch_size: int,
    num_steps: int,
    run_dir: Any,
    seed: int = 0,
    evaluate: Callable[[Any, str], dict[str, float]] | None = None,
    eval_every: int = 0,
    **fit_kwargs: Any,
) -> FitResult:
    """:func:`seqjax.train.fit` of ``model`` on ``task``, the experiments' common protocol.

    The loss is :func:`task_loss_fn`, step ``i`` trains on ``task.train_batch(i, batch_size,
    seed)``, every ``eval_every`` steps ``evaluate(params, "valid")`` (a
    :func:`make_task_evaluator`) gives a validation row and the state is checkpointed, and a
    training row is logged five times per evaluation period. With ``evaluate``, the params of
    the best validation row by the task's headline metric are kept (``FitResult.best_params``,
    the model the usual protocol tests; ``keep_best=None`` turns it off). ``fit_kwargs`` go to
    ``fit`` (``resume``, ``config``, ``progress``, ``desc``, ``mesh``, ...).
    """
    if evaluate is not None:
        mode = "min" if task.lower_is_better else "max"
        fit_kwargs.setdefault("keep_best", (task.metric_name, mode))
    return fit(
        params=params,
        loss_fn=task_loss_fn(model, task),
        optimizer=optimizer,
        train_batches=lambda i: task.train_batch(i, batch_size, seed),
        num_steps=num_steps,
        run_dir=run_dir,
        seed=seed,
        eval_fn=None if evaluate is None else (lambda p: evaluate(p, "valid")),
        eval_every=eval_every,
        checkpoint_every=eval_every,
        log_every=max(1, eval_every // 5),
        **fit_kwargs,
    )


def make_classifier_step(model: Classifier, optimizer: optax.GradientTransformation) -> Callable:
    """A jitted ``step(params, opt_state, tokens, lengths, labels, key) -> (params, opt_state,
    loss, acc)``; one compilation per padded length.

    A thin wrapper over :func:`make_train_step` (the library's one train
    step): the dropout key is the caller's ``key``, not one folded from a step counter.
    """
    def loss_fn(params, batch, _step_key, train):
        tokens, lengths, labels, key = batch
        logits = model.apply(params, tokens, lengths, train=train, key=key)
        return cross_entropy(logits, labels), {"acc": accuracy(logits, labels)}

    train_step = make_train_step(loss_fn, optimizer, donate=False)

    def step(params, opt_state, tokens, lengths, labels, key):
        state = TrainState(params=params, opt_state=opt_state, step=np.int32(0),
                           key=np.zeros(2, np.uint32))
        state, metrics = train_step(state, (tokens, lengths, labels, key))
        return state.params, state.opt_state, metrics["loss"], metrics["acc"]

    return step
