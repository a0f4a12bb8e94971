"""Classification evaluators: per-domain accuracy (``'classification'``) with test
predictions export, and the Visual Decathlon score (``'decathlon_score'``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ur_jax import distributed, sharding, steps
from ur_jax.data import pipeline
from ur_jax.evaluation.evaluators import register


def _eval_step(ctx, model):
    return ctx.cache.get(("eval_step", model, ctx.mesh), lambda: sharding.jit_data_parallel(
        steps.make_eval_step(model), ctx.mesh, batch_argnums=(2,), num_args=3, donate_argnums=()))


def _predict_step(ctx, model):
    def predict(params, batch_stats, images):
        variables = {"params": params}
        if jax.tree.leaves(batch_stats):
            variables["batch_stats"] = batch_stats
        _, logits = model.apply(variables, images, train=False)
        return {d: jnp.argmax(lg, -1).astype(jnp.int32) for d, lg in logits.items()}

    return ctx.cache.get(("predict", model, ctx.mesh), lambda: sharding.jit_data_parallel(
        predict, ctx.mesh, batch_argnums=(2,), num_args=3, donate_argnums=()))


def evaluate(ctx, model, variables: Mapping[str, Any], sources: Mapping[str, Any],
             transform: Mapping[str, Callable[..., Any]] | None = None,
             normalize: Mapping[str, pipeline.Normalization] | None = None,
             predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
             ) -> dict[str, dict[str, float]]:
    """Accuracy (%) and mean cross-entropy of the multi-head classifier ``model`` on each
    domain of ``sources``: ``{domain: {'accuracy', 'loss', 'examples'}}``.

    All domains are evaluated in one compiled step over ``ctx.mesh``, ``ctx.config.
    eval_batch_size`` images per domain and step (the first ``eval_limit`` only when set);
    shorter splits are padded with masked examples, and examples without a label (``-1``,
    e.g. a challenge's test set) are not counted: a domain with none has accuracy and loss
    ``None``. ``transform`` / ``normalize``: per-domain preprocessing keyed like ``sources``.
    ``predictions``: a dict that receives ``{domain: (image_ids, predicted labels)}``.

    Raises:
      ValueError: ``predictions`` requested for records without an ``'image_id'``.
    """
    config, mesh = ctx.config, ctx.mesh
    eval_step = _eval_step(ctx, model)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    transform, normalize = transform or {}, normalize or {}
    iters = {d: pipeline.eval_batches(src, config.eval_batch_size,
                                      normalize.get(d, pipeline.Normalization()),
                                      limit=config.eval_limit or None, transform=transform.get(d),
                                      **ctx.process_part)
             for d, src in sources.items()}
    sums = None  # per-batch sums added on device: one host transfer at the end
    collected: dict[str, list] = {d: [] for d in sources}
    while True:
        batch = {d: b for d, b in ((d, next(it, None)) for d, it in iters.items()) if b is not None}
        if not batch:
            break
        ids = {d: b.pop("image_id", None) for d, b in batch.items()}
        for b in batch.values():  # unlabelled examples are predicted but not scored
            b["mask"] = b["mask"] * (b["label"] >= 0)
        filler = next(iter(batch.values()))
        for d in sources:  # exhausted domains: fully masked batches keep one compiled shape
            batch.setdefault(d, {**filler, "mask": np.zeros_like(filler["mask"])})
        sharded = sharding.global_batch(batch, mesh)  # each process holds its part
        out = eval_step(params, stats, sharded)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if predictions is not None:
            pred = _predict_step(ctx, model)(params, stats,
                                             {d: b["image"] for d, b in sharded.items()})
            for d, i in ids.items():
                if i is None:
                    raise ValueError(f"Predictions need records with an 'image_id'; the {d!r} "
                                     f"source has none.")
                collected[d].append((distributed.gather_parts(i), pred[d]))
    totals = {k: float(v) for k, v in jax.device_get(sums).items()}
    if predictions is not None:
        for d, parts in collected.items():
            image_ids = np.concatenate([i for i, _ in parts])
            labels = np.concatenate([np.asarray(jax.device_get(p)) for _, p in parts])
            keep = image_ids >= 0  # drop padding
            predictions[d] = (image_ids[keep], labels[keep])
    out = {}
    for d in sources:
        n = totals[f"count/{d}"]
        out[d] = {"accuracy": 100.0 * totals[f"correct/{d}"] / n if n else None,
                  "loss": totals[f"loss_sum/{d}"] / n if n else None, "examples": int(n)}
    return out


def with_mean(per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``per_domain`` plus ``'mean'``: the mean accuracy and loss over domains (``None``
    when a domain has none)."""
    out: dict[str, Any] = dict(per_domain)
    out["mean"] = {k: (float(np.mean([v[k] for v in per_domain.values()]))
                       if all(v[k] is not None for v in per_domain.values()) else None)
                   for k in ("accuracy", "loss")}
    return out


def evaluation_split(ctx) -> str:
    """The split the tables report: ``'test'`` when every training domain's test split is
    labelled, else ``'val'``; ``'val'`` whenever ``config.evaluate_on == 'val'``.

    Raises:
      ValueError: ``evaluate_on='val'`` on data without a validation split.
    """
    config, data = ctx.config, ctx.data
    split = "test" if all(data.labelled(d) for d in config.domains) else "val"
    if config.evaluate_on == "val":  # choosing hyperparameters: never look at test
        if not data.val:
            raise ValueError("config.evaluate_on='val' but the data has no validation split; "
                             "for the embedded data set config.holdout_per_class > 0.")
        split = "val"
    return split


@register("classification", on="models")
def classification(ctx, name: str, models: Mapping[str, tuple[Any, dict]]) -> dict[str, Any]:
    """Evaluates ``{domain: (model, variables)}`` (one model for every domain, or one per
    domain) on :func:`evaluation_split`; exports test predictions to
    ``workdir/predictions/<name>_test.json`` when the test split is unlabelled. Returns
    ``{domain: {'accuracy', 'loss', 'examples'}, 'mean': {...}}``, or ``{}`` when the data
    has no classification split for these domains (Meta-Dataset: episodes only)."""
    config, data = ctx.config, ctx.data
    split = evaluation_split(ctx)
    held = data.test if split == "test" else data.val
    if not any(d in held for d in models):
        return {}
    per_domain, predictions = {}, {}
    groups: dict[int, list[str]] = {}
    for d in models:
        groups.setdefault(id(models[d]), []).append(d)
    for domains in groups.values():
        model, variables = models[domains[0]]
        settings = data.inputs({d: d for d in domains})
        sources = {d: held[d] for d in domains}
        per_domain.update(evaluate(ctx, model, variables, sources, settings.get("transform"),
                                   settings["normalize"]))
        if split == "val" and data.export_predictions is not None:
            evaluate(ctx, model, variables, {d: data.test[d] for d in domains},
                     settings.get("transform"), settings["normalize"], predictions=predictions)
    if predictions and ctx.is_primary:
        path = data.export_predictions(
            predictions, os.path.join(ctx.workdir, "predictions", f"{name}_test.json"))
        logging.info("[%s] test predictions written to %s", name, path)
    for d, v in per_domain.items():
        logging.info("[%s] %s %s accuracy %.2f%%", name, d, split, v["accuracy"])
    result = with_mean({d: per_domain[d] for d in config.domains if d in per_domain})
    ctx.writer.write_scalars(0, {f"{split}/{name}/{d}": v["accuracy"]
                                 for d, v in result.items() if v["accuracy"] is not None})
    return result


@register("decathlon_score", on="run", result_key="scores")
def decathlon_score(ctx) -> dict[str, dict[str, float]] | None:
    """With ``config.score == 'decathlon'``, per model row: the decathlon score (error bounds
    from the paper's Finetune row, or ``config.score_bounds`` ``{domain: Emax %}``),
    Delta_MDL against the run's own teachers (``delta_mdl``) and against the paper's
    Finetune row (``delta_mdl_paper``); ``None`` otherwise."""
    from ur_jax.evaluation import decathlon as dec
    from ur_jax.run.tables import model_rows

    config, results = ctx.config, ctx.results
    if config.score != "decathlon":
        return None
    bounds = dict(dec.ERROR_BOUNDS)
    bounds.update({d: float(e) for d, e in dict(config.score_bounds).items()})
    teachers = results.get("teachers") or {}
    out = {}
    for name, row in model_rows(results):
        acc = {d: row[d]["accuracy"] for d in config.domains}
        # evaluate() gives % (100 * correct / n): no check for fractions
        entry = {"decathlon_score": dec.decathlon_score(acc, bounds, percent=True)}
        reference = {d: teachers[d]["accuracy"] for d in acc if d in teachers}
        if len(reference) == len(acc) and all(r > 0 for r in reference.values()):
            entry["delta_mdl"] = dec.delta_mdl(acc, reference, percent=True)
        if set(acc) <= set(dec.FINETUNE_ACCURACY):
            entry["delta_mdl_paper"] = dec.delta_mdl(acc, percent=True)
        out[name] = entry
    return out
