"""Stages: the plug-ins a run executes, looked up by the config's ``stages``.

A stage is a function ``stage(ctx: RunContext) -> models | None`` registered with
:func:`register` under its problem (``'classification'`` or ``'dense'``) and name. It trains
(or loads) what it is named for, through :func:`ur_jax.run.loop.fit`, and returns
``{domain or task: (model, variables)}``, which the run hands to the problem's evaluators
(``results[<stage>]``) and keeps in ``ctx.models[<stage>]`` for later stages; or ``None``
for a stage that writes its own results (``fewshot``).

Classification (:mod:`.supervised`, :mod:`.distill`, :mod:`.fewshot`):
``teachers`` (one network per domain: SDL), ``mdl`` (the multi-domain baseline), ``url``
(the universal student distilled through alignment adapters), ``fewshot`` (episodes on the
trained or saved models). Dense prediction (:mod:`.dense`): ``stl`` (single-task
teachers), ``mtl`` (a multi-task method of :mod:`ur_jax.mtl`, or BAM), ``url``.

To add a training method: one module here whose function is decorated with
:func:`register`, its import at the end of this file, and a config naming it in ``stages``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Stage:
    """A registered stage: its problem, name, function, the stages it needs to have run
    before it in the same config (``requires``; checked before anything runs), and whether
    it returns models for the evaluators (``reports``: a row of ``results.json`` and of the
    printed table, in registration order; the ``fewshot`` stage writes its own results)."""

    problem: str
    name: str
    fn: Callable[[Any], Any]
    requires: tuple[str, ...] = ()
    reports: bool = True


_REGISTRY: dict[tuple[str, str], Stage] = {}  # filled at import time by @register


def register(problem: str, name: str, requires: tuple[str, ...] = (), reports: bool = True
             ) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as the stage ``name`` of ``problem``.

    Raises:
      ValueError: a stage of that problem and name is already registered.
    """

    def wrap(fn: Callable) -> Callable:
        if (problem, name) in _REGISTRY:
            raise ValueError(f"A {problem} stage named {name!r} is already registered.")
        _REGISTRY[(problem, name)] = Stage(problem, name, fn, tuple(requires), reports)
        return fn

    return wrap


def unregister(problem: str, name: str) -> None:
    """Removes a stage registered by a test or a notebook (the built-in stages stay).

    Raises:
      ValueError: no such stage.
    """
    get(problem, name)
    del _REGISTRY[(problem, name)]


def get(problem: str, name: str) -> Stage:
    """The stage ``name`` of ``problem``.

    Raises:
      ValueError: no such stage (the message lists the problem's stages).
    """
    if (problem, name) not in _REGISTRY:
        raise ValueError(f"Unknown stage {name!r} for a {problem} config; expected one of "
                         f"{names(problem)}.")
    return _REGISTRY[(problem, name)]


def names(problem: str) -> tuple[str, ...]:
    """The registered stages of ``problem``, in registration order."""
    return tuple(n for p, n in _REGISTRY if p == problem)


def result_rows(problem: str) -> tuple[str, ...]:
    """The stages of ``problem`` that report models (rows of ``results.json``), in order."""
    return tuple(n for (p, n), s in _REGISTRY.items() if p == problem and s.reports)


from ur_jax.stages import supervised, distill, fewshot, dense  # noqa: E402,F401,I001  (registration)
