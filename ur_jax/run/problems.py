"""The problems a config can pose (``config.problem``): how each loads its data, which
evaluators score its stages' models, which results it reports and how it prints them.

``'classification'`` (the default): multi-domain classification (the embedded default,
the Visual Decathlon, Meta-Dataset); ``'dense'``: multi-task dense prediction (NYU-v2,
Cityscapes, the synthetic scenes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from absl import logging

from ur_jax.data import registry
from ur_jax.run import tables
from ur_jax.run.context import RunContext


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: ``load(config) -> data``; ``evaluators``: the default evaluator names
    (``config.evaluators`` overrides them); ``table(results) -> str``; ``prepare(ctx)``:
    checks and results entries before the first stage."""

    name: str
    load: Callable[[Any], Any]
    evaluators: tuple[str, ...]
    table: Callable[[Any], str]
    prepare: Callable[[RunContext], None]


def _prepare_classification(ctx: RunContext) -> None:
    from ur_jax.evaluation.evaluators.classification import evaluation_split

    config, data = ctx.config, ctx.data
    split = evaluation_split(ctx)
    ctx.results["evaluated_on"] = split
    if split == "val" and config.train_split == "train+val":
        logging.warning("config.train_split='train+val': the models train on the validation "
                        "images, so the validation accuracies below are not held-out numbers. "
                        "Add the labelled test annotations (README: Visual Decathlon) to score "
                        "the test split.")
    if split == "val" and config.evaluate_on != "val":
        logging.info("The test split of %s has no labels: results are on the validation split; "
                     "test predictions go to %s/predictions.",
                     [d for d in config.domains if not data.labelled(d)], ctx.workdir)


def _prepare_dense(ctx: RunContext) -> None:
    config, data = ctx.config, ctx.data
    missing = [t for t in config.tasks if t not in data.tasks]
    if missing:
        raise ValueError(f"Dataset {config.dataset!r} has no {missing} targets; it has "
                         f"{list(data.tasks)}. Set --config.tasks accordingly.")


PROBLEMS = {
    "classification": Problem("classification", registry.load_classification,
                              ("classification", "decathlon_score"), tables.classification_table, _prepare_classification),
    "dense": Problem("dense", registry.load_dense, ("dense",), tables.dense_table, _prepare_dense),
}


def get(config) -> Problem:
    """The problem of ``config`` (``config.problem``: ``'classification'`` or ``'dense'``).

    Raises:
      ValueError: a config without ``problem``, or an unknown problem.
    """
    if "problem" not in config:
        raise ValueError("config.problem is missing: every config declares the problem it "
                         "poses; build its run level with ur_jax.config.classification_defaults() "
                         "or ur_jax.config.dense_defaults().")
    name = config.problem
    if name not in PROBLEMS:
        raise ValueError(f"config.problem={name!r}; expected one of {sorted(PROBLEMS)}.")
    return PROBLEMS[name]
