"""Data parallelism: the ``('data',)`` mesh and every device placement.

One mechanism: ``jax.jit`` with ``NamedSharding``. State (parameters, optimizer
state, BatchNorm statistics) and frozen teachers are replicated (``P()``); every batch
array is split along its leading (batch) axis (``P('data')``); the state is donated.
XLA's SPMD partitioner inserts the collectives, so BatchNorm statistics, losses and
gradients are global-batch quantities with no axis names in the model code, and a step
on 8 devices computes what it computes on 1.

Nothing else in ur_jax calls ``jax.device_put``. For multi-host runs call
``jax.distributed.initialize()`` first and build global batches with
``jax.make_array_from_process_local_data`` (:func:`shard_batch` does so when there is
more than one process).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh needs at least one device.")
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
    """Splits every array of ``batch`` along its leading axis over the mesh.

    On one process the arrays are the global batch; on several, each process passes
    its own slice and the result is the global array. Raises ``ValueError`` if a
    batch axis does not divide evenly over the devices.
    """
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        _check_divisible(batch, mesh.size)
        return jax.device_put(batch, sharding)
    _check_divisible(batch, len(mesh.local_devices))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


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
