"""Several processes (hosts) in one run: starting JAX's distributed runtime, and who writes.

A TPU pod slice or a multi-node GPU job runs one ur_jax process per host; all of them run
the same program over one global device mesh (JAX's multi-controller model). ur_jax uses
JAX's own runtime for this and nothing of its own: :func:`initialize` calls
``jax.distributed.initialize`` (with JAX's CPU collectives, gloo, so that local processes
with CPU devices form one mesh too, which is how the multi-process code is tested), the
input pipelines read each process's part of every global batch (:mod:`ur_jax.data.pipeline`,
``process_index`` / ``process_count``), :func:`ur_jax.sharding.global_batch` assembles the
global batch with ``jax.make_array_from_process_local_data``, and orbax saves and restores
checkpoints with every process taking part.

Files that are not checkpoints (TensorBoard events, ``results.json``, ``config.json``,
predictions, the selection record) are written by process 0 only (:func:`is_primary`);
the others wait at a :func:`barrier` where they must not run ahead. The workdir (and the
data directory) must be on a file system every process sees (a network file system, or a
bucket mounted with gcsfuse; ``gs://`` paths are not supported).
"""

from __future__ import annotations

import os

from absl import logging

#: Environment variables whose presence means that a cluster manager started this process
#: as one of several: then :func:`initialize` lets ``jax.distributed.initialize`` detect
#: the coordinator, the process count and this process's id.
CLUSTER_VARIABLES = {
    "JAX_COORDINATOR_ADDRESS": "JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and "
                               "JAX_PROCESS_ID, or a cluster manager that gives them)",
    "SLURM_NTASKS": "SLURM (srun), when it starts more than one task",
    "OMPI_COMM_WORLD_SIZE": "Open MPI (mpirun), with more than one rank",
    "TPU_WORKER_HOSTNAMES": "a Cloud TPU pod slice (more than one worker host)",
    "MEGASCALE_COORDINATOR_ADDRESS": "a multi-slice Cloud TPU job",
}


def detected_cluster(environ=None) -> str | None:
    """The cluster manager that started this process as one of several, from environment
    variables alone (no network query), or ``None`` for a single-process run.

    ``SLURM_NTASKS`` and ``OMPI_COMM_WORLD_SIZE`` count only when above 1, and
    ``TPU_WORKER_HOSTNAMES`` only when it names more than one host: a one-task SLURM job or
    a single TPU VM is a single-process run. ``environ``: the mapping to read (default
    ``os.environ``).
    """
    env = os.environ if environ is None else environ
    for name, what in CLUSTER_VARIABLES.items():
        value = env.get(name)
        if not value:
            continue
        if name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            if not value.isdigit() or int(value) < 2:
                continue
        if name == "TPU_WORKER_HOSTNAMES" and len([h for h in value.split(",") if h]) < 2:
            continue
        return what
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Starts JAX's distributed runtime when this run spans several processes; returns
    whether it did.

    With ``coordinator_address`` (``'HOST:PORT'`` of process 0), ``num_processes`` and
    ``process_id`` given, they go to ``jax.distributed.initialize`` as they are (the flags
    of ``python -m ur_jax.main`` carry these names). Without them, the runtime starts only
    where :func:`detected_cluster` finds a cluster manager, and JAX reads the values from
    its environment (``JAX_COORDINATOR_ADDRESS`` may come with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``, which are passed on). ``num_processes=1`` (and nothing detected) is a single-process run.
    CPU devices use JAX's gloo collectives, so that several local processes with
    ``--xla_force_host_platform_device_count`` devices form one mesh. Call it before
    anything else uses JAX.

    Raises:
      ValueError: only some of the three values are given, or they are out of range.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    named = [k for k, v in given.items() if v not in (None, "")]
    if named and len(named) < 3 and not (named == ["num_processes"] and num_processes == 1):
        missing = [k for k in given if k not in named]
        raise ValueError(f"Several processes need --coordinator_address, --num_processes and "
                         f"--process_id together; missing {', '.join('--' + k for k in missing)}. "
                         f"Leave all three out where a cluster manager (SLURM, Open MPI, a "
                         f"TPU pod) starts the processes.")
    if len(named) == 3:
        if int(num_processes) < 1 or not 0 <= int(process_id) < int(num_processes):
            raise ValueError(f"--process_id must lie in [0, --num_processes={num_processes}); "
                             f"found {process_id}.")
        if int(num_processes) == 1:
            return False
    elif detected_cluster() is None:
        return False
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if len(named) == 3:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=int(num_processes), process_id=int(process_id))
    else:
        logging.info("Multi-process environment detected (%s): starting jax.distributed.",
                     detected_cluster())
        env = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                                  ("process_id", "JAX_PROCESS_ID"))
               if os.environ.get(v, "").isdigit()}
        jax.distributed.initialize(**env)
    logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the run's files (always on one
    process)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing on one process).
    Every process must pass the same barriers in the same order."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Whether ``flag`` is true on every process (an all-reduce of one boolean; ``flag``
    itself on one process). Every process must call it at the same point."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def gather_parts(part):
    """The whole batch axis from each process's part of it: ``part`` (a NumPy array whose
    leading axis is this process's contiguous part) concatenated over processes in process
    order, on every process; ``part`` itself on one process. Every process must call it at
    the same point with parts of one shape."""
    import jax
    import numpy as np

    if jax.process_count() == 1:
        return np.asarray(part)
    from jax.experimental import multihost_utils

    parts = np.asarray(multihost_utils.process_allgather(np.asarray(part)))  # (P, *shape)
    return parts.reshape((-1, *parts.shape[2:]))
