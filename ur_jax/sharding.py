"""Data parallelism: the ``('data',)`` mesh and every device placement.

One mechanism: ``jax.jit`` with ``NamedSharding``. State (parameters, optimizer
state, BatchNorm statistics) and frozen teachers are replicated (``P()``); every batch
array is split along its leading (batch) axis (``P('data')``); the state is donated.
XLA's SPMD partitioner inserts the collectives, so BatchNorm statistics, losses and
gradients are global-batch quantities with no axis names in the model code, and a step
on 8 devices computes what it computes on 1.

Nothing else in ur_jax calls ``jax.device_put``. Batches reach the mesh in one of two ways:

* :func:`global_batch`: each process passes its own part of the global batch (its
  ``1 / process_count`` of every batch axis, as the input pipelines give it) and
  ``jax.make_array_from_process_local_data`` assembles the global array. Training and test
  batches take this way, so that every process decodes only its share.
* :func:`shard_batch`: every process holds the whole batch (few-shot episodes, which every
  process samples alike from the run's seed) and places its devices' rows.

On one process the two are the same ``jax.device_put``. :func:`to_host` fetches a step's
output on every process, also one split over several processes' devices. Multi-process runs start with
:func:`ur_jax.distributed.initialize`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices).

    The devices are ordered by process (then as given), so that process ``p``'s devices hold
    the ``p``-th contiguous part of every batch, the part its input pipeline reads: the
    global batch is then in the order of a one-process run.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device.")
    devices = sorted(devices, key=lambda d: d.process_index)  # stable: one process unchanged
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over ``'data'``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` fully on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def _check_divisible(tree: Any, n: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shape = np.shape(leaf)
        if not shape or shape[0] % n:
            name = jax.tree_util.keystr(path) or "batch"
            raise ValueError(
                f"Batch array {name} has shape {shape}: its leading (batch) axis must be a "
                f"multiple of the {n} devices of the data mesh. Choose per-domain batch sizes "
                f"divisible by {n}, or run on fewer devices.")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Splits every array of ``batch``, the whole batch, along its leading axis over the mesh.

    Every process passes the same whole batch (on several processes each places the rows of
    its own devices). For batches of which each process holds only its part, use
    :func:`global_batch`.

    Raises:
      ValueError: a batch axis does not divide evenly over the mesh's devices.
    """
    sharding = data_sharded(mesh)
    _check_divisible(batch, mesh.size)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_callback(
        np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]), batch)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """The global batch from each process's part of it: every array of ``local`` holds this
    process's contiguous ``1 / process_count`` of the batch axis (process 0 the first part),
    and the result is split over the mesh like :func:`shard_batch`'s
    (``jax.make_array_from_process_local_data``). On one process ``local`` is the whole batch.

    Raises:
      ValueError: a local batch axis does not divide evenly over this process's devices.
    """
    if jax.process_count() == 1:
        return shard_batch(local, mesh)
    sharding = data_sharded(mesh)
    _check_divisible(local, len(mesh.local_devices))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def to_host(tree: Any) -> Any:
    """``tree`` with every JAX array fetched as a NumPy array, on every process.

    ``jax.device_get`` cannot fetch an array split over devices of several processes (the
    output of a plain ``jax.jit`` on a batch from :func:`shard_batch`): such an array is
    gathered with ``multihost_utils.process_allgather``, so every process must call this at
    the same point. On one process it is ``jax.device_get``.
    """
    def get(x: Any) -> Any:
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(get, tree)


def data_shards() -> int:
    """How many shards the batch axis has in the mesh context being traced (1 outside one).

    Inside a step made by :func:`jit_data_parallel` this is the data mesh's size; models
    use it to lay out multi-domain batches so that no example crosses devices.
    """
    return int(jax.sharding.get_abstract_mesh().shape.get(DATA_AXIS, 1))


def jit_data_parallel(step: Callable[..., Any], mesh: Mesh, batch_argnums: Sequence[int],
                      num_args: int, donate_argnums: Sequence[int] = (0,)) -> Callable[..., Any]:
    """``jax.jit(step)`` over the data mesh.

    Arguments at ``batch_argnums`` are split along their batch axis; the other
    arguments and every output are replicated; ``donate_argnums`` (the state) are
    donated so the update happens in place. Calls run with ``mesh`` as the context mesh
    (``jax.set_mesh``), which is what :func:`data_shards` reads while tracing.
    """
    in_shardings = tuple(data_sharded(mesh) if i in batch_argnums else replicated(mesh)
                         for i in range(num_args))
    jitted = jax.jit(step, in_shardings=in_shardings, out_shardings=replicated(mesh),
                     donate_argnums=tuple(donate_argnums))

    @functools.wraps(step)
    def call(*args):
        with jax.set_mesh(mesh):
            return jitted(*args)

    def lower(*args):
        with jax.set_mesh(mesh):
            return jitted.lower(*args)

    call.lower = lower  # for inspecting the compiled step (HLO, cost analysis)
    return call
