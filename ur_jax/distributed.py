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

def _count(env, name: str) -> int:
    value = env.get(name, "")
    return int(value) if value.isdigit() else 0


def detected_cluster(environ=None) -> str | None:
    """The cluster manager that started this process as one of several, read from
    environment variables alone (no network query), or ``None``.

    What counts is what ``jax.distributed.initialize`` can complete on its own:

    * ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, which
      :func:`initialize` passes on, or a cluster manager below that gives them);
    * a SLURM job step of several tasks, started by ``srun`` (``SLURM_JOB_ID``,
      ``SLURM_STEP_NODELIST``, ``SLURM_PROCID``, ``SLURM_LOCALID`` set and
      ``SLURM_STEP_NUM_TASKS`` > 1): a batch script run without ``srun`` is one process,
      however many tasks it was allocated;
    * Open MPI's ``mpirun`` with several ranks (``OMPI_MCA_orte_hnp_uri``, which JAX reads,
      and ``OMPI_COMM_WORLD_SIZE`` > 1);
    * a Cloud TPU pod slice on GKE (``TPU_WORKER_HOSTNAMES`` naming several hosts) or a
      multi-slice job (``MEGASCALE_COORDINATOR_ADDRESS``).

    A pod slice of Cloud TPU VMs started with ``gcloud ... --worker=all`` is found by
    :func:`initialize` through JAX's own detection instead (it asks the VM's metadata
    server). ``environ``: the mapping to read (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "JAX_COORDINATOR_ADDRESS"
    if (all(env.get(k) for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                                 "SLURM_LOCALID"))
            and _count(env, "SLURM_STEP_NUM_TASKS") > 1):
        return "SLURM (srun, several tasks)"
    if env.get("OMPI_MCA_orte_hnp_uri") and _count(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI (mpirun, several ranks)"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "a Cloud TPU pod slice on GKE"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "a multi-slice Cloud TPU job"
    return None


def _on_cloud_tpu_vm() -> bool:
    """Whether JAX found TPU chips and libtpu on this machine (a PCI scan JAX makes when it
    is imported; no network)."""
    try:
        from jax._src import cloud_tpu_init  # JAX's own flag; no public equivalent
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Starts JAX's distributed runtime when this run spans several processes; returns
    whether it did. Call it before anything else uses JAX's devices.

    With ``coordinator_address`` (``'HOST:PORT'`` of process 0), ``num_processes`` and
    ``process_id`` given, they go to ``jax.distributed.initialize`` as they are (the flags
    of ``python -m ur_jax.main`` carry these names). Without them, the runtime starts where
    :func:`detected_cluster` finds a cluster manager (JAX reads the values from its
    environment; ``JAX_COORDINATOR_ADDRESS`` may come with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID``, which are passed on), and on Cloud TPU VMs, where JAX asks the
    metadata server (JAX recommends initialising there, one host or many; where it finds
    no pod, e.g. a notebook's TPU runtime, the run stays one process). Otherwise, and with
    ``num_processes=1``, a run is one process.

    Under SLURM and Open MPI, JAX gives each process one local GPU (``SLURM_LOCALID``):
    start one task per GPU. CPU devices use JAX's gloo collectives, so that several local
    processes with ``--xla_force_host_platform_device_count`` devices form one mesh.

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
    import jax

    if len(named) < 3 and detected_cluster() is None:
        if not _on_cloud_tpu_vm():
            return False
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:  # no pod found: one process
            logging.info("Cloud TPU VM without a pod to join (%s): one process.", e)
            return False
        logging.info("Cloud TPU VM: process %d of %d.", jax.process_index(),
                     jax.process_count())
        return True

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


class ProcessError(RuntimeError):
    """Another process of the run failed at a point every process passes together (its
    log says why)."""


def on_primary(fn, what: str):
    """``fn()`` on process 0 only (writing a file, preparing a dataset), then a point every
    process passes together: an exception on process 0 is raised there and, as a
    :class:`ProcessError`, on every other process, instead of leaving them waiting at the
    next collective. Returns ``fn()``'s value on process 0, ``None`` elsewhere. ``what``
    names the step in the error (e.g. ``'write the results'``)."""
    import jax

    if jax.process_count() == 1:
        return fn()
    return on_every(fn if is_primary() else (lambda: None), what, only="process 0")


def on_every(fn, what: str, only: str = "another process"):
    """``fn()`` on every process, then a point every process passes together: when it raises
    on any process, every process raises (the original exception where it happened, a
    :class:`ProcessError` naming ``what`` elsewhere)."""
    error, value = None, None
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001  (re-raised below, after every process knows)
        error = e
    if not agree(error is None):
        if error is not None:
            raise error
        raise ProcessError(f"{only[0].upper() + only[1:]} could not {what}; its log says why.")
    return value
