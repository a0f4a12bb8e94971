"""The runner (the application layer over the core library).

* :func:`run` (:mod:`.runner`): executes a config's stages in a workdir, then the
  evaluators, and writes ``results.json``;
* :class:`RunContext` / :class:`CompiledCache` (:mod:`.context`): what every stage and
  evaluator receives, instead of module globals;
* :func:`fit` (:mod:`.loop`): the one training loop (resume, logging, selection,
  checkpoints, step hooks);
* :mod:`.selection` (model selection on validation), :mod:`.workdir` (the run's
  directory), :mod:`.problems` (classification / dense), :mod:`.tables` (printed
  results), :mod:`.logs`. The config checks a run starts with live beside the config
  declarations (:mod:`ur_jax.config.validation`).
"""

from __future__ import annotations

from ur_jax.run import tables
from ur_jax.run.context import CompiledCache, RunContext, StepHook, run_seed
from ur_jax.run.loop import fit
from ur_jax.run.runner import run
from ur_jax.run.workdir import RESULTS_FILE, WorkdirError, prepare_workdir

__all__ = ["CompiledCache", "RESULTS_FILE", "RunContext", "StepHook", "WorkdirError", "fit",
           "prepare_workdir", "run", "run_seed", "tables"]
