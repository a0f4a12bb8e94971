"""The dense-prediction runner: single-task teachers, a multi-task baseline, URL, Delta_MTL.

:func:`run` executes the stages a dense config (``config.problem = 'dense'``) names:

``stl``
    one single-task network per task of ``config.tasks`` (trained, or loaded from
    ``config.teachers.checkpoints.<task>``), saved to ``workdir/teachers/<task>/model``
    and evaluated on the test split;
``mtl``
    one shared network with a head per task, trained with the multi-task method
    ``config.mtl.method`` (uniform, uncertainty, DWA, GradNorm, MGDA, PCGrad, GradDrop,
    IMTL-L/G/H, CAGrad; :mod:`ur_jax.mtl`), or ``'bam'``: Born-Again Multi-task networks,
    task targets annealed linearly from the ``stl`` teachers' predictions to the ground
    truth (:func:`ur_jax.dense_steps.make_bam_step`);
``url``
    the universal student distilled from the frozen single-task teachers through
    per-task adapters on its bottleneck and decoder features
    (:func:`ur_jax.dense_steps.make_dense_distill_step`).

Test metrics (mIoU and pixel accuracy; depth absolute / relative error and RMSE; normal
angle mean, median and within 11.25 / 22.5 / 30 degrees) are computed over the whole test
split (:mod:`ur_jax.evaluation.dense`). Delta_MTL is reported against the run's own
single-task results (``delta_mtl.stl``) and, where the dataset has published ones
(NYU-v2), against those (``delta_mtl.reference``). Checkpoints, resume, logging and the
workdir rules are those of :mod:`ur_jax.train`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import parameter_overview
from jax.sharding import Mesh

from ur_jax import (
    checkpointing,
    dense_config,
    dense_steps,
    mtl,
    optim,
    sharding,
    train,
    writers,  # first: makes clu's writers importable without TF
)
from ur_jax.adapters import AlignmentAdapters
from ur_jax.data import dense as dense_data
from ur_jax.data import registry
from ur_jax.evaluation import dense as dense_eval

STAGES = ("stl", "mtl", "url")
#: ``config.mtl.method`` values: the methods of :mod:`ur_jax.mtl` and BAM, which distils the
#: single-task teachers (it needs the ``stl`` stage). One list, kept in the config module.
MTL_STAGE_METHODS = dense_config.MTL_STAGE_METHODS
#: Output channels of each task's head (semantic: the dataset's class count).
TASK_CHANNELS = {"depth": 1, "normal": 3}
#: The metrics printed per task, in the NYU-v2 table's order.
TABLE_METRICS = {
    "semantic": (("miou", "mIoU"), ("pixel_acc", "PixAcc")),
    "depth": (("abs_err", "AbsErr"), ("rel_err", "RelErr")),
    "normal": (("angle_mean", "Mean"), ("angle_median", "Median"), ("within_11_25", "<11.25"),
               ("within_22_5", "<22.5"), ("within_30", "<30")),
}


# ----------------------------------------------------------------------------- helpers


def _task_channels(task: str, num_classes: int) -> int:
    return num_classes if task == "semantic" else TASK_CHANNELS[task]


def _model_kwargs(config) -> dict[str, Any]:
    kwargs = config.model.kwargs
    return dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)


def _spec(config, data: registry.DenseData, tasks) -> dict[str, Any]:
    return checkpointing.dense_model_spec(
        config.model.name, _model_kwargs(config),
        [(t, _task_channels(t, data.num_classes)) for t in tasks])


def stage_steps(stage_config, steps_per_epoch: int) -> int:
    """A stage's number of updates: ``steps`` if set (> 0), else ``epochs`` epochs."""
    if int(stage_config.get("steps", 0) or 0) > 0:
        return int(stage_config.steps)
    return int(stage_config.epochs) * steps_per_epoch


@functools.cache
def _adam(lr: float, decay_every: int, decay_factor: float, weight_decay: float):
    """Adam with a step decay (x ``decay_factor`` every ``decay_every`` steps). Cached, so
    that runs with equal hyperparameters share one optimizer object (static in the state)
    and hence one compiled step."""
    schedule = (optax.exponential_decay(lr, max(decay_every, 1), decay_factor, staircase=True)
                if decay_every > 0 else lr)
    return optim.adam(schedule, weight_decay=weight_decay)


def _stage_adam(stage_config, steps_per_epoch: int):
    return _adam(float(stage_config.learning_rate),
                 int(stage_config.decay_every_epochs) * steps_per_epoch,
                 float(stage_config.decay_factor), float(stage_config.weight_decay))


@functools.cache
def _init_fn(model):
    return jax.jit(lambda rng, x: model.init(rng, x, train=False))


@functools.cache
def _mtl_step_fn(model, tasks: tuple[str, ...], method: mtl.MTLMethod, seed: int, space: str,
                 mesh):
    return sharding.jit_data_parallel(dense_steps.make_mtl_step(model, tasks, method, seed, space),
                                      mesh, batch_argnums=(1,), num_args=2)


@functools.cache
def _eval_step_fn(model, tasks: tuple[str, ...], num_classes: int, mesh):
    return sharding.jit_data_parallel(dense_steps.make_dense_eval_step(model, tasks, num_classes),
                                      mesh, batch_argnums=(2,), num_args=3, donate_argnums=())


def _init_model(model, config, seed: int, image_shape) -> dict[str, Any]:
    rng = jax.random.key(seed, impl=config.init_rng_impl)
    return _init_fn(model)(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))


def evaluate(model, variables: Mapping[str, Any], data: registry.DenseData, tasks, config,
             mesh) -> dict[str, dict[str, float]]:
    """Test metrics ``{task: {metric: value}}`` of ``model`` over the whole test split (or
    its first ``config.eval_limit`` examples), in one compiled step; the last batch is
    padded with masked examples."""
    tasks = tuple(tasks)
    eval_step = _eval_step_fn(model, tasks, data.num_classes, mesh)
    params, stats = variables["params"], variables.get("batch_stats", {})
    sums = None
    for batch in dense_data.dense_eval_batches(data.test, config.eval_batch_size,
                                               limit=config.eval_limit or None):
        batch = {k: v for k, v in batch.items() if k in ("image", "mask", *tasks)}
        out = eval_step(params, stats, sharding.shard_batch(batch, mesh))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    return {t: dense_eval.finalize(t, sums[t]) for t in tasks}


def _steps_per_epoch(data: registry.DenseData, batch_size: int) -> int:
    return max(1, len(data.train) // int(batch_size))


def _fit(name, step_fn, state, data, stage_config, config, mesh, writer, workdir, seed,
         teacher_vars=None):
    dataset = dense_data.dense_train_batches(data.train, int(stage_config.batch_size), seed=seed,
                                             augment=bool(config.augment),
                                             depth_kind=data.depth_kind)
    num_steps = stage_steps(stage_config, _steps_per_epoch(data, stage_config.batch_size))
    return train.fit(name, step_fn, state, dataset, num_steps,
                     os.path.join(workdir, "checkpoints", name), config, mesh, writer,
                     examples_per_step=int(stage_config.batch_size), teacher_vars=teacher_vars)


def _train_mtl_model(name: str, config, stage_config, model, tasks, method: mtl.MTLMethod,
                     space: str, data, mesh, writer, workdir, seed_path) -> dict[str, Any]:
    variables = _init_model(model, config, train._seed(config, *seed_path), data.image_shape)
    parameter_overview.log_parameter_overview(variables["params"], msg=f"[{name}] parameters")
    spe = _steps_per_epoch(data, stage_config.batch_size)
    state = dense_steps.init_mtl_state(variables, method, len(tasks), _stage_adam(stage_config, spe))
    state = sharding.replicate(state, mesh)
    step_fn = _mtl_step_fn(model, tuple(tasks), method, train._seed(config, *seed_path, 2), space,
                           mesh)
    state = _fit(name, step_fn, state, data, stage_config, config, mesh, writer, workdir,
                 train._seed(config, *seed_path, 1))
    return {"params": state.params["model"], "batch_stats": state.batch_stats,
            "method": state.params["method"]}


# ----------------------------------------------------------------------------- stages


def train_stl(config, data: registry.DenseData, mesh, writer, workdir):
    """The ``stl`` stage: ``{task: (model, variables)}`` (trained, or loaded from
    ``config.teachers.checkpoints``) and their test metrics ``{task: {...}}``."""
    teachers, results = {}, {}
    paths = {t: p for t, p in dict(config.teachers.checkpoints).items() if p}
    uniform = mtl.get_method("uniform")
    for i, t in enumerate(config.tasks):
        spec = _spec(config, data, (t,))
        if t in paths:
            logging.info("[stl_%s] loading %s", t, paths[t])
            model, variables = checkpointing.load_model(paths[t], expected=spec)
        else:
            model = checkpointing.model_from_spec(spec)
            variables = _train_mtl_model(f"stl_{t}", config, config.stl, model, (t,), uniform,
                                         "params", data, mesh, writer, workdir, (11, i))
            variables = {k: v for k, v in variables.items() if k != "method"}
            checkpointing.save_model(os.path.join(workdir, "teachers", t, "model"), spec,
                                     jax.device_get(variables))
        teachers[t] = (model, variables)
        results[t] = evaluate(model, variables, data, (t,), config, mesh)[t]
        logging.info("[stl_%s] test %s", t, _fmt(results[t]))
    return teachers, results


def _method(config, data: registry.DenseData) -> mtl.MTLMethod:
    m = config.mtl
    options = dict(m.options.to_dict() if hasattr(m.options, "to_dict") else m.options)
    if m.method == "dwa":
        options.setdefault("steps_per_epoch", _steps_per_epoch(data, m.batch_size))
    return mtl.get_method(m.method, **options)


@functools.cache
def _bam_step_fn(model, teachers: tuple[tuple[str, Any], ...], tasks: tuple[str, ...],
                 num_steps: int, mesh):
    step = dense_steps.make_bam_step(model, dict(teachers), tasks, num_steps)
    return sharding.jit_data_parallel(step, mesh, batch_argnums=(2,), num_args=3)


def train_bam(config, data: registry.DenseData, teachers, mesh, writer, workdir):
    """The ``mtl`` stage with ``config.mtl.method = 'bam'``: ``(model, variables)`` of a
    Born-Again Multi-task network distilled from the frozen ``stl`` teachers with teacher
    annealing over the stage's updates (the paper's BAM baseline, Table 1)."""
    tasks = tuple(config.tasks)
    stage = config.mtl
    model = checkpointing.model_from_spec(_spec(config, data, tasks))
    variables = _init_model(model, config, train._seed(config, 12), data.image_shape)
    parameter_overview.log_parameter_overview(variables["params"], msg="[mtl] parameters")
    spe = _steps_per_epoch(data, stage.batch_size)
    uniform = mtl.get_method("uniform")
    state = dense_steps.init_mtl_state(variables, uniform, len(tasks), _stage_adam(stage, spe))
    state = sharding.replicate(state, mesh)
    teacher_vars = sharding.replicate(
        {t: {k: v for k, v in teachers[t][1].items() if k in ("params", "batch_stats")}
         for t in tasks}, mesh)
    step_fn = _bam_step_fn(model, tuple((t, teachers[t][0]) for t in tasks), tasks,
                           stage_steps(stage, spe), mesh)
    state = _fit("mtl", step_fn, state, data, stage, config, mesh, writer, workdir,
                 train._seed(config, 12, 1), teacher_vars=teacher_vars)
    return model, {"params": state.params["model"], "batch_stats": state.batch_stats}


def train_mtl(config, data: registry.DenseData, mesh, writer, workdir, teachers=None):
    """The ``mtl`` stage: ``(model, variables)`` of the multi-task baseline (``teachers``,
    the ``stl`` stage's ``{task: (model, variables)}``, are needed by BAM only)."""
    if config.mtl.method == "bam":
        if teachers is None:
            raise ValueError("config.mtl.method='bam' distils the single-task teachers: run "
                             "it with stage 'stl' (which may load them from "
                             "config.teachers.checkpoints.<task>).")
        return train_bam(config, data, teachers, mesh, writer, workdir)
    method = _method(config, data)
    space = config.mtl.space or method.space
    model = checkpointing.model_from_spec(_spec(config, data, config.tasks))
    variables = _train_mtl_model("mtl", config, config.mtl, model, tuple(config.tasks), method,
                                 space, data, mesh, writer, workdir, (12,))
    return model, variables


def train_url(config, data: registry.DenseData, teachers, mesh, writer, workdir):
    """The ``url`` stage: ``(student, variables)`` distilled from the frozen teachers."""
    u = config.url
    tasks = tuple(config.tasks)
    student = checkpointing.model_from_spec(_spec(config, data, tasks))
    variables = _init_model(student, config, train._seed(config, 13), data.image_shape)
    probe = jnp.zeros((1,) + tuple(data.image_shape), jnp.float32)
    s_feats = jax.eval_shape(lambda v: student.apply(v, probe, train=False)[1], variables)
    widths = {}
    for t in tasks:
        t_model, t_vars = teachers[t]
        t_feats = jax.eval_shape(lambda v, m=t_model: m.apply(v, probe, train=False)[1], t_vars)
        widths[t] = t_feats[u.teacher_feature].shape[-1]
    adapters = AlignmentAdapters(tuple((dense_steps.adapter_name(t, f), widths[t])
                                       for t in tasks for f in u.student_features))
    adapter_params = jax.jit(adapters.init)(
        jax.random.key(train._seed(config, 13, 3), impl=config.init_rng_impl),
        {dense_steps.adapter_name(t, f): jnp.zeros((1, s_feats[f].shape[-1]), jnp.float32)
         for t in tasks for f in u.student_features})["params"]
    parameter_overview.log_parameter_overview(adapter_params, msg="[url] alignment adapters")
    spe = _steps_per_epoch(data, u.batch_size)
    num_steps = stage_steps(u, spe)
    adapter_schedule = optax.cosine_decay_schedule(float(u.adapter_learning_rate), max(num_steps, 1))
    tx = dense_steps.distill_tx(_stage_adam(u, spe),
                                optim.adam(adapter_schedule, weight_decay=u.adapter_weight_decay))
    state = dense_steps.DenseState.create({"student": variables["params"],
                                           "adapters": adapter_params},
                                          variables.get("batch_stats", {}), tx)
    state = sharding.replicate(state, mesh)
    teacher_models = {t: teachers[t][0] for t in tasks}
    teacher_vars = sharding.replicate(
        {t: {k: v for k, v in teachers[t][1].items() if k in ("params", "batch_stats")}
         for t in tasks}, mesh)
    lambdas = dict(u.lambdas)
    distill = dense_steps.DenseDistillConfig(
        lambdas={t: float(lambdas.get(t, lambdas.get("default", 1.0))) for t in tasks},
        student_features=tuple(u.student_features), teacher_feature=u.teacher_feature,
        feature_loss=u.feature_loss)
    step = dense_steps.make_dense_distill_step(student, adapters, teacher_models, distill, tasks)
    step_fn = sharding.jit_data_parallel(step, mesh, batch_argnums=(2,), num_args=3)
    state = _fit("url", step_fn, state, data, u, config, mesh, writer, workdir,
                 train._seed(config, 13, 1), teacher_vars=teacher_vars)
    return student, {"params": state.params["student"], "batch_stats": state.batch_stats}


# ----------------------------------------------------------------------------- results


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _deltas(per_task: Mapping[str, Mapping[str, float]], stl: Mapping[str, Any] | None,
            reference: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    if stl and all(t in stl for t in per_task):
        out["stl"] = float(dense_eval.delta_mtl(per_task, stl))
    if reference:
        out["reference"] = float(dense_eval.delta_mtl(per_task, reference))
    return out


def format_table(results: Mapping[str, Any]) -> str:
    """The printed NYU-v2-style table: per model (STL, the MTL method, URL) the semantic,
    depth and normal metrics and Delta_MTL."""
    tasks = results["config"]["tasks"]
    cols = [(t, key, label) for t in tasks for key, label in TABLE_METRICS[t]]
    width = 9
    groups = "".join(f"{t:^{width * len(TABLE_METRICS[t])}}" for t in tasks)
    lines = [f"Test metrics ({results['config']['dataset']})",
             f"{'':<14}{groups}{'Delta_MTL (%)':>16}",
             f"{'':<14}" + "".join(f"{label:>{width}}" for _, _, label in cols)
             + f"{'vs STL':>9}{'vs ref':>9}"]
    rows = [("STL", results.get("stl"))]
    if results.get("mtl"):
        rows.append((results["mtl"].get("method", "mtl"), results["mtl"]))
    rows.append(("URL", results.get("url")))
    for name, res in rows:
        if not res:
            continue
        cells = "".join(f"{res[t][k]:>{width}.{4 if t == 'depth' else 2}f}"
                        if t in res and k in res[t] else f"{'-':>{width}}" for t, k, _ in cols)
        delta = res.get("delta_mtl", {})
        cells += "".join(f"{delta[k]:>+9.2f}" if k in delta else f"{'-':>9}"
                         for k in ("stl", "reference"))
        lines.append(f"{name:<14}{cells}")
    lines.append("mIoU, PixAcc and <angle columns in %; depth errors in the dataset's units; "
                 "angles in degrees.")
    return "\n".join(lines)


def validate_config(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> None:
    """Refuses a dense config whose values cannot work, before anything runs."""
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} in config.stages; a dense config takes a "
                         f"subset of {STAGES}.")
    bad = [t for t in config.tasks if t not in ("semantic", "depth", "normal")]
    if bad or not config.tasks:
        raise ValueError(f"config.tasks={tuple(config.tasks)}: expected a non-empty subset of "
                         f"('semantic', 'depth', 'normal').")
    n = jax.device_count() if mesh is None else mesh.size
    for key in STAGES:
        bs = int(config[key].batch_size)
        if bs < 1 or bs % n:
            raise ValueError(f"config.{key}.batch_size={bs} must be a positive multiple of the "
                             f"{n} devices (the batch is split over them).")
    if config.eval_batch_size % n:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                         f"the {n} devices.")
    if "mtl" in config.stages and config.mtl.method not in MTL_STAGE_METHODS:
        raise ValueError(f"Unknown multi-task method config.mtl.method={config.mtl.method!r}; "
                         f"expected one of {MTL_STAGE_METHODS}.")
    if "mtl" in config.stages and config.mtl.method == "bam":
        if "stl" not in config.stages:
            raise ValueError("config.mtl.method='bam' needs stage 'stl' (BAM distils the "
                             "single-task teachers; the stage may load them from "
                             "config.teachers.checkpoints.<task>).")
        options = config.mtl.options
        options = dict(options.to_dict() if hasattr(options, "to_dict") else options)
        if options or config.mtl.space:
            raise ValueError(f"config.mtl.method='bam' takes no options and no space; found "
                             f"config.mtl.options={options}, config.mtl.space="
                             f"{config.mtl.space!r}. Clear them.")
    if "url" in config.stages and "stl" not in config.stages:
        raise ValueError("Stage 'url' needs stage 'stl' (it may load the teachers from "
                         "config.teachers.checkpoints.<task>).")


def run(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False,
        mesh: Mesh | None = None) -> dict[str, Any]:
    """Runs the stages of the dense ``config`` in ``workdir`` (resuming what is there) and
    returns the results also written to ``workdir/results.json``."""
    validate_config(config, mesh)
    train.quiet_library_logs()
    workdir = train.prepare_workdir(workdir, config, overwrite)
    mesh = sharding.make_mesh() if mesh is None else mesh
    logging.info("ur_jax (dense): %d %s device(s); workdir %s", jax.device_count(),
                 jax.default_backend(), workdir)
    data = registry.load_dense(config)
    missing = [t for t in config.tasks if t not in data.tasks]
    if missing:
        raise ValueError(f"Dataset {config.dataset!r} has no {missing} targets; it has "
                         f"{list(data.tasks)}. Set --config.tasks accordingly.")
    writer = writers.create_writer(os.path.join(workdir, "tensorboard"))
    config_json = json.loads(config.to_json_best_effort())
    writer.write_hparams(dict(train._flatten(config_json)))
    results: dict[str, Any] = {"config": config_json, "stl": {}, "mtl": {}, "url": {}}
    t_start = time.perf_counter()
    try:
        teachers = None
        if "stl" in config.stages:
            teachers, results["stl"] = train_stl(config, data, mesh, writer, workdir)
            results["stl"]["delta_mtl"] = _deltas(results["stl"], None, data.reference)
        stl = {t: results["stl"][t] for t in config.tasks if t in results["stl"]} or None
        if "mtl" in config.stages:
            model, variables = train_mtl(config, data, mesh, writer, workdir, teachers)
            res = evaluate(model, variables, data, config.tasks, config, mesh)
            res["delta_mtl"] = _deltas(res, stl, data.reference)
            res["method"] = config.mtl.method
            results["mtl"] = res
        if "url" in config.stages:
            model, variables = train_url(config, data, teachers, mesh, writer, workdir)
            res = evaluate(model, variables, data, config.tasks, config, mesh)
            res["delta_mtl"] = _deltas(res, stl, data.reference)
            results["url"] = res
        for name in STAGES:
            for t in config.tasks:
                if t in results[name]:
                    writer.write_scalars(0, {f"test/{name}/{t}/{k}": v
                                             for k, v in results[name][t].items()})
    finally:
        writer.close()
    train._write_json(os.path.join(workdir, train.RESULTS_FILE), results)
    train._write_json(os.path.join(workdir, "timing.json"),
                      {"wall_time_s": time.perf_counter() - t_start,
                       "devices": jax.device_count(), "backend": jax.default_backend()})
    table = format_table(results)
    logging.info("Results written to %s", os.path.join(workdir, train.RESULTS_FILE))
    print(table, flush=True)
    return results


__all__ = ["MTL_STAGE_METHODS", "STAGES", "evaluate", "format_table", "run", "stage_steps",
           "train_bam", "train_mtl", "train_stl", "train_url", "validate_config"]
