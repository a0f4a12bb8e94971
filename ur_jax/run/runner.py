"""The one runner: :func:`run` executes a config's stages in a workdir.

For every name in ``config.stages`` it calls the registered stage (:mod:`ur_jax.stages`),
hands what the stage returns to the evaluators (``on='models'``) and keeps it for later
stages; then it runs the evaluators on the whole run (``on='run'``), writes
``results.json`` and prints the problem's table. A run started again with the same config
and workdir skips what is finished and continues the rest from its latest checkpoint, and
ends with bitwise the same numbers on CPU.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from ur_jax import distributed, sharding, stages, writers
from ur_jax.config.validation import validate
from ur_jax.evaluation import evaluators
from ur_jax.run import problems
from ur_jax.run.context import CompiledCache, RunContext, StepHook
from ur_jax.run.logs import quiet_library_logs
from ur_jax.run.workdir import RESULTS_FILE, TIMING_FILE, flatten, prepare_workdir, write_json


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False,
        mesh: Mesh | None = None, *, step_hooks: Sequence[StepHook] = (),
        cache: CompiledCache | None = None) -> dict[str, Any]:
    """Runs the stages of ``config`` in ``workdir`` (resuming what is there) and returns the
    results also written to ``workdir/results.json``.

    Args:
      config: an experiment config (``configs/*.py``; :func:`ur_jax.config.load_config`).
      workdir: the run's directory (:func:`ur_jax.run.workdir.prepare_workdir`).
      overwrite: replace a run of a different config found in ``workdir``.
      mesh: the data mesh (default: every device, :func:`ur_jax.sharding.make_mesh`).
      step_hooks: ``hook(stage, step, state)`` called after every training step.
      cache: compiled functions to share with other runs of this process (default: a
        fresh :class:`ur_jax.run.context.CompiledCache`).

    Raises:
      ValueError: a config value that cannot work (checked before anything runs,
        :func:`ur_jax.config.validation.validate`).
      ur_jax.run.workdir.WorkdirError: the workdir is not writable or holds another run.
      FileNotFoundError: data the config needs is missing (the message says what to get).
    """
    problem = problems.get(config)
    validate(config, problem.name, mesh)
    chosen = evaluators.for_run(tuple(config.evaluators) or problem.evaluators,
                                problem.name)
    quiet_library_logs()
    primary = distributed.is_primary()
    workdir = _prepare_workdir(workdir, config, overwrite, primary)
    mesh = sharding.make_mesh() if mesh is None else mesh
    logging.info("ur_jax (%s): %d %s device(s) in %d process(es); workdir %s", problem.name,
                 jax.device_count(), jax.default_backend(), jax.process_count(), workdir)
    data = _load_data(problem, config, primary)
    config_json = json.loads(config.to_json_best_effort())
    writer = writers.create_writer(os.path.join(workdir, "tensorboard") if primary else None)
    ctx = RunContext(config=config, mesh=mesh, workdir=workdir, writer=writer, data=data,
                     cache=CompiledCache() if cache is None else cache, step_hooks=tuple(step_hooks))
    ctx.results.update({"config": config_json,
                        **{row: {} for row in stages.result_rows(problem.name)}})
    t_start = time.perf_counter()
    try:
        writer.write_hparams(dict(flatten(config_json)))
        problem.prepare(ctx)
        for name in config.stages:
            models = stages.get(problem.name, name).fn(ctx)
            if models is None:
                continue
            ctx.models[name] = models
            ctx.results[name] = _evaluate_stage(ctx, chosen, name, models)
        for evaluator in chosen:
            if evaluator.on == "run":
                result = evaluator.fn(ctx)
                if result is not None:
                    ctx.results[evaluator.result_key] = result
    finally:
        writer.close()
    def write() -> None:
        write_json(os.path.join(workdir, RESULTS_FILE), ctx.results)
        # Timing differs between runs, so it stays out of results.json.
        write_json(os.path.join(workdir, TIMING_FILE),
                   {"wall_time_s": time.perf_counter() - t_start, "devices": jax.device_count(),
                    "processes": jax.process_count(), "backend": jax.default_backend()})
        logging.info("Results written to %s", os.path.join(workdir, RESULTS_FILE))
        print(problem.table(ctx.results), flush=True)

    distributed.on_primary(write, "write the results")  # the run ends when they are on disk
    return ctx.results


def _prepare_workdir(workdir: str, config, overwrite: bool, primary: bool) -> str:
    """:func:`prepare_workdir` on several processes: every process checks the recorded
    config first (so all raise alike), then process 0 creates, cleans and records."""
    if jax.process_count() == 1:
        return prepare_workdir(workdir, config, overwrite)
    prepare_workdir(workdir, config, overwrite, primary=False)
    distributed.barrier("ur_jax:workdir-checked")
    distributed.on_primary(lambda: prepare_workdir(workdir, config, overwrite),
                           "prepare the workdir")
    return os.path.abspath(os.path.expanduser(workdir))


def _load_data(problem, config, primary: bool):
    """``problem.load(config)``: process 0 first (a first run prepares datasets, e.g. builds
    TFDS records), the others once it has; an error on any process stops every process."""
    if jax.process_count() == 1:
        return problem.load(config)
    data = distributed.on_primary(lambda: problem.load(config), "load the data")
    return distributed.on_every(lambda: data if primary else problem.load(config),
                                "load the data")


def _evaluate_stage(ctx: RunContext, chosen, name: str, models) -> dict[str, Any]:
    """The merged results of every ``on='models'`` evaluator on a stage's models.

    Raises:
      ValueError: two evaluators give the same result key.
    """
    out: dict[str, Any] = {}
    for evaluator in chosen:
        if evaluator.on != "models":
            continue
        result = evaluator.fn(ctx, name, models)
        clash = sorted(set(out) & set(result))
        if clash:
            raise ValueError(f"Evaluators of stage {name!r} both give {clash}; name only one of "
                             f"them in config.evaluators.")
        out.update(result)
    return out
