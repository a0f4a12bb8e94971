"""Every results table of README.md and the config docstrings, regenerated from real runs;
exits with status 1 when a table differs from what the file shows.

    python tools/results_tables.py                          # every group: about 45 min, 2 cores
    python tools/results_tables.py --groups main,dense      # some groups (CI's slow tests: main,
                                                            # seeds, dense, one test each)
    python tools/results_tables.py --workdir runs/tables    # keep the runs (a finished one is
                                                            # reused, an interrupted one resumes)
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
measured; the runs share one prepared-data directory (``<workdir>/data``). The numbers are
bitwise reproducible on one machine; another CPU may change some of them, in which case
``--update`` writes what this machine gives (say so in the commit).

A table is found in its file by the text its first line starts with, and spans the lines up to
the next blank one; it must equal the rendering of the runs' ``results.json`` line for line.
Not covered, on purpose: speed (``benchmarks/README.md``, README's method-cost table, wall
times: noisy measurements that ``benchmarks/`` regenerates) and the paper's numbers the
configs quote (references, not runs of this code).
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
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

TRAIN_DOMAINS = ("digits", "shapes", "textures", "glyphs")
FEWSHOT_DOMAINS = {"glyphs_novel": "seen domain", "symbols": "unseen domain"}
FEWSHOT_ROWS = (("mdl", "ncc"), ("mdl", "pa"), ("url", "ncc"), ("url", "pa"))
SEEDS = (0, 1, 2)
TUNE_RATES = ("0.005", "0.01", "0.02", "0.04")

Results = Mapping[str, Mapping[str, Any]]  # run name -> its results.json


def fmt(value: float, digits: int = 1) -> str:
    """``value`` to ``digits`` decimals, halves rounded up (away from zero), as tables are read:
    a mean accuracy of 86.05 (stored as 86.05000000000001 or 95.04999999999998, depending on
    the order of the sums) always shows as 86.1."""
    exact = decimal.Decimal(f"{value:.9f}")  # drop the float noise of the sums first
    step = decimal.Decimal(1).scaleb(-digits)
    return str(exact.quantize(step, rounding=decimal.ROUND_HALF_UP))


class TableError(RuntimeError):
    """A table that cannot be located in its file, or a run that failed or gave results
    without the numbers a table needs."""


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``python -m ur_jax.main`` run: ``config`` (``configs/X.py[:arg]``) and ``flags``
    (``--config.*`` overrides; ``{workdir}`` is the tables' workdir, so a run can load another
    run's models), in ``<workdir>/<name>``."""
    name: str
    config: str
    flags: tuple[str, ...] = ()


def _tune_runs() -> tuple[Run, ...]:
    teachers = tuple(f"--config.teachers.checkpoints.{d}={{workdir}}/tune_teachers/teachers/{d}/"
                     "model" for d in TRAIN_DOMAINS)
    runs = [Run("tune_teachers", "configs/default.py:tune", ("--config.stages=teachers",))]
    for lr in TUNE_RATES:
        for seed in SEEDS:
            runs.append(Run(f"tune_s{seed}_lr{lr}", "configs/default.py:tune",
                            (f"--config.seed={seed}", f"--config.mdl.learning_rate={lr}",
                             f"--config.url.learning_rate={lr}") + teachers))
    return tuple(runs)


#: group name -> the runs it makes, in order.
GROUPS: dict[str, tuple[Run, ...]] = {
    "main": (Run("default", "configs/default.py"),),
    "seeds": (Run("default", "configs/default.py"),
              Run("default_seed1", "configs/default.py", ("--config.seed=1",)),
              Run("default_seed2", "configs/default.py", ("--config.seed=2",))),
    "tune": _tune_runs(),
    "dense": (Run("dense_default", "configs/dense_default.py"),),
}


def run_environment() -> dict[str, str]:
    """The subprocesses' environment: this one on one CPU device (``JAX_PLATFORMS=cpu``, no
    ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS``)."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = " ".join(flags.split())
    if not env["XLA_FLAGS"]:
        del env["XLA_FLAGS"]
    env["JAX_PLATFORMS"] = "cpu"
    return env


def execute(run: Run, workdir: pathlib.Path, log: Callable[[str], None] = print
            ) -> dict[str, Any]:
    """Runs ``run`` in ``workdir/<run.name>`` (unless its ``results.json`` exists there) and
    returns that ``results.json``; its output goes to ``workdir/<run.name>.log``.

    Raises:
      TableError: the run exits with an error (the log's last lines are in the message).
    """
    out = workdir / run.name
    results = out / "results.json"
    if results.exists():
        log(f"[tables] {run.name}: reusing {results}")
        return json.loads(results.read_text())
    command = [sys.executable, "-m", "ur_jax.main", "--config", str(ROOT / run.config),
               "--workdir", str(out), f"--config.data_dir={workdir / 'data'}"]
    command += [f.format(workdir=workdir) for f in run.flags]
    log(f"[tables] {run.name}: {run.config} {' '.join(command[8:])}".rstrip())
    start = time.monotonic()
    logfile = workdir / f"{run.name}.log"
    with open(logfile, "w") as f:
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


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], indent: int = 4,
             first: int = 0) -> list[str]:
    """Plain-text columns: the first left-aligned (at least ``first`` wide), the others
    right-aligned, two spaces apart."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    widths[0] = max(widths[0], first)
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append((" " * indent + "  ".join(parts)).rstrip())
    return lines


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


_STAGES = (("teachers", "teachers (4 networks)"), ("mdl", "MDL (1 network)"),
           ("url", "URL (1 network)"))


def main_accuracy_markdown(results: Results) -> list[str]:
    """README: per-domain test accuracy of the main job's teachers, MDL and URL."""
    rows = []
    for stage, label in _STAGES:
        cells = [fmt(_accuracy(results, 'default', stage, d)) for d in TRAIN_DOMAINS]
        rows.append([label, *cells, f"**{fmt(_accuracy(results, 'default', stage, 'mean'))}**"])
    return _markdown(["test accuracy (%)", *TRAIN_DOMAINS, "**mean**"], rows)


def _episodes(results: Results, run: str = "default") -> int:
    return _get(results, run, "config", "fewshot", "episodes")


def main_fewshot_markdown(results: Results) -> list[str]:
    """README: the main job's few-shot accuracy, +- 95% CI, per held-out set and their mean."""
    header = [f"5-way 5-shot (%, ± 95% CI, {_episodes(results)} episodes)"]
    header += [f"{d} ({kind})" for d, kind in FEWSHOT_DOMAINS.items()] + ["mean"]
    rows = []
    for model, method in FEWSHOT_ROWS:
        cells = [f"{fmt(r['accuracy'])} ± {fmt(r['ci95'])}" for r in
                 (_fewshot(results, "default", model, method, d) for d in FEWSHOT_DOMAINS)]
        mean = _fewshot(results, "default", model, method, "mean")["accuracy"]
        rows.append([f"{model.upper()} + {method.upper()}", *cells, fmt(mean)])
    return _markdown(header, rows)


def main_accuracy_text(results: Results) -> list[str]:
    """default.py's docstring: the main job's per-domain test accuracy."""
    rows = [[stage, *(fmt(_accuracy(results, 'default', stage, d))
                      for d in (*TRAIN_DOMAINS, "mean"))] for stage, _ in _STAGES]
    return _columns(["test accuracy %", *TRAIN_DOMAINS, "mean"], rows)


def main_fewshot_text(results: Results) -> list[str]:
    """default.py's docstring: the main job's few-shot accuracy +- 95% CI."""
    rows = []
    for model, method in FEWSHOT_ROWS:
        cells = [f"{fmt(r['accuracy'])} +- {fmt(r['ci95'])}" for r in
                 (_fewshot(results, "default", model, method, d) for d in FEWSHOT_DOMAINS)]
        rows.append([f"{model} {method}", *cells])
    return _columns([f"5-way 5-shot % ({_episodes(results)} episodes, +- 95% CI)",
                     *FEWSHOT_DOMAINS], rows)


def _mean_sd(values: Sequence[float]) -> str:
    """``mean +- sd`` (sample standard deviation, as the docstrings report)."""
    return f"{fmt(statistics.mean(values))} +- {fmt(statistics.stdev(values))}"


def seeds_text(results: Results) -> list[str]:
    """default.py's docstring: the whole main job at seeds 0, 1, 2 (teachers retrained per
    seed); few-shot rows are the mean over the two held-out sets."""
    runs = ("default", "default_seed1", "default_seed2")
    for seed, run in zip(SEEDS, runs):
        if _get(results, run, "config", "seed") != seed:
            raise TableError(f"the run {run!r} was not made with seed {seed}")
    rows = []
    for stage, _ in _STAGES:
        values = [_accuracy(results, r, stage, "mean") for r in runs]
        rows.append([stage, *(fmt(v) for v in values), _mean_sd(values)])
    for model, method in FEWSHOT_ROWS:
        values = [_fewshot(results, r, model, method, "mean")["accuracy"] for r in runs]
        rows.append([f"few-shot {model} {method}", *(fmt(v) for v in values),
                     _mean_sd(values)])
    return _columns(["whole job, test %", *(f"seed {s}" for s in SEEDS), "mean +- sd"], rows)


def tune_text(results: Results) -> list[str]:
    """default.py's docstring: the students' mean validation accuracy per learning rate and
    seed (``default.py:tune``, the seed-0 teachers of that split)."""
    rows = []
    for lr in TUNE_RATES:
        row = [lr]
        for stage in ("mdl", "url"):
            runs = [f"tune_s{s}_lr{lr}" for s in SEEDS]
            for r in runs:
                if _get(results, r, "evaluated_on") != "val":
                    raise TableError(f"the run {r!r} was not evaluated on validation")
            values = [_accuracy(results, r, stage, "mean") for r in runs]
            row += [" / ".join(fmt(v) for v in values), _mean_sd(values)]
        rows.append(row)
    seeds = "/".join(str(s) for s in SEEDS)
    return _columns(["student lr", f"mdl (seeds {seeds})", "mean +- sd", f"url (seeds {seeds})",
                     "mean +- sd"], rows)


_DENSE_METRICS = (("semantic", "miou", 2), ("semantic", "pixel_acc", 2),
                  ("depth", "abs_err", 4), ("depth", "rel_err", 4),
                  ("normal", "angle_mean", 2), ("normal", "angle_median", 2),
                  ("normal", "within_11_25", 2), ("normal", "within_22_5", 2),
                  ("normal", "within_30", 2))


def _dense_rows(results: Results, bold_url: bool) -> list[list[str]]:
    method = _get(results, "dense_default", "mtl", "method")
    rows = []
    for stage, label in (("stl", "STL (3 networks)"), ("mtl", f"{method} MTL"),
                         ("url", "URL")):
        cells = [fmt(_get(results, 'dense_default', stage, task, key), digits)
                 for task, key, digits in _DENSE_METRICS]
        if stage == "stl":
            delta = "0"
        else:
            delta = fmt(_get(results, 'dense_default', stage, 'delta_mtl', 'stl'), 2)
            if stage == "url" and bold_url:
                delta = f"**{delta}**"
        rows.append([label, *cells, delta])
    return rows


def dense_markdown(results: Results) -> list[str]:
    """README: the dense default's NYU-style table."""
    return _markdown(["", "mIoU", "PixAcc", "depth AbsErr", "RelErr", "normal Mean", "Median",
                      "<11.25", "<22.5", "<30", "Delta_MTL vs STL"],
                     _dense_rows(results, bold_url=True))


def dense_text(results: Results) -> list[str]:
    """dense_default.py's docstring: the same table as plain text."""
    return _columns(["stage", "mIoU", "PixAcc", "AbsErr", "RelErr", "Mean", "Median", "<11.25",
                     "<22.5", "<30", "Delta_MTL"], _dense_rows(results, bold_url=False))


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
    those tables are rewritten in their files."""
    differences = []
    for table in tables:
        path = root / table.path
        lines = path.read_text().split("\n")
        start, end = locate(lines, table)
        regenerated = table.render(results)
        if lines[start:end] != regenerated:
            differences.append(Difference(table, lines[start:end], regenerated))
            if update:
                lines[start:end] = regenerated
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
    if unknown:
        raise TableError(f"unknown groups {unknown}; expected some of {sorted(GROUPS)}")
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
    with tempfile.TemporaryDirectory(prefix="ur_jax_tables_") as tmp:
        workdir = pathlib.Path(args.workdir or tmp).resolve()
        try:
            differences = check(groups, workdir, update=args.update)
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
