"""Pure training and evaluation steps: plain training (teachers, MDL) and distillation (URL).

Every step is a pure function of ``(state, [teachers,] batch)`` returning
``(new_state, metrics)``; make it data-parallel with :func:`jit_step` (or plain
``jax.jit`` on one device). A multi-domain batch is a dict keyed by domain::

    batch = {'omniglot': {'image': (N, H, W, C) float32, 'label': (N,) int32}, ...}

**Plain training** (:func:`make_train_step`): ``sum_d CE(logits_d, labels_d)`` for a
:class:`~ur_jax.models.MultiHeadClassifier`; with one head it trains a single-domain
teacher, with all heads the multi-domain baseline (MDL).

**Distillation** (:func:`make_distill_step`), the URL objective (paper eq. 5-6)::

    sum_d  CE(logits_d, y_d)
         + w_d(step) * lambda_f[d] * align(adapter_d(f_d), g_d)
         + w_d(step) * lambda_p[d] * kd_kl(logits_d, teacher_logits_d, T)

with ``f_d`` the student's feature on domain ``d``'s images (the whole multi-domain
batch goes through the shared backbone in one call), ``g_d`` teacher ``d``'s feature on
the same images, ``adapter_d`` a small per-teacher :class:`~ur_jax.adapters.AlignmentAdapter`
and ``w_d`` an optional annealing multiplier. Teachers are frozen variables passed as an
argument and run stacked, one call per architecture (:mod:`ur_jax.teachers`); the student
and the adapters are updated by their own optimizers (one ``optax.multi_transform``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from ur_jax import losses, sharding
from ur_jax.adapters import AlignmentAdapters
from ur_jax.models import MultiHeadClassifier
from ur_jax.optim import partitioned, top_level_labels
from ur_jax.teachers import TeacherBank

Array = Any
Batch = Mapping[str, Mapping[str, Array]]
Metrics = dict[str, Array]


@struct.dataclass
class TrainState:
    """Everything a step updates. ``tx`` is static (not a pytree leaf).

    Attributes:
      step: number of updates applied (int32 scalar).
      params: trainable parameters. For :func:`make_train_step` the model's
        ``params``; for :func:`make_distill_step` ``{'student': ..., 'adapters': ...}``.
      batch_stats: the student's BatchNorm running statistics.
      opt_state: ``tx``'s state.
      tx: the optimizer (for distillation, one optimizer per partition).
    """

    step: Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(cls, params: Any, batch_stats: Any, tx: optax.GradientTransformation) -> "TrainState":
        """A state at step 0 with ``tx`` initialised on ``params``."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                   opt_state=tx.init(params), tx=tx)

    def apply_gradients(self, grads: Any, batch_stats: Any) -> "TrainState":
        """One optimizer update; also stores the new BatchNorm statistics."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)


def distill_tx(student_tx: optax.GradientTransformation,
               adapter_tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The distillation optimizer: ``student_tx`` on ``params['student']``, ``adapter_tx`` on
    ``params['adapters']``."""
    return partitioned({"student": student_tx, "adapters": adapter_tx},
                       top_level_labels)


def _check_batch(batch: Batch, domains: tuple[str, ...]) -> None:
    if not isinstance(batch, Mapping):
        raise TypeError(f"A batch is a dict {{domain: {{'image', 'label'}}}}; found {type(batch).__name__}.")
    unknown = sorted(set(batch) - set(domains))
    if unknown:
        raise KeyError(f"Batch has domain(s) {unknown} that the model does not know; known: "
                       f"{list(domains)}.")
    for d, b in batch.items():
        if "image" not in b or "label" not in b:
            raise KeyError(f"Batch for domain {d!r} needs 'image' and 'label'; found {sorted(b)}.")


def _student_forward(model: MultiHeadClassifier, params, batch_stats, batch: Batch, train: bool,
                     num_shards: int | None):
    variables = {"params": params}
    if batch_stats is not None and jax.tree.leaves(batch_stats):
        variables["batch_stats"] = batch_stats
    images = {d: b["image"] for d, b in batch.items()}
    if train and "batch_stats" in variables:
        (feats, logits), updates = model.apply(variables, images, train=True,
                                               num_shards=num_shards, mutable=["batch_stats"])
        return feats, logits, updates["batch_stats"]
    feats, logits = model.apply(variables, images, train=train, num_shards=num_shards)
    return feats, logits, batch_stats


def _task_terms(logits: Mapping[str, Array], batch: Batch) -> tuple[Array, Metrics]:
    total = jnp.zeros((), jnp.float32)
    metrics: Metrics = {}
    for d, lg in logits.items():
        labels = batch[d]["label"]
        ce = losses.cross_entropy(lg, labels)
        total = total + ce
        metrics[f"task_loss/{d}"] = ce
        metrics[f"accuracy/{d}"] = jnp.mean((jnp.argmax(lg, -1) == labels).astype(jnp.float32))
    return total, metrics


def make_train_step(model: MultiHeadClassifier, num_shards: int | None = None
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """``train_step(state, batch) -> (state, metrics)``: task losses only.

    With a one-head model this trains a single-domain teacher; with every head the
    multi-domain baseline (MDL). ``state.params`` are ``model``'s ``params``.
    ``num_shards``: how the multi-domain batch is laid out over devices (see
    :class:`~ur_jax.models.MultiHeadClassifier`); by default the data mesh's size under
    :func:`jit_step`, which moves no image between devices.
    Metrics: ``loss``, ``task_loss/<d>``, ``accuracy/<d>`` (on the batch).
    """

    def train_step(state: TrainState, batch: Batch):
        _check_batch(batch, model.domains)

        def loss_fn(params):
            _, logits, new_stats = _student_forward(model, params, state.batch_stats, batch, True,
                                                    num_shards)
            loss, metrics = _task_terms(logits, batch)
            return loss, (metrics, new_stats)

        (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics["loss"] = loss
        return state.apply_gradients(grads, new_stats), metrics

    return train_step


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Weights of the URL objective, per domain (or task).

    Attributes:
      lambda_f: feature-alignment weight per domain (paper: 4 ImageNet / 1 others on
        Meta-Dataset; 10 / 0.1 DPed / 1 on the Decathlon).
      lambda_p: logit-distillation (``kd_kl``) weight per domain; 0 disables it.
      temperature: ``T`` of ``kd_kl`` (4 on Meta-Dataset, 8 on the Decathlon).
      feature_loss: a name of :func:`ur_jax.losses.feature_loss` (``'kernel_cka'``,
        ``'linear_cka'``, ``'normalized_l2'``, ``'cosine'``).
      anneal: optional ``{domain: schedule(step) -> multiplier}`` applied to both
        weights (e.g. :func:`ur_jax.optim.linear_anneal`); domains not listed: 1.
      student_feature, teacher_feature: which named features are aligned.
    """

    lambda_f: Mapping[str, float]
    lambda_p: Mapping[str, float]
    temperature: float = 4.0
    feature_loss: str = "kernel_cka"
    anneal: Mapping[str, Callable[[Array], Array]] | None = None
    student_feature: str = "pooled"
    teacher_feature: str = "pooled"

    def weight(self, domain: str, step: Array) -> Array:
        """The annealing multiplier of ``domain`` at ``step``."""
        if self.anneal and domain in self.anneal:
            return jnp.asarray(self.anneal[domain](step), jnp.float32)
        return jnp.ones((), jnp.float32)


def make_distill_step(student: MultiHeadClassifier, adapters: AlignmentAdapters,
                      teachers: TeacherBank, config: DistillConfig,
                      num_shards: int | None = None):
    """``distill_step(state, teachers, batch) -> (state, metrics)``: one URL update.

    Args:
      student: the universal student (one head per domain).
      adapters: one alignment adapter per domain, student width -> teacher width.
      teachers: the static :class:`~ur_jax.teachers.TeacherBank`; the step's
        ``teachers`` argument is the matching variables pytree.
      config: the objective's weights.
      num_shards: the data mesh's size (as in :func:`make_train_step`).

    ``state.params`` is ``{'student': student params, 'adapters': adapter params}``
    (see :func:`init_distill_state`). Metrics: ``loss``, and per domain
    ``task_loss/<d>``, ``align_loss/<d>``, ``kd_loss/<d>``, ``weight/<d>``,
    ``accuracy/<d>`` and ``teacher_accuracy/<d>`` (the frozen teacher's, on the batch).
    """
    align = losses.feature_loss(config.feature_loss)
    missing = sorted(set(student.domains) - set(teachers.domains))
    if missing:
        raise ValueError(f"No teacher for student domain(s) {missing}; teachers: "
                         f"{list(teachers.domains)}.")
    for name, weights in (("lambda_f", config.lambda_f), ("lambda_p", config.lambda_p)):
        absent = sorted(set(student.domains) - set(weights))
        if absent:
            raise ValueError(f"DistillConfig.{name} has no weight for domain(s) {absent}.")

    def distill_step(state: TrainState, teacher_vars: Any, batch: Batch):
        _check_batch(batch, student.domains)
        t_feats, t_logits = teachers.apply(teacher_vars, {d: b["image"] for d, b in batch.items()})

        def loss_fn(params):
            feats, logits, new_stats = _student_forward(student, params["student"],
                                                        state.batch_stats, batch, True, num_shards)
            loss, metrics = _task_terms(logits, batch)
            adapted = adapters.apply({"params": params["adapters"]},
                                     {d: feats[d][config.student_feature] for d in batch})
            for d in batch:
                w = config.weight(d, state.step)
                metrics[f"weight/{d}"] = w
                fa = align(adapted[d].astype(jnp.float32),
                           t_feats[d][config.teacher_feature].astype(jnp.float32))
                metrics[f"align_loss/{d}"] = fa
                loss = loss + w * config.lambda_f[d] * fa
                metrics[f"teacher_accuracy/{d}"] = jnp.mean(
                    (jnp.argmax(t_logits[d], -1) == batch[d]["label"]).astype(jnp.float32))
                if config.lambda_p[d]:
                    kd = losses.kd_kl(logits[d], t_logits[d], config.temperature)
                    metrics[f"kd_loss/{d}"] = kd
                    loss = loss + w * config.lambda_p[d] * kd
            return loss, (metrics, new_stats)

        (loss, (metrics, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics["loss"] = loss
        return state.apply_gradients(grads, new_stats), metrics

    return distill_step


def init_distill_state(student: MultiHeadClassifier, adapters: AlignmentAdapters, rng: Array,
                       sample_images: Mapping[str, Array], student_tx: optax.GradientTransformation,
                       adapter_tx: optax.GradientTransformation,
                       student_variables: Mapping[str, Any] | None = None,
                       feature: str = "pooled") -> TrainState:
    """A distillation state: student (fresh, or ``student_variables`` e.g. from a teacher),
    fresh adapters, and :func:`distill_tx` on top.

    ``sample_images``: ``{domain: images}`` with the training shapes (values unused);
    ``feature``: the student feature the adapters read (``DistillConfig.student_feature``).
    """
    r_student, r_adapter = jax.random.split(rng)
    if student_variables is None:
        student_variables = jax.jit(functools.partial(student.init, train=False))(
            r_student, sample_images)
    feats, _ = jax.eval_shape(lambda v: student.apply(v, sample_images, train=False),
                              student_variables)
    probe = {d: jnp.zeros((1,) + f[feature].shape[1:], jnp.float32) for d, f in feats.items()}
    adapter_params = jax.jit(adapters.init)(r_adapter, probe)["params"]
    params = {"student": student_variables["params"], "adapters": adapter_params}
    return TrainState.create(params, student_variables.get("batch_stats", {}),
                             distill_tx(student_tx, adapter_tx))


def make_eval_step(model: MultiHeadClassifier, num_shards: int | None = None
                   ) -> Callable[[Any, Any, Batch], Metrics]:
    """``eval_step(params, batch_stats, batch) -> metrics`` (inference mode).

    Metrics per domain: ``correct/<d>`` (count of correct predictions),
    ``count/<d>`` and ``loss_sum/<d>``: sums, so that batches add up exactly. A
    ``'mask'`` entry in a domain's batch (1 = real example) excludes padding.
    """

    def eval_step(params, batch_stats, batch: Batch) -> Metrics:
        _check_batch(batch, model.domains)
        _, logits, _ = _student_forward(model, params, batch_stats, batch, False, num_shards)
        out: Metrics = {}
        for d, lg in logits.items():
            labels = batch[d]["label"]
            mask = batch[d].get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
            logp = jax.nn.log_softmax(lg)
            safe = jnp.clip(labels, 0, lg.shape[-1] - 1).astype(jnp.int32)  # padding may be -1
            nll = -jnp.take_along_axis(logp, safe[:, None], -1)[:, 0]
            out[f"correct/{d}"] = jnp.sum((jnp.argmax(lg, -1) == labels) * mask)
            out[f"count/{d}"] = jnp.sum(mask)
            out[f"loss_sum/{d}"] = jnp.sum(nll * mask)
        return out

    return eval_step


def jit_step(step: Callable[..., Any], mesh: Mesh, with_teachers: bool = False) -> Callable[..., Any]:
    """Data-parallel ``jax.jit`` of a train or distill step over ``mesh``.

    ``step(state, batch)`` or, with ``with_teachers``, ``step(state, teachers, batch)``:
    state and teachers replicated, batch split on its batch axis, state donated.
    """
    if with_teachers:
        return sharding.jit_data_parallel(step, mesh, batch_argnums=(2,), num_args=3)
    return sharding.jit_data_parallel(step, mesh, batch_argnums=(1,), num_args=2)
