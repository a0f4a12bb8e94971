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
    on the MDL and URL backbones' features (:mod:`ur_jax.evaluation.fewshot`); on
    Meta-Dataset, the official variable-way variable-shot episodes (or a fixed protocol)
    with NCC, PA, TSA or a linear probe, for the teachers, the students and any saved
    model ``config.fewshot.checkpoints`` names (:mod:`ur_jax.evaluation.metadataset`).

The MDL and URL students are saved to ``workdir/students/<stage>/model`` (load them with
:func:`ur_jax.checkpointing.load_model`).

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
import zlib
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
from ur_jax.models import MultiHeadClassifier, from_single_domain
from ur_jax.teachers import stack_teachers

STAGES = ("teachers", "mdl", "url", "fewshot")
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
#: Config keys that may change between a run and its continuation: they do not change
#: any number the run produces.
RESUMABLE_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "data_threads",
                  "data_dir", "manual_dir", "metadataset")  # (where the data is read from)
#: What ``overwrite`` removes from a workdir (nothing else is touched).
RUN_OUTPUTS = ("checkpoints", "teachers", "students", "selection", "predictions", "tensorboard",
               RESULTS_FILE, CONFIG_FILE, "timing.json")


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


SCHEDULES = ("cosine", "step", "cosine_restarts")


@functools.cache
def learning_rate_schedule(lr: float, steps_: int, warmup: int = 0, kind: str = "cosine",
                           decay_at: tuple[float, ...] = (), decay_factor: float = 0.1,
                           restart_every: int = 0) -> optax.Schedule:
    """A stage's learning-rate schedule: linear warmup over ``warmup`` steps, then

    * ``'cosine'``: cosine decay to 0 at ``steps_``;
    * ``'step'``: ``lr`` multiplied by ``decay_factor`` at each fraction ``decay_at`` of
      the stage (the Decathlon recipe: x0.1 at epochs 80 and 100 of 120 is
      ``decay_at=(80 / 120, 100 / 120)``);
    * ``'cosine_restarts'``: cosine annealing with warm restarts every ``restart_every``
      steps, ``lr * (1 + cos(pi * (t mod T) / T)) / 2`` (PyTorch's
      ``CosineAnnealingWarmRestarts(T_0=T)``, the Meta-Dataset recipe).
    """
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps_ - 1, 0)),
                                                  max(steps_, 1))
    if kind == "cosine_restarts":
        if int(restart_every) < 1:
            raise ValueError(f"schedule='cosine_restarts' needs restart_every >= 1 (steps per "
                             f"cycle); found {restart_every}.")
        period = int(restart_every)

        def restarts(step):
            phase = jnp.mod(step, period) / period
            value = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * phase))
            return value if warmup <= 0 else value * jnp.minimum(1.0, (step + 1) / warmup)

        return restarts
    if kind != "step":
        raise ValueError(f"Unknown learning-rate schedule {kind!r}; expected one of {SCHEDULES}.")
    bad = [f for f in decay_at if not 0.0 < float(f) <= 1.0]
    if bad:
        raise ValueError(f"decay_at holds fractions of the stage in (0, 1]; found {bad}.")
    steps_at = sorted(round(float(f) * steps_) for f in decay_at)
    piecewise = optax.piecewise_constant_schedule(lr, {b: decay_factor for b in steps_at})
    if warmup <= 0:
        return piecewise
    return lambda step: piecewise(step) * jnp.minimum(1.0, (step + 1) / warmup)


@functools.cache
def _sgd(lr: float, steps_: int, warmup: int, momentum: float, weight_decay: float,
         kind: str = "cosine", decay_at: tuple[float, ...] = (), decay_factor: float = 0.1,
         restart_every: int = 0):
    """SGD with :func:`learning_rate_schedule`. Cached: runs with equal hyperparameters get
    the *same* optimizer object, which is static in the train state, so their steps share
    one compilation."""
    schedule = learning_rate_schedule(lr, steps_, warmup, kind, decay_at, decay_factor,
                                      restart_every)
    return optim.sgd(schedule, momentum=momentum, weight_decay=weight_decay)


def stage_steps(stage_config, domain: str | None = None) -> int:
    """A stage's number of steps (``steps`` may map domains to values, like the
    Meta-Dataset teachers' 480k for ImageNet and 50k for Omniglot)."""
    return int(stage_value(stage_config, "steps", domain))


def _stage_sgd(stage_config, domain: str | None = None):
    """The stage's SGD; ``learning_rate``, ``weight_decay``, ``steps`` and
    ``restart_every`` may be per-domain mappings."""
    restart = stage_config.get("restart_every", 0)
    return _sgd(float(stage_value(stage_config, "learning_rate", domain)),
                stage_steps(stage_config, domain),
                int(stage_config.warmup_steps), float(stage_config.momentum),
                float(stage_value(stage_config, "weight_decay", domain)),
                stage_config.get("schedule", "cosine"),
                tuple(float(f) for f in stage_config.get("decay_at", ())),
                float(stage_config.get("decay_factor", 0.1)),
                int(stage_value(stage_config, "restart_every", domain)) if restart else 0)


ADAPTER_SCHEDULES = ("", "cosine", "cosine_restarts")


def adapter_learning_rate_schedule(stage_config) -> optax.Schedule:
    """The schedule of a URL stage's alignment adapters (Adam at ``adapter_learning_rate``).

    ``stage_config.adapter_schedule`` (optional; default ``''``, follow the stage):

    * ``''`` with the stage's ``schedule='cosine_restarts'``: the student's warm restarts
      (every ``restart_every`` steps, same warmup) at the adapters' base rate. This is
      VICO-UoE/URL's ``train_net_url.py`` (Meta-Dataset): the adapters' optimizer is stepped
      by its own ``CosineAnnealRestartLR`` built from the same arguments as the student's.
    * ``''`` with any other stage schedule (``'cosine'``, ``'step'``): one cosine decay over
      the stage's ``steps`` after its ``warmup_steps``; the Decathlon recipe (PAPER.md §2:
      the student steps x0.1 at epochs 80 / 100, the adapters follow a cosine over the run;
      the authors step PyTorch's ``CosineAnnealingLR(T_max=120)`` once per epoch, here it
      moves every step) and the embedded default.
    * ``'cosine'`` / ``'cosine_restarts'``: that schedule whatever the student's.

    Returns an optax schedule ``step (int) -> learning rate (float32)``; raises
    ``ValueError`` for another ``adapter_schedule``, or for restarts without a positive
    ``restart_every``.
    """
    kind = stage_config.get("adapter_schedule", "") or ""
    if kind not in ADAPTER_SCHEDULES:
        raise ValueError(f"adapter_schedule={kind!r}; expected one of {ADAPTER_SCHEDULES} "
                         f"('' follows the stage's schedule).")
    if not kind:
        kind = ("cosine_restarts" if stage_config.get("schedule", "cosine") == "cosine_restarts"
                else "cosine")
    restart = 0
    if kind == "cosine_restarts":
        restart = int(stage_value(stage_config, "restart_every", None)
                      if "restart_every" in stage_config else 0)
    return learning_rate_schedule(float(stage_config.adapter_learning_rate),
                                  stage_steps(stage_config), int(stage_config.warmup_steps), kind,
                                  restart_every=restart)


def stage_value(stage_config, key: str, domain: str | None) -> Any:
    """``stage_config[key]`` for ``domain``: one value for every domain, or a mapping
    ``{domain: value}`` with an optional ``'default'`` (e.g. a larger ImageNet batch)."""
    value = stage_config[key]
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        if domain not in value and "default" not in value:
            raise ValueError(f"The {key} mapping {dict(value)} has no entry for {domain!r} "
                             f"and no 'default'.")
        value = value.get(domain, value.get("default"))
    return value


def batch_size(stage_config, domain: str) -> int:
    """A stage's per-step batch size for ``domain`` (see :func:`stage_value`)."""
    return int(stage_value(stage_config, "batch_size", domain))


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


def _init_model(model: MultiHeadClassifier, config, seed: int,
                shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Fresh variables of ``model``; ``shapes``: ``{model domain: (H, W, C)}``."""
    rng = jax.random.key(seed, impl=config.init_rng_impl)
    return _init_fn(model)(rng, _sample_images({d: shapes[d] for d in model.domains}))


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


# ----------------------------------------------------------------------------- training

#: Called as ``callback(stage, step, state)`` after every training step (custom logging,
#: early stopping; the tests interrupt runs with it).
step_callbacks: list[Callable[[str, int, Any], None]] = []


def fit(stage: str, step_fn: Callable[..., Any], state: steps.TrainState, dataset,
        num_steps: int, ckpt_dir: str, config, mesh, writer, examples_per_step: int,
        teacher_vars: Any = None, validate: Callable[[int, Any], None] | None = None,
        validate_every: int = 0) -> steps.TrainState:
    """Runs ``step_fn`` until ``state.step == num_steps``, resuming from ``ckpt_dir``.

    ``step_fn`` is a :func:`ur_jax.steps.jit_step`-wrapped step; ``dataset`` the
    infinite batch dataset of :func:`ur_jax.data.pipeline.train_batches`. Logs averaged
    metrics every ``config.log_every`` steps, progress with throughput and an ETA, and
    saves ``(state, iterator)`` every ``config.checkpoint_every`` steps and at the end.
    ``validate(step, state)`` runs every ``validate_every`` steps and at the end, before
    that step's checkpoint (model selection; see :class:`BestModel`).
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
            if validate is not None and validate_every and (step % validate_every == 0
                                                            or step == num_steps):
                validate(step, state)
            ckpt.save(step, state, iterator, force=step == num_steps)
            for callback in step_callbacks:
                callback(stage, step, state)
        writer.flush()
        return state
    finally:
        ckpt.close()


@functools.cache
def _predict_fn(model: MultiHeadClassifier, mesh):
    def predict(params, batch_stats, images):
        variables = {"params": params}
        if jax.tree.leaves(batch_stats):
            variables["batch_stats"] = batch_stats
        _, logits = model.apply(variables, images, train=False)
        return {d: jnp.argmax(lg, -1).astype(jnp.int32) for d, lg in logits.items()}

    return sharding.jit_data_parallel(predict, mesh, batch_argnums=(2,), num_args=3,
                                      donate_argnums=())


def evaluate(model: MultiHeadClassifier, variables: Mapping[str, Any], sources: Mapping[str, Any],
             config, mesh, transform: Mapping[str, Callable[..., Any]] | None = None,
             normalize: Mapping[str, pipeline.Normalization] | None = None,
             predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
             ) -> dict[str, dict[str, float]]:
    """Accuracy (%) and mean cross-entropy of ``model`` on each domain of ``sources``.

    All domains are evaluated in one compiled step over the data mesh; shorter splits are
    padded with masked examples, and examples without a label (``-1``, e.g. a challenge's
    test set) are not counted: a domain with none has accuracy and loss ``None``.
    ``transform`` / ``normalize``: per-domain preprocessing (``{domain: ...}``, keyed like
    ``sources``). ``predictions``: a dict that receives ``{domain: (image_ids, predicted
    labels)}`` (records need an ``'image_id'``) for exporting test predictions.
    """
    eval_step = _eval_step_fn(model, mesh)
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    transform, normalize = transform or {}, normalize or {}
    iters = {d: pipeline.eval_batches(src, config.eval_batch_size,
                                      normalize.get(d, pipeline.Normalization()),
                                      limit=config.eval_limit or None, transform=transform.get(d))
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
        sharded = sharding.shard_batch(batch, mesh)
        out = eval_step(params, stats, sharded)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if predictions is not None:
            pred = _predict_fn(model, mesh)(params, stats, {d: b["image"] for d, b in sharded.items()})
            for d, i in ids.items():
                if i is None:
                    raise ValueError(f"Predictions need records with an 'image_id'; the {d!r} "
                                     f"source has none.")
                collected[d].append((i, pred[d]))
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


def _with_mean(per_domain: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = dict(per_domain)
    out["mean"] = {k: (float(np.mean([v[k] for v in per_domain.values()]))
                       if all(v[k] is not None for v in per_domain.values()) else None)
                   for k in ("accuracy", "loss")}
    return out


# ----------------------------------------------------------------------------- stages

#: Teachers train under this head name, so that all teachers with equal class counts
#: share one compiled step; the head is renamed to its domain when the teacher is saved.
_TEACHER_HEAD = "teacher"


def _student_kwargs(config) -> dict[str, Any]:
    """The students' backbone kwargs: the teachers' plus ``config.model.student_kwargs``,
    and per-domain parts for every training domain when ``config.model.per_domain``."""
    kwargs = _backbone_kwargs(config)
    extra = config.model.get("student_kwargs") or {}
    kwargs.update(extra.to_dict() if hasattr(extra, "to_dict") else dict(extra))
    if config.model.get("per_domain", False):
        kwargs["domains"] = tuple(config.domains)
    return kwargs


def _inputs(data, names: Mapping[str, str]) -> dict[str, Any]:
    """Per-domain input settings keyed by model domain; ``names``: ``{model domain: data
    domain}`` (a teacher's head is ``'teacher'`` while it trains)."""
    out: dict[str, Any] = {"shapes": {m: data.shape(d) for m, d in names.items()},
                           "normalize": {m: data.normalize(d) for m, d in names.items()}}
    if data.train_transform is not None:
        out["augment"] = {m: data.train_transform[d] for m, d in names.items()}
    if data.eval_transform is not None:
        out["transform"] = {m: data.eval_transform[d] for m, d in names.items()}
    return out


class BestModel:
    """Model selection on validation: keeps the variables with the best mean validation
    accuracy seen at the :func:`fit` ``validate`` calls, on disk (``<directory>/model`` and
    ``best.json``), so that a resumed run selects exactly as an uninterrupted one.

    ``to_variables(state)``: the model's variables from a train state. ``measure(variables)``:
    the per-domain validation accuracy (%) ``{domain: float}``; default: classification
    accuracy on ``sources`` (:func:`evaluate`). Meta-Dataset measures NCC on validation
    episodes of new classes instead (:func:`_episodic_validation`).
    """

    def __init__(self, directory: str, spec, model, sources, names, data, config, mesh, writer,
                 stage: str, to_variables: Callable[[Any], dict[str, Any]],
                 measure: Callable[[dict[str, Any]], dict[str, float]] | None = None):
        self.directory, self.spec, self.model, self.sources = directory, spec, model, sources
        self.inputs, self.config, self.mesh, self.writer = _inputs(data, names), config, mesh, writer
        self.stage, self.to_variables, self.measure = stage, to_variables, measure
        self.record = os.path.join(directory, "best.json")

    def best(self) -> dict[str, Any] | None:
        """``{'step', 'accuracy', 'per_domain'}`` of the selected model so far, or ``None``."""
        if not os.path.exists(self.record):
            return None
        with open(self.record) as f:
            return json.load(f)

    def __call__(self, step: int, state: Any) -> None:
        variables = jax.device_get(self.to_variables(state))
        if self.measure is not None:
            per_domain = {d: float(a) for d, a in self.measure(variables).items()}
        else:
            per_domain = {d: v["accuracy"] for d, v in evaluate(
                self.model, variables, self.sources, self.config, self.mesh,
                self.inputs.get("transform"), self.inputs["normalize"]).items()}
        accuracy = float(np.mean(list(per_domain.values())))
        self.writer.write_scalars(step, {f"{self.stage}/val_accuracy": accuracy,
                                         **{f"{self.stage}/val_accuracy/{d}": a
                                            for d, a in per_domain.items()}})
        best = self.best()
        improved = best is None or accuracy > best["accuracy"] or best["step"] == step
        logging.info("[%s] step %d: validation accuracy %.2f%%%s", self.stage, step, accuracy,
                     " (best so far)" if improved else f" (best {best['accuracy']:.2f}% at step "
                                                       f"{best['step']})")
        if improved:
            checkpointing.save_model(os.path.join(self.directory, "model"), self.spec, variables)
            os.makedirs(self.directory, exist_ok=True)
            _write_json(self.record, {"step": int(step), "accuracy": accuracy,
                                      "per_domain": per_domain})

    def load(self) -> dict[str, Any]:
        """The selected model's variables."""
        _, variables = checkpointing.load_model(os.path.join(self.directory, "model"),
                                                expected=self.spec)
        return variables


def stage_select_every(config, stage_config, domain: str | None = None) -> int:
    """How often a stage validates for model selection (0: never): the stage's own
    ``select_every`` when it has one (a number, or ``{domain: steps}`` like the Meta-Dataset
    teachers' ``eval_freq``, which VICO-UoE/URL's scripts set to each source's restart
    period), else ``config.select_every``."""
    if "select_every" in stage_config:
        return int(stage_value(stage_config, "select_every", domain) or 0)
    return int(config.get("select_every") or 0)


def _episodic_validation(config, model, data, names: Mapping[str, str], mesh
                         ) -> Callable[[dict[str, Any]], dict[str, float]]:
    """The Meta-Dataset validation of VICO-UoE/URL (``train_net*.py``): NCC accuracy (%) of
    the backbone on ``config.select_episodes`` (their ``eval_size``, 300) episodes of
    ``config.select_protocol`` (default ``'standard'``) from the validation classes of each
    training domain of ``names``. The episodes are drawn once, seeded by ``config.seed`` and
    the source (the authors draw new ones at every validation): every validation of a run,
    and of a resumed run, scores the same episodes."""
    from ur_jax.data import episodes as episodes_lib
    from ur_jax.evaluation import metadataset as md_eval

    domains = tuple(dict.fromkeys(names.values()))
    missing = [d for d in domains if d not in data.val_fewshot_specs]
    if missing:
        raise ValueError(f"Model selection needs validation classes of every training source; "
                         f"{missing} have none. Set select_every=0 for this stage (no "
                         f"selection: the last model is kept).")
    count = int(config.get("select_episodes") or 300)
    protocol = config.get("select_protocol") or "standard"
    episodes = {d: episodes_lib.sample_episodes(data.val_fewshot_specs[d], count, protocol,
                                                seed=_seed(config, 6, zlib.crc32(d.encode())))
                for d in domains}
    sources = {d: data.val_fewshot[d] for d in domains}
    normalize = {data.normalize(d) for d in domains}
    if len(normalize) > 1:  # md_eval.validation_accuracy takes one normalisation
        raise ValueError(f"Episodic model selection needs one image normalisation for all "
                         f"training sources; {list(domains)} have {len(normalize)} different "
                         f"ones. Set select_every=0 for this stage.")
    fs = config.get("fewshot") or {}
    buckets = tuple(fs.get("buckets") or ()) or None

    def measure(variables: dict[str, Any]) -> dict[str, float]:
        backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
        kwargs = {"buckets": buckets} if buckets else {}
        per_source = md_eval.validation_accuracy(
            model.backbone, backbone_vars, sources, episodes, batch_size=config.eval_batch_size,
            mesh=mesh, normalize=next(iter(normalize)), **kwargs)
        logging.info("NCC on %d validation episodes per source: %s", count,
                     ", ".join(f"{d} {a:.2f}%" for d, a in per_source.items()))
        return per_source

    return measure


def _selection(name: str, config, spec, model, data, names, to_variables, mesh, writer, workdir,
               every: int | None = None):
    """A :class:`BestModel` for a stage, or ``None`` when selection is off (``every``, default
    ``config.select_every``, is 0), the data has no validation split, or ``config.train_split
    == 'train+val'`` (the validation images are training images: the last model is kept, as
    for the paper's Decathlon Table 2). Data whose validation classes are new classes
    (Meta-Dataset: ``data.val_fewshot_specs``) are scored by NCC on validation episodes
    (:func:`_episodic_validation`), others by classification accuracy on ``data.val``."""
    every = int(config.get("select_every") or 0) if every is None else int(every)
    if not every or config.get("train_split") == "train+val":
        return None
    directory = os.path.join(workdir, "selection", name)
    if data.val_fewshot_specs:
        return BestModel(directory, spec, model, {}, names, data, config, mesh, writer, name,
                         to_variables, measure=_episodic_validation(config, model, data, names,
                                                                    mesh))
    if not data.val:
        return None
    sources = {m: data.val[d] for m, d in names.items()}
    return BestModel(directory, spec, model, sources, names, data, config, mesh, writer, name,
                     to_variables)


def _train_classifier(name: str, config, stage_config, model, data, names: Mapping[str, str],
                      batch_sizes, mesh, writer, workdir, seed_path, spec,
                      init: Mapping[str, Any] | None = None, lr_domain: str | None = None,
                      log_parameters: bool = True) -> dict[str, Any]:
    """Trains ``model`` on ``{model domain: data domain}`` ``names`` with the task losses;
    starts from ``init`` (else fresh) and returns its variables (the validation-selected
    ones when selection is on)."""
    inputs = _inputs(data, names)
    variables = _init_model(model, config, _seed(config, *seed_path), inputs["shapes"])
    if init is not None:
        variables = jax.tree.map(jnp.asarray, init)
    if log_parameters:
        parameter_overview.log_parameter_overview(variables["params"], msg=f"[{name}] parameters")
    state = steps.TrainState.create(variables["params"], variables.get("batch_stats", {}),
                                    _stage_sgd(stage_config, lr_domain))
    state = sharding.replicate(state, mesh)
    dataset = pipeline.train_batches({m: data.train[d] for m, d in names.items()}, batch_sizes,
                                     seed=_seed(config, *seed_path, 1),
                                     augment=inputs.get("augment", config.augment),
                                     normalize=inputs["normalize"])
    every = stage_select_every(config, stage_config, lr_domain)
    select = _selection(name, config, spec, model, data, names,
                        lambda st: {"params": st.params, "batch_stats": st.batch_stats},
                        mesh, writer, workdir, every=every)
    state = fit(name, _train_step_fn(model, mesh), state, dataset,
                stage_steps(stage_config, lr_domain),
                os.path.join(workdir, "checkpoints", name), config, mesh, writer,
                examples_per_step=sum(batch_sizes.values()), validate=select,
                validate_every=every)
    if select is not None:
        return select.load()
    return {"params": state.params, "batch_stats": state.batch_stats}


def _rename_head(variables: Mapping[str, Any], old: str, new: str) -> dict[str, Any]:
    out = {c: dict(v) for c, v in variables.items()}
    heads = dict(out["params"]["heads"])
    heads[new] = heads.pop(old)
    out["params"]["heads"] = heads
    return out


def _finetune_init(source: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict[str, Any]:
    """A teacher's start when fine-tuning: ``source``'s backbone with ``fresh``'s head."""
    return {c: {**dict(fresh[c]), "backbone": source[c]["backbone"]} if "backbone" in source.get(c, {})
            else fresh[c] for c in fresh}


def train_teachers(config, data, mesh, writer, workdir
                   ) -> tuple[dict[str, tuple[MultiHeadClassifier, dict]], dict[str, Any]]:
    """The ``teachers`` stage: ``{domain: (model, variables)}`` (trained, or loaded from
    ``config.teachers.checkpoints``). With ``config.teachers.finetune_from`` naming a
    domain (the Decathlon's ``'imagenet12'``), that teacher is trained first and every
    other one starts from its backbone (a fresh head), with its own learning rate and
    weight decay (``learning_rate`` / ``weight_decay`` may map domains to values)."""
    teachers = {}
    paths = {d: p for d, p in dict(config.teachers.checkpoints).items() if p}
    source = config.teachers.get("finetune_from") or ""
    order = sorted(config.domains, key=lambda d: d != source)  # the source teacher first
    logged = False
    for d in order:
        i = list(config.domains).index(d)
        spec = _spec(config, {d: data.num_classes[d]})
        if d in paths:
            logging.info("[teacher_%s] loading %s", d, paths[d])
            teachers[d] = checkpointing.load_model(paths[d], expected=spec)
            continue
        generic_spec = _spec(config, {_TEACHER_HEAD: data.num_classes[d]})
        generic = checkpointing.model_from_spec(generic_spec)
        init = None
        if source and d != source:
            fresh = _init_model(generic, config, _seed(config, 1, i),
                                {_TEACHER_HEAD: data.shape(d)})
            init = _finetune_init(teachers[source][1], fresh)
            logging.info("[teacher_%s] fine-tuning from the %s teacher", d, source)
        variables = _train_classifier(f"teacher_{d}", config, config.teachers, generic, data,
                                      {_TEACHER_HEAD: d},
                                      {_TEACHER_HEAD: batch_size(config.teachers, d)},
                                      mesh, writer, workdir, (1, i), generic_spec, init=init,
                                      lr_domain=d, log_parameters=not logged)
        logged = True
        # A host copy: without model selection these are the final train state's arrays, and
        # a later stage started from them (fine-tuning, MDL / URL init) would donate them.
        variables = jax.device_get(_rename_head(variables, _TEACHER_HEAD, d))
        checkpointing.save_model(os.path.join(workdir, "teachers", d, "model"), spec, variables)
        teachers[d] = (checkpointing.model_from_spec(spec), variables)
    return {d: teachers[d] for d in config.domains}


def student_input_sizes(config, data) -> dict[str, int]:
    """``{domain: S}``: the training domains whose images the multi-domain students (MDL,
    URL) resize to ``S x S`` (:attr:`MultiHeadClassifier.input_sizes`), from
    ``config.model.student_input_size`` (``S``; 0 or absent: none). Only when the domains'
    image sizes differ, and only the domains not already ``S x S``: on the Visual Decathlon,
    with imagenet12's 72 px crops among the domains, every 64 px crop becomes 72 x 72, as in
    the authors' ``trainmdl`` / ``trainurl`` / ``urltest`` (VICO-UoE/UniversalRepresentations,
    ``VisualDecathlon/utils_pytorch.py``: ``kornia.augmentation.Resize((72, 72))`` when
    ``'imagenet12'`` is trained); teachers keep their native crops.

    Raises:
      ValueError: for a negative or non-integer ``student_input_size``.
    """
    size = config.model.get("student_input_size") or 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"config.model.student_input_size={size!r}; expected an integer side "
                         f"in pixels (72 on the Decathlon) or 0 for the native image sizes.")
    shapes = {d: tuple(data.shape(d)[:2]) for d in config.domains}
    if not size or len(set(shapes.values())) < 2:
        return {}
    return {d: size for d, hw in shapes.items() if hw != (size, size)}


def _student_spec(config, data) -> dict[str, Any]:
    return checkpointing.model_spec(config.model.backbone, _student_kwargs(config),
                                    {d: data.num_classes[d] for d in config.domains},
                                    input_sizes=student_input_sizes(config, data))


def _student(config, data) -> MultiHeadClassifier:
    return checkpointing.model_from_spec(_student_spec(config, data))


def _student_init(stage: str, config, data, student, teachers, seed_path) -> dict[str, Any]:
    """A student's first variables: fresh, or from the teacher ``config.<stage>.init_from``
    names (its backbone for every domain, per-domain BatchNorm included, and its head)."""
    shapes = {d: data.shape(d) for d in config.domains}
    variables = _init_model(student, config, _seed(config, *seed_path), shapes)
    source = config[stage].get("init_from") or ""
    if not source:
        return variables
    if not teachers or source not in teachers:
        raise ValueError(f"config.{stage}.init_from={source!r} names no teacher of this run; "
                         f"teachers: {sorted(teachers or {})}.")
    variables, copied = from_single_domain(variables, teachers[source][1], config.domains,
                                           heads={source: source})
    logging.info("[%s] initialised %d arrays from the %s teacher", stage, copied, source)
    return variables


def train_mdl(config, data, mesh, writer, workdir, teachers=None):
    """The ``mdl`` stage: ``(model, variables)`` of the multi-domain baseline."""
    model = _student(config, data)
    init = _student_init("mdl", config, data, model, teachers, (2, 2))
    variables = _train_classifier("mdl", config, config.mdl, model, data,
                                  {d: d for d in config.domains},
                                  {d: batch_size(config.mdl, d) for d in config.domains},
                                  mesh, writer, workdir, (2,), _student_spec(config, data),
                                  init=init)
    return model, variables


def _distill_config(config, domains) -> steps.DistillConfig:
    u = config.url
    anneal = None
    if u.anneal:
        every = int(u.get("anneal_every") or 1)
        k = u.get("anneal_k") or {}
        k = k.to_dict() if hasattr(k, "to_dict") else dict(k)
        anneal = {d: optim.linear_anneal(
            int(round((u.anneal_steps or u.steps) * float(k.get(d, k.get("default", 1.0))))),
            every=every) for d in domains}

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
    inputs = _inputs(data, {d: d for d in domains})
    bank, teacher_vars = stack_teachers(
        teachers, image_shapes={d: (batch_sizes[d],) + data.shape(d) for d in domains},
        mode=config.teacher_mode)
    adapters = AlignmentAdapters(tuple((d, teachers[d][0].backbone.feature_dim) for d in domains),
                                 kind=u.adapter)
    state = steps.init_distill_state(
        student, adapters, jax.random.key(_seed(config, 3), impl=config.init_rng_impl),
        _sample_images(inputs["shapes"]), _stage_sgd(u),
        optim.adam(adapter_learning_rate_schedule(u), weight_decay=u.adapter_weight_decay),
        student_variables=_student_init("url", config, data, student, teachers, (3, 2)))
    parameter_overview.log_parameter_overview(state.params["adapters"],
                                              msg="[url] alignment adapters")
    state = sharding.replicate(state, mesh)
    teacher_vars = sharding.replicate(teacher_vars, mesh)
    step_fn = steps.jit_step(steps.make_distill_step(student, adapters, bank,
                                                     _distill_config(config, domains)),
                             mesh, with_teachers=True)
    dataset = pipeline.train_batches({d: data.train[d] for d in domains}, batch_sizes,
                                     seed=_seed(config, 3, 1),
                                     augment=inputs.get("augment", config.augment),
                                     normalize=inputs["normalize"])
    select = _selection("url", config, _student_spec(config, data), student, data,
                        {d: d for d in domains},
                        lambda st: {"params": st.params["student"], "batch_stats": st.batch_stats},
                        mesh, writer, workdir, every=stage_select_every(config, u))
    state = fit("url", step_fn, state, dataset, u.steps, os.path.join(workdir, "checkpoints", "url"),
                config, mesh, writer, examples_per_step=sum(batch_sizes.values()),
                teacher_vars=teacher_vars, validate=select,
                validate_every=stage_select_every(config, u))
    if select is not None:
        return student, select.load()
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


def run_episodic_fewshot(config, data, models: Mapping[str, tuple[Any, dict, tuple[str, ...]]],
                         mesh) -> dict[str, Any]:
    """The ``fewshot`` stage on Meta-Dataset: ``config.fewshot.episodes`` episodes of
    ``config.fewshot.protocol`` per source (the same episodes for every model: seeded by the
    config's seed and the source), evaluated with each of ``config.fewshot.methods``.

    ``models``: ``{row name: (model, variables, seen sources)}``; the seen sources pick the
    inner-loop learning rates (:func:`ur_jax.evaluation.metadataset.learning_rates`): the
    "seen" ones only on the sources that model was trained on.
    Returns ``{'kind': 'episodic', 'protocol', 'domains', 'episodes', 'rows': {'<model>
    <method>': per-source accuracy ± CI and seen / unseen / all averages}, 'seen': {model:
    its seen sources}, 'learning_rates': {'<model> <method>': {source: the inner-loop rates
    used}}}``.
    """
    from ur_jax.data import episodes as episodes_lib
    from ur_jax.evaluation import metadataset as md_eval

    f = config.fewshot
    domains = tuple(f.domains)
    sampled = {d: episodes_lib.sample_episodes(data.fewshot_specs[d], int(f.episodes), f.protocol,
                                               seed=_seed(config, 5, i))
               for i, d in enumerate(domains)}
    for d in domains:
        logging.info("[fewshot] %s: %s", d, {k: round(v, 1) for k, v in
                                             episodes_lib.describe(sampled[d]).items()
                                             if k.startswith("mean")})
    rows: dict[str, Any] = {}
    used: dict[str, dict[str, dict[str, float]]] = {}
    for name, (model, variables, seen) in models.items():
        backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
        evaluator = md_eval.EpisodeEvaluator(model.backbone, backbone_vars,
                                             batch_size=config.eval_batch_size,
                                             buckets=tuple(f.buckets), mesh=mesh)
        for method in f.methods:
            rates = {d: md_eval.learning_rates(method, seen=d in seen) for d in domains}
            acc = {d: evaluator.evaluate(data.fewshot[d], sampled[d], method, seen=d in seen,
                                         steps=int(f.get("inner_steps") or 0) or None,
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
            "seen": {name: list(m[2]) for name, m in models.items()}, "learning_rates": used}


def _fewshot_models(config, models, teachers) -> dict[str, tuple[Any, dict, tuple[str, ...]]]:
    """The models the ``fewshot`` stage evaluates, with the sources each was trained on
    (they get PA's / TSA's "seen" learning rates): the teachers (their own source) and
    students (``config.domains``) ``config.fewshot.models`` names, and the saved models
    ``config.fewshot.checkpoints`` ``{row name: path}`` points to. A saved model's sources
    are, in order of precedence: ``config.fewshot.checkpoint_seen.<row name>`` (sources, or
    a comma-separated string), ``config.fewshot.seen`` (for every saved model), else its own
    training domains read from its heads
    (:func:`ur_jax.evaluation.metadataset.training_sources`): an ImageNet-only model has
    one seen source, as in VICO-UoE/URL after the authors' fix (they used to give every
    loaded model all eight training sources)."""
    from ur_jax.data.metadataset.common import SOURCES
    from ur_jax.evaluation import metadataset as md_eval

    f = config.fewshot
    chosen: dict[str, tuple[Any, dict, tuple[str, ...]]] = {}
    if "teachers" in f.models and teachers:
        for d, (model, variables) in teachers.items():
            chosen[f"teacher_{d}"] = (model, variables, (d,))
    for name, (model, variables) in models.items():
        if name in f.models:
            chosen[name] = (model, variables, tuple(config.domains))
    every = _sources(f.get("seen"))
    per_model = dict(f.get("checkpoint_seen") or {})
    for name, path in dict(f.get("checkpoints") or {}).items():
        if path:
            logging.info("[fewshot] loading %s from %s", name, path)
            model, variables = checkpointing.load_model(path)
            seen = (_sources(per_model.get(name)) or every
                    or md_eval.training_sources(model.num_classes, name))
            unknown = [s for s in seen if s not in SOURCES]
            if unknown:
                raise ValueError(f"The seen sources of {name!r} include {unknown}, which are not "
                                 f"Meta-Dataset sources {list(SOURCES)}; fix "
                                 f"config.fewshot.checkpoint_seen.{name} / config.fewshot.seen.")
            logging.info("[fewshot] %s: seen sources %s", name, list(seen))
            chosen[name] = (model, variables, seen)
    return chosen


def _sources(value: Any) -> tuple[str, ...]:
    """A config's list of sources: a sequence or a string, comma-separated names in either
    (``--config.fewshot.seen=a,b`` arrives as ``('a,b',)``)."""
    if not value:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    return tuple(s.strip() for item in items for s in str(item).split(",") if s.strip())


# ----------------------------------------------------------------------------- the run


def decathlon_scores(results: Mapping[str, Any], config) -> dict[str, dict[str, float]]:
    """Per model row: the decathlon score (error bounds from the paper's Finetune row, or
    ``config.score_bounds`` ``{domain: Emax %}``), Delta_MDL against the run's own teachers
    (``delta_mdl``) and against the paper's Finetune row (``delta_mdl_paper``)."""
    from ur_jax.evaluation import decathlon as dec

    bounds = dict(dec.ERROR_BOUNDS)
    bounds.update({d: float(e) for d, e in dict(config.get("score_bounds") or {}).items()})
    teachers = results.get("teachers") or {}
    out = {}
    for name in ("teachers", "mdl", "url"):
        row = results.get(name)
        if not row:
            continue
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


def format_table(results: Mapping[str, Any]) -> str:
    """The printed results: per-domain accuracy of teachers / MDL / URL (with the decathlon
    score and Delta_MDL when computed), and few-shot."""
    domains = [d for d in results["config"]["domains"]]
    rows = [(name, results[name]) for name in ("teachers", "mdl", "url") if results.get(name)]
    width = max([8, *(len(d) for d in domains)])
    split = {"test": "Test", "val": "Validation"}[results.get("evaluated_on", "test")]
    if split == "Validation" and results["config"].get("train_split") == "train+val":
        split += " (trained on: train_split=train+val)"
    scores = results.get("scores") or {}
    extra = f"{'score':>{9}}{'dMDL':>{8}}" if scores else ""
    lines = [f"{split} accuracy (%)",
             f"{'':<10}" + "".join(f"{d:>{width + 2}}" for d in domains) + f"{'mean':>{width + 2}}"
             + extra] if rows else []
    for name, res in rows:
        cells = "".join(f"{res[d]['accuracy']:>{width + 2}.2f}" if d in res else f"{'-':>{width + 2}}"
                        for d in domains)
        tail = ""
        if name in scores:
            sc = scores[name]
            tail = f"{sc['decathlon_score']:>9.0f}" + (f"{sc['delta_mdl']:>+8.2f}" if "delta_mdl" in sc
                                                      else f"{'-':>8}")
        lines.append(f"{name:<10}{cells}{res['mean']['accuracy']:>{width + 2}.2f}{tail}")
    if scores:
        lines.append("score: decathlon score (max 1000 per domain); dMDL: Delta_MDL (%) vs the "
                     "run's teachers")
    fs = results.get("fewshot")
    if fs and fs.get("kind") == "episodic":
        from ur_jax.data.metadataset.common import SHORT_NAMES
        from ur_jax.evaluation.metadataset import format_results

        lines += ["" if lines else None, f"Few-shot accuracy (%), {fs['protocol']} episodes ({fs['episodes']} per "
                      f"source), ± 95% CI; averages over seen / unseen / all sources",
                  format_results(fs["rows"], fs["domains"], SHORT_NAMES)]
        lines = [line for line in lines if line is not None]
    elif fs:
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
    if not config.domains and set(config.stages) - {"fewshot"}:
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
    if "fewshot" in config.stages and "pa_learning_rate" in config.fewshot:
        missing = [d for d in config.fewshot.domains if d not in dict(config.fewshot.pa_learning_rate)]
        if missing:
            raise ValueError(f"config.fewshot.pa_learning_rate has no rate for {missing} (0.1 "
                             f"for a seen domain, 1.0 for an unseen one).")
    if "fewshot" in config.stages:
        if set(config.stages) == {"fewshot"} and not any(
                dict(config.fewshot.get("checkpoints") or {}).values()):
            raise ValueError("Only the 'fewshot' stage runs, so there is no model to evaluate: "
                             "point config.fewshot.checkpoints.<name> at a saved model, e.g. "
                             "--config.fewshot.checkpoints.model=RUN/students/url/model.")
        if "protocol" in config.fewshot:
            from ur_jax.data.episodes import PROTOCOLS
            from ur_jax.evaluation.metadataset import METHODS

            if config.fewshot.protocol not in PROTOCOLS:
                raise ValueError(f"config.fewshot.protocol={config.fewshot.protocol!r}; expected "
                                 f"one of {PROTOCOLS}.")
            bad = [m for m in config.fewshot.methods if m not in METHODS]
            if bad:
                raise ValueError(f"config.fewshot.methods has unknown method(s) {bad}; expected "
                                 f"some of {METHODS}.")
    for key in ("teachers", "mdl", "url"):
        kind = config[key].get("schedule", "cosine")
        if kind not in SCHEDULES:
            raise ValueError(f"config.{key}.schedule={kind!r}; expected one of {SCHEDULES}.")
        for d in config.domains:
            for name in ("learning_rate", "weight_decay"):
                stage_value(config[key], name, d)  # a mapping without the domain raises here
    source = config.teachers.get("finetune_from") or ""
    if source and source not in config.domains:
        raise ValueError(f"config.teachers.finetune_from={source!r} is not a training domain "
                         f"({list(config.domains)}).")
    for key in ("mdl", "url"):
        init = config[key].get("init_from") or ""
        if init and key in config.stages and (init not in config.domains
                                              or "teachers" not in config.stages):
            raise ValueError(f"config.{key}.init_from={init!r} needs the 'teachers' stage and "
                             f"a training domain of that name (domains: {list(config.domains)}).")
    select_every = int(config.get("select_every") or 0)
    if select_every < 0 or (select_every and select_every % config.checkpoint_every):
        raise ValueError(f"config.select_every={select_every} must be 0 (no model selection) or "
                         f"a positive multiple of config.checkpoint_every="
                         f"{config.checkpoint_every}, so that a resumed run selects exactly as "
                         f"an uninterrupted one.")
    for key in ("teachers", "mdl", "url"):
        if key not in config.stages or "select_every" not in config[key]:
            continue
        for d in config.domains:
            every = stage_select_every(config, config[key], d)
            if every < 0 or (every and every % config.checkpoint_every):
                raise ValueError(f"config.{key}.select_every is {every} for {d!r}; it must be 0 "
                                 f"(no model selection) or a positive multiple of "
                                 f"config.checkpoint_every={config.checkpoint_every}, so that a "
                                 f"resumed run selects exactly as an uninterrupted one.")
    if int(config.get("select_episodes") or 1) < 1:
        raise ValueError(f"config.select_episodes={config.select_episodes}: validation episodes "
                         f"per source must be positive (the authors' eval_size is 300).")
    if config.get("select_protocol"):
        from ur_jax.data.episodes import PROTOCOLS

        if config.select_protocol not in PROTOCOLS:
            raise ValueError(f"config.select_protocol={config.select_protocol!r}; expected one "
                             f"of {PROTOCOLS}.")
    size = config.model.get("student_input_size") or 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"config.model.student_input_size={size!r}; expected an integer side "
                         f"in pixels (72 on the Decathlon) or 0 for the native image sizes.")
    if config.get("evaluate_on") == "val" and config.get("train_split") == "train+val":
        raise ValueError("config.evaluate_on='val' with config.train_split='train+val' would score "
                         "images the models train on; use train_split='train' to evaluate on "
                         "validation.")
    if config.get("evaluate_on") not in (None, "", "test", "val"):
        raise ValueError(f"config.evaluate_on={config.evaluate_on!r}; expected 'test' (tables on "
                         f"the test split) or 'val' (on the validation split, for tuning).")
    if config.get("score") not in (None, "", "decathlon"):
        raise ValueError(f"config.score={config.score!r}; expected '' or 'decathlon'.")
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
    split = "test" if all(data.labelled(d) for d in config.domains) else "val"
    if config.get("evaluate_on") == "val":  # choosing hyperparameters: never look at test
        if not data.val:
            raise ValueError("config.evaluate_on='val' but the data has no validation split; "
                             "for the embedded data set config.holdout_per_class > 0.")
        split = "val"
    results["evaluated_on"] = split
    if split == "val" and config.get("train_split") == "train+val":
        logging.warning("config.train_split='train+val': the models train on the validation "
                        "images, so the validation accuracies below are not held-out numbers. "
                        "Add the labelled test annotations (README: Visual Decathlon) to score "
                        "the test split.")
    if split == "val" and config.get("evaluate_on") != "val":
        logging.info("The test split of %s has no labels: results are on the validation split; "
                     "test predictions go to %s.", [d for d in config.domains if not data.labelled(d)],
                     os.path.join(workdir, "predictions"))

    def report(name: str, models_: Mapping[str, tuple[MultiHeadClassifier, dict]]):
        """Evaluates ``{domain: (model, variables)}`` (one model for every domain, or one per
        domain) on ``split``; exports test predictions when the test split is unlabelled."""
        if not any(d in (data.test if split == "test" else data.val) for d in models_):
            return {}  # no classification test (Meta-Dataset: few-shot episodes only)
        per_domain, predictions = {}, {}
        groups: dict[int, list[str]] = {}
        for d, (model, _) in models_.items():
            groups.setdefault(id(models_[d]), []).append(d)
        for domains in groups.values():
            model, variables = models_[domains[0]]
            names = {d: d for d in domains}
            inputs = _inputs(data, names)
            sources = {d: (data.test if split == "test" else data.val)[d] for d in domains}
            per_domain.update(evaluate(model, variables, sources, config, mesh,
                                       inputs.get("transform"), inputs["normalize"]))
            if split == "val" and data.export_predictions is not None:
                evaluate(model, variables, {d: data.test[d] for d in domains}, config, mesh,
                         inputs.get("transform"), inputs["normalize"], predictions=predictions)
        if predictions:
            path = data.export_predictions(
                predictions, os.path.join(workdir, "predictions", f"{name}_test.json"))
            logging.info("[%s] test predictions written to %s", name, path)
        for d, v in per_domain.items():
            logging.info("[%s] %s %s accuracy %.2f%%", name, d, split, v["accuracy"])
        return _with_mean({d: per_domain[d] for d in config.domains if d in per_domain})

    try:
        teachers = None
        if "teachers" in config.stages:
            teachers = train_teachers(config, data, mesh, writer, workdir)
            results["teachers"] = report("teachers", teachers)
        models = {}
        for stage, train_fn in (("mdl", lambda: train_mdl(config, data, mesh, writer, workdir,
                                                           teachers)),
                                ("url", lambda: train_url(config, data, teachers, mesh, writer,
                                                          workdir))):
            if stage in config.stages:
                models[stage] = train_fn()
                checkpointing.save_model(os.path.join(workdir, "students", stage, "model"),
                                         _student_spec(config, data),
                                         jax.device_get(models[stage][1]))
                results[stage] = report(stage, {d: models[stage] for d in config.domains})
        if config.get("score") == "decathlon":
            results["scores"] = decathlon_scores(results, config)
        if "fewshot" in config.stages and data.fewshot_specs:
            chosen = _fewshot_models(config, models, teachers)
            if chosen:
                results["fewshot"] = run_episodic_fewshot(config, data, chosen, mesh)
            else:
                logging.warning("[fewshot] no model to evaluate: config.fewshot.models=%s and "
                                "no config.fewshot.checkpoints.", list(config.fewshot.models))
        elif "fewshot" in config.stages:
            chosen = {k: v for k, v in models.items() if k in config.fewshot.models}
            if chosen:
                results["fewshot"] = run_fewshot(config, data, chosen, mesh)
        for name in ("teachers", "mdl", "url"):
            if results[name]:
                writer.write_scalars(0, {f"{split}/{name}/{d}": v["accuracy"]
                                         for d, v in results[name].items()
                                         if v["accuracy"] is not None})
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
