"""Evaluators of a run, looked up by name (big_vision style).

An evaluator is registered once, at import time, under a name, with what it evaluates:

* ``on='models'``: ``fn(ctx, stage, models) -> dict``, called after every training stage
  with what the stage produced (``{domain or task: (model, variables)}``); its result is
  the stage's entry of ``results.json`` (``'classification'``: per-domain accuracy and test
  predictions export; ``'dense'``: dense metrics and Delta_MTL).
* ``on='run'``: ``fn(ctx) -> dict | None``, called once after the last stage; its result
  goes under ``results[<result key>]`` (``'decathlon_score'`` -> ``'scores'``).

The few-shot protocols (``'fewshot'``: fixed-shape feature episodes; ``'episodic'``:
Meta-Dataset episodes on images) are evaluators too, called by the ``fewshot`` stage.
The run takes the names from ``config.evaluators`` (default: its problem's list,
:mod:`ur_jax.run.problems`). To add an evaluator: a module here with a function decorated
by :func:`register`, and its import at the end of this file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

ON = ("models", "run", "fewshot")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A registered evaluator: ``name``, ``on`` (one of :data:`ON`), the function, and for
    ``on='run'`` the key of ``results.json`` its result goes to."""

    name: str
    on: str
    fn: Callable[..., Any]
    result_key: str = ""


_REGISTRY: dict[str, Evaluator] = {}  # filled at import time by @register, read-only after


def register(name: str, on: str, result_key: str = "") -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the evaluator ``name`` (see the module docstring).

    Raises:
      ValueError: ``name`` already registered, or ``on`` not in :data:`ON`.
    """
    if on not in ON:
        raise ValueError(f"Evaluator {name!r}: on={on!r}; expected one of {ON}.")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"An evaluator named {name!r} is already registered.")
        _REGISTRY[name] = Evaluator(name, on, fn, result_key or name)
        return fn

    return wrap


def get(name: str) -> Evaluator:
    """The evaluator registered as ``name``.

    Raises:
      ValueError: no evaluator of that name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown evaluator {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered evaluators' names."""
    return tuple(sorted(_REGISTRY))


from ur_jax.evaluation.evaluators import classification, dense, fewshot  # noqa: E402,F401  (registration)
