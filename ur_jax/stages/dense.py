"""Dense-prediction stages (``config.problem = 'dense'``):

``stl``
    one single-task network per task of ``config.tasks`` (trained, or loaded from
    ``config.teachers.checkpoints.<task>``), saved to ``workdir/teachers/<task>/model``;
``mtl``
    one shared network with a head per task, trained with the multi-task method
    ``config.mtl.method`` (:mod:`ur_jax.mtl`), or ``'bam'``: Born-Again Multi-task
    networks, task targets annealed linearly from the ``stl`` teachers' predictions to the
    ground truth (:func:`ur_jax.dense_steps.make_bam_step`);
``url``
    the universal student distilled from the frozen single-task teachers through per-task
    adapters on its bottleneck and decoder features
    (:func:`ur_jax.dense_steps.make_dense_distill_step`).

Every stage uses Adam with a step decay (x ``decay_factor`` every ``decay_every_epochs``),
for ``steps`` updates when set, else ``epochs`` epochs of the training split.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from clu import parameter_overview

from ur_jax import checkpointing, dense_steps, models, mtl, optim, sharding
from ur_jax.adapters import AlignmentAdapters
from ur_jax.run.context import RunContext
from ur_jax.run.loop import fit
from ur_jax.stages import register

#: Output channels of each task's head (semantic: the dataset's class count).
TASK_CHANNELS = {"depth": 1, "normal": 3}


def task_channels(task: str, num_classes: int) -> int:
    """Output channels of ``task``'s head."""
    return num_classes if task == "semantic" else TASK_CHANNELS[task]


#: Dense models that exist only as multi-task architectures: their single-task baseline (the
#: ``stl`` teachers unless ``config.teachers.model`` says otherwise) is this model, built
#: with the keyword arguments it shares with them (MTAN's and Cross-Stitch's papers compare
#: with single-task SegNets).
SINGLE_TASK_BASELINE = {"mtan": "segnet", "cross_stitch": "segnet"}


def dense_spec(config, data, tasks, teacher: bool = False) -> dict[str, Any]:
    """The saved-model spec of ``config.model`` with one head per task of ``tasks``;
    ``teacher=True``: of the single-task teachers' model (``config.teachers.model``, or
    :data:`SINGLE_TASK_BASELINE` of a multi-task architecture)."""
    kwargs = config.model.kwargs
    kwargs = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs)
    name = config.model.name
    if teacher:
        chosen = config.teachers.get("model", "") or SINGLE_TASK_BASELINE.get(name, name)
        if chosen != name:
            fields = getattr(models.dense_model_class(chosen), "__dataclass_fields__", {})
            kwargs = {k: v for k, v in kwargs.items() if k in fields}
        name = chosen
    return checkpointing.dense_model_spec(
        name, kwargs, [(t, task_channels(t, data.num_classes)) for t in tasks])


def check_gradient_space(config, data) -> None:
    """Refuse, before any training, a space a method fixes otherwise
    (:func:`ur_jax.dense_steps.gradient_space`) and a feature-space multi-task method on a
    model without a shared feature (MTAN, Cross-Stitch: their ``parts()`` raise the
    ValueError that says to use ``space='params'``)."""
    if "mtl" not in tuple(config.stages) or config.mtl.method == "bam":
        return
    if dense_steps.gradient_space(mtl_method(config, data), config.mtl.space) != "features":
        return
    model = checkpointing.model_from_spec(dense_spec(config, data, config.tasks),
                                          config.precision)
    if hasattr(model, "parts"):
        model.parts()


def steps_per_epoch(data, batch_size: int) -> int:
    """Updates per epoch of the training split (at least 1)."""
    return max(1, len(data.train) // int(batch_size))


def stage_steps(stage_config, steps_per_epoch_: int) -> int:
    """A stage's number of updates: ``steps`` if set (> 0), else ``epochs`` epochs."""
    if int(stage_config.steps) > 0:
        return int(stage_config.steps)
    return int(stage_config.epochs) * steps_per_epoch_


def stage_adam(ctx: RunContext, stage_config, steps_per_epoch_: int
               ) -> optax.GradientTransformation:
    """The stage's Adam (PyTorch semantics) with a step decay; the same object for equal
    hyperparameters (``ctx.cache``: it is static in the train state, so equal runs share
    one compiled step)."""
    key = ("adam", float(stage_config.learning_rate),
           int(stage_config.decay_every_epochs) * steps_per_epoch_,
           float(stage_config.decay_factor), float(stage_config.weight_decay))

    def build():
        _, lr, decay_every, factor, wd = key
        schedule = (optax.exponential_decay(lr, max(decay_every, 1), factor, staircase=True)
                    if decay_every > 0 else lr)
        return optim.adam(schedule, weight_decay=wd)

    return ctx.cache.get(key, build)


def init_model(ctx: RunContext, model, seed: int, image_shape) -> dict[str, Any]:
    """Fresh variables of ``model`` for images of ``image_shape`` (H, W, C)."""
    init = ctx.cache.get(("init", model),
                         lambda: jax.jit(lambda rng, x: model.init(rng, x, train=False)))
    rng = jax.random.key(seed, impl=ctx.config.init_rng_impl)
    return init(rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32))


def fit_dense(ctx: RunContext, name: str, step_fn, state, stage_config, seed: int,
              teacher_vars=None):
    """Trains a dense stage through :func:`ur_jax.run.loop.fit` on the training split."""
    data = ctx.data
    dataset = data.train_batches(int(stage_config.batch_size), seed=seed,
                                 augment=bool(ctx.config.augment), **ctx.process_part)
    num_steps = stage_steps(stage_config, steps_per_epoch(data, stage_config.batch_size))
    return fit(ctx, name, step_fn, state, dataset, num_steps,
               examples_per_step=int(stage_config.batch_size), teacher_vars=teacher_vars)


def train_mtl_model(ctx: RunContext, name: str, stage_config, model, tasks,
                    method: mtl.MTLMethod, space: str, seed_path) -> dict[str, Any]:
    """Trains ``model`` on ``tasks`` with ``method`` (in gradient ``space``); returns
    ``{'params', 'batch_stats', 'method'}`` (the method's own parameters last)."""
    data = ctx.data
    variables = init_model(ctx, model, ctx.seed(*seed_path), data.image_shape)
    parameter_overview.log_parameter_overview(variables["params"], msg=f"[{name}] parameters")
    spe = steps_per_epoch(data, stage_config.batch_size)
    grad_dim = (dense_steps.gradient_dim(model, variables, space, int(stage_config.batch_size),
                                         data.image_shape) if method.uses_gradients else None)
    state = dense_steps.init_mtl_state(variables, method, len(tasks),
                                       stage_adam(ctx, stage_config, spe), grad_dim=grad_dim)
    state = sharding.replicate(state, ctx.mesh)
    tasks, seed = tuple(tasks), ctx.seed(*seed_path, 2)
    step_fn = ctx.cache.get(
        ("mtl_step", model, tasks, method, seed, space, ctx.mesh),
        lambda: sharding.jit_data_parallel(dense_steps.make_mtl_step(model, tasks, method, seed,
                                                                     space),
                                           ctx.mesh, batch_argnums=(1,), num_args=2))
    state = fit_dense(ctx, name, step_fn, state, stage_config, ctx.seed(*seed_path, 1))
    return {"params": state.params["model"], "batch_stats": state.batch_stats,
            "method": state.params["method"]}


@register("dense", "stl")
def stl(ctx: RunContext) -> dict[str, tuple[Any, dict]]:
    """``{task: (model, variables)}``: one single-task network per task."""
    config, data = ctx.config, ctx.data
    out = {}
    paths = {t: p for t, p in dict(config.teachers.checkpoints).items() if p}
    uniform = mtl.get_method("uniform")
    check_gradient_space(config, data)
    for i, t in enumerate(config.tasks):
        spec = dense_spec(config, data, (t,), teacher=True)
        if t in paths:
            logging.info("[stl_%s] loading %s", t, paths[t])
            model, variables = checkpointing.load_model(paths[t], expected=spec,
                                                        precision=config.precision)
        else:
            model = checkpointing.model_from_spec(spec, config.precision)
            variables = train_mtl_model(ctx, f"stl_{t}", config.stl, model, (t,), uniform,
                                        "params", (11, i))
            variables = {k: v for k, v in variables.items() if k != "method"}
            checkpointing.save_model(os.path.join(ctx.workdir, "teachers", t, "model"), spec,
                                     jax.device_get(variables))
        out[t] = (model, variables)
    return out


def mtl_method(config, data) -> mtl.MTLMethod:
    """The :mod:`ur_jax.mtl` method of ``config.mtl`` with its options (methods with a
    ``steps_per_epoch`` option, e.g. DWA, get the stage's unless the config sets it)."""
    m = config.mtl
    options = dict(m.options.to_dict() if hasattr(m.options, "to_dict") else m.options)
    if "steps_per_epoch" in mtl.method_options(m.method):
        options.setdefault("steps_per_epoch", steps_per_epoch(data, m.batch_size))
    return mtl.get_method(m.method, **options)


def teacher_variables(teachers, tasks, mesh):
    """The frozen teachers' ``{task: {'params', 'batch_stats'}}``, replicated on ``mesh``."""
    return sharding.replicate(
        {t: {k: v for k, v in teachers[t][1].items() if k in ("params", "batch_stats")}
         for t in tasks}, mesh)


def train_bam(ctx: RunContext, teachers) -> tuple[Any, dict]:
    """``(model, variables)`` of a Born-Again Multi-task network distilled from the frozen
    ``stl`` teachers with teacher annealing over the stage's updates (Table 1's BAM)."""
    config, data = ctx.config, ctx.data
    tasks = tuple(config.tasks)
    stage = config.mtl
    model = checkpointing.model_from_spec(dense_spec(config, data, tasks), config.precision)
    variables = init_model(ctx, model, ctx.seed(12), data.image_shape)
    parameter_overview.log_parameter_overview(variables["params"], msg="[mtl] parameters")
    spe = steps_per_epoch(data, stage.batch_size)
    uniform = mtl.get_method("uniform")
    state = dense_steps.init_mtl_state(variables, uniform, len(tasks), stage_adam(ctx, stage, spe))
    state = sharding.replicate(state, ctx.mesh)
    teacher_vars = teacher_variables(teachers, tasks, ctx.mesh)
    teacher_models = tuple((t, teachers[t][0]) for t in tasks)
    num_steps = stage_steps(stage, spe)
    step_fn = ctx.cache.get(
        ("bam_step", model, teacher_models, tasks, num_steps, ctx.mesh),
        lambda: sharding.jit_data_parallel(
            dense_steps.make_bam_step(model, dict(teacher_models), tasks, num_steps), ctx.mesh,
            batch_argnums=(2,), num_args=3))
    state = fit_dense(ctx, "mtl", step_fn, state, stage, ctx.seed(12, 1), teacher_vars=teacher_vars)
    return model, {"params": state.params["model"], "batch_stats": state.batch_stats}


@register("dense", "mtl")
def mtl_stage(ctx: RunContext) -> dict[str, tuple[Any, dict]]:
    """The multi-task baseline ``config.mtl.method`` (``'bam'`` needs the ``stl`` stage)."""
    config = ctx.config
    if config.mtl.method == "bam":
        teachers = ctx.models.get("stl")
        if teachers is None:
            raise ValueError("config.mtl.method='bam' distils the single-task teachers: run "
                             "it with stage 'stl' (which may load them from "
                             "config.teachers.checkpoints.<task>).")
        pair = train_bam(ctx, teachers)
    else:
        method = mtl_method(config, ctx.data)
        space = dense_steps.gradient_space(method, config.mtl.space)
        model = checkpointing.model_from_spec(dense_spec(config, ctx.data, config.tasks),
                                              config.precision)
        pair = (model, train_mtl_model(ctx, "mtl", config.mtl, model, tuple(config.tasks), method,
                                       space, (12,)))
    save_student(ctx, "mtl", *pair)
    return {t: pair for t in config.tasks}


def save_student(ctx: RunContext, stage: str, model, variables) -> None:
    """Writes a trained multi-task network as ``<workdir>/students/<stage>/model`` (its spec
    and ``params`` / ``batch_stats``; a method's own parameters are not part of the model), for
    :func:`ur_jax.checkpointing.load_model` and ``--config.teachers``-style reuse."""
    config = ctx.config
    spec = dense_spec(config, ctx.data, config.tasks)
    kept = {k: v for k, v in variables.items() if k in ("params", "batch_stats") and v}
    checkpointing.save_model(os.path.join(ctx.workdir, "students", stage, "model"), spec,
                             jax.device_get(kept))


@register("dense", "url", requires=("stl",))
def url(ctx: RunContext) -> dict[str, tuple[Any, dict]]:
    """The universal student distilled from the frozen ``stl`` teachers."""
    config, data = ctx.config, ctx.data
    teachers = ctx.models["stl"]
    u = config.url
    tasks = tuple(config.tasks)
    student = checkpointing.model_from_spec(dense_spec(config, data, tasks), config.precision)
    variables = init_model(ctx, student, ctx.seed(13), data.image_shape)
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
        jax.random.key(ctx.seed(13, 3), impl=config.init_rng_impl),
        {dense_steps.adapter_name(t, f): jnp.zeros((1, s_feats[f].shape[-1]), jnp.float32)
         for t in tasks for f in u.student_features})["params"]
    parameter_overview.log_parameter_overview(adapter_params, msg="[url] alignment adapters")
    spe = steps_per_epoch(data, u.batch_size)
    num_steps = stage_steps(u, spe)
    adapter_schedule = optax.cosine_decay_schedule(float(u.adapter_learning_rate), max(num_steps, 1))
    tx = dense_steps.distill_tx(stage_adam(ctx, u, spe),
                                optim.adam(adapter_schedule, weight_decay=u.adapter_weight_decay))
    state = dense_steps.DenseState.create({"student": variables["params"],
                                           "adapters": adapter_params},
                                          variables.get("batch_stats", {}), tx)
    state = sharding.replicate(state, ctx.mesh)
    teacher_models = {t: teachers[t][0] for t in tasks}
    teacher_vars = teacher_variables(teachers, tasks, ctx.mesh)
    lambdas = dict(u.lambdas)
    distill = dense_steps.DenseDistillConfig(
        lambdas={t: float(lambdas.get(t, lambdas.get("default", 1.0))) for t in tasks},
        student_features=tuple(u.student_features), teacher_feature=u.teacher_feature,
        feature_loss=u.feature_loss)
    step = dense_steps.make_dense_distill_step(student, adapters, teacher_models, distill, tasks)
    step_fn = sharding.jit_data_parallel(step, ctx.mesh, batch_argnums=(2,), num_args=3)
    state = fit_dense(ctx, "url", step_fn, state, u, ctx.seed(13, 1), teacher_vars=teacher_vars)
    pair = (student, {"params": state.params["student"], "batch_stats": state.batch_stats})
    save_student(ctx, "url", *pair)
    return {t: pair for t in tasks}
