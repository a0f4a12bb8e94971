"""Supervised classification stages: ``teachers`` (one network per domain, SDL) and
``mdl`` (the multi-domain baseline: a shared backbone, one head per domain, the task losses
only, with the student's budget)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from clu import parameter_overview

from ur_jax import checkpointing, sharding, steps
from ur_jax.data import pipeline
from ur_jax.models import MultiHeadClassifier, from_single_domain
from ur_jax.run.context import RunContext
from ur_jax.run.loop import fit
from ur_jax.run.selection import selection
from ur_jax.stages import register
from ur_jax.stages.common import (
    TEACHER_HEAD,
    backbone_kwargs,
    batch_size,
    classifier_spec,
    init_model,
    stage_select_every,
    stage_sgd,
    stage_steps,
    train_step_fn,
)


def train_classifier(ctx: RunContext, name: str, stage_config, model, names: Mapping[str, str],
                     batch_sizes: Mapping[str, int], seed_path: tuple[int, ...], spec,
                     init: Mapping[str, Any] | None = None, lr_domain: str | None = None,
                     log_parameters: bool = True) -> dict[str, Any]:
    """Trains ``model`` with the task losses on ``names`` (``{model domain: data domain}``),
    ``batch_sizes[model domain]`` images of each per step, starting from ``init`` (else
    fresh variables seeded by ``seed_path``); returns its variables (the
    validation-selected ones when selection is on). ``lr_domain``: the domain whose
    per-domain stage values (learning rate, steps, ...) apply."""
    settings = ctx.data.inputs(names)
    variables = init_model(ctx, model, ctx.seed(*seed_path), settings["shapes"])
    if init is not None:
        variables = jax.tree.map(jnp.asarray, init)
    if log_parameters:
        parameter_overview.log_parameter_overview(variables["params"], msg=f"[{name}] parameters")
    state = steps.TrainState.create(variables["params"], variables.get("batch_stats", {}),
                                    stage_sgd(ctx, stage_config, lr_domain))
    state = sharding.replicate(state, ctx.mesh)
    dataset = pipeline.train_batches({m: ctx.data.train[d] for m, d in names.items()},
                                     batch_sizes, seed=ctx.seed(*seed_path, 1),
                                     augment=settings.get("augment", ctx.config.augment),
                                     normalize=settings["normalize"], **ctx.process_part)
    every = stage_select_every(ctx.config, stage_config, lr_domain)
    select = selection(ctx, name, spec, model, names,
                       lambda st: {"params": st.params, "batch_stats": st.batch_stats}, every)
    state = fit(ctx, name, train_step_fn(ctx, model), state, dataset,
                stage_steps(stage_config, lr_domain), examples_per_step=sum(batch_sizes.values()),
                validate=select, validate_every=every)
    if select is not None:
        return select.load()
    return {"params": state.params, "batch_stats": state.batch_stats}


def rename_head(variables: Mapping[str, Any], old: str, new: str) -> dict[str, Any]:
    """``variables`` with the head ``old`` renamed ``new``."""
    out = {c: dict(v) for c, v in variables.items()}
    heads = dict(out["params"]["heads"])
    heads[new] = heads.pop(old)
    out["params"]["heads"] = heads
    return out


def finetune_init(source: Mapping[str, Any], fresh: Mapping[str, Any]) -> dict[str, Any]:
    """A teacher's start when fine-tuning: ``source``'s backbone with ``fresh``'s head."""
    return {c: {**dict(fresh[c]), "backbone": source[c]["backbone"]} if "backbone" in source.get(c, {})
            else fresh[c] for c in fresh}


@register("classification", "teachers")
def teachers(ctx: RunContext) -> dict[str, tuple[MultiHeadClassifier, dict]]:
    """One single-domain network per training domain: ``{domain: (model, variables)}``,
    trained alone (saved to ``workdir/teachers/<domain>/model``) or loaded from the saved
    model ``config.teachers.checkpoints.<domain>`` points to. With
    ``config.teachers.finetune_from`` naming a domain (the Decathlon's ``'imagenet12'``),
    that teacher is trained first and every other one starts from its backbone (a fresh
    head), with its own learning rate and weight decay (``learning_rate`` / ``weight_decay``
    may map domains to values)."""
    config, data = ctx.config, ctx.data
    out = {}
    paths = {d: p for d, p in dict(config.teachers.checkpoints).items() if p}
    source = config.teachers.finetune_from
    order = sorted(config.domains, key=lambda d: d != source)  # the source teacher first
    logged = False
    for d in order:
        i = list(config.domains).index(d)
        spec = classifier_spec(config, {d: data.num_classes[d]})
        if d in paths:
            logging.info("[teacher_%s] loading %s", d, paths[d])
            out[d] = checkpointing.load_model(paths[d], expected=spec,
                                              precision=config.precision)
            continue
        generic_spec = classifier_spec(config, {TEACHER_HEAD: data.num_classes[d]})
        generic = checkpointing.model_from_spec(generic_spec, config.precision)
        init = None
        if source and d != source:
            fresh = init_model(ctx, generic, ctx.seed(1, i), {TEACHER_HEAD: data.shape(d)})
            init = finetune_init(out[source][1], fresh)
            logging.info("[teacher_%s] fine-tuning from the %s teacher", d, source)
        variables = train_classifier(ctx, f"teacher_{d}", config.teachers, generic,
                                     {TEACHER_HEAD: d},
                                     {TEACHER_HEAD: batch_size(config.teachers, d)}, (1, i),
                                     generic_spec, init=init, lr_domain=d,
                                     log_parameters=not logged)
        logged = True
        # A host copy: without model selection these are the final train state's arrays, and
        # a later stage started from them (fine-tuning, MDL / URL init) would donate them.
        variables = jax.device_get(rename_head(variables, TEACHER_HEAD, d))
        checkpointing.save_model(os.path.join(ctx.workdir, "teachers", d, "model"), spec, variables)
        out[d] = (checkpointing.model_from_spec(spec, config.precision), variables)
    return {d: out[d] for d in config.domains}


# ----------------------------------------------------------------------------- students


def student_input_sizes(config, data) -> dict[str, int]:
    """``{domain: S}``: the training domains whose images the multi-domain students (MDL,
    URL) resize to ``S x S`` (:attr:`MultiHeadClassifier.input_sizes`), from
    ``config.model.student_input_size`` (``S``; 0: none). Only when the domains'
    image sizes differ, and only the domains not already ``S x S``: on the Visual Decathlon,
    with imagenet12's 72 px crops among the domains, every 64 px crop becomes 72 x 72, as in
    the authors' ``trainmdl`` / ``trainurl`` / ``urltest`` (VICO-UoE/UniversalRepresentations,
    ``VisualDecathlon/utils_pytorch.py``: ``kornia.augmentation.Resize((72, 72))`` when
    ``'imagenet12'`` is trained); teachers keep their native crops.

    Raises:
      ValueError: for a negative or non-integer ``student_input_size``.
    """
    size = config.model.student_input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"config.model.student_input_size={size!r}; expected an integer side "
                         f"in pixels (72 on the Decathlon) or 0 for the native image sizes.")
    shapes = {d: tuple(data.shape(d)[:2]) for d in config.domains}
    if not size or len(set(shapes.values())) < 2:
        return {}
    return {d: size for d, hw in shapes.items() if hw != (size, size)}


def student_kwargs(config) -> dict[str, Any]:
    """The students' backbone kwargs: the teachers' plus ``config.model.student_kwargs``,
    and per-domain parts for every training domain when ``config.model.per_domain``."""
    kwargs = backbone_kwargs(config)
    extra = config.model.student_kwargs
    kwargs.update(extra.to_dict() if hasattr(extra, "to_dict") else dict(extra))
    if config.model.per_domain:
        kwargs["domains"] = tuple(config.domains)
    return kwargs


def student_spec(config, data) -> dict[str, Any]:
    """The saved-model spec of the MDL / URL student (one head per training domain)."""
    return checkpointing.model_spec(config.model.backbone, student_kwargs(config),
                                    {d: data.num_classes[d] for d in config.domains},
                                    input_sizes=student_input_sizes(config, data))


def student(config, data) -> MultiHeadClassifier:
    """The MDL / URL student model of ``config`` on ``data``."""
    return checkpointing.model_from_spec(student_spec(config, data), config.precision)


def student_init(ctx: RunContext, stage: str, model, seed_path) -> dict[str, Any]:
    """A student's first variables: fresh, or from the teacher ``config.<stage>.init_from``
    names (its backbone for every domain, per-domain BatchNorm included, and its head).

    Raises:
      ValueError: ``init_from`` names no teacher of this run.
    """
    config = ctx.config
    shapes = {d: ctx.data.shape(d) for d in config.domains}
    variables = init_model(ctx, model, ctx.seed(*seed_path), shapes)
    source = config[stage].init_from
    if not source:
        return variables
    teachers_ = ctx.models.get("teachers")
    if not teachers_ or source not in teachers_:
        raise ValueError(f"config.{stage}.init_from={source!r} names no teacher of this run; "
                         f"teachers: {sorted(teachers_ or {})}.")
    variables, copied = from_single_domain(variables, teachers_[source][1], config.domains,
                                           heads={source: source})
    logging.info("[%s] initialised %d arrays from the %s teacher", stage, copied, source)
    return variables


def save_student(ctx: RunContext, stage: str, model_and_variables) -> dict[str, tuple]:
    """Saves a student to ``workdir/students/<stage>/model`` and returns it as ``{domain:
    (model, variables)}`` for the evaluators."""
    checkpointing.save_model(os.path.join(ctx.workdir, "students", stage, "model"),
                             student_spec(ctx.config, ctx.data),
                             jax.device_get(model_and_variables[1]))
    return {d: model_and_variables for d in ctx.config.domains}


@register("classification", "mdl")
def mdl(ctx: RunContext) -> dict[str, tuple[MultiHeadClassifier, dict]]:
    """The multi-domain baseline, saved to ``workdir/students/mdl/model``."""
    config = ctx.config
    model = student(config, ctx.data)
    init = student_init(ctx, "mdl", model, (2, 2))
    variables = train_classifier(ctx, "mdl", config.mdl, model, {d: d for d in config.domains},
                                 {d: batch_size(config.mdl, d) for d in config.domains}, (2,),
                                 student_spec(config, ctx.data), init=init)
    return save_student(ctx, "mdl", (model, variables))
