"""The training loop: :func:`fit` runs one stage's jitted step to its last step.

Every stage trains through this one loop: it restores the stage's latest checkpoint
(state and data-iterator position, :mod:`ur_jax.checkpointing`), logs averaged metrics
with throughput and an ETA, validates for model selection, checkpoints, and calls the
run's step hooks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from ur_jax import checkpointing, sharding, writers
from ur_jax.data import pipeline
from ur_jax.run.context import RunContext


def mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each metric over a list of per-step metric dicts (one host transfer)."""
    host = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def fit(ctx: RunContext, stage: str, step_fn: Callable[..., Any], state: Any, dataset,
        num_steps: int, examples_per_step: int, teacher_vars: Any = None,
        validate: Callable[[int, Any], None] | None = None, validate_every: int = 0) -> Any:
    """Runs ``step_fn`` until ``state.step == num_steps`` and returns the final state,
    resuming from ``ctx.workdir/checkpoints/<stage>``.

    Args:
      ctx: the run (config keys read: ``data_threads``, ``keep_checkpoints``,
        ``checkpoint_every``, ``log_every``).
      stage: the stage's name (checkpoint folder, metric tags ``<stage>/<metric>``).
      step_fn: a jitted step ``(state, batch)`` or, with ``teacher_vars``, ``(state,
        teacher_vars, batch)`` -> ``(state, metrics)``; metrics hold at least ``'loss'``.
      state: the initial train state (replicated on ``ctx.mesh``), with an int ``step``.
      dataset: the infinite batch dataset (:func:`ur_jax.data.pipeline.train_batches`).
      num_steps: the stage's last step.
      examples_per_step: for the throughput figure.
      teacher_vars: the frozen teachers' variables (replicated), passed to ``step_fn``
        before the batch; ``None`` for a step without teachers.
      validate: ``validate(step, state)``, run every ``validate_every`` steps and at the
        end, before that step's checkpoint (model selection, :class:`ur_jax.run.selection.BestModel`).
      validate_every: steps between validations (0: never).

    Returns:
      The state after ``num_steps`` steps (restored as is when the checkpoint is already
      there).

    Raises:
      Whatever a step hook raises (the run stops there; the checkpoints written so far
      stay, and a new run resumes from the latest).
    """
    config = ctx.config
    iterator = pipeline.iterate(dataset, num_threads=config.data_threads)
    ckpt = checkpointing.Checkpointer(os.path.join(ctx.workdir, "checkpoints", stage),
                                      keep=config.keep_checkpoints, every=config.checkpoint_every)
    try:
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state, iterator)
            if int(state.step) < num_steps:
                logging.info("[%s] resuming from the checkpoint at step %d of %d.", stage,
                             int(state.step), num_steps)
        step = int(state.step)
        if step >= num_steps:
            logging.info("[%s] already trained (%d steps); restored.", stage, step)
            return state
        logging.info("[%s] training %d steps, %d examples per step.", stage, num_steps,
                     examples_per_step)
        report = writers.ReportProgress(num_train_steps=num_steps, writer=ctx.writer,
                                        every_steps=config.log_every, name=stage)
        history: list[dict[str, Any]] = []
        t0, s0 = time.perf_counter(), step
        while step < num_steps:
            batch = sharding.global_batch(next(iterator), ctx.mesh)  # this process's part
            if teacher_vars is None:
                state, metrics = step_fn(state, batch)
            else:
                state, metrics = step_fn(state, teacher_vars, batch)
            step += 1
            history.append(metrics)
            report(step)
            if step % config.log_every == 0 or step == num_steps:
                scalars = mean_metrics(history)
                now = time.perf_counter()
                scalars["examples_per_sec"] = examples_per_step * (step - s0) / max(now - t0, 1e-9)
                ctx.writer.write_scalars(step, {f"{stage}/{k}": v for k, v in scalars.items()})
                logging.info("[%s] step %d/%d  loss %.4f  %.0f examples/s", stage, step,
                             num_steps, scalars["loss"], scalars["examples_per_sec"])
                history, t0, s0 = [], now, step
            if validate is not None and validate_every and (step % validate_every == 0
                                                            or step == num_steps):
                validate(step, state)
            ckpt.save(step, state, iterator, force=step == num_steps)
            for hook in ctx.step_hooks:
                hook(stage, step, state)
        ctx.writer.flush()
        return state
    finally:
        ckpt.close()
