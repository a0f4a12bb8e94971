"""Every results table of README.md and the config docstrings, regenerated from real runs;
exits with status 1 when a table differs from what the file shows.

    python tools/results_tables.py                          # every group: about 45 min, 2 cores
    python tools/results_tables.py --groups main,dense      # some groups (CI's two slow tests:
                                                            # main + seeds, and dense)
    python tools/results_tables.py --workdir runs/tables    # keep the runs (a finished one of
                                                            # the same config is reused, an
                                                            # interrupted one resumes)
    python tools/results_tables.py --update                 # write the regenerated tables

Groups, the runs each makes and the tables they give:

- ``main``: ``configs/default.py`` (seed 0): README's main-job accuracy and few-shot tables,
  and the same two in ``configs/default.py``'s docstring.
- ``seeds``: ``configs/default.py`` at seeds 1 and 2 (with ``main``'s seed 0): the whole-job
  table over seeds in ``configs/default.py``'s docstring.
- ``tune``: ``configs/default.py:tune`` teachers, then the students at the learning rates
  0.005, 0.01, 0.02, 0.04 and seeds 0, 1, 2 (12 runs, validation only): the learning-rate table
  in ``configs/default.py``'s docstring. Not run by CI (about 20 minutes); it depends on the
  code that ``main`` runs, so when ``main`` drifts, regenerate this group too.
- ``dense``: ``configs/dense_default.py``: README's dense table and the same in
  ``configs/dense_default.py``'s docstring.

Every run is ``python -m ur_jax.main`` in a subprocess on one CPU device
(``JAX_PLATFORMS=cpu``; a fake device count in ``XLA_FLAGS`` is removed), as the tables were
measured; the runs share one prepared-data directory (``<workdir>/data``). In a kept
``--workdir``, a finished run is reused only when its ``config.json`` is the config the group
asks for and it ran on one CPU device; reuse assumes the code has not changed since. The numbers are
bitwise reproducible on one machine; another CPU may change some of them, in which case
``--update`` writes what this machine gives (say so in the commit).

A table is found in its file by the text its first line starts with, and spans the lines up to
the next blank one; it must equal the rendering of the runs' ``results.json`` line for line.
Not covered, on purpose: speed (``benchmarks/README.md``, README's method-cost table, wall
times: noisy measurements that ``benchmarks/`` regenerates) and the paper's numbers the
configs quote (references, not runs of this code). Numbers quoted in prose (README's and
``default.py``'s comparisons of MDL and URL) are derived from these tables: read them again
when a table changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ur_jax from this checkout, installed or not
    sys.path.insert(0, str(ROOT))

from ur_jax.config import load_config  # noqa: E402
from ur_jax.run.tables import TABLE_DIGITS, TABLE_METRICS, format_number  # noqa: E402
from ur_jax.run.workdir import config_differences  # noqa: E402

TUNE_DOMAINS = ("digits", "shapes", "textures", "glyphs")  # default.py's, for the teachers' paths
#: A few-shot set's relation to the training domains, shown in README's header.
FEWSHOT_KIND = {"glyphs_novel": "seen domain", "symbols": "unseen domain"}
SEEDS = (0, 1, 2)
TUNE_RATES = (0.005, 0.01, 0.02, 0.04)

Results = Mapping[str, Mapping[str, Any]]  # run name -> its results.json


def fmt(value: float, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals, halves rounded up, as the runs print it
    (:func:`ur_jax.run.tables.format_number`)."""
    return format_number(value, digits)


class TableError(RuntimeError):
    """A table that cannot be located in its file, or a run that failed, was made with another
    config, or gave results without the numbers a table needs."""


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``python -m ur_jax.main`` run of ``config`` (``configs/X.py[:arg]``) with
    ``overrides`` (``{dotted key: value}``, given as ``--config.<key>=<value>``; in a string,
    ``{workdir}`` is the tables' workdir, so a run can load another run's models), in
    ``<workdir>/<name>``."""
    name: str
    config: str
    overrides: tuple[tuple[str, Any], ...] = ()

    def values(self, workdir: pathlib.Path) -> dict[str, Any]:
        """The overrides with ``{workdir}`` filled in, and the shared ``data_dir``."""
        out = {"data_dir": str(workdir / "data")}
        for key, value in self.overrides:
            out[key] = value.format(workdir=workdir) if isinstance(value, str) else value
        return out

    def flags(self, workdir: pathlib.Path) -> list[str]:
        """The overrides as ``--config.<key>=<value>`` flags (tuples comma-separated)."""
        return [f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                for k, v in self.values(workdir).items()]


def _tune_runs() -> tuple[Run, ...]:
    teachers = tuple((f"teachers.checkpoints.{d}", f"{{workdir}}/tune_teachers/teachers/{d}/model")
                     for d in TUNE_DOMAINS)
    runs = [Run("tune_teachers", "configs/default.py:tune", (("stages", ("teachers",)),))]
    for lr in TUNE_RATES:
        for seed in SEEDS:
            runs.append(Run(f"tune_s{seed}_lr{lr}", "configs/default.py:tune",
                            (("seed", seed), ("mdl.learning_rate", lr),
                             ("url.learning_rate", lr)) + teachers))
    return tuple(runs)


#: group name -> the runs it makes, in order.
GROUPS: dict[str, tuple[Run, ...]] = {
    "main": (Run("default", "configs/default.py"),),
    "seeds": (Run("default", "configs/default.py"),
              Run("default_seed1", "configs/default.py", (("seed", 1),)),
              Run("default_seed2", "configs/default.py", (("seed", 2),))),
    "tune": _tune_runs(),
    "dense": (Run("dense_default", "configs/dense_default.py"),),
}


def run_environment() -> dict[str, str]:
    """The subprocesses' environment: this one on one CPU device (``JAX_PLATFORMS=cpu``, no
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``, no ``JAX_NUM_CPU_DEVICES``)."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = " ".join(flags.split())
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _check_reusable(run: Run, out: pathlib.Path, workdir: pathlib.Path) -> None:
    """Refuses a finished run in ``out`` made with another config than ``run``'s, or on
    more than one device."""
    config = load_config(str(ROOT / run.config), **run.values(workdir))
    differences = config_differences(json.loads((out / "config.json").read_text()), config)
    if differences:
        raise TableError(f"{out} holds a run of another config than {run.config} with "
                         f"{dict(run.values(workdir))}: " + "; ".join(differences[:5])
                         + ". Delete it (or use another --workdir).")
    timing = json.loads((out / "timing.json").read_text())
    if (timing.get("devices"), timing.get("backend")) != (1, "cpu"):
        raise TableError(f"{out} was run on {timing.get('devices')} {timing.get('backend')} "
                         "device(s); the tables are measured on one CPU device. Delete it.")


def execute(run: Run, workdir: pathlib.Path, log: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Runs ``run`` in ``workdir/<run.name>`` and returns its ``results.json``; its output
    goes to ``workdir/<run.name>.log``. A finished run found there (its ``results.json``
    written) is reused when it was made with the same config on one CPU device: reuse
    assumes the code has not changed since.

    Raises:
      TableError: the run exits with an error (the log's last lines are in the message), or a
        finished run there was made with another config or on other devices.
    """
    out = workdir / run.name
    results = out / "results.json"
    if results.exists():
        _check_reusable(run, out, workdir)
        log(f"[tables] {run.name}: reusing {results}")
        return json.loads(results.read_text())
    flags = run.flags(workdir)
    command = [sys.executable, "-m", "ur_jax.main", "--config", str(ROOT / run.config),
               "--workdir", str(out), *flags]
    log(f"[tables] {run.name}: {run.config} {' '.join(flags[1:])}".rstrip())
    start = time.monotonic()
    logfile = workdir / f"{run.name}.log"
    with open(logfile, "a") as f:  # an interrupted attempt's log stays above
        code = subprocess.call(command, cwd=ROOT, env=run_environment(), stdout=f,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if code != 0 or not results.exists():
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-30:])
        raise TableError(f"{run.name} ({run.config}) failed with exit status {code}; the end "
                         f"of {logfile}:\n{tail}")
    log(f"[tables] {run.name}: done in {time.monotonic() - start:.0f} s")
    return json.loads(results.read_text())


# ----------------------------------------------------------------------------- rendering


def _get(results: Results, run: str, *keys: str) -> Any:
    value: Any = results.get(run)
    if value is None:
        raise TableError(f"no results of the run {run!r}")
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise TableError(f"results of {run!r} have no {'/'.join(keys)}")
        value = value[key]
    return value


def _accuracy(results: Results, run: str, stage: str, domain: str) -> float:
    return _get(results, run, stage, domain, "accuracy")


def _fewshot(results: Results, run: str, model: str, method: str, domain: str) -> Any:
    return _get(results, run, "fewshot", model, method, domain)


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 4) -> list[str]:
    """Plain-text columns: the first left-aligned, the others right-aligned, two spaces
    apart."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append((" " * indent + "  ".join(parts)).rstrip())
    return lines


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


# What a table shows is read from the run's own config and results (domains, stages, few-shot
# sets, models and methods), so a config that gains a domain or a method changes the table.

def _domains(results: Results, run: str = "default") -> list[str]:
    return list(_get(results, run, "config", "domains"))


def _stages(results: Results, run: str = "default") -> list[str]:
    """The stages with per-domain results (teachers, students), in the config's order."""
    return [s for s in _get(results, run, "config", "stages") if s != "fewshot"]


def _stage_label(results: Results, stage: str) -> str:
    if stage == "teachers":
        return f"teachers ({len(_domains(results))} networks)"
    return f"{stage.upper()} (1 network)"


def _fewshot_sets(results: Results, run: str = "default") -> list[str]:
    return list(_get(results, run, "config", "fewshot", "domains"))


def _fewshot_rows(results: Results, run: str = "default") -> list[tuple[str, str]]:
    """``(model, method)`` of every few-shot result, in the results' order."""
    return [(model, method) for model, per_method in _get(results, run, "fewshot").items()
            if model != "protocol" for method in per_method]


def main_accuracy_markdown(results: Results) -> list[str]:
    """README: per-domain test accuracy of the main job's teachers, MDL and URL."""
    domains, rows = _domains(results), []
    for stage in _stages(results):
        cells = [fmt(_accuracy(results, "default", stage, d)) for d in domains]
        rows.append([_stage_label(results, stage), *cells,
                     f"**{fmt(_accuracy(results, 'default', stage, 'mean'))}**"])
    return _markdown(["test accuracy (%)", *domains, "**mean**"], rows)


def _episodes(results: Results, run: str = "default") -> int:
    return _get(results, run, "config", "fewshot", "episodes")


def main_fewshot_markdown(results: Results) -> list[str]:
    """README: the main job's few-shot accuracy, +- 95% CI, per held-out set and their mean."""
    sets = _fewshot_sets(results)
    header = [f"5-way 5-shot (%, ± 95% CI, {_episodes(results)} episodes)"]
    header += [f"{d} ({FEWSHOT_KIND[d]})" if d in FEWSHOT_KIND else d for d in sets] + ["mean"]
    rows = []
    for model, method in _fewshot_rows(results):
        cells = [f"{fmt(r['accuracy'])} ± {fmt(r['ci95'])}" for r in
                 (_fewshot(results, "default", model, method, d) for d in sets)]
        mean = _fewshot(results, "default", model, method, "mean")["accuracy"]
        rows.append([f"{model.upper()} + {method.upper()}", *cells, fmt(mean)])
    return _markdown(header, rows)


def main_accuracy_text(results: Results) -> list[str]:
    """default.py's docstring: the main job's per-domain test accuracy."""
    columns = [*_domains(results), "mean"]
    rows = [[stage, *(fmt(_accuracy(results, "default", stage, d)) for d in columns)]
            for stage in _stages(results)]
    return _columns(["test accuracy %", *columns], rows)


def main_fewshot_text(results: Results) -> list[str]:
    """default.py's docstring: the main job's few-shot accuracy +- 95% CI."""
    sets, rows = _fewshot_sets(results), []
    for model, method in _fewshot_rows(results):
        cells = [f"{fmt(r['accuracy'])} +- {fmt(r['ci95'])}" for r in
                 (_fewshot(results, "default", model, method, d) for d in sets)]
        rows.append([f"{model} {method}", *cells])
    return _columns([f"5-way 5-shot % ({_episodes(results)} episodes, +- 95% CI)", *sets], rows)


def _mean_sd(values: Sequence[float]) -> str:
    """``mean +- sd`` (sample standard deviation, as the docstrings report)."""
    return f"{fmt(statistics.mean(values))} +- {fmt(statistics.stdev(values))}"


def seeds_text(results: Results) -> list[str]:
    """default.py's docstring: the whole main job at seeds 0, 1, 2 (teachers retrained per
    seed); few-shot rows are the mean over the held-out sets."""
    runs = ("default", "default_seed1", "default_seed2")
    for seed, run in zip(SEEDS, runs):
        if _get(results, run, "config", "seed") != seed:
            raise TableError(f"the run {run!r} was not made with seed {seed}")
    rows = []
    for stage in _stages(results):
        values = [_accuracy(results, r, stage, "mean") for r in runs]
        rows.append([stage, *(fmt(v) for v in values), _mean_sd(values)])
    for model, method in _fewshot_rows(results):
        values = [_fewshot(results, r, model, method, "mean")["accuracy"] for r in runs]
        rows.append([f"few-shot {model} {method}", *(fmt(v) for v in values),
                     _mean_sd(values)])
    return _columns(["whole job, test %", *(f"seed {s}" for s in SEEDS), "mean +- sd"], rows)


def tune_text(results: Results) -> list[str]:
    """default.py's docstring: the students' mean validation accuracy per learning rate and
    seed (``default.py:tune``, the seed-0 teachers of that split)."""
    first = f"tune_s{SEEDS[0]}_lr{TUNE_RATES[0]}"
    students = [s for s in _stages(results, first) if s != "teachers"]
    for lr in TUNE_RATES:
        for s in SEEDS:
            if _get(results, f"tune_s{s}_lr{lr}", "evaluated_on") != "val":
                raise TableError(f"the run 'tune_s{s}_lr{lr}' was not evaluated on validation")
    seeds = "/".join(str(s) for s in SEEDS)
    header, rows = ["student lr"], []
    for stage in students:
        header += [f"{stage} (seeds {seeds})", "mean +- sd"]
    for lr in TUNE_RATES:
        row = [str(lr)]
        for stage in students:
            values = [_accuracy(results, f"tune_s{s}_lr{lr}", stage, "mean") for s in SEEDS]
            row += [" / ".join(fmt(v) for v in values), _mean_sd(values)]
        rows.append(row)
    return _columns(header, rows)


def _dense_columns(results: Results) -> list[tuple[str, str, str]]:
    """``(task, metric key, label)`` of the run's tasks, as the run prints them
    (:data:`ur_jax.run.tables.TABLE_METRICS`)."""
    return [(t, key, label) for t in _get(results, "dense_default", "config", "tasks")
            for key, label in TABLE_METRICS[t]]


def _dense_rows(results: Results, bold_url: bool) -> list[list[str]]:
    rows = []
    for stage in _stages(results, "dense_default"):
        if stage == "stl":
            label = f"STL ({len(_get(results, 'dense_default', 'config', 'tasks'))} networks)"
        elif stage == "mtl":
            label = f"{_get(results, 'dense_default', 'mtl', 'method')} MTL"
        else:
            label = stage.upper()
        cells = [fmt(_get(results, "dense_default", stage, t, key), TABLE_DIGITS[t])
                 for t, key, _ in _dense_columns(results)]
        if stage == "stl":
            delta = "0"
        else:
            delta = fmt(_get(results, "dense_default", stage, "delta_mtl", "stl"), 2)
            if stage == "url" and bold_url:
                delta = f"**{delta}**"
        rows.append([label, *cells, delta])
    return rows


def dense_markdown(results: Results) -> list[str]:
    """README: the dense default's NYU-style table (the first metric of depth and normal
    named with its task)."""
    header, seen = [""], set()
    for task, _, label in _dense_columns(results):
        header.append(f"{task} {label}" if task != "semantic" and task not in seen else label)
        seen.add(task)
    return _markdown([*header, "Delta_MTL vs STL"], _dense_rows(results, bold_url=True))


def dense_text(results: Results) -> list[str]:
    """dense_default.py's docstring: the same table as plain text."""
    return _columns(["stage", *(label for _, _, label in _dense_columns(results)), "Delta_MTL"],
                    _dense_rows(results, bold_url=False))


# ----------------------------------------------------------------------------- tables


@dataclasses.dataclass(frozen=True)
class Table:
    """A results table: in ``path`` (relative to the repository), the block of lines whose
    first line starts with ``anchor`` (leading spaces ignored) up to the next blank line,
    rendered by ``render`` from the ``group``'s results."""
    path: str
    anchor: str
    group: str
    render: Callable[[Results], list[str]]

    def __str__(self) -> str:
        return f"{self.path}: {self.anchor!r}"


TABLES: tuple[Table, ...] = (
    Table("README.md", "| test accuracy (%) |", "main", main_accuracy_markdown),
    Table("README.md", "| 5-way 5-shot (%", "main", main_fewshot_markdown),
    Table("configs/default.py", "test accuracy %", "main", main_accuracy_text),
    Table("configs/default.py", "5-way 5-shot % (", "main", main_fewshot_text),
    Table("configs/default.py", "whole job, test %", "seeds", seeds_text),
    Table("configs/default.py", "student lr", "tune", tune_text),
    Table("README.md", "| | mIoU | PixAcc |", "dense", dense_markdown),
    Table("configs/dense_default.py", "stage ", "dense", dense_text),
)


def locate(lines: Sequence[str], table: Table) -> tuple[int, int]:
    """``(start, end)``: the table's lines are ``lines[start:end]``.

    Raises:
      TableError: no line, or more than one, starts with the table's anchor.
    """
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(table.anchor)]
    if len(starts) != 1:
        raise TableError(f"{table}: {len(starts)} lines start with the anchor (expected 1)")
    end = starts[0]
    while end < len(lines) and lines[end].strip():
        end += 1
    return starts[0], end


@dataclasses.dataclass(frozen=True)
class Difference:
    """A table whose file shows ``shown`` where the runs give ``regenerated``."""
    table: Table
    shown: list[str]
    regenerated: list[str]

    def diff(self) -> str:
        return "\n".join(difflib.unified_diff(
            self.shown, self.regenerated, f"{self.table.path} (shown)",
            f"{self.table.path} (regenerated)", lineterm=""))


def compare(tables: Sequence[Table], results: Results, root: pathlib.Path = ROOT,
            update: bool = False) -> list[Difference]:
    """The tables whose file differs from their rendering of ``results``; with ``update``,
    those tables are rewritten in their files (only once every table is located and
    rendered, so a failure leaves every file as it was).

    Raises:
      TableError: a table that cannot be located, or results without a number it needs.
    """
    differences = []
    for table in tables:
        lines = (root / table.path).read_text().split("\n")
        start, end = locate(lines, table)
        regenerated = table.render(results)
        if lines[start:end] != regenerated:
            differences.append(Difference(table, lines[start:end], regenerated))
    if update:
        for d in differences:
            path = root / d.table.path
            lines = path.read_text().split("\n")
            start, end = locate(lines, d.table)
            lines[start:end] = d.regenerated
            path.write_text("\n".join(lines))
    return differences


def check(groups: Sequence[str], workdir: pathlib.Path, update: bool = False,
          log: Callable[[str], None] = print) -> list[Difference]:
    """Makes the runs of ``groups`` in ``workdir`` and compares their tables
    (:func:`compare`); returns the differences.

    Raises:
      TableError: an unknown group, a run that fails, a table that cannot be located.
    """
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown or not groups:
        raise TableError(f"unknown groups {unknown or list(groups)}; expected some of "
                         f"{sorted(GROUPS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        for run in GROUPS[group]:
            if run.name not in results:
                results[run.name] = execute(run, workdir, log)
    return compare([t for t in TABLES if t.group in groups], results, update=update)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", default=",".join(GROUPS),
                   help=f"comma-separated, of {', '.join(GROUPS)} (default: all)")
    p.add_argument("--workdir", default="",
                   help="where the runs go (kept; default: a temporary directory, removed)")
    p.add_argument("--update", action="store_true",
                   help="write the regenerated tables into their files")
    args = p.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    try:
        if args.workdir:
            differences = check(groups, pathlib.Path(args.workdir).resolve(), args.update)
        else:
            with tempfile.TemporaryDirectory(prefix="ur_jax_tables_") as tmp:
                differences = check(groups, pathlib.Path(tmp), args.update)
    except TableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in differences:
        print(d.diff())
    checked = [t for t in TABLES if t.group in groups]
    verb = "rewritten" if args.update else "differ"
    print(f"[tables] {len(checked)} tables checked, {len(differences)} {verb}")
    return 1 if differences and not args.update else 0


if __name__ == "__main__":
    sys.exit(main())
