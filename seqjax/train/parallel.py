"""Data-parallel and multi-host training with ``jax.sharding`` (JAX's own machinery only).

A :class:`jax.sharding.Mesh` with one axis, ``data``, spans the devices. Each batch leaf is split
along its leading (batch) axis over that axis (``NamedSharding(mesh, P("data"))``); params,
optimiser state and the rest of the :class:`~seqjax.train.state.TrainState` are replicated
(``P()``). The jitted train step is the same function as on one device: XLA inserts the
all-reduce of the gradients because the batch is sharded and the params are not.

Multi-host: every process calls :func:`initialize_distributed` (flags or the environment
variables ``SEQJAX_COORDINATOR``, ``SEQJAX_NUM_PROCESSES``, ``SEQJAX_PROCESS_ID``) before
anything else touches JAX; the mesh then spans the devices of all processes, and each process
feeds its own slice of the global batch (:func:`host_local_batch_to_global`).

Usage::

    mesh = make_mesh()            # all devices
    fit(..., mesh=mesh)           # same arguments otherwise
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "batch_sharding",
    "host_local_batch_to_global",
    "initialize_distributed",
    "is_primary",
    "make_mesh",
    "replicate",
    "replicated_sharding",
    "shard_batch",
]

MODEL_AXIS = "model"
DATA_AXIS = "data"
ENV_COORDINATOR = "SEQJAX_COORDINATOR"
ENV_NUM_PROCESSES = "SEQJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SEQJAX_PROCESS_ID"


def make_mesh(num_devices: int | None = None, axis: str = DATA_AXIS, *, model: int = 1) -> Mesh:
    """A mesh over ``jax.devices()[:num_devices]`` (all devices if ``None`` or 0).

    With ``model == 1`` it has one axis, ``axis`` (data parallelism). With ``model > 1`` it is
    ``(num_devices // model, model)`` with axes ``(axis, "model")``: batches split on the first,
    large matrices (embeddings, output layers) on the second (see :func:`param_sharding`).

    Raises:
      ValueError: if ``num_devices`` is negative or exceeds the number of available devices,
        or ``model`` does not divide it.
    """
    devices = jax.devices()
    n = len(devices) if not num_devices else int(num_devices)
    if n < 0 or n > len(devices):
        raise ValueError(
            f"asked for {num_devices} devices but only {len(devices)} are available "
            f"({devices[0].platform}); on CPU, force more with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=N before importing jax"
        )
    if model < 1 or n % model:
        raise ValueError(f"model={model} must be a positive divisor of the device count {n}")
    if model == 1:
        return Mesh(np.asarray(devices[:n]), (axis,))
    return Mesh(np.asarray(devices[:n]).reshape(n // model, model), (axis, MODEL_AXIS))


#: Matrices with at least this many elements are split on the ``model`` axis, if there is one.
MODEL_SHARD_MIN_SIZE = 2**16


def param_sharding(x: Any, mesh: Mesh, min_size: int = MODEL_SHARD_MIN_SIZE) -> NamedSharding:
    """Sharding of one parameter (or optimiser-state) leaf: replicated, except on a mesh with a
    ``model`` axis, where a matrix of ``>= min_size`` elements is split along its largest
    dimension that the axis divides (an embedding ``[V, E]`` along ``V``, an output layer
    ``[H, V]`` along ``V``). Decided by shape alone, so Adam's moments follow their params."""
    shape = np.shape(x)
    if MODEL_AXIS not in mesh.axis_names or len(shape) < 2 or int(np.prod(shape)) < min_size:
        return replicated_sharding(mesh)
    m = mesh.shape[MODEL_AXIS]
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % m == 0:
            spec = [None] * len(shape)
            spec[d] = MODEL_AXIS
            return NamedSharding(mesh, P(*spec))
    return replicated_sharding(mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's (first) axis."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def _check_divisible(batch: Any, n: int, what: str) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = np.shape(leaf)
        if shape and shape[0] % n:  # scalars (e.g. TBPTT's reset flag) are replicated
            raise ValueError(
                f"batch size {shape[0]} (leaf {jax.tree_util.keystr(path)}) is not divisible "
                f"by the {what} {n}; use a batch size that is a multiple of {n}"
            )


def mesh_for(devices: int, model: int = 1) -> Mesh | None:
    """What an experiment's ``--devices N`` (and ``--model-parallel M``) mean: ``None`` (no mesh)
    for one device, else a mesh over the first ``N`` devices (all of them for 0), with a
    ``model`` axis of size ``M`` when ``M > 1``."""
    if devices < 0:
        raise ValueError(f"devices={devices} must be >= 0 (0: all devices)")
    if devices == 1 and model == 1:
        return None
    return make_mesh(devices or None, model=model)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``batch`` split on its leading axis over the mesh's devices
    (scalar leaves, such as truncated BPTT's per-chunk reset flag, are replicated).

    Raises:
      ValueError: if a leaf's leading (batch) size is not divisible by the device count; the
        message names both numbers.
    """
    n = mesh.shape[mesh.axis_names[0]]
    _check_divisible(batch, n, "device count")
    return jax.tree.map(lambda x: jax.device_put(x, _leaf_sharding(x, mesh)), batch)


def _leaf_sharding(x: Any, mesh: Mesh) -> NamedSharding:
    """Batch-sharded on the leading axis; a scalar (a per-batch flag) is replicated."""
    return batch_sharding(mesh) if np.ndim(x) else replicated_sharding(mesh)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a full copy of every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def _place_core(tree: Any, mesh: Mesh, put: Any) -> Any:
    return jax.tree.map(lambda x: put(x, param_sharding(x, mesh)), tree)


def place_state(state: Any, mesh: Mesh) -> Any:
    """Places a :class:`~seqjax.train.TrainState` on ``mesh``.

    Params, optimiser state, step and key are replicated (large matrices split on a ``model``
    axis, :func:`param_sharding`); ``extra`` (the truncated-BPTT carry, batch-major leaves) is
    sharded with the batch on its leading axis, so each device keeps its own streams' carry.

    Raises:
      ValueError: if an ``extra`` leaf's leading size is not divisible by the device count.
    """
    core = _place_core(state.replace(extra=None), mesh, jax.device_put)
    if state.extra is None:
        return core
    _check_divisible(state.extra, mesh.shape[mesh.axis_names[0]], "device count")
    return core.replace(extra=jax.device_put(state.extra, batch_sharding(mesh)))


def constrain_state(state: Any, mesh: Mesh) -> Any:
    """Inside ``jit``: the sharding :func:`place_state` gives, as constraints on a new state."""
    core = _place_core(state.replace(extra=None), mesh, jax.lax.with_sharding_constraint)
    if state.extra is None:
        return core
    return core.replace(extra=jax.lax.with_sharding_constraint(state.extra, batch_sharding(mesh)))


def host_local_batch_to_global(batch: Any, mesh: Mesh) -> Any:
    """Builds the global, ``data``-sharded batch from each process's local slice.

    Every process calls this with its own slice (leading size ``global_B / process_count``);
    the result is one global array per leaf (``jax.make_array_from_process_local_data``).
    With one process it is :func:`shard_batch`.

    Raises:
      ValueError: if the local batch size is not divisible by the process's device count in
        the mesh.
    """
    if jax.process_count() == 1:
        return shard_batch(batch, mesh)
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    _check_divisible(batch, local, "local device count")
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(_leaf_sharding(x, mesh), np.asarray(x)),
        batch)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs: Any,
) -> bool:
    """Starts JAX's multi-process runtime (``jax.distributed.initialize``).

    Arguments not given are read from ``SEQJAX_COORDINATOR`` (``host:port``),
    ``SEQJAX_NUM_PROCESSES`` and ``SEQJAX_PROCESS_ID``. With no coordinator from either and no
    process count above 1 it does nothing (single-process run) and returns ``False``. Must be
    called before any other JAX call.

    Returns:
      ``True`` if the distributed runtime was initialised.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if coordinator_address is None and (num_processes or 1) <= 1:
        return False
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ValueError(
            "multi-process training needs a coordinator address, a process count and a "
            f"process id (flags or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, "
            f"${ENV_PROCESS_ID}); got {coordinator_address=}, {num_processes=}, {process_id=}"
        )
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
    return True


def is_primary() -> bool:
    """Whether this is process 0 (the one that logs and writes files other than checkpoints)."""
    return jax.process_index() == 0
