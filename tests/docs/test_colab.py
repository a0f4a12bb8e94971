"""colabs/quickstart.ipynb runs as written: its code cells, in order, in one namespace,
in-process (no Jupyter needed), on the smoke config; and every plot draws something."""

import json
import math
import os
import pathlib

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before the cells import pyplot


import _notebooks  # noqa: E402  (tests/docs/_notebooks.py)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("ur_colab_data"))


@pytest.fixture
def notebook(data_dir, tmp_path):
    """Executes the notebook; returns (namespace, {figure label: figure})."""
    env = {"UR_JAX_DATA_DIR": data_dir, "UR_JAX_WORKDIR": str(tmp_path / "run")}
    with _notebooks.executed(NOTEBOOK, ROOT, env) as result:
        yield result


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_quickstart_notebook_runs(notebook):
    ns, figures = notebook
    assert ns["SMOKE"] is True and ns["IN_COLAB"] is False
    assert pathlib.Path(ns["REPO_DIR"]) == ROOT

    # The run: every stage finished and results.json was written.
    results = ns["results"]
    domains = list(results["config"]["domains"])
    assert domains == ["digits", "shapes"]
    for key in ("teachers", "mdl", "url"):
        assert set(results[key]) == set(domains) | {"mean"}, key
        for entry in results[key].values():
            assert 0.0 <= entry["accuracy"] <= 100.0
    fdomains = list(results["config"]["fewshot"]["domains"])
    for model in ("mdl", "url"):
        for method in ("ncc", "pa"):
            assert set(results["fewshot"][model][method]) == set(fdomains) | {"mean"}
    workdir = pathlib.Path(os.environ["UR_JAX_WORKDIR"])
    assert (workdir / "results.json").is_file()
    assert json.loads((workdir / "results.json").read_text())["url"] == results["url"]

    assert set(figures) == {"test accuracy", "training curves", "few-shot accuracy"}

    # (a) one bar group per model, a bar per domain plus the mean, heights = the results.
    (ax,) = figures["test accuracy"].axes
    bars = _notebooks.bars(ax)
    assert len(bars) == 3
    for container, key in zip(bars, ("teachers", "mdl", "url")):
        heights = [p.get_height() for p in container.patches]
        assert heights == pytest.approx([results[key][g]["accuracy"] for g in domains + ["mean"]])
    assert [t.get_text() for t in ax.get_xticklabels()] == domains + ["mean"]

    # (b) a curve per teacher, MDL and URL (and URL's three loss terms), each with points.
    curves = {}
    for ax in figures["training curves"].axes:
        for line in ax.get_lines():
            curves[(ax.get_title(), line.get_label())] = line
    labels = {label for _, label in curves}
    assert set(domains) <= labels
    assert {"MDL (task losses)", "URL (task + distillation)", "URL task", "URL logit KD (KL)",
            "URL feature alignment"} <= labels
    for (title, label), line in curves.items():
        y = line.get_ydata()
        assert len(y) >= 2 and all(math.isfinite(v) for v in y), (title, label)
    steps = ns["scalars"]["url/loss"]
    assert list(curves[("Students: total loss", "URL (task + distillation)")].get_ydata()) == \
        pytest.approx([v for _, v in steps])

    # (c) MDL/URL x NCC/PA bars with 95% CI error bars, heights = the results.
    (ax,) = figures["few-shot accuracy"].axes
    bars = _notebooks.bars(ax)
    assert len(bars) == 4
    for container, (model, method) in zip(bars, [("mdl", "ncc"), ("mdl", "pa"),
                                                  ("url", "ncc"), ("url", "pa")]):
        res = results["fewshot"][model][method]
        assert [p.get_height() for p in container.patches] == \
            pytest.approx([res[d]["accuracy"] for d in fdomains])
        assert container.errorbar is not None
        (segments,) = container.errorbar.lines[2]  # the vertical error segments
        half = [abs(s[1][1] - s[0][1]) / 2 for s in segments.get_segments()]
        assert half == pytest.approx([res[d]["ci95"] for d in fdomains])
