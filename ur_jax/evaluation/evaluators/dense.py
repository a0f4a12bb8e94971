"""The ``'dense'`` evaluator: test metrics of dense-prediction models over the whole test
split (mIoU and pixel accuracy; depth absolute / relative error; normal angle statistics;
:mod:`ur_jax.evaluation.dense`) and Delta_MTL against the run's single-task results
(``delta_mtl.stl``) and, where the dataset has published ones (NYU-v2), against those
(``delta_mtl.reference``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from ur_jax import dense_steps, sharding
from ur_jax.evaluation import dense as dense_eval
from ur_jax.evaluation.evaluators import register


def evaluate(ctx, model, variables: Mapping[str, Any], tasks) -> dict[str, dict[str, float]]:
    """Test metrics ``{task: {metric: value}}`` of ``model`` over the test split of
    ``ctx.data`` (or its first ``config.eval_limit`` examples), in one compiled step per
    model; the last batch is padded with masked examples."""
    tasks = tuple(tasks)
    data, mesh = ctx.data, ctx.mesh
    eval_step = ctx.cache.get(
        ("dense_eval", model, tasks, data.num_classes, mesh),
        lambda: sharding.jit_data_parallel(
            dense_steps.make_dense_eval_step(model, tasks, data.num_classes), mesh,
            batch_argnums=(2,), num_args=3, donate_argnums=()))
    params, stats = variables["params"], variables.get("batch_stats", {})
    sums = None
    for batch in data.eval_batches(ctx.config.eval_batch_size,
                                   limit=ctx.config.eval_limit or None, **ctx.process_part):
        batch = {k: v for k, v in batch.items() if k in ("image", "mask", *tasks)}
        out = eval_step(params, stats, sharding.global_batch(batch, mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {t: dense_eval.finalize(t, sums[t]) for t in tasks}


def deltas(per_task: Mapping[str, Mapping[str, float]], stl: Mapping[str, Any] | None,
           reference: Mapping[str, Any] | None) -> dict[str, float]:
    """Delta_MTL (%) of ``per_task`` metrics against the run's STL results (``'stl'``, when
    every task has one) and the dataset's published reference (``'reference'``)."""
    out = {}
    if stl and all(t in stl for t in per_task):
        out["stl"] = float(dense_eval.delta_mtl(per_task, stl))
    if reference:
        out["reference"] = float(dense_eval.delta_mtl(per_task, reference))
    return out


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``'name value, ...'`` for a log line."""
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


@register("dense", on="models", problems=("dense",))
def dense(ctx, name: str, models: Mapping[str, tuple[Any, dict]]) -> dict[str, Any]:
    """Evaluates ``{task: (model, variables)}`` (one model per task for ``stl``, one model
    for every task otherwise); returns ``{task: metrics, 'delta_mtl': {...}}``. Single-task
    rows are compared with the reference only; multi-task rows also with this run's
    ``stl`` results; the ``mtl`` row also names its method (``'method'``)."""
    config, data = ctx.config, ctx.data
    groups: dict[int, list[str]] = {}
    for t in models:
        groups.setdefault(id(models[t]), []).append(t)
    res: dict[str, Any] = {}
    for tasks in groups.values():
        model, variables = models[tasks[0]]
        res.update(evaluate(ctx, model, variables, tasks))
    res = {t: res[t] for t in config.tasks if t in res}
    for t in res:
        logging.info("[%s] %s test %s", name, t, format_metrics(res[t]))
    stl_results = ctx.results.get("stl") or {}
    stl = None if name == "stl" else ({t: stl_results[t] for t in config.tasks
                                       if t in stl_results} or None)
    res["delta_mtl"] = deltas({t: res[t] for t in config.tasks if t in res}, stl, data.reference)
    if name == "mtl":
        res["method"] = config.mtl.method
    for t in config.tasks:
        if t in res:
            ctx.writer.write_scalars(0, {f"test/{name}/{t}/{k}": v for k, v in res[t].items()})
    return res
