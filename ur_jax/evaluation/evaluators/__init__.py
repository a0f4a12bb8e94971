"""Evaluators of a run, looked up by name (big_vision style).

An evaluator is registered once, at import time, under a name, with what it evaluates:

* ``on='models'``: ``fn(ctx, stage, models) -> dict``, called after every training stage
  with what the stage produced (``{domain or task: (model, variables)}``); its result is
  the stage's entry of ``results.json`` (``'classification'``: per-domain accuracy and test
  predictions export; ``'dense'``: dense metrics and Delta_MTL).
* ``on='run'``: ``fn(ctx) -> dict | None``, called once after the last stage; its result
  goes under ``results[<result key>]`` (``'decathlon_score'`` -> ``'scores'``).
* ``on='fewshot'``: ``fn(ctx, {row name: (model, variables)}) -> dict``, the few-shot
  protocols (``'fewshot'``: fixed-shape feature episodes; ``'episodic'``: Meta-Dataset
  episodes on images), called by the ``fewshot`` stage rather than named in the config.

Each evaluator serves the problems it is registered for (``problems``). The run takes the
names from ``config.evaluators`` (default: its problem's list, :mod:`ur_jax.run.problems`)
and refuses, before anything runs, a name that is unknown, of another problem, or of
kind ``'fewshot'``. Several ``on='models'`` evaluators of one stage merge their results
(a key given twice is an error). To add an evaluator: a module here with a function
decorated by :func:`register`, and its import at the end of this file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

ON = ("models", "run", "fewshot")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A registered evaluator: ``name``, ``on`` (one of :data:`ON`), the function, for
    ``on='run'`` the key of ``results.json`` its result goes to, and the problems it serves."""

    name: str
    on: str
    fn: Callable[..., Any]
    result_key: str = ""
    problems: tuple[str, ...] = ("classification",)


_REGISTRY: dict[str, Evaluator] = {}  # filled at import time by @register


def register(name: str, on: str, result_key: str = "",
             problems: tuple[str, ...] = ("classification",)) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the evaluator ``name`` (see the module docstring).

    Raises:
      ValueError: ``name`` already registered, or ``on`` not in :data:`ON`.
    """
    if on not in ON:
        raise ValueError(f"Evaluator {name!r}: on={on!r}; expected one of {ON}.")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"An evaluator named {name!r} is already registered.")
        _REGISTRY[name] = Evaluator(name, on, fn, result_key or name, tuple(problems))
        return fn

    return wrap


def unregister(name: str) -> None:
    """Removes an evaluator registered by a test or a notebook.

    Raises:
      ValueError: no evaluator of that name.
    """
    get(name)
    del _REGISTRY[name]


def get(name: str) -> Evaluator:
    """The evaluator registered as ``name``.

    Raises:
      ValueError: no evaluator of that name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown evaluator {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def for_run(names_: tuple[str, ...], problem: str) -> list[Evaluator]:
    """The evaluators a run of ``problem`` names (``config.evaluators``), checked.

    Raises:
      ValueError: an unknown name, a name given twice, an evaluator of another problem, or
        one of kind ``'fewshot'`` (those run inside the ``fewshot`` stage).
    """
    chosen = [get(n) for n in names_]
    repeated = sorted({n for n in names_ if list(names_).count(n) > 1})
    if repeated:
        raise ValueError(f"config.evaluators names {repeated} more than once.")
    for e in chosen:
        if problem not in e.problems:
            raise ValueError(f"Evaluator {e.name!r} serves {list(e.problems)} configs, not "
                             f"{problem!r} ones; remove it from config.evaluators.")
        if e.on == "fewshot":
            raise ValueError(f"Evaluator {e.name!r} is a few-shot protocol: it runs inside the "
                             f"'fewshot' stage (add 'fewshot' to config.stages), not from "
                             f"config.evaluators.")
    return chosen


def names() -> tuple[str, ...]:
    """The registered evaluators' names."""
    return tuple(sorted(_REGISTRY))


from ur_jax.evaluation.evaluators import classification, dense, fewshot  # noqa: E402,F401  (registration)
