"""What every stage and evaluator of a run receives: :class:`RunContext`.

Nothing about a run lives in module globals: the config, the data mesh, the metric writer,
the workdir, the loaded data, the seeds, the hooks called after each step and the cache of
compiled functions all travel in one object, built by :func:`ur_jax.run.run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import ml_collections
import numpy as np
from jax.sharding import Mesh

#: ``hook(stage, step, state)``, called after every training step (custom logging, early
#: stopping; the tests interrupt runs with one).
StepHook = Callable[[str, int, Any], None]


class CompiledCache:
    """Compiled functions (and the optimizers their train states hold) keyed by value.

    Flax modules, meshes and optimizer hyperparameters are hashable, so every teacher of
    one architecture and class count, and the MDL and URL students, reuse one compiled
    init / train / eval / feature function: XLA compilation dominates short runs on CPU.
    An optimizer is cached too because it is a static field of the train state: two runs
    with equal hyperparameters get the same object and so share one compiled step.

    One cache belongs to one run unless the caller passes the same cache to several runs
    (``run(..., cache=...)``; the tests share one across their short runs).
    """

    def __init__(self):
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value cached under ``key``, built with ``build()`` on first use."""
        if key not in self._entries:
            self._entries[key] = build()
        return self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclasses.dataclass
class RunContext:
    """One run's state, passed to every stage (:mod:`ur_jax.stages`) and evaluator.

    Attributes:
      config: the experiment config (read-only by convention).
      mesh: the ``('data',)`` device mesh every batch is split over.
      workdir: absolute path of the run's directory (:mod:`ur_jax.run.workdir`).
      writer: the metric writer (:func:`ur_jax.writers.create_writer`).
      data: what the dataset registry loaded (``ClassificationData`` or ``DenseData``).
      cache: compiled functions shared by the stages (:class:`CompiledCache`).
      step_hooks: called as ``hook(stage, step, state)`` after every training step.
      models: what each finished stage produced, by stage name: ``{domain or task: (model,
        variables)}`` (one model per domain for ``'teachers'``, the same model for every
        domain for ``'mdl'`` / ``'url'``).
      results: the run's results so far (written to ``results.json`` at the end).
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    workdir: str
    writer: Any
    data: Any
    cache: CompiledCache = dataclasses.field(default_factory=CompiledCache)
    step_hooks: Sequence[StepHook] = ()
    models: dict[str, Any] = dataclasses.field(default_factory=dict)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def process_part(self) -> dict[str, int]:
        """``{'process_index', 'process_count'}`` of this process: the keyword arguments
        with which the input pipelines give each process its part of every global batch
        (:mod:`ur_jax.data.pipeline`; ``{0, 1}`` on one process)."""
        import jax

        return {"process_index": jax.process_index(), "process_count": jax.process_count()}

    @property
    def is_primary(self) -> bool:
        """Whether this process writes the run's files (process 0; :mod:`ur_jax.distributed`)."""
        import jax

        return jax.process_index() == 0

    def seed(self, *path: int) -> int:
        """A deterministic 31-bit seed for one random choice of the run: the config's
        ``seed`` and the integer ``path`` naming the choice, through
        ``numpy.random.SeedSequence`` (the same path gives the same seed in every run)."""
        return run_seed(self.config, *path)


def run_seed(config: ml_collections.ConfigDict, *path: int) -> int:
    """:meth:`RunContext.seed` for a config alone (tests, notebooks)."""
    return int(np.random.SeedSequence([int(config.seed), *path]).generate_state(1)[0] >> 1)
