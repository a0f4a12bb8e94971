"""Helpers every classification stage shares: optimizers, model construction and
initialisation, per-domain input settings.

A stage block of the config (``config.teachers``, ``config.mdl``, ``config.url``) holds the
keys of :data:`ur_jax.config.blocks.SGD_STAGE`; any of ``steps``, ``batch_size``,
``learning_rate``, ``weight_decay``, ``restart_every`` and ``select_every`` may map domains
to values (:func:`ur_jax.config.stage_value`, :func:`~ur_jax.config.batch_size`,
:func:`~ur_jax.config.stage_steps`, :func:`~ur_jax.config.stage_select_every`, which the
stages import from here with the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ur_jax import checkpointing, optim, steps
from ur_jax.config.blocks import ADAPTER_SCHEDULES
from ur_jax.config.values import batch_size, stage_select_every, stage_steps, stage_value
from ur_jax.models import MultiHeadClassifier
from ur_jax.run.context import RunContext

__all__ = ["ADAPTER_SCHEDULES", "TEACHER_HEAD", "adapter_learning_rate_schedule",
           "backbone_kwargs", "batch_size", "classifier_spec", "init_model",
           "sample_images", "stage_select_every", "stage_sgd", "stage_steps", "stage_value",
           "train_step_fn"]
#: Teachers train under this head name, so that all teachers with equal class counts
#: share one compiled step; the head is renamed to its domain when the teacher is saved.
TEACHER_HEAD = "teacher"


def stage_sgd(ctx: RunContext, stage_config, domain: str | None = None
              ) -> optax.GradientTransformation:
    """The stage's SGD (PyTorch semantics, :func:`ur_jax.optim.sgd`) with its
    :func:`ur_jax.optim.learning_rate_schedule`; ``learning_rate``, ``weight_decay``,
    ``steps`` and ``restart_every`` may be per-domain mappings. Runs with equal
    hyperparameters get the same optimizer object from ``ctx.cache`` (it is static in the
    train state), so their steps share one compilation."""
    restart = stage_config.restart_every
    key = ("sgd", float(stage_value(stage_config, "learning_rate", domain)),
           stage_steps(stage_config, domain), int(stage_config.warmup_steps),
           float(stage_config.momentum), float(stage_value(stage_config, "weight_decay", domain)),
           stage_config.schedule, tuple(float(f) for f in stage_config.decay_at),
           float(stage_config.decay_factor),
           int(stage_value(stage_config, "restart_every", domain)) if restart else 0)

    def build():
        _, lr, steps_, warmup, momentum, wd, kind, decay_at, factor, every = key
        schedule = optim.learning_rate_schedule(lr, steps_, warmup, kind, decay_at, factor, every)
        return optim.sgd(schedule, momentum=momentum, weight_decay=wd)

    return ctx.cache.get(key, build)


def adapter_learning_rate_schedule(stage_config) -> optax.Schedule:
    """The schedule of a URL stage's alignment adapters (Adam at ``adapter_learning_rate``).

    ``stage_config.adapter_schedule`` (default ``''``: follow the stage):

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
    kind = stage_config.adapter_schedule
    if kind not in ADAPTER_SCHEDULES:
        raise ValueError(f"adapter_schedule={kind!r}; expected one of {ADAPTER_SCHEDULES} "
                         f"('' follows the stage's schedule).")
    if not kind:
        kind = "cosine_restarts" if stage_config.schedule == "cosine_restarts" else "cosine"
    restart = 0
    if kind == "cosine_restarts":
        restart = int(stage_value(stage_config, "restart_every", None))
    return optim.learning_rate_schedule(float(stage_config.adapter_learning_rate),
                                        stage_steps(stage_config), int(stage_config.warmup_steps),
                                        kind, restart_every=restart)


# ----------------------------------------------------------------------------- models


def backbone_kwargs(config) -> dict[str, Any]:
    """``config.model.kwargs`` as a plain dict."""
    return dict(config.model.kwargs.to_dict() if hasattr(config.model.kwargs, "to_dict")
                else config.model.kwargs)


def classifier_spec(config, num_classes: Mapping[str, int]) -> dict[str, Any]:
    """The saved-model spec of a classifier with the config's backbone and ``{head:
    classes}`` heads (:func:`ur_jax.checkpointing.model_spec`)."""
    return checkpointing.model_spec(config.model.backbone, backbone_kwargs(config), num_classes)


def sample_images(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """One zero image per domain, ``{domain: float32[1, H, W, C]}`` (for ``init``)."""
    return {d: jnp.zeros((1,) + tuple(s), jnp.float32) for d, s in shapes.items()}


def init_model(ctx: RunContext, model: MultiHeadClassifier, seed: int,
               shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """Fresh variables of ``model``; ``shapes``: ``{model domain: (H, W, C)}``. The
    compiled init is shared through ``ctx.cache`` by every model equal to ``model``."""
    init = ctx.cache.get(("init", model),
                         lambda: jax.jit(lambda rng, images: model.init(rng, images, train=False)))
    rng = jax.random.key(seed, impl=ctx.config.init_rng_impl)
    return init(rng, sample_images({d: shapes[d] for d in model.domains}))


def train_step_fn(ctx: RunContext, model: MultiHeadClassifier):
    """The jitted data-parallel task-loss step of ``model`` (:func:`ur_jax.steps.make_train_step`),
    compiled once per model and mesh."""
    return ctx.cache.get(("train_step", model, ctx.mesh),
                         lambda: steps.jit_step(steps.make_train_step(model), ctx.mesh))
