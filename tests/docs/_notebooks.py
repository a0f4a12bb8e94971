"""Runs a ``colabs/`` notebook the way its test needs it: the code cells, in order, in one
namespace, in-process (no Jupyter), in the smoke setting; shared by the notebook tests.

Import it after ``matplotlib.use("Agg")`` (the tests do so before any cell imports pyplot).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import matplotlib.pyplot as plt
import pytest
from absl import logging
from matplotlib.container import BarContainer


def code_cells(notebook: pathlib.Path) -> list[str]:
    """The code cells' sources, after checking the stored form: nbformat 4, Python, no
    outputs or execution counts, plain Python (no shell or magic lines), and a closing
    "What to look at" markdown cell."""
    nb = json.loads(notebook.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["language"] == "python"
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), "the notebook is stored without outputs"
            assert cell.get("execution_count") is None, "the notebook is stored unexecuted"
            src = "".join(cell["source"])
            assert not any(line.lstrip().startswith(("!", "%")) for line in src.splitlines()), \
                "code cells are plain Python (no shell or magic lines)"
            cells.append(src)
    last = nb["cells"][-1]
    assert last["cell_type"] == "markdown"
    assert "".join(last["source"]).startswith("## What to look at")
    return cells


@contextlib.contextmanager
def executed(notebook: pathlib.Path, cwd: pathlib.Path, env: Mapping[str, str]
             ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Executes ``notebook`` from ``cwd`` with ``env`` (plus ``UR_JAX_SMOKE=1`` and the Agg
    backend); yields ``(namespace, {figure label: figure})``, then restores the environment,
    the working directory and absl's verbosity (notebooks turn INFO on) and closes the
    figures."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"UR_JAX_SMOKE": "1", "MPLBACKEND": "Agg", **env}.items():
            mp.setenv(key, value)
        mp.chdir(cwd)
        plt.close("all")
        verbosity = logging.get_verbosity()
        namespace: dict[str, Any] = {"__name__": "__main__"}
        try:
            for i, src in enumerate(code_cells(notebook)):
                exec(compile(src, f"{notebook}:code cell {i}", "exec"), namespace)
            yield namespace, {label: plt.figure(label) for label in plt.get_figlabels()}
        finally:
            logging.set_verbosity(verbosity)
            plt.close("all")


def bars(ax) -> list[BarContainer]:
    """The bar groups drawn on ``ax``."""
    return [c for c in ax.containers if isinstance(c, BarContainer)]
