"""The run's directory: creating it, refusing another config's run, atomic JSON files.

Layout of a workdir (what :data:`RUN_OUTPUTS` lists)::

    config.json      the config of the run that owns the directory
    checkpoints/     (state, data iterator) per training stage, for exact resume
    teachers/ students/ selection/ predictions/ tensorboard/
    results.json     the final numbers (also returned by :func:`ur_jax.run.run`)
    timing.json      wall time and devices (kept out of results.json: it varies)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
from absl import logging

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
TIMING_FILE = "timing.json"
#: Config keys that may change between a run and its continuation: they do not change
#: any number the run produces.
RESUMABLE_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "data_threads",
                  "data_dir", "manual_dir", "metadataset")  # (where the data is read from)
#: What ``overwrite`` removes from a workdir (nothing else is touched).
RUN_OUTPUTS = ("checkpoints", "teachers", "students", "selection", "predictions", "tensorboard",
               RESULTS_FILE, CONFIG_FILE, TIMING_FILE)


class WorkdirError(RuntimeError):
    """The workdir cannot be used: not writable, or it holds a run of another config."""


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in json.loads(json.dumps(config, default=str)).items()
            if k not in RESUMABLE_KEYS}


def with_declared_defaults(previous: Mapping[str, Any], config: ml_collections.ConfigDict
                           ) -> dict[str, Any]:
    """``previous`` (a workdir's ``config.json``) with the declared keys it lacks
    (:func:`ur_jax.config.blocks.declared_defaults`) set to their defaults, where ``config``
    holds those defaults too: a run recorded before a key was declared ran with its default,
    so it resumes under a config that spells the default out."""
    from ur_jax.config.blocks import declared_defaults

    out = json.loads(json.dumps(previous, default=str))
    current = json.loads(config.to_json_best_effort())
    if "problem" not in config or config.problem not in ("classification", "dense"):
        return out
    for path, default in declared_defaults(config, config.problem).items():
        *parents, leaf = path.split(".")
        old, new = out, current
        for p in parents:
            old, new = old.get(p), new.get(p)
            if not isinstance(old, dict) or not isinstance(new, dict):
                break
        else:
            default = json.loads(json.dumps(default))
            if leaf not in old and new.get(leaf) == default:
                old[leaf] = default
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}.{k}" if prefix else k
            if k not in a or k not in b:
                out.append(f"{key}: {'absent' if k not in a else a[k]!r} -> "
                           f"{'absent' if k not in b else b[k]!r}")
            else:
                out.extend(_diff(a[k], b[k], key))
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def config_differences(recorded: Mapping[str, Any], config: ml_collections.ConfigDict
                       ) -> list[str]:
    """The keys where ``config`` differs from a workdir's ``recorded`` ``config.json``, as
    ``'key: recorded -> current'`` lines; keys in :data:`RESUMABLE_KEYS` may differ, and a
    declared key the recorded config lacks matches its default (:func:`with_declared_defaults`).
    Empty: ``config`` resumes that run."""
    previous = with_declared_defaults(recorded, config)
    return _diff(_comparable(previous), _comparable(json.loads(config.to_json_best_effort())))


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, overwrite: bool = False,
                    primary: bool = True) -> str:
    """Creates ``workdir`` (checking it is writable), records ``config`` in it and returns
    its absolute path.

    ``primary=False`` (every process but 0 of a multi-process run, :mod:`ur_jax.distributed`)
    only checks the recorded config: it raises what process 0 raises for it, and creates,
    writes and deletes nothing. Every process checks before process 0 changes anything; the runner
    passes barriers around this call.

    Raises:
      WorkdirError: the directory is not writable, or it holds a run of a different config
        (the message lists the differing keys), unless ``overwrite``, which deletes that
        run's outputs (:data:`RUN_OUTPUTS`) first. Keys in :data:`RESUMABLE_KEYS` may differ,
        and a declared key the recorded config lacks matches its default
        (:func:`with_declared_defaults`).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if primary:
        _check_writable(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    current = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            diffs = config_differences(json.load(f), config)
        if diffs and not overwrite:
            raise WorkdirError(
                f"The workdir {workdir!r} holds a run of a different config:\n  "
                + "\n  ".join(diffs[:20])
                + "\nUse another --workdir, or pass --overwrite to delete that run's outputs "
                  "and start again.")
        if diffs and primary:
            logging.warning("Overwriting the run in %s (config changed: %s).", workdir,
                            "; ".join(diffs[:5]))
            for name in RUN_OUTPUTS:
                target = os.path.join(workdir, name)
                if os.path.isdir(target):
                    shutil.rmtree(target)
                elif os.path.exists(target):
                    os.remove(target)
    if primary:
        write_json(path, current)
    return workdir


def _check_writable(workdir: str) -> None:
    """Creates ``workdir`` and writes a probe file in it.

    Raises:
      WorkdirError: it cannot be created or written to.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"Cannot write to the workdir {workdir!r} ({e.strerror or e}). "
                           f"Choose a --workdir you can write to.") from None


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON to ``path`` atomically (a killed run never leaves half
    a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
    os.replace(tmp, path)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` pairs of a nested dict (hparams for TensorBoard)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, tree
