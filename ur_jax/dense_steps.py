"""Pure steps for multi-task dense prediction: single-task, multi-task baselines, URL, eval.

A dense batch is a dict ``{'image': (B, H, W, 3), 'semantic': (B, H, W) int32,
'depth': (B, H, W, 1), 'normal': (B, H, W, 3)}`` (only the tasks a dataset has). A dense
model (:class:`~ur_jax.models.SegNet`) maps images to ``(predictions, features)``; its
shared network and its task heads are the submodules ``'backbone'`` (images -> named
features) and ``'heads'`` (the ``'decoder'`` feature -> ``{task: prediction}``), which
``model.parts()`` returns as modules of their own.

**Multi-task training** (:func:`make_mtl_step`) combines the per-task losses or gradients
with one of the baselines of :mod:`ur_jax.mtl`, inside one jitted data-parallel step:

* loss-weighting methods (uniform, uncertainty, DWA, IMTL-L): one backward pass of the
  method's total loss;
* gradient methods (MGDA, PCGrad, GradDrop, IMTL-G/H, CAGrad, GradNorm): one forward
  pass, then the T per-task gradients by ``vmap`` over the pullback (T backward passes,
  no second forward). In ``'params'`` space they are the gradients of the shared
  parameters, flattened to ``(T, D)``; in ``'features'`` space (LibMTL's ``rep_grad``)
  they are the per-example gradients w.r.t. the shared decoder feature ``(T, B, D)``,
  combined by :meth:`ur_jax.mtl.MTLMethod.combine_features` together with the feature
  itself (GradDrop sign-corrects them by the feature and sums them over the batch: one mask
  per feature, as in the paper; the other methods see one flattened ``(T, B*D)`` vector per
  task), and the combined feature gradient is pulled back through the shared network once.
  Each head gets the (unweighted) gradient of its own task loss.

A single-task teacher is the same step with one task and the uniform method.

**Distillation** (:func:`make_dense_distill_step`), the URL objective for dense tasks::

    sum_t L_t(student_t, y_t)
        + sum_t lambda_t * sum_f normalized_l2(resize(adapter_{t,f}(s_f)), g_t)

with ``s_f`` the student's features (``'bottleneck'`` and ``'decoder'`` by default),
``adapter_{t,f}`` a bias-free 1x1 convolution, ``resize`` bilinear to the teacher's
feature size, and ``g_t`` the frozen single-task teacher ``t``'s ``'decoder'`` feature.

**Born-Again Multi-task networks** (:func:`make_bam_step`, the paper's BAM baseline): the
multi-task network trained on task targets annealed linearly from the single-task teachers'
predictions to the ground truth (:func:`ur_jax.losses.dense_bam_loss`).

**Evaluation** (:func:`make_dense_eval_step`) returns sums (confusion matrix, error
sums, angle histogram) that add up exactly over batches; :func:`ur_jax.evaluation.dense.finalize`
turns them into mIoU, errors and angles.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ur_jax import losses, mtl
from ur_jax.evaluation import dense as dense_metrics
from ur_jax.optim import partitioned, top_level_labels
from ur_jax.steps import distill_tx

Array = Any
Batch = Mapping[str, Array]
Metrics = dict[str, Array]

#: The dense model's submodules: the shared network and the task heads.
BACKBONE, HEADS = "backbone", "heads"


@struct.dataclass
class DenseState:
    """Everything a dense step updates. ``tx`` is static (not a pytree leaf).

    Attributes:
      step: number of updates applied (int32 scalar).
      params: ``{'model': ..., 'method': ...}`` for :func:`make_mtl_step` (the
        multi-task method's own trainable parameters, e.g. uncertainty log-variances);
        ``{'student': ..., 'adapters': ...}`` for :func:`make_dense_distill_step`.
      batch_stats: the model's BatchNorm statistics.
      mtl_state: the method's non-trainable state (DWA's loss history, GradNorm's
        initial losses); ``{}`` when it has none.
      opt_state: ``tx``'s state.
      tx: the optimizer.
    """

    step: Array
    params: Any
    batch_stats: Any
    mtl_state: Any
    opt_state: optax.OptState
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, params: Any, batch_stats: Any, tx: optax.GradientTransformation,
               mtl_state: Any = None) -> DenseState:
        """A state at step 0 with ``tx`` initialised on ``params``."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                   mtl_state={} if mtl_state is None else mtl_state,
                   opt_state=tx.init(params), tx=tx)

    def apply_gradients(self, grads: Any, batch_stats: Any, mtl_state: Any) -> DenseState:
        """One optimizer update; also stores the new statistics and method state."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, mtl_state=mtl_state, opt_state=opt_state)


def mtl_tx(model_tx: optax.GradientTransformation,
           method_tx: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """The multi-task optimizer: ``model_tx`` on ``params['model']`` and ``method_tx``
    (default: the same) on the method's parameters ``params['method']``."""
    return partitioned({"model": model_tx, "method": method_tx or model_tx},
                       top_level_labels)


def check_batch(batch: Batch, tasks: Sequence[str]) -> None:
    """Refuses a batch without an image or without a target for one of ``tasks``."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"A dense batch is a dict {{'image', <task>...}}; found "
                        f"{type(batch).__name__}.")
    missing = [k for k in ("image", *tasks) if k not in batch]
    if missing:
        raise KeyError(f"The dense batch has no {missing}; it has {sorted(batch)}. Tasks "
                       f"{list(tasks)} need their targets.")


def task_losses(predictions: Mapping[str, Array], batch: Batch, tasks: Sequence[str]) -> Array:
    """The ``(T,)`` per-task losses (:func:`ur_jax.losses.dense_task_loss`), in ``tasks`` order."""
    return jnp.stack([losses.dense_task_loss(t, predictions[t], batch[t]) for t in tasks])


def split_heads(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(shared, heads)``: a dense model's params without / with only its task heads."""
    shared = {k: v for k, v in params.items() if k != HEADS}
    heads = {k: v for k, v in params.items() if k == HEADS}
    return shared, heads


def _flatten_rows(tree: Any, rows: int) -> tuple[Array, Callable[[Array], Any]]:
    """``(rows, D)`` from a tree whose leaves have a leading ``rows`` axis, and the inverse
    map from a ``(D,)`` vector to a tree of the leaves' trailing shapes."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [leaf.shape[1:] for leaf in leaves]
    flat = jnp.concatenate([leaf.reshape(rows, -1).astype(jnp.float32) for leaf in leaves], axis=1)

    def unflatten(vector: Array) -> Any:
        out, start = [], 0
        for leaf, shape in zip(leaves, shapes):
            size = math.prod(shape)
            out.append(vector[start:start + size].reshape(shape).astype(leaf.dtype))
            start += size
        return jax.tree.unflatten(treedef, out)

    return flat, unflatten


def _apply(model, params, batch_stats, x, train: bool):
    """``(model output, new batch_stats)``; statistics update only when training."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train and batch_stats:
        out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return out, updates["batch_stats"]
    return model.apply(variables, x, train=train), batch_stats


def _loss_metrics(tasks: Sequence[str], task_loss: Array, weights: Array) -> Metrics:
    out: Metrics = {}
    for i, t in enumerate(tasks):
        out[f"task_loss/{t}"] = task_loss[i]
        out[f"weight/{t}"] = weights[i]
    return out


def gradient_space(method: mtl.MTLMethod, space: str | None = None) -> str:
    """The gradient space a step uses for ``method``: ``space`` if given, else
    ``method.space``.

    Raises:
      ValueError: an unknown space, or a space other than the one a method fixes (a
        ``space`` field it does not take as an option: DB-MTL, MoCo, MoDo, SDMGrad keep
        moving averages or previous-batch gradients that mean nothing for per-example
        feature gradients).
    """
    chosen = space or method.space
    if chosen not in ("params", "features"):
        raise ValueError(f"Unknown gradient space {chosen!r}; expected 'params' or 'features'.")
    fields = getattr(method, "__dataclass_fields__", {})
    if chosen != method.space and "space" in fields and not fields["space"].init:
        raise ValueError(f"Method {method.name!r} works on {method.space!r} gradients only; "
                         f"got space={chosen!r} (e.g. --config.mtl.space={chosen}): drop it.")
    return chosen


def make_mtl_step(model, tasks: Sequence[str], method: mtl.MTLMethod, seed: int = 0,
                  space: str | None = None) -> Callable[[DenseState, Batch], tuple[DenseState, Metrics]]:
    """``step(state, batch) -> (state, metrics)``: one multi-task (or single-task) update.

    Args:
      model: a dense model with heads for (at least) ``tasks``.
      tasks: the task names trained, in the order the method sees them.
      method: a :class:`ur_jax.mtl.MTLMethod` (``mtl.get_method('uniform')`` for a teacher).
      seed: seeds the methods that draw random numbers (PCGrad's order, GradDrop's mask,
        RLW's weights);
        the numbers of step ``k`` are a function of ``(seed, k)``, so resuming is exact.
      space: ``'params'`` or ``'features'`` for gradient methods (default:
        ``method.space``).

    ``state.params`` is ``{'model': ..., 'method': ...}`` (see :func:`init_mtl_state`).
    Metrics: ``loss`` (the sum of the task losses), ``task_loss/<t>``, ``weight/<t>``
    (the effective task weights) and the method's ``objective`` for loss methods.
    """
    tasks = tuple(tasks)
    space = gradient_space(method, space)
    num_tasks = len(tasks)
    eye = jnp.eye(num_tasks, dtype=jnp.float32)
    # Methods written before update_state took the per-task gradients keep working.
    state_takes_grads = "grads" in inspect.signature(method.update_state).parameters

    def loss_method_step(state: DenseState, batch: Batch, rng):
        def objective(params):
            (preds, _), stats = _apply(model, params["model"], state.batch_stats, batch["image"],
                                       True)
            per_task = task_losses(preds, batch, tasks)
            total, weights = method.loss(per_task, params["method"], state.mtl_state, rng)
            return total, (per_task, weights, stats)

        (total, (per_task, weights, stats)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        metrics = _loss_metrics(tasks, per_task, weights)
        metrics["objective"] = total
        return grads, per_task, stats, metrics

    def param_space_grads(state: DenseState, batch: Batch, rng):
        def per_task_losses(model_params):
            (preds, _), stats = _apply(model, model_params, state.batch_stats, batch["image"], True)
            return task_losses(preds, batch, tasks), stats

        per_task, pullback, stats = jax.vjp(per_task_losses, state.params["model"], has_aux=True)
        (task_grads,) = jax.vmap(pullback)(eye)
        shared, head_grads = split_heads(task_grads)
        matrix, unflatten = _flatten_rows(shared, num_tasks)
        combined, method_grads, weights = method.combine(
            matrix, per_task, state.params["method"], state.mtl_state, rng)
        model_grads = {**unflatten(combined), **jax.tree.map(lambda g: g.sum(0), head_grads)}
        return model_grads, method_grads, per_task, weights, stats, matrix

    def feature_space_grads(state: DenseState, batch: Batch, rng):
        backbone, heads = model.parts()
        params = state.params["model"]
        if set(state.batch_stats or {}) - {BACKBONE}:
            raise ValueError(f"Feature-space gradients need task heads without BatchNorm; this "
                             f"model's heads have statistics ({sorted(state.batch_stats)}). Use "
                             f"space='params'.")
        stats_in = state.batch_stats.get(BACKBONE, {}) if state.batch_stats else {}

        def encode(backbone_params):
            feats, stats = _apply(backbone, backbone_params, stats_in, batch["image"], True)
            return feats["decoder"], stats

        z, pull_shared, stats = jax.vjp(encode, params[BACKBONE], has_aux=True)

        def head_losses(head_params, z):
            return task_losses(heads.apply({"params": head_params}, z), batch, tasks)

        per_task, pull_heads = jax.vjp(head_losses, params[HEADS], z)
        head_grads, z_grads = jax.vmap(pull_heads)(eye)
        batch_size = z.shape[0]
        if hasattr(method, "combine_features"):
            combined, method_grads, weights = method.combine_features(
                z_grads.reshape(num_tasks, batch_size, -1), z.reshape(batch_size, -1),
                per_task, state.params["method"], state.mtl_state, rng)
        else:  # a duck-typed method with combine() only: one flattened vector per task
            combined, method_grads, weights = method.combine(
                z_grads.reshape(num_tasks, -1), per_task, state.params["method"],
                state.mtl_state, rng)
        (backbone_grads,) = pull_shared(combined.reshape(z.shape).astype(z.dtype))
        model_grads = {BACKBONE: backbone_grads, HEADS: jax.tree.map(lambda g: g.sum(0), head_grads)}
        new_stats = {**state.batch_stats, BACKBONE: stats} if state.batch_stats else {}
        return (model_grads, method_grads, per_task, weights, new_stats,
                z_grads.reshape(num_tasks, -1))

    def step(state: DenseState, batch: Batch):
        check_batch(batch, tasks)
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        if method.uses_gradients:
            fn = param_space_grads if space == "params" else feature_space_grads
            model_grads, method_grads, per_task, weights, stats, matrix = fn(state, batch, rng)
            grads = {"model": model_grads, "method": method_grads}
            metrics = _loss_metrics(tasks, per_task, weights)
            new_mtl_state = (method.update_state(state.mtl_state, per_task, matrix)
                             if state_takes_grads else
                             method.update_state(state.mtl_state, per_task))
        else:
            grads, per_task, stats, metrics = loss_method_step(state, batch, rng)
            new_mtl_state = method.update_state(state.mtl_state, per_task)
        metrics["loss"] = jnp.sum(per_task)
        return state.apply_gradients(grads, stats, new_mtl_state), metrics

    return step


def gradient_dim(model, model_variables: Mapping[str, Any], space: str = "params",
                 batch_size: int | None = None, image_shape: Sequence[int] | None = None) -> int:
    """``D`` of the ``(T, D)`` per-task gradients :func:`make_mtl_step` gives its method.

    ``space='params'``: the number of shared parameters of ``model_variables['params']``
    (every parameter outside the task heads; ``model`` is not used). ``space='features'``:
    ``batch_size`` (the global batch) times the size of one example's shared ``'decoder'``
    feature of ``model`` on ``image_shape`` (``(H, W, C)``) images.

    Raises:
      ValueError: an unknown space, or ``features`` without ``batch_size`` / ``image_shape``.
    """
    if space == "params":
        shared, _ = split_heads(model_variables["params"])
        return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shared)))
    if space != "features":
        raise ValueError(f"Unknown gradient space {space!r}; expected 'params' or 'features'.")
    if batch_size is None or image_shape is None:
        raise ValueError("gradient_dim(space='features') needs batch_size and image_shape.")
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)[1], model_variables, x)
    return int(batch_size) * math.prod(feats["decoder"].shape[1:])


def init_mtl_state(model_variables: Mapping[str, Any], method: mtl.MTLMethod, num_tasks: int,
                   model_tx: optax.GradientTransformation,
                   method_tx: optax.GradientTransformation | None = None,
                   grad_dim: int | None = None) -> DenseState:
    """A :func:`make_mtl_step` state from initialised model variables.

    ``grad_dim`` (``D`` of the per-task gradient rows, :func:`gradient_dim`) goes to
    ``method.init_state`` for methods whose state follows the gradients (DB-MTL, ExcessMTL,
    MoCo, ...); by default it is the shared-parameter count when ``method.space`` is
    ``'params'`` (pass it for ``space='features'``)."""
    params = {"model": model_variables["params"], "method": method.init_params(num_tasks)}
    if "grad_dim" in inspect.signature(method.init_state).parameters:
        if grad_dim is None and getattr(method, "space", "params") == "params":
            grad_dim = gradient_dim(None, model_variables)
        mtl_state = method.init_state(num_tasks, grad_dim=grad_dim)
    else:  # a duck-typed method written before init_state took grad_dim
        mtl_state = method.init_state(num_tasks)
    return DenseState.create(params, model_variables.get("batch_stats", {}),
                             mtl_tx(model_tx, method_tx), mtl_state)


# ----------------------------------------------------------------------------- distillation


@dataclasses.dataclass(frozen=True)
class DenseDistillConfig:
    """Weights and features of the dense URL objective.

    Attributes:
      lambdas: distillation weight per task (paper, NYU-v2: semantic 1, depth 1, normal 2).
      student_features: the student features each task's adapters read (paper: the
        encoder bottleneck and the decoder output).
      teacher_feature: the teacher feature they are aligned to (its decoder output).
      feature_loss: a name of :func:`ur_jax.losses.feature_loss` (``'normalized_l2'``).
      resize_method: :func:`jax.image.resize` method bringing adapted student features to
        the teacher feature's size.
    """

    lambdas: Mapping[str, float]
    student_features: tuple[str, ...] = ("bottleneck", "decoder")
    teacher_feature: str = "decoder"
    feature_loss: str = "normalized_l2"
    resize_method: str = "bilinear"


def adapter_name(task: str, feature: str) -> str:
    """The :class:`~ur_jax.adapters.AlignmentAdapters` entry of ``(task, student feature)``."""
    return f"{task}_{feature}"


def make_dense_distill_step(student, adapters, teachers: Mapping[str, Any],
                            config: DenseDistillConfig, tasks: Sequence[str]):
    """``step(state, teacher_vars, batch) -> (state, metrics)``: one dense URL update.

    Args:
      student: the multi-task dense model.
      adapters: an :class:`~ur_jax.adapters.AlignmentAdapters` with one entry
        :func:`adapter_name` ``(t, f)`` per task and student feature, mapping to the
        teacher's width.
      teachers: ``{task: teacher model}`` (static); the step's ``teacher_vars`` is
        ``{task: variables}``, frozen (never differentiated).
      config: the objective's weights.
      tasks: the tasks trained.

    ``state.params`` is ``{'student': ..., 'adapters': ...}``. Task losses are uniform
    (paper). Metrics: ``loss`` (the sum of task losses), ``objective``, and per task
    ``task_loss/<t>`` and ``align_loss/<t>/<feature>``.
    """
    tasks = tuple(tasks)
    align = losses.feature_loss(config.feature_loss)
    missing = [t for t in tasks if t not in teachers or t not in config.lambdas]
    if missing:
        raise ValueError(f"Task(s) {missing} have no teacher or no distillation weight; "
                         f"teachers: {sorted(teachers)}, lambdas: {dict(config.lambdas)}.")

    def step(state: DenseState, teacher_vars: Mapping[str, Any], batch: Batch):
        check_batch(batch, tasks)
        targets = {}
        for t in tasks:
            _, t_feats = teachers[t].apply(teacher_vars[t], batch["image"], train=False)
            targets[t] = jax.lax.stop_gradient(t_feats[config.teacher_feature].astype(jnp.float32))

        def objective(params):
            (preds, feats), stats = _apply(student, params["student"], state.batch_stats,
                                           batch["image"], True)
            per_task = task_losses(preds, batch, tasks)
            names = {adapter_name(t, f): feats[f] for t in tasks for f in config.student_features}
            adapted = adapters.apply({"params": params["adapters"]}, names)
            total = jnp.sum(per_task)
            metrics: Metrics = {}
            for t in tasks:
                target = targets[t]
                for f in config.student_features:
                    a = adapted[adapter_name(t, f)].astype(jnp.float32)
                    if a.shape[1:3] != target.shape[1:3]:
                        a = jax.image.resize(a, a.shape[:1] + target.shape[1:3] + a.shape[3:],
                                             method=config.resize_method)
                    term = align(a, target)
                    metrics[f"align_loss/{t}/{f}"] = term
                    total = total + config.lambdas[t] * term
            return total, (per_task, stats, metrics)

        (total, (per_task, stats, metrics)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        for i, t in enumerate(tasks):
            metrics[f"task_loss/{t}"] = per_task[i]
        metrics["loss"] = jnp.sum(per_task)
        metrics["objective"] = total
        return state.apply_gradients(grads, stats, state.mtl_state), metrics

    return step


# ----------------------------------------------------------------------------- BAM


def bam_lambda(step: Array, num_steps: int) -> Array:
    """Teacher annealing weight of the ground truth at update ``step`` (0-based) of
    ``num_steps``: ``lambda = clip(step / num_steps, 0, 1)``, float32, going linearly from 0
    (the first update: pure teacher targets) towards 1 (pure ground truth)."""
    return jnp.clip(jnp.asarray(step, jnp.float32) / float(max(int(num_steps), 1)), 0.0, 1.0)


def make_bam_step(model, teachers: Mapping[str, Any], tasks: Sequence[str], num_steps: int):
    """``step(state, teacher_vars, batch) -> (state, metrics)``: one update of a Born-Again
    Multi-task network (BAM; Clark et al., ACL 2019), the BAM baseline of the paper's
    Table 1.

    The multi-task ``model`` is trained on the uniform sum over tasks of
    :func:`ur_jax.losses.dense_bam_loss`: each task's target moves linearly from the
    frozen single-task teacher's prediction (``lambda = 0`` at the first update) to the
    ground truth (``lambda = step / num_steps`` -> 1, :func:`bam_lambda`; teacher
    annealing). Teachers run in inference mode on the same (augmented) images and are never
    differentiated.

    Args:
      model: the multi-task dense model.
      teachers: ``{task: single-task teacher model}`` (static); the step's
        ``teacher_vars`` is ``{task: variables}``.
      tasks: the tasks trained.
      num_steps: the number of updates of the run (``lambda`` reaches 1 there).

    ``state`` is a :func:`init_mtl_state` state with the uniform method (``params`` =
    ``{'model': ..., 'method': {}}``). Metrics: ``loss`` (the sum of the ground-truth task
    losses), ``objective`` (the BAM loss), ``bam_lambda``, ``task_loss/<t>`` and
    ``bam_loss/<t>``.
    """
    tasks = tuple(tasks)
    missing = [t for t in tasks if t not in teachers]
    if missing:
        raise ValueError(f"BAM needs a single-task teacher per task; task(s) {missing} have "
                         f"none (teachers: {sorted(teachers)}).")

    def step(state: DenseState, teacher_vars: Mapping[str, Any], batch: Batch):
        check_batch(batch, tasks)
        lam = bam_lambda(state.step, num_steps)
        targets = {}
        for t in tasks:
            t_preds, _ = teachers[t].apply(teacher_vars[t], batch["image"], train=False)
            targets[t] = jax.lax.stop_gradient(t_preds[t].astype(jnp.float32))

        def objective(params):
            (preds, _), stats = _apply(model, params["model"], state.batch_stats,
                                       batch["image"], True)
            per_task = jnp.stack([losses.dense_bam_loss(t, preds[t], batch[t], targets[t], lam)
                                  for t in tasks])
            return jnp.sum(per_task), (per_task, preds, stats)

        (total, (per_task, preds, stats)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        gt_losses = jax.lax.stop_gradient(task_losses(preds, batch, tasks))
        metrics: Metrics = {"objective": total, "loss": jnp.sum(gt_losses), "bam_lambda": lam}
        for i, t in enumerate(tasks):
            metrics[f"task_loss/{t}"] = gt_losses[i]
            metrics[f"bam_loss/{t}"] = per_task[i]
        return state.apply_gradients(grads, stats, state.mtl_state), metrics

    return step


# ----------------------------------------------------------------------------- evaluation


def make_dense_eval_step(model, tasks: Sequence[str], num_classes: int | None = None):
    """``eval_step(params, batch_stats, batch) -> stats``: per-task metric sums on a batch.

    ``stats`` is ``{task: {...}}`` of :func:`ur_jax.evaluation.dense.task_stats`, sums
    that add up exactly over batches (``jax.tree.map(jnp.add, ...)``); a ``'mask'``
    ``(B,)`` in the batch excludes padded examples. ``num_classes``: the semantic
    task's class count.
    """
    tasks = tuple(tasks)

    def eval_step(params, batch_stats, batch: Batch):
        check_batch(batch, tasks)
        (preds, _), _ = _apply(model, params, batch_stats, batch["image"], False)
        mask = batch.get("mask")
        return {t: dense_metrics.task_stats(t, preds[t], batch[t],
                                            num_classes=num_classes if t == "semantic" else None,
                                            mask=mask)
                for t in tasks}

    return eval_step
