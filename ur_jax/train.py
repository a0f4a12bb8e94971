"""The runner: stages, logging, checkpoints, exact resume and ``results.json``.

:func:`run` executes the stages a config names, in order:

``teachers``
    one single-domain network per training domain, trained alone (or loaded from the
    saved models ``config.teachers.checkpoints`` points to), saved to
    ``workdir/teachers/<domain>/model`` and evaluated on its domain's test split;
``mdl``
    the multi-domain baseline: a shared backbone with one head per domain, trained on
    all domains at once with the task losses only, with the student's budget;
``url``
    the universal student distilled from the frozen teachers through per-teacher
    alignment adapters (:func:`ur_jax.steps.make_distill_step`);
``fewshot``
    nearest-centroid (NCC) and pre-classifier-alignment (PA) episodes on held-out data,
    on the MDL and URL backbones' features (:mod:`ur_jax.evaluation.fewshot`).

Every training stage checkpoints ``(state, data iterator)`` together every
``config.checkpoint_every`` steps (:mod:`ur_jax.checkpointing`); started again with
the same config and workdir, a run skips what is finished and continues the rest from
its latest checkpoint, and ends with bitwise the same numbers on CPU. Metrics go to
TensorBoard (``workdir/tensorboard``, tags ``<stage>/<metric>``) and to the log through clu's writers,
with throughput and an ETA; final numbers go to ``workdir/results.json``.
"""

from __future__ import annotations

import functools
import json
import logging as pylogging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

from ur_jax import writers  # noqa: F401  (first: makes clu's writers importable without TF)

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import parameter_overview, periodic_actions
from jax.sharding import Mesh

from ur_jax import checkpointing, optim, sharding, steps
from ur_jax.adapters import AlignmentAdapters
from ur_jax.data import pipeline, registry
from ur_jax.evaluation import fewshot as fewshot_lib
from ur_jax.models import MultiHeadClassifier
from ur_jax.teachers import stack_teachers

STAGES = ("teachers", "mdl", "url", "fewshot")
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
#: Config keys that may change between a run and its continuation: they do not change
#: any number the run produces.
RESUMABLE_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "data_threads",
                  "data_dir", "manual_dir")
#: What ``overwrite`` removes from a workdir (nothing else is touched).
RUN_OUTPUTS = ("checkpoints", "teachers", "tensorboard", RESULTS_FILE, CONFIG_FILE, "timing.json")


class WorkdirError(RuntimeError):
    """The workdir cannot be used: not writable, or it holds a run of another config."""


# ----------------------------------------------------------------------------- workdir


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(config, default=str)).items()
            if k not in RESUMABLE_KEYS}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}.{k}" if prefix else k
            if k not in a or k not in b:
                out.append(f"{key}: {'absent' if k not in a else a[k]!r} -> "
                           f"{'absent' if k not in b else b[k]!r}")
            else:
                out.extend(_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, overwrite: bool = False) -> str:
    """Creates ``workdir`` (checking it is writable) and records ``config`` in it.

    A workdir that already holds a run of a different config is refused with
    :class:`WorkdirError` listing the differing keys, unless ``overwrite``, which deletes
    that run's outputs (:data:`RUN_OUTPUTS`) first.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"Cannot write to the workdir {workdir!r} ({e.strerror or e}). "
                           f"Choose a --workdir you can write to.") from None
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        diffs = _diff(_comparable(previous), _comparable(current))
        if diffs and not overwrite:
            raise WorkdirError(
                f"The workdir {workdir!r} holds a run of a different config:\n  "
                + "\n  ".join(diffs[:20])
                + "\nUse another --workdir, or pass --overwrite to delete that run's outputs "
                  "and start again.")
        if diffs:
            logging.warning("Overwriting the run in %s (config changed: %s).", workdir,
                            "; ".join(diffs[:5]))
            for name in RUN_OUTPUTS:
                target = os.path.join(workdir, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
    _write_json(path, current)
    return workdir


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a file


# ----------------------------------------------------------------------------- helpers


def _backbone_kwargs(config) -> dict[str, Any]:
    return dict(config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict")
                else config.model.kwargs)


def _spec(config, num_classes: Mapping[str, int]) -> dict[str, Any]:
    return checkpointing.model_spec(config.model.backbone, _backbone_kwargs(config), num_classes)


def _seed(config, *path: int) -> int:
    """A deterministic 31-bit seed for one random choice of the run."""
    return int(np.random.SeedSequence([int(config.seed), *path]).generate_state(1)[0] >> 1)


@functools.cache
def _sgd(lr: float, steps_: int, warmup: int, momentum: float, weight_decay: float):
    """SGD with linear warmup and cosine decay. Cached: runs with equal hyperparameters get
    the *same* optimizer object, which is static in the train state, so their steps share
    one compilation."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps_ - 1, 0)),
                                                  max(steps_, 1))
    return optim.sgd(schedule, momentum=momentum, weight_decay=weight_decay)


def _stage_sgd(stage_config):
    return _sgd(float(stage_config.learning_rate), int(stage_config.steps),
                int(stage_config.warmup_steps), float(stage_config.momentum),
                float(stage_config.weight_decay))


def batch_size(stage_config, domain: str) -> int:
    """A stage's per-step batch size for ``domain``: ``stage_config.batch_size`` is one
    number for every domain, or a mapping ``{domain: size}`` (with an optional
    ``'default'``), e.g. a larger batch for ImageNet on Meta-Dataset."""
    size = stage_config.batch_size
    if isinstance(size, ml_collections.ConfigDict):
        size = size.to_dict()
    if isinstance(size, Mapping):
        if domain not in size and "default" not in size:
            raise ValueError(f"The batch_size mapping {dict(size)} has no entry for {domain!r} "
                             f"and no 'default'.")
        size = size.get(domain, size.get("default"))
    return int(size)


def _sample_images(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    return {d: jnp.zeros((1,) + tuple(s), jnp.float32) for d, s in shapes.items()}


# Compiled functions are cached per (model, mesh): Flax modules are hashable values, so
# every teacher of one architecture and class count, and the MDL and URL students, reuse
# one compiled init / train / eval / feature function (XLA compilation dominates short
# runs on CPU).


@functools.cache
def _init_fn(model: MultiHeadClassifier):
    return jax.jit(lambda rng, images: model.init(rng, images, train=False))


@functools.cache
def _train_step_fn(model: MultiHeadClassifier, mesh):
    return steps.jit_step(steps.make_train_step(model), mesh)


@functools.cache
def _eval_step_fn(model: MultiHeadClassifier, mesh):
    return sharding.jit_data_parallel(steps.make_eval_step(model), mesh, batch_argnums=(2,),
                                      num_args=3, donate_argnums=())


@functools.cache
def _features_fn(backbone, feature: str, mesh):
    def features(v, x):
        return backbone.apply(v, x, train=False)[feature].astype(jnp.float32)

    return sharding.jit_data_parallel(features, mesh, batch_argnums=(1,), num_args=2,
                                      donate_argnums=())


def _init_model(model: MultiHeadClassifier, config, seed: int, image_shape) -> dict[str, Any]:
    rng = jax.random.key(seed, impl=config.init_rng_impl)
    return _init_fn(model)(rng, _sample_images({d: image_shape for d in model.domains}))


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


# ----------------------------------------------------------------------------- training

#: Called as ``callback(stage, step, state)`` after every training step (custom logging,
#: early stopping; the tests interrupt runs with it).
step_callbacks: list[Callable[[str, int, Any], None]] = []


def fit(stage: str, step_fn: Callable[..., Any], state: steps.TrainState, dataset,
        num_steps: int, ckpt_dir: str, config, mesh, writer, examples_per_step: int,
        teacher_vars: Any = None) -> steps.TrainState:
    """Runs ``step_fn`` until ``state.step == num_steps``, resuming from ``ckpt_dir``.

    ``step_fn`` is a :func:`ur_jax.steps.jit_step`-wrapped step; ``dataset`` the
    infinite batch dataset of :func:`ur_jax.data.pipeline.train_batches`. Logs averaged
    metrics every ``config.log_every`` steps, progress with throughput and an ETA, and
    saves ``(state, iterator)`` every ``config.checkpoint_every`` steps and at the end.
    """
    iterator = pipeline.iterate(dataset, num_threads=config.data_threads)
    ckpt = checkpointing.Checkpointer(ckpt_dir, keep=config.keep_checkpoints,
                                      every=config.checkpoint_every)
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
        report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                 every_steps=config.log_every, every_secs=None)
        history: list[dict[str, Any]] = []
        t0, s0 = time.perf_counter(), step
        while step < num_steps:
            batch = sharding.shard_batch(next(iterator), mesh)
            if teacher_vars is None:
                state, metrics = step_fn(state, batch)
            else:
                state, metrics = step_fn(state, teacher_vars, batch)
            step += 1
            history.append(metrics)
            report(step)
            if step % config.log_every == 0 or step == num_steps:
                scalars = _mean_metrics(history)
                now = time.perf_counter()
                scalars["examples_per_sec"] = examples_per_step * (step - s0) / max(now - t0, 1e-9)
                writer.write_scalars(step, {f"{stage}/{k}": v for k, v in scalars.items()})
                logging.info("[%s] step %d/%d  loss %.4f  %.0f examples/s", stage, step,
                             num_steps, scalars["loss"], scalars["examples_per_sec"])
                history, t0, s0 = [], now, step
            ckpt.save(step, state, iterator, force=step == num_steps)
            for callback in step_callbacks:
                callback(stage, step, state)
        writer.flush()
        return state
    finally:
        ckpt.close()


def evaluate(model: MultiHeadClassifier, variables: Mapping[str, Any], sources: Mapping[str, Any],
             config, mesh) -> dict[str, dict[str, float]]:
    """Test accuracy (%) and mean cross-entropy of ``model`` on each domain of ``sources``.

    All domains are evaluated in one compiled step over the data mesh; shorter splits are
    padded with masked examples.
    """
    eval_step = _eval_step_fn(model, mesh)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    iters = {d: pipeline.eval_batches(src, config.eval_batch_size, limit=config.eval_limit or None)
             for d, src in sources.items()}
    sums = None  # per-batch sums added on device: one host transfer at the end
    while True:
        batch = {d: b for d, b in ((d, next(it, None)) for d, it in iters.items()) if b is not None}
        if not batch:
            break
        filler = next(iter(batch.values()))
        for d in sources:  # exhausted domains: fully masked batches keep one compiled shape
            batch.setdefault(d, {**filler, "mask": np.zeros_like(filler["mask"])})
        out = eval_step(params, stats, sharding.shard_batch(batch, mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    totals = {k: float(v) for k, v in jax.device_get(sums).items()}
    return {d: {"accuracy": 100.0 * totals[f"correct/{d}"] / totals[f"count/{d}"],
                "loss": totals[f"loss_sum/{d}"] / totals[f"count/{d}"],
                "examples": int(totals[f"count/{d}"])} for d in sources}


def _with_mean(per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = dict(per_domain)
    out["mean"] = {k: float(np.mean([v[k] for v in per_domain.values()]))
                   for k in ("accuracy", "loss")}
    return out


# ----------------------------------------------------------------------------- stages

#: Teachers train under this head name, so that all teachers with equal class counts
#: share one compiled step; the head is renamed to its domain when the teacher is saved.
_TEACHER_HEAD = "teacher"


def _train_classifier(name: str, config, stage_config, model, sources, batch_sizes, image_shape,
                      mesh, writer, workdir, seed_path, log_parameters: bool = True
                      ) -> dict[str, Any]:
    variables = _init_model(model, config, _seed(config, *seed_path), image_shape)
    if log_parameters:
        parameter_overview.log_parameter_overview(variables["params"], msg=f"[{name}] parameters")
    state = steps.TrainState.create(variables["params"], variables.get("batch_stats", {}),
                                    _stage_sgd(stage_config))
    state = sharding.replicate(state, mesh)
    dataset = pipeline.train_batches(sources, batch_sizes, seed=_seed(config, *seed_path, 1),
                                     augment=config.augment)
    state = fit(name, _train_step_fn(model, mesh), state, dataset, stage_config.steps,
                os.path.join(workdir, "checkpoints", name), config, mesh, writer,
                examples_per_step=sum(batch_sizes.values()))
    return {"params": state.params, "batch_stats": state.batch_stats}


def _rename_head(variables: Mapping[str, Any], old: str, new: str) -> dict[str, Any]:
    out = {c: dict(v) for c, v in variables.items()}
    heads = dict(out["params"]["heads"])
    heads[new] = heads.pop(old)
    out["params"]["heads"] = heads
    return out


def train_teachers(config, data, mesh, writer, workdir
                   ) -> tuple[dict[str, tuple[MultiHeadClassifier, dict]], dict[str, Any]]:
    """The ``teachers`` stage: ``{domain: (model, variables)}`` (trained, or loaded from
    ``config.teachers.checkpoints``) and their test results."""
    teachers, results = {}, {}
    paths = {d: p for d, p in dict(config.teachers.checkpoints).items() if p}
    logged = False
    for i, d in enumerate(config.domains):
        spec = _spec(config, {d: data.num_classes[d]})
        if d in paths:
            logging.info("[teacher_%s] loading %s", d, paths[d])
            model, variables = checkpointing.load_model(paths[d], expected=spec)
            teachers[d] = (model, variables)
            results[d] = evaluate(model, variables, {d: data.test[d]}, config, mesh)[d]
            continue
        generic = checkpointing.model_from_spec(_spec(config, {_TEACHER_HEAD: data.num_classes[d]}))
        variables = _train_classifier(f"teacher_{d}", config, config.teachers, generic,
                                      {_TEACHER_HEAD: data.train[d]},
                                      {_TEACHER_HEAD: batch_size(config.teachers, d)},
                                      data.image_shape, mesh, writer, workdir, (1, i),
                                      log_parameters=not logged)
        logged = True
        results[d] = evaluate(generic, variables, {_TEACHER_HEAD: data.test[d]}, config,
                              mesh)[_TEACHER_HEAD]
        variables = _rename_head(variables, _TEACHER_HEAD, d)
        checkpointing.save_model(os.path.join(workdir, "teachers", d, "model"), spec,
                                 jax.device_get(variables))
        teachers[d] = (checkpointing.model_from_spec(spec), variables)
        logging.info("[teacher_%s] test accuracy %.2f%%", d, results[d]["accuracy"])
    return teachers, results


def _student(config, data) -> MultiHeadClassifier:
    return checkpointing.model_from_spec(_spec(config, {d: data.num_classes[d]
                                                        for d in config.domains}))


def train_mdl(config, data, mesh, writer, workdir):
    """The ``mdl`` stage: ``(model, variables)`` of the multi-domain baseline."""
    model = _student(config, data)
    variables = _train_classifier("mdl", config, config.mdl, model,
                                  {d: data.train[d] for d in config.domains},
                                  {d: batch_size(config.mdl, d) for d in config.domains},
                                  data.image_shape, mesh, writer, workdir, (2,))
    return model, variables


def _distill_config(config, domains) -> steps.DistillConfig:
    u = config.url
    anneal = None
    if u.anneal:
        anneal = {d: optim.linear_anneal(int(u.anneal_steps or u.steps)) for d in domains}

    def weights(table):
        table = dict(table)
        return {d: float(table.get(d, table.get("default", 1.0))) for d in domains}

    return steps.DistillConfig(lambda_f=weights(u.lambda_f), lambda_p=weights(u.lambda_p),
                               temperature=u.temperature, feature_loss=u.feature_loss,
                               anneal=anneal)


def train_url(config, data, teachers, mesh, writer, workdir):
    """The ``url`` stage: ``(student, variables)`` distilled from the frozen teachers."""
    u = config.url
    domains = tuple(config.domains)
    student = _student(config, data)
    batch_sizes = {d: batch_size(u, d) for d in domains}
    bank, teacher_vars = stack_teachers(
        teachers, image_shapes={d: (batch_sizes[d],) + tuple(data.image_shape) for d in domains},
        mode=config.teacher_mode)
    adapters = AlignmentAdapters(tuple((d, teachers[d][0].backbone.feature_dim) for d in domains),
                                 kind=u.adapter)
    adapter_schedule = optax.warmup_cosine_decay_schedule(
        0.0, u.adapter_learning_rate, min(u.warmup_steps, max(u.steps - 1, 0)), max(u.steps, 1))
    state = steps.init_distill_state(
        student, adapters, jax.random.key(_seed(config, 3), impl=config.init_rng_impl),
        _sample_images({d: data.image_shape for d in domains}), _stage_sgd(u),
        optim.adam(adapter_schedule, weight_decay=u.adapter_weight_decay),
        student_variables=_init_model(student, config, _seed(config, 3, 2), data.image_shape))
    parameter_overview.log_parameter_overview(state.params["adapters"],
                                              msg="[url] alignment adapters")
    state = sharding.replicate(state, mesh)
    teacher_vars = sharding.replicate(teacher_vars, mesh)
    step_fn = steps.jit_step(steps.make_distill_step(student, adapters, bank,
                                                     _distill_config(config, domains)),
                             mesh, with_teachers=True)
    dataset = pipeline.train_batches({d: data.train[d] for d in domains}, batch_sizes,
                                     seed=_seed(config, 3, 1), augment=config.augment)
    state = fit("url", step_fn, state, dataset, u.steps, os.path.join(workdir, "checkpoints", "url"),
                config, mesh, writer, examples_per_step=sum(batch_sizes.values()),
                teacher_vars=teacher_vars)
    return student, {"params": state.params["student"], "batch_stats": state.batch_stats}


def extract_features(model: MultiHeadClassifier, variables, images: np.ndarray, mesh,
                     batch_size: int) -> np.ndarray:
    """The backbone's ``model.feature`` for every image (inference mode), as float32."""
    backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
    fn = _features_fn(model.backbone, model.feature, mesh)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        k = len(x)
        if k < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - k,) + x.shape[1:], x.dtype)])
        out.append((fn(backbone_vars, sharding.shard_batch(x, mesh)), k))  # no sync per batch
    return np.concatenate([np.asarray(jax.device_get(f))[:k] for f, k in out])


def run_fewshot(config, data, models: Mapping[str, tuple[MultiHeadClassifier, dict]], mesh
                ) -> dict[str, Any]:
    """The ``fewshot`` stage: per model, method and held-out domain, the mean episode
    accuracy (%) with its 95% confidence interval, and the mean over domains."""
    f = config.fewshot
    out: dict[str, Any] = {}
    pools = {d: pipeline.load_split(data.fewshot[d]) for d in f.domains}
    episodes = {d: fewshot_lib.sample_episodes(pools[d][1], f.episodes, f.ways, f.shots,
                                               f.queries, seed=_seed(config, 4, i))
                for i, d in enumerate(f.domains)}
    lrs = dict(f.pa_learning_rate)
    for name, (model, variables) in models.items():
        out[name] = {}
        feats = {d: extract_features(model, variables, imgs, mesh, config.eval_batch_size)
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


# ----------------------------------------------------------------------------- the run


def format_table(results: Mapping[str, Any]) -> str:
    """The printed results: per-domain test accuracy of teachers / MDL / URL, and few-shot."""
    domains = [d for d in results["config"]["domains"]]
    rows = [(name, results[name]) for name in ("teachers", "mdl", "url") if results.get(name)]
    width = max(8, *(len(d) for d in domains))
    lines = ["Test accuracy (%)",
             f"{'':<10}" + "".join(f"{d:>{width + 2}}" for d in domains) + f"{'mean':>{width + 2}}"]
    for name, res in rows:
        cells = "".join(f"{res[d]['accuracy']:>{width + 2}.2f}" if d in res else f"{'-':>{width + 2}}"
                        for d in domains)
        lines.append(f"{name:<10}{cells}{res['mean']['accuracy']:>{width + 2}.2f}")
    fs = results.get("fewshot")
    if fs:
        p = fs["protocol"]
        fdomains = results["config"]["fewshot"]["domains"]
        lines += ["", f"Few-shot accuracy (%), {p['ways']}-way {p['shots']}-shot, "
                      f"{p['episodes']} episodes, ± 95% CI"]
        lines.append(f"{'':<10}" + "".join(f"{d:>{width + 10}}" for d in fdomains)
                     + f"{'mean':>{width + 2}}")
        for name, per_method in fs.items():
            if name == "protocol":
                continue
            for method, res in per_method.items():
                cells = "".join(f"{res[d]['accuracy']:>{width + 3}.2f} ± {res[d]['ci95']:<4.2f}"
                                for d in fdomains)
                lines.append(f"{name + ' ' + method:<10}{cells}"
                             f"{res['mean']['accuracy']:>{width + 2}.2f}")
    return "\n".join(lines)


def validate_config(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> None:
    """Refuses a config whose values cannot work, before anything runs."""
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} in config.stages; expected a subset of "
                         f"{STAGES}.")
    if not config.domains:
        raise ValueError("config.domains is empty: name at least one training domain.")
    n = jax.device_count() if mesh is None else mesh.size
    for key in ("teachers", "mdl", "url"):
        bs = {d: batch_size(config[key], d) for d in config.domains}
        if any(b % n or b < 1 for b in bs.values()):
            raise ValueError(f"config.{key}.batch_size={config[key].batch_size} must be a "
                             f"positive multiple of the {n} devices "
                             f"(per-domain batches are split over them).")
    if config.eval_batch_size % n:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                         f"the {n} devices.")
    if "fewshot" in config.stages:
        missing = [d for d in config.fewshot.domains if d not in dict(config.fewshot.pa_learning_rate)]
        if missing:
            raise ValueError(f"config.fewshot.pa_learning_rate has no rate for {missing} (0.1 "
                             f"for a seen domain, 1.0 for an unseen one).")
    needs = {"mdl": (), "url": ("teachers",), "fewshot": ()}
    for stage, required in needs.items():
        for r in required:
            if stage in config.stages and r not in config.stages:
                raise ValueError(f"Stage {stage!r} needs stage {r!r} (it may load the teachers "
                                 f"from config.teachers.checkpoints).")


class _QuietLibraries(pylogging.Filter):
    """Drops the INFO chatter of orbax, grain and TFDS (one line per file written)."""

    NOISY = (f"{os.sep}orbax{os.sep}", f"{os.sep}grain{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or not any(n in record.pathname
                                                              for n in self.NOISY)


def quiet_library_logs() -> None:
    """Keeps the run's log readable: library INFO lines from orbax, grain and TFDS are
    dropped (warnings and errors still show)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False,
        mesh: Mesh | None = None) -> dict[str, Any]:
    """Runs the stages of ``config`` in ``workdir`` (resuming what is there) and returns the
    results also written to ``workdir/results.json``.

    ``mesh``: the data mesh (default: every device, :func:`ur_jax.sharding.make_mesh`).
    """
    validate_config(config, mesh)
    quiet_library_logs()
    workdir = prepare_workdir(workdir, config, overwrite)
    mesh = sharding.make_mesh() if mesh is None else mesh
    logging.info("ur_jax: %d %s device(s); workdir %s", jax.device_count(),
                 jax.default_backend(), workdir)
    data = registry.load_classification(config)
    writer = writers.create_writer(os.path.join(workdir, "tensorboard"))
    writer.write_hparams({k: v for k, v in _flatten(json.loads(config.to_json_best_effort()))})
    results: dict[str, Any] = {"config": json.loads(config.to_json_best_effort()),
                               "teachers": {}, "mdl": {}, "url": {}}
    t_start = time.perf_counter()
    try:
        teachers = None
        if "teachers" in config.stages:
            teachers, per_domain = train_teachers(config, data, mesh, writer, workdir)
            results["teachers"] = _with_mean(per_domain)
        models = {}
        if "mdl" in config.stages:
            models["mdl"] = train_mdl(config, data, mesh, writer, workdir)
            results["mdl"] = _with_mean(evaluate(*models["mdl"], data.test, config, mesh))
        if "url" in config.stages:
            models["url"] = train_url(config, data, teachers, mesh, writer, workdir)
            results["url"] = _with_mean(evaluate(*models["url"], data.test, config, mesh))
        if "fewshot" in config.stages:
            chosen = {k: v for k, v in models.items() if k in config.fewshot.models}
            if chosen:
                results["fewshot"] = run_fewshot(config, data, chosen, mesh)
        for name in ("teachers", "mdl", "url"):
            if results[name]:
                writer.write_scalars(0, {f"test/{name}/{d}": v["accuracy"]
                                         for d, v in results[name].items()})
    finally:
        writer.close()
    _write_json(os.path.join(workdir, RESULTS_FILE), results)
    # Timing differs between runs, so it stays out of results.json.
    _write_json(os.path.join(workdir, "timing.json"),
                {"wall_time_s": time.perf_counter() - t_start, "devices": jax.device_count(),
                 "backend": jax.default_backend()})
    table = format_table(results)
    logging.info("Results written to %s", os.path.join(workdir, RESULTS_FILE))
    print(table, flush=True)
    return results


def _flatten(tree: Any, prefix: str = ""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, tree
