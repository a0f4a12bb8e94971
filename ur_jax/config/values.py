"""Reading a stage block's values: one value for every domain, or a per-domain mapping.

Any of a classification stage's ``steps``, ``batch_size``, ``learning_rate``,
``weight_decay``, ``restart_every`` and ``select_every`` (:data:`ur_jax.config.blocks.SGD_STAGE`)
may be one value or a mapping ``{domain: value}`` with an optional ``'default'`` (e.g. a
larger ImageNet batch, each Meta-Dataset teacher's own schedule).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from ur_jax.config.blocks import FROM_RUN


def stage_value(stage_config, key: str, domain: str | None) -> Any:
    """``stage_config[key]`` for ``domain``: one value for every domain, or a mapping
    ``{domain: value}`` with an optional ``'default'``.

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
    ``select_every`` (a number, or ``{domain: steps}`` like the Meta-Dataset teachers'
    ``eval_freq``, which VICO-UoE/URL's scripts set to each source's restart period), or the
    run's ``config.select_every`` where the stage's is :data:`~ur_jax.config.blocks.FROM_RUN`
    (-1, the default)."""
    every = int(stage_value(stage_config, "select_every", domain))
    return int(config.select_every) if every == FROM_RUN else every
