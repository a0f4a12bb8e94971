"""Command line: ``python -m ur_jax.main --config configs/<name>.py[:<arg>] --workdir DIR``.

Runs the stages the config names (:func:`ur_jax.run.run`; the stages are in
:mod:`ur_jax.stages`), resuming whatever ``DIR``
already holds of the same config, and writes ``DIR/results.json``. Any config value can
be overridden: ``--config.seed=1``, ``--config.url.steps=2000``; a tuple of names takes
comma-separated names (``--config.fewshot.methods=ncc,pa``). ``--overwrite`` replaces a run of
a different config in ``DIR``.

Several processes (one per host: a TPU pod slice, a multi-node GPU job, or local processes
with CPU devices) run the same command with ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (the arguments of ``jax.distributed.initialize``), or
without them where SLURM, Open MPI or a TPU pod starts the processes
(:func:`ur_jax.distributed.initialize`). Process 0 writes the run's files; every process
reads its part of each batch. README: "Several hosts".
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/default.py or configs/default.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.json.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Delete a run of a different config found in --workdir.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run "
    "(jax.distributed.initialize); not needed where SLURM, Open MPI or a TPU pod starts it.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in [0, --num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def _config_key(arg: str) -> str:
    return arg.split("=", 1)[0][len("--config."):]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a readable error for a config key the config does not have."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(msg))
            e = e.args[0]
        text = str(e.args[0] if e.args else e)
        hint = text[text.index("Did you mean"):] if "Did you mean" in text else ""
        name = text.split("\n")[0].strip("'\"")
        keys = [_config_key(a) for a in argv if a.startswith("--config.")]
        bad = next((k for k in keys if k.split(".")[-1] == name), name)
        print(f"error: the config has no key {bad!r} (--config.{bad}). {hint}\n"
              f"Its keys are declared in ur_jax/config/blocks.py (every config) and by the config "
              f"file or its suite's recipe (ur_jax/suites/<suite>/recipe.py).", file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"error: {e}\nPass --help for usage.", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from ur_jax import distributed

    try:  # before anything else uses JAX
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    from ur_jax import run  # after flag parsing: JAX reads its flags at import
    from ur_jax.config import split_names

    config = _CONFIG.value
    split_names(config)  # --config.fewshot.methods=pa,tsa -> ('pa', 'tsa')
    try:
        run.run(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
    except (run.WorkdirError, FileNotFoundError, ValueError, distributed.ProcessError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
