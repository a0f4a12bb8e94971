"""Few-shot evaluators, run by the ``fewshot`` stage on the run's models:

``'fewshot'``
    fixed-shape episodes (``ways``-way ``shots``-shot, ``queries`` per class) on
    precomputed backbone features of held-out data (the embedded default), with the
    feature-level methods of :mod:`ur_jax.evaluation.fewshot` (NCC, PA, linear probe);
``'episodic'``
    Meta-Dataset's variable-way variable-shot episodes (or a fixed protocol) on images,
    with NCC, PA, TSA or a linear probe (:mod:`ur_jax.evaluation.metadataset`), for the
    teachers, the students and any saved model ``config.fewshot.checkpoints`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ur_jax import checkpointing, sharding
from ur_jax.data import pipeline
from ur_jax.evaluation import fewshot as fewshot_lib
from ur_jax.evaluation.evaluators import register


def extract_features(ctx, model, variables, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The backbone's ``model.feature`` for every image of ``images`` (uint8 or float
    ``[N, H, W, C]``; inference mode) as float32 ``[N, D]``, in batches of ``batch_size``
    (a multiple of the mesh size; the last batch is zero-padded)."""
    backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
    backbone, feature = model.backbone, model.feature

    def build():
        def features(v, x):
            return backbone.apply(v, x, train=False)[feature].astype(jnp.float32)

        return sharding.jit_data_parallel(features, ctx.mesh, batch_argnums=(1,), num_args=2,
                                          donate_argnums=())

    fn = ctx.cache.get(("features", backbone, feature, ctx.mesh), build)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k,) + x.shape[1:], x.dtype)])
        out.append((fn(backbone_vars, sharding.shard_batch(x, ctx.mesh)), k))  # no sync per batch
    return np.concatenate([np.asarray(jax.device_get(f))[:k] for f, k in out])


@register("fewshot", on="fewshot")
def fixed_shape(ctx, models: Mapping[str, tuple[Any, dict]]) -> dict[str, Any]:
    """Per model (``{name: (model, variables)}``), method and held-out domain of
    ``config.fewshot``: the mean episode accuracy (%) with its 95% confidence interval, and
    the mean over domains; plus ``'protocol'``. The episodes are seeded by the config's
    seed and the domain: every model is scored on the same episodes."""
    config = ctx.config
    f = config.fewshot
    chosen = {k: v for k, v in models.items() if k in f.models}
    if not chosen:
        return {}
    out: dict[str, Any] = {}
    pools = {d: pipeline.load_split(ctx.data.fewshot[d]) for d in f.domains}
    episodes = {d: fewshot_lib.sample_episodes(pools[d][1], f.episodes, f.ways, f.shots,
                                               f.queries, seed=ctx.seed(4, i))
                for i, d in enumerate(f.domains)}
    lrs = dict(f.pa_learning_rate)
    for name, (model, variables) in chosen.items():
        out[name] = {}
        feats = {d: extract_features(ctx, model, variables, imgs, config.eval_batch_size)
                 for d, (imgs, _) in pools.items()}
        for method in f.methods:
            res = {}
            for d in f.domains:
                acc = fewshot_lib.evaluate_episodes(feats[d], episodes[d], method=method,
                                                    learning_rate=float(lrs[d]), steps=f.pa_steps)
                mean, ci = fewshot_lib.mean_confidence_interval(100.0 * np.asarray(acc))
                res[d] = {"accuracy": float(mean), "ci95": float(ci)}
            res["mean"] = {"accuracy": float(np.mean([res[d]["accuracy"] for d in f.domains]))}
            out[name][method] = res
            logging.info("[fewshot] %s %s: %s", name, method,
                         ", ".join(f"{d} {res[d]['accuracy']:.1f}±{res[d]['ci95']:.1f}"
                                   for d in f.domains))
    out["protocol"] = {"ways": f.ways, "shots": f.shots, "queries": f.queries,
                       "episodes": f.episodes, "pa_steps": f.pa_steps}
    return out


def parse_sources(value: Any) -> tuple[str, ...]:
    """A config's list of sources: a sequence or a string, comma-separated names in either
    (``--config.fewshot.seen=a,b`` arrives as ``('a,b',)``)."""
    if not value:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    return tuple(s.strip() for item in items for s in str(item).split(",") if s.strip())


def episodic_models(ctx, models: Mapping[str, tuple[Any, dict]]
                    ) -> dict[str, tuple[Any, dict, tuple[str, ...]]]:
    """The models the episodic evaluation scores, with the sources each was trained on
    (they get PA's / TSA's "seen" learning rates): the teachers (their own source; all of
    them for ``'teachers'``, one for ``'teacher_<domain>'``) and the students
    (``config.domains``) that ``config.fewshot.models`` names (``models``: the run's), and
    the saved models ``config.fewshot.checkpoints`` ``{row name: path}`` points to. A saved
    model's sources are, in order of precedence: ``config.fewshot.checkpoint_seen.<row
    name>`` (sources, or a comma-separated string),
    ``config.fewshot.seen`` (for every saved model), else its own training domains read
    from its heads (:func:`ur_jax.evaluation.metadataset.training_sources`): an
    ImageNet-only model has one seen source, as in VICO-UoE/URL after the authors' fix.

    Raises:
      ValueError: a seen source that is not a Meta-Dataset source.
    """
    from ur_jax.suites.metadataset.common import SOURCES
    from ur_jax.evaluation import metadataset as md_eval

    config = ctx.config
    f = config.fewshot
    chosen: dict[str, tuple[Any, dict, tuple[str, ...]]] = {}
    for name, (model, variables) in models.items():
        if name.startswith("teacher_"):  # a teacher saw its own source only
            if "teachers" in f.models or name in f.models:
                chosen[name] = (model, variables, (name[len("teacher_"):],))
        elif name in f.models:
            chosen[name] = (model, variables, tuple(config.domains))
    every = parse_sources(f.seen)
    per_model = dict(f.checkpoint_seen)
    for name, path in dict(f.checkpoints).items():
        if path:
            logging.info("[fewshot] loading %s from %s", name, path)
            model, variables = checkpointing.load_model(path, precision=config.precision)
            seen = (parse_sources(per_model.get(name)) or every
                    or md_eval.training_sources(model.num_classes, name))
            unknown = [s for s in seen if s not in SOURCES]
            if unknown:
                raise ValueError(f"The seen sources of {name!r} include {unknown}, which are not "
                                 f"Meta-Dataset sources {list(SOURCES)}; fix "
                                 f"config.fewshot.checkpoint_seen.{name} / config.fewshot.seen.")
            logging.info("[fewshot] %s: seen sources %s", name, list(seen))
            chosen[name] = (model, variables, seen)
    return chosen


@register("episodic", on="fewshot")
def episodic(ctx, models: Mapping[str, tuple[Any, dict]]) -> dict[str, Any]:
    """``config.fewshot.episodes`` episodes of ``config.fewshot.protocol`` per source (the
    same episodes for every model: seeded by the config's seed and the source), evaluated
    with each of ``config.fewshot.methods`` on the models of :func:`episodic_models`.

    Returns ``{}`` when there is no model, else ``{'kind': 'episodic', 'protocol',
    'domains', 'episodes', 'rows': {'<model> <method>': per-source accuracy ± CI and seen /
    unseen / all averages}, 'seen': {model: its seen sources}, 'learning_rates': {'<model>
    <method>': {source: the inner-loop rates used}}}``.
    """
    from ur_jax.data import episodes as episodes_lib
    from ur_jax.evaluation import metadataset as md_eval

    config, data = ctx.config, ctx.data
    chosen = episodic_models(ctx, models)
    if not chosen:
        logging.warning("[fewshot] no model to evaluate: config.fewshot.models=%s and "
                        "no config.fewshot.checkpoints.", list(config.fewshot.models))
        return {}
    f = config.fewshot
    domains = tuple(f.domains)
    sampled = {d: episodes_lib.sample_episodes(data.fewshot_specs[d], int(f.episodes), f.protocol,
                                               seed=ctx.seed(5, i))
               for i, d in enumerate(domains)}
    for d in domains:
        logging.info("[fewshot] %s: %s", d, {k: round(v, 1) for k, v in
                                             episodes_lib.describe(sampled[d]).items()
                                             if k.startswith("mean")})
    rows: dict[str, Any] = {}
    used: dict[str, dict[str, dict[str, float]]] = {}
    for name, (model, variables, seen) in chosen.items():
        backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
        evaluator = md_eval.EpisodeEvaluator(model.backbone, backbone_vars,
                                             batch_size=config.eval_batch_size,
                                             buckets=tuple(f.buckets), mesh=ctx.mesh)
        for method in f.methods:
            rates = {d: md_eval.learning_rates(method, seen=d in seen) for d in domains}
            acc = {d: evaluator.evaluate(data.fewshot[d], sampled[d], method, seen=d in seen,
                                         steps=int(f.inner_steps) or None,
                                         lrs=rates[d],
                                         progress=md_eval.log_progress(f"{name} {method} {d}"))
                   for d in domains}
            row = md_eval.summarize(acc, seen)
            rows[f"{name} {method}"] = row
            used[f"{name} {method}"] = rates
            logging.info("[fewshot] %s %s: %s; averages %s", name, method,
                         ", ".join(f"{d} {row[d]['accuracy']:.1f}±{row[d]['ci95']:.1f}"
                                   for d in domains),
                         ", ".join(f"{g} {v:.1f}" for g, v in row["averages"].items()
                                   if v is not None))
    return {"kind": "episodic", "protocol": f.protocol, "domains": list(domains),
            "episodes": int(f.episodes), "rows": rows,
            "seen": {name: list(m[2]) for name, m in chosen.items()}, "learning_rates": used}
