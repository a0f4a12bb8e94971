"""Every orbax call in ur_jax: training checkpoints with the data iterator, and saved models.

* :class:`Checkpointer` wraps an orbax ``CheckpointManager`` that saves the train state
  and the grain iterator's state **together** under one step, keeps the last few, and
  restores both, so a run killed at any moment continues exactly where its last
  checkpoint left it: the same parameters, optimizer state and next batch.
* :func:`save_model` / :func:`load_model`: a trained network as a directory
  (``model.json``, the architecture, plus ``variables/``, an orbax checkpoint of
  ``params`` and ``batch_stats``). Teachers are exchanged in this format (a run writes
  one per teacher; configs point to them to reuse teachers), and converted PyTorch
  checkpoints will be written in it too.
"""

from __future__ import annotations

import gc
import glob
import json
import logging as pylogging
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from grain.checkpoint import CheckpointSave  # registered with orbax

from ur_jax import distributed
from ur_jax.models import MultiHeadClassifier, get_backbone, get_dense_model
from ur_jax.models.precision import with_precision

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def _state_tree(state: Any) -> dict[str, Any]:
    tree = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
            "opt_state": state.opt_state}
    if getattr(state, "mtl_state", None):  # ur_jax.dense_steps.DenseState
        tree["mtl_state"] = state.mtl_state
    return tree


class CheckpointError(RuntimeError):
    """No kept checkpoint of a stage can be restored."""


class _Silenced:
    """Silences the error output of a failing restore: a damaged checkpoint makes orbax and
    TensorStore log a traceback per array, and leaves coroutines whose errors Python prints
    when they are collected; the caller reports the failure once instead. The collection
    happens inside the block (``gc.collect``), while the hook that prints it is replaced."""

    NAMES = ("absl", "asyncio", "orbax", "jax._src.distributed")

    def __enter__(self):
        self._levels = {n: pylogging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            pylogging.getLogger(n).setLevel(pylogging.CRITICAL)
        self._hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
        return self

    def __exit__(self, *exc: object) -> None:
        gc.collect()  # the failed restore's coroutines report (silently) here, not later
        sys.unraisablehook = self._hook
        for n, level in self._levels.items():
            pylogging.getLogger(n).setLevel(level)


def _reason(e: Exception) -> str:
    """One short line saying why a restore failed."""
    text = (str(e).splitlines() or [""])[0].split(" See full")[0]
    return f"{type(e).__name__}: {text[:200]}"


class Checkpointer:
    """Saves and restores ``(train state, data iterator)`` pairs in ``directory``.

    Args:
      directory: where the steps are written (created if needed).
      keep: how many recent checkpoints to keep.
      every: save every this many steps (the final step is always saved with
        ``force=True``).
    """

    def __init__(self, directory: str, keep: int = 3, every: int = 100):
        self.directory = os.fspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep),
                                               save_interval_steps=max(1, int(every)),
                                               create=True, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def all_steps(self) -> list[int]:
        """The steps of the kept checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, iterator: Any, force: bool = False) -> bool:
        """Saves if ``step`` is due (or ``force``); returns whether it saved."""
        return self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(_state_tree(state)), data=CheckpointSave(iterator)),
            force=force)

    def restore(self, state: Any, iterator: Any, step: int | None = None) -> Any:
        """Restores the checkpoint at ``step`` into a copy of ``state`` (whose arrays give
        shapes, dtypes and shardings) and ``iterator`` (in place).

        Every process of a multi-process run calls it: orbax restores the arrays with every
        process taking part, and each process reads its own data-iterator state
        (``<step>/data/process_<i>-of-<n>.json``, written by grain's handler). A checkpoint
        saved by another number of processes restores too: the iterator's state is the
        index of the next global batch, the same in every process's file, so the run
        continues with the same global batches (a different count only changes each
        process's part of them).

        Without ``step``: the newest checkpoint that restores. A damaged one (a pre-empted
        job can leave truncated files behind) is reported with its step and the reason,
        deleted so that training can write that step again, and the previous kept
        checkpoint is tried; the run then continues from there and, since the data
        iterator's position is restored with the state, ends with the numbers of an
        uninterrupted run. Every process takes the same decision: a checkpoint counts only
        when every process can read its iterator state (checked before orbax's collective
        restore, so that damage on one process's file cannot leave the processes in
        different collectives) and the arrays restore on every process.

        Raises:
          FileNotFoundError: the directory holds no checkpoint.
          CheckpointError: no kept checkpoint restores (the message gives each one's reason).
        """
        if step is not None:
            return self._restore(state, iterator, int(step), self._iterator_state(int(step)))
        steps = self.all_steps()[::-1]
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {self.directory}.")
        failures = []
        for candidate in steps:
            error, restored = None, None
            try:
                data = self._iterator_state(candidate)  # local: no collective
            except Exception as e:  # noqa: BLE001  (missing, truncated, not JSON)
                error = e
            if distributed.agree(error is None):
                try:
                    with _Silenced():
                        restored = self._restore(state, iterator, candidate, data)
                except Exception as e:  # noqa: BLE001  (any damage: truncated, missing, corrupt)
                    error = e
            if not distributed.agree(error is None):  # every process falls back alike
                reason = _reason(error) if error else "it does not restore on another process"
                failures.append(f"step {candidate}: {reason}")
                logging.warning("The checkpoint at step %d in %s cannot be restored (%s); "
                                "trying the previous one.", candidate, self.directory, reason)
                continue
            for damaged in steps[:steps.index(candidate)]:
                self._manager.delete(damaged)
            if failures:
                logging.warning("Restored the checkpoint at step %d in %s; deleted the damaged "
                                "newer one(s) %s.", candidate, self.directory,
                                steps[:steps.index(candidate)])
            return restored
        raise CheckpointError(
            f"No checkpoint in {self.directory} can be restored:\n  " + "\n  ".join(failures)
            + "\nDelete this directory to train the stage from the start.")

    def _iterator_state(self, step: int) -> Any:
        """This process's data-iterator state saved at ``step`` (parsed JSON).

        Raises:
          FileNotFoundError: the step has no iterator state.
          ValueError: the file is not JSON (truncated).
        """
        folder = os.path.join(self.directory, str(step), "data")
        index, count = jax.process_index(), jax.process_count()
        path = os.path.join(folder, f"process_{index}-of-{count}.json")
        if not os.path.exists(path):  # saved by another number of processes
            saved = sorted(glob.glob(os.path.join(folder, "process_0-of-*.json")))
            if not saved:
                raise FileNotFoundError(f"no data-iterator state in {folder}")
            path = saved[0]
            logging.warning("The checkpoint at step %d was saved by %s processes; this run has "
                            "%d: every process continues from the same global batch.", step,
                            path.rsplit("-of-", 1)[1][:-len(".json")], count)
        with open(path) as f:
            return json.load(f)

    def _restore(self, state: Any, iterator: Any, step: int, data: Any) -> Any:
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
        iterator.set_state(data)  # what grain's CheckpointRestore does, from the checked file
        if hasattr(iterator, "start_prefetch"):
            iterator.start_prefetch()
        return state.replace(**restored["state"])

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def save_model(directory: str, spec: Mapping[str, Any], variables: Mapping[str, Any]) -> None:
    """Writes a network: ``spec`` (see :func:`model_from_spec`) and its ``variables``
    (host arrays, e.g. from ``jax.device_get``).

    On several processes every process calls it with the same values and the directory is
    written once: process 0 writes ``model.json``, and orbax's save (every process takes
    part; NumPy arrays are written by the primary process) ends at a barrier, so the model
    is complete on disk for every process when the call returns.
    """
    path = epath.Path(directory)
    if jax.process_index() == 0:  # first: the variables' atomic rename completes the model
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_FILE).write_text(json.dumps(dict(spec), indent=2, sort_keys=True))
    tree = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    ckpt = ocp.StandardCheckpointer()
    ckpt.save((path / VARIABLES_DIR).absolute(), tree, force=True)
    ckpt.wait_until_finished()


def model_spec(backbone: str, backbone_kwargs: Mapping[str, Any],
               num_classes: Mapping[str, int] | Any, feature: str = "pooled",
               input_sizes: Mapping[str, int] | Any = ()) -> dict[str, Any]:
    """The JSON description of a :class:`MultiHeadClassifier` written next to its weights.

    ``input_sizes``: ``{domain: side}`` of the domains whose images the model resizes
    (:attr:`MultiHeadClassifier.input_sizes`); stored as ``'input_sizes'`` only when not
    empty, so that specs without resizing stay as before."""
    pairs = list(num_classes.items()) if isinstance(num_classes, Mapping) else list(num_classes)
    spec = {"backbone": backbone, "backbone_kwargs": dict(backbone_kwargs),
            "num_classes": [[d, int(n)] for d, n in pairs], "feature": feature}
    sizes = list(input_sizes.items()) if isinstance(input_sizes, Mapping) else list(input_sizes)
    if sizes:
        spec["input_sizes"] = [[d, int(s)] for d, s in sizes]
    return spec


def dense_model_spec(model: str, model_kwargs: Mapping[str, Any],
                     tasks: Mapping[str, int] | Any) -> dict[str, Any]:
    """The JSON description of a dense model (:func:`ur_jax.models.get_dense_model`) with
    heads ``{task: output channels}``, written next to its weights."""
    pairs = list(tasks.items()) if isinstance(tasks, Mapping) else list(tasks)
    return {"dense_model": model, "model_kwargs": dict(model_kwargs),
            "tasks": [[t, int(n)] for t, n in pairs]}


def model_from_spec(spec: Mapping[str, Any], precision: str = "fp32") -> Any:
    """Builds the model that ``spec`` describes: a :class:`MultiHeadClassifier`
    (:func:`model_spec`) or a dense model (:func:`dense_model_spec`), computing in
    ``precision`` (:func:`ur_jax.models.precision.with_precision`: ``'fp32'`` or ``'bf16'``;
    the spec does not record it).

    Raises:
      ValueError: an unknown backbone, dense model or precision.
    """
    return with_precision(_model_from_spec(spec), precision)


def _model_from_spec(spec: Mapping[str, Any]) -> Any:
    if "dense_model" in spec:
        # JSON turns tuples into lists; modules must stay hashable (compiled-step caches).
        kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in dict(spec.get("model_kwargs", {})).items()}
        return get_dense_model(spec["dense_model"],
                               tasks=tuple((t, int(n)) for t, n in spec["tasks"]), **kwargs)
    kwargs = {k: tuple(v) if isinstance(v, list) else v
              for k, v in dict(spec.get("backbone_kwargs", {})).items()}
    backbone = get_backbone(spec["backbone"], **kwargs)
    return MultiHeadClassifier(backbone, tuple((d, int(n)) for d, n in spec["num_classes"]),
                               feature=spec.get("feature", "pooled"),
                               input_sizes=tuple((d, int(s))
                                                 for d, s in spec.get("input_sizes") or ()))


def load_model(directory: str, expected: Mapping[str, Any] | None = None,
               precision: str = "fp32") -> tuple[MultiHeadClassifier, dict[str, Any]]:
    """Reads a network written by :func:`save_model`: returns ``(model, variables)``, the
    model computing in ``precision`` (``'fp32'`` or ``'bf16'``; float32 variables either way).

    ``expected``: a spec the model must match (architecture and class counts); a
    mismatch raises ``ValueError`` naming the differences, so that a wrong teacher is
    refused before any training starts.
    """
    path = epath.Path(directory)
    if not (path / MODEL_FILE).exists() or not (path / VARIABLES_DIR).exists():
        raise FileNotFoundError(
            f"No saved model in {os.fspath(path)}: expected {MODEL_FILE} and {VARIABLES_DIR}/ "
            f"there, as written by a ur_jax run (<workdir>/teachers/<domain>/model) or by "
            f"python -m ur_jax.convert. Check the path, or let the run train this teacher.")
    spec = json.loads((path / MODEL_FILE).read_text())
    if expected is not None:
        diffs = [f"{k}: expected {expected[k]!r}, found {spec.get(k)!r}"
                 for k in expected if _jsonable(expected[k]) != _jsonable(spec.get(k))]
        if diffs:
            raise ValueError(f"The model in {os.fspath(path)} does not match what the config "
                             f"needs:\n  " + "\n  ".join(diffs))
    model = model_from_spec(spec)
    variables = ocp.StandardCheckpointer().restore((path / VARIABLES_DIR).absolute())
    _check_shapes(model, variables, spec, path)
    return with_precision(model, precision), variables


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _check_shapes(model: MultiHeadClassifier, variables: Mapping[str, Any], spec: Mapping[str, Any],
                  path: epath.Path) -> None:
    """Refuses variables whose tree or shapes differ from the architecture's."""
    import jax.numpy as jnp

    if "dense_model" in spec:
        probe = jnp.zeros((1, 32, 32, 3), jnp.float32)
    else:
        # A model that resizes some domains (input_sizes) may pass every domain through one
        # shared backbone call, which needs one image size: probe every domain at it.
        side = max((s for _, s in model.input_sizes), default=32)
        probe = {d: jnp.zeros((1, side, side, 3), jnp.float32) for d in model.domains}
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), probe, train=False))
    want = {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(dict(abstract))}
    got = {jax.tree_util.keystr(p): tuple(x.shape)
           for p, x in jax.tree_util.tree_leaves_with_path(dict(variables))}
    problems = [f"missing {k} {v}" for k, v in want.items() if k not in got]
    problems += [f"unexpected {k} {v}" for k, v in got.items() if k not in want]
    problems += [f"{k}: expected shape {v}, found {got[k]}" for k, v in want.items()
                 if k in got and got[k] != v]
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ValueError(f"The variables in {os.fspath(path)} do not fit the architecture in its "
                         f"{MODEL_FILE} ({spec.get('backbone') or spec.get('dense_model')}):\n  " + "\n  ".join(shown))
