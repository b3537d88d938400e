"""Training harness, generic over functional models.

A model is a params pytree and ``loss_fn(params, batch, key, train) -> (loss, aux)``; batches
come from ``train_batches(step)``. :func:`fit` trains with logging (``metrics.jsonl``), config
(``config.json``), orbax checkpoints and exact resume; :func:`make_optimizer` builds the optax
chain (clip first, then the optimiser, schedules, reduce-on-plateau).
"""

from seqjax.train.checkpoint import (
    CheckpointError,
    check_checkpoint,
    latest_step,
    restore_checkpoint,
)
from seqjax.train.loop import (
    FitResult,
    LossFn,
    NonFiniteLossError,
    fit,
    load_history,
    make_eval_fn,
    make_train_step,
)
from seqjax.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    learning_rate_of,
    make_optimizer,
    make_schedule,
    rmsprop_torch,
)
from seqjax.train.parallel import (
    host_local_batch_to_global,
    initialize_distributed,
    make_mesh,
    mesh_for,
    place_state,
    replicate,
    shard_batch,
)
from seqjax.train.plot import plot_curves
from seqjax.train.provenance import run_provenance
from seqjax.train.state import TrainState
from seqjax.train.tasks import fit_task, make_classifier_step, make_task_evaluator, task_loss_fn
from seqjax.train.tbptt import (
    StreamBatch,
    TokenStreams,
    evaluate_stream,
    make_tbptt_loss_fn,
    make_window_loss_fn,
    stream_layout,
    truncated_forward,
)
from seqjax.train.word2vec import train_word2vec

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "CheckpointError",
    "FitResult",
    "StreamBatch",
    "TokenStreams",
    "LossFn",
    "NonFiniteLossError",
    "TrainState",
    "train_word2vec",
    "check_checkpoint",
    "fit",
    "fit_task",
    "host_local_batch_to_global",
    "initialize_distributed",
    "run_provenance",
    "make_mesh",
    "mesh_for",
    "place_state",
    "replicate",
    "shard_batch",
    "latest_step",
    "learning_rate_of",
    "load_history",
    "make_eval_fn",
    "make_optimizer",
    "make_schedule",
    "rmsprop_torch",
    "evaluate_stream",
    "make_classifier_step",
    "make_task_evaluator",
    "make_tbptt_loss_fn",
    "make_train_step",
    "make_window_loss_fn",
    "plot_curves",
    "restore_checkpoint",
    "stream_layout",
    "task_loss_fn",
    "truncated_forward",
]
