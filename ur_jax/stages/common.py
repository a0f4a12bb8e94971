"""Helpers every classification stage shares: per-domain stage values, optimizers, model
construction and initialisation, per-domain input settings.

A stage block of the config (``config.teachers``, ``config.mdl``, ``config.url``) holds
``steps``, ``batch_size``, ``learning_rate``, ``weight_decay``, ``warmup_steps``,
``momentum`` and the schedule keys; any of ``steps``, ``batch_size``, ``learning_rate``,
``weight_decay``, ``restart_every`` and ``select_every`` may map domains to values
(:func:`stage_value`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ur_jax import checkpointing, optim, steps
from ur_jax.models import MultiHeadClassifier
from ur_jax.run.context import RunContext

#: ``adapter_schedule`` values of a URL stage ('' follows the stage's schedule).
ADAPTER_SCHEDULES = ("", "cosine", "cosine_restarts")
#: Teachers train under this head name, so that all teachers with equal class counts
#: share one compiled step; the head is renamed to its domain when the teacher is saved.
TEACHER_HEAD = "teacher"


def stage_value(stage_config, key: str, domain: str | None) -> Any:
    """``stage_config[key]`` for ``domain``: one value for every domain, or a mapping
    ``{domain: value}`` with an optional ``'default'`` (e.g. a larger ImageNet batch).

    Raises:
      ValueError: a mapping with neither ``domain`` nor ``'default'``.
    """
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


def stage_steps(stage_config, domain: str | None = None) -> int:
    """A stage's number of steps (``steps`` may map domains to values, like the
    Meta-Dataset teachers' 480k for ImageNet and 50k for Omniglot)."""
    return int(stage_value(stage_config, "steps", domain))


def stage_select_every(config, stage_config, domain: str | None = None) -> int:
    """How often a stage validates for model selection (0: never): the stage's own
    ``select_every`` when it has one (a number, or ``{domain: steps}`` like the Meta-Dataset
    teachers' ``eval_freq``, which VICO-UoE/URL's scripts set to each source's restart
    period), else ``config.select_every``."""
    if "select_every" in stage_config:
        return int(stage_value(stage_config, "select_every", domain) or 0)
    return int(config.get("select_every") or 0)


def stage_sgd(ctx: RunContext, stage_config, domain: str | None = None
              ) -> optax.GradientTransformation:
    """The stage's SGD (PyTorch semantics, :func:`ur_jax.optim.sgd`) with its
    :func:`ur_jax.optim.learning_rate_schedule`; ``learning_rate``, ``weight_decay``,
    ``steps`` and ``restart_every`` may be per-domain mappings. Runs with equal
    hyperparameters get the same optimizer object from ``ctx.cache`` (it is static in the
    train state), so their steps share one compilation."""
    restart = stage_config.get("restart_every", 0)
    key = ("sgd", float(stage_value(stage_config, "learning_rate", domain)),
           stage_steps(stage_config, domain), int(stage_config.warmup_steps),
           float(stage_config.momentum), float(stage_value(stage_config, "weight_decay", domain)),
           stage_config.get("schedule", "cosine"),
           tuple(float(f) for f in stage_config.get("decay_at", ())),
           float(stage_config.get("decay_factor", 0.1)),
           int(stage_value(stage_config, "restart_every", domain)) if restart else 0)

    def build():
        _, lr, steps_, warmup, momentum, wd, kind, decay_at, factor, every = key
        schedule = optim.learning_rate_schedule(lr, steps_, warmup, kind, decay_at, factor, every)
        return optim.sgd(schedule, momentum=momentum, weight_decay=wd)

    return ctx.cache.get(key, build)


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


def inputs(data, names: Mapping[str, str]) -> dict[str, Any]:
    """Per-domain input settings keyed by model domain; ``names``: ``{model domain: data
    domain}`` (a teacher's head is ``'teacher'`` while it trains). Keys: ``'shapes'``,
    ``'normalize'``, and ``'augment'`` / ``'transform'`` when the data has train / eval
    transforms."""
    out: dict[str, Any] = {"shapes": {m: data.shape(d) for m, d in names.items()},
                           "normalize": {m: data.normalize(d) for m, d in names.items()}}
    if data.train_transform is not None:
        out["augment"] = {m: data.train_transform[d] for m, d in names.items()}
    if data.eval_transform is not None:
        out["transform"] = {m: data.eval_transform[d] for m, d in names.items()}
    return out
