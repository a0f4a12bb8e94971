"""The ``url`` classification stage: the universal student distilled from the frozen
teachers through per-teacher alignment adapters (:func:`ur_jax.steps.make_distill_step`)."""

from __future__ import annotations

import jax
from clu import parameter_overview

from ur_jax import optim, sharding, steps
from ur_jax.adapters import AlignmentAdapters
from ur_jax.data import pipeline
from ur_jax.models import MultiHeadClassifier
from ur_jax.run.context import RunContext
from ur_jax.run.loop import fit
from ur_jax.run.selection import selection
from ur_jax.stages import register
from ur_jax.stages.common import (
    adapter_learning_rate_schedule,
    batch_size,
    sample_images,
    stage_select_every,
    stage_sgd,
)
from ur_jax.stages.supervised import save_student, student, student_init, student_spec
from ur_jax.teachers import stack_teachers


def distill_config(config, domains) -> steps.DistillConfig:
    """The distillation weights of ``config.url`` for ``domains``: ``lambda_f`` /
    ``lambda_p`` (per-domain tables with an optional ``'default'``), the temperature, the
    feature loss, and with ``anneal`` the linear annealing of each domain's weights over
    ``anneal_steps`` (default ``steps``) times ``anneal_k[domain]``, in ``anneal_every``
    steps (the Meta-Dataset recipe)."""
    u = config.url
    anneal = None
    if u.anneal:
        every = int(u.anneal_every)
        k = u.anneal_k.to_dict() if hasattr(u.anneal_k, "to_dict") else dict(u.anneal_k)
        anneal = {d: optim.linear_anneal(
            int(round((u.anneal_steps or u.steps) * float(k.get(d, k.get("default", 1.0))))),
            every=every) for d in domains}

    def weights(table):
        table = dict(table)
        return {d: float(table.get(d, table.get("default", 1.0))) for d in domains}

    return steps.DistillConfig(lambda_f=weights(u.lambda_f), lambda_p=weights(u.lambda_p),
                               temperature=u.temperature, feature_loss=u.feature_loss,
                               anneal=anneal)


@register("classification", "url", requires=("teachers",))
def url(ctx: RunContext) -> dict[str, tuple[MultiHeadClassifier, dict]]:
    """The universal student, saved to ``workdir/students/url/model``."""
    config, data = ctx.config, ctx.data
    teachers = ctx.models["teachers"]
    u = config.url
    domains = tuple(config.domains)
    model = student(config, data)
    batch_sizes = {d: batch_size(u, d) for d in domains}
    settings = data.inputs({d: d for d in domains})
    bank, teacher_vars = stack_teachers(
        teachers, image_shapes={d: (batch_sizes[d],) + data.shape(d) for d in domains},
        mode=config.teacher_mode)
    adapters = AlignmentAdapters(tuple((d, teachers[d][0].backbone.feature_dim) for d in domains),
                                 kind=u.adapter)
    state = steps.init_distill_state(
        model, adapters, jax.random.key(ctx.seed(3), impl=config.init_rng_impl),
        sample_images(settings["shapes"]), stage_sgd(ctx, u),
        optim.adam(adapter_learning_rate_schedule(u), weight_decay=u.adapter_weight_decay),
        student_variables=student_init(ctx, "url", model, (3, 2)))
    parameter_overview.log_parameter_overview(state.params["adapters"],
                                              msg="[url] alignment adapters")
    state = sharding.replicate(state, ctx.mesh)
    teacher_vars = sharding.replicate(teacher_vars, ctx.mesh)
    step_fn = steps.jit_step(steps.make_distill_step(model, adapters, bank,
                                                     distill_config(config, domains)),
                             ctx.mesh, with_teachers=True)
    dataset = pipeline.train_batches({d: data.train[d] for d in domains}, batch_sizes,
                                     seed=ctx.seed(3, 1),
                                     augment=settings.get("augment", config.augment),
                                     normalize=settings["normalize"], **ctx.process_part)
    every = stage_select_every(config, u)
    select = selection(ctx, "url", student_spec(config, data), model, {d: d for d in domains},
                       lambda st: {"params": st.params["student"], "batch_stats": st.batch_stats},
                       every)
    state = fit(ctx, "url", step_fn, state, dataset, u.steps,
                examples_per_step=sum(batch_sizes.values()), teacher_vars=teacher_vars,
                validate=select, validate_every=every)
    if select is not None:
        variables = select.load()
    else:
        variables = {"params": state.params["student"], "batch_stats": state.batch_stats}
    return save_student(ctx, "url", (model, variables))
