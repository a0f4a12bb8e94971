"""colabs/dense.ipynb runs as written: its code cells, in order, in one namespace, in-process
(no Jupyter needed), on the smoke dense default; its table, bars, prediction maps and
training curves show the run's numbers, models and TensorBoard scalars.

Slow (about 1.5 minutes on 2 CPU cores): CI runs it with ``python -m pytest -m slow``.
The notebook runs through tests/docs/_notebooks.py, as the other notebooks do."""

import json
import math
import os
import pathlib

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before the cells import pyplot

import jax  # noqa: E402

import _notebooks  # noqa: E402  (tests/docs/_notebooks.py)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "dense.ipynb"
TASKS = ["semantic", "depth", "normal"]
STAGES = ["stl", "mtl", "url"]
LABELS = ["STL", "MTL (uniform)", "URL"]
FIGURES = {"test metrics", "training curves", "predictions: semantic", "predictions: depth",
           "predictions: normal"}


@pytest.fixture
def notebook(tmp_path):
    """Executes the notebook; returns (namespace, {figure label: figure})."""
    env = {"UR_JAX_DATA_DIR": str(tmp_path / "data"), "UR_JAX_WORKDIR": str(tmp_path / "run")}
    with _notebooks.executed(NOTEBOOK, ROOT, env) as result:
        yield result


def _check_table(table: str, results) -> None:
    """Every number of the printed table is the results' number, as printed."""
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:-1]}
    assert list(rows) == ["STL", "uniform", "URL"]
    for name, stage in zip(rows, STAGES):
        digits = [4 if t == "depth" else 2 for t in TASKS for _ in _table_keys(t)]
        values = [results[stage][t][k] for t in TASKS for k in _table_keys(t)]
        cells = rows[name]
        assert len(cells) == len(values) + 2, name
        for cell, value, n in zip(cells, values, digits):
            # printed with n decimals, rounded (halves up: format_number)
            assert len(cell.split(".")[1]) == n and float(cell) == pytest.approx(
                value, abs=0.5 * 10 ** -n + 1e-9), (name, cell, value)
        delta = results[stage]["delta_mtl"]
        if "stl" in delta:
            assert cells[-2][0] in "+-" and float(cells[-2]) == pytest.approx(
                delta["stl"], abs=0.005 + 1e-9), name
        else:
            assert cells[-2] == "-", name
        assert cells[-1] == "-", name


def _table_keys(task: str) -> list[str]:
    from ur_jax.run.tables import TABLE_METRICS

    return [key for key, _ in TABLE_METRICS[task]]


def _check_metric_bars(fig, results) -> None:
    from ur_jax.run.tables import TABLE_METRICS

    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    expected = {f"{t}: {label}": (t, key) for t in TASKS for key, label in TABLE_METRICS[t]}
    assert set(axes) == set(expected) | {"Delta_MTL vs STL (%)"}
    for title, (t, key) in expected.items():
        (bars,) = _notebooks.bars(axes[title])
        assert [p.get_height() for p in bars.patches] == \
            pytest.approx([results[s][t][key] for s in STAGES]), title
        assert [x.get_text() for x in axes[title].get_xticklabels()] == LABELS
    (bars,) = _notebooks.bars(axes["Delta_MTL vs STL (%)"])
    assert [p.get_height() for p in bars.patches] == \
        pytest.approx([results[s]["delta_mtl"]["stl"] for s in ("mtl", "url")])


def _reference_models(workdir: pathlib.Path, config):
    """{stage: {task: (model, variables)}} read from the workdir: the teachers the run saved
    and the students the notebook exported."""
    from ur_jax import checkpointing

    models = {"stl": {t: checkpointing.load_model(str(workdir / "teachers" / t / "model"))
                      for t in TASKS}}
    for stage in ("mtl", "url"):
        pair = checkpointing.load_model(str(workdir / "students" / stage / "model"))
        models[stage] = {t: pair for t in TASKS}
    return models


def _check_models_are_the_evaluated_ones(models, data, config, results) -> None:
    """The saved teachers and the exported students score the run's test metrics."""
    from ur_jax import dense_steps
    from ur_jax.evaluation import dense as dense_eval

    for stage in STAGES:
        for t in TASKS:
            model, variables = models[stage][t]
            step = jax.jit(dense_steps.make_dense_eval_step(model, (t,), data.num_classes))
            sums = None
            for batch in data.eval_batches(config.eval_batch_size, limit=config.eval_limit or None):
                batch = {k: v for k, v in batch.items() if k in ("image", "mask", t)}
                out = step(variables["params"], variables.get("batch_stats", {}), batch)
                sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
            got = dense_eval.finalize(t, jax.device_get(sums)[t])
            for key, value in results[stage][t].items():
                # float32 sums over 8 devices vs 1; the median is read from 0.01-degree bins
                tol = 0.02 if key == "angle_median" else 1e-3
                assert got[key] == pytest.approx(value, rel=1e-4, abs=tol), (stage, t, key)


def _check_prediction_maps(figures, ns, models, data) -> None:
    n = ns["N_SCENES"]
    assert n >= 2
    scenes = next(iter(data.eval_batches(n, limit=n)))
    h, w = data.image_shape[:2]
    assert scenes["image"].shape == (n, h, w, 3)
    for t in TASKS:
        fig = figures[f"predictions: {t}"]
        axes = np.asarray(fig.axes).reshape(n, 2 + len(STAGES))
        assert [ax.get_title() for ax in axes[0]] == ["image", "ground truth", *LABELS]
        outputs = {s: np.asarray(jax.device_get(jax.jit(
            lambda v, x, m=models[s][t][0]: m.apply(v, x, train=False)[0][t])(
                models[s][t][1], scenes["image"]))) for s in STAGES}
        for i in range(n):
            arrays = []
            for ax in axes[i]:
                assert len(ax.images) == 1
                arrays.append(ax.images[0].get_array())
            image, truth, *preds = arrays
            np.testing.assert_array_equal(np.asarray(image), scenes["image"][i])
            gt = scenes[t][i]
            if t == "semantic":
                assert truth.shape == (h, w)
                np.testing.assert_array_equal(np.ma.getmaskarray(truth), gt < 0)
                np.testing.assert_array_equal(truth.compressed(), gt[gt >= 0])
                for s, p in zip(STAGES, preds):
                    assert p.shape == (h, w), s
                    logits = outputs[s][i]
                    differ = np.asarray(p) != logits.argmax(-1)
                    # only where two classes tie to float round-off (compiled separately)
                    top2 = np.sort(logits, axis=-1)[..., -2:]
                    assert (top2[..., 1] - top2[..., 0])[differ].max(initial=0) < 1e-4, s
            elif t == "depth":
                assert truth.shape == (h, w)
                np.testing.assert_array_equal(np.ma.getmaskarray(truth), gt[..., 0] == 0)
                np.testing.assert_array_equal(truth.compressed(), gt[..., 0][gt[..., 0] != 0])
                valid = gt[..., 0][gt[..., 0] != 0]
                for s, ax, p in zip(STAGES, axes[i][2:], preds):
                    assert p.shape == (h, w), s
                    np.testing.assert_allclose(np.asarray(p), outputs[s][i][..., 0], rtol=1e-4,
                                               atol=1e-4, err_msg=s)
                    assert ax.images[0].get_clim() == pytest.approx((valid.min(), valid.max()))
            else:
                assert truth.shape == (h, w, 3)
                valid = np.any(gt != 0, axis=-1)
                np.testing.assert_allclose(np.asarray(truth)[valid], (gt[valid] + 1) / 2,
                                           atol=1e-6)
                assert (np.asarray(truth)[~valid] == 0).all()
                for s, p in zip(STAGES, preds):
                    assert p.shape == (h, w, 3), s
                    np.testing.assert_allclose(np.asarray(p),
                                               np.clip((outputs[s][i] + 1) / 2, 0, 1),
                                               rtol=1e-4, atol=1e-4, err_msg=s)


def _check_curves(fig, workdir: pathlib.Path, config) -> None:
    from ur_jax import writers

    scalars = writers.read_scalars(str(workdir / "tensorboard"))
    expected = {}
    for t in TASKS:
        expected.update({(f"{t}: training loss", "STL teacher"): f"stl_{t}/loss",
                         (f"{t}: training loss", "MTL (uniform)"): f"mtl/task_loss/{t}",
                         (f"{t}: training loss", "URL"): f"url/task_loss/{t}",
                         ("MTL task weights", t): f"mtl/weight/{t}"})
        for f in config.url.student_features:
            expected[("URL feature alignment (per task / feature)", f"{t} / {f}")] = \
                f"url/align_loss/{t}/{f}"
    expected[("total task loss (sum over tasks)", "MTL (uniform)")] = "mtl/loss"
    expected[("total task loss (sum over tasks)", "URL")] = "url/loss"
    lines = {(ax.get_title(), line.get_label()): line
             for ax in fig.axes for line in ax.get_lines()}
    assert set(lines) == set(expected)
    for key, tag in expected.items():
        steps, values = zip(*scalars[tag])
        assert len(steps) == config.stl.steps  # smoke: every step logged
        assert list(lines[key].get_xdata()) == list(steps), key
        assert list(lines[key].get_ydata()) == pytest.approx(list(values)), key
        assert all(math.isfinite(v) for v in values), key


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_dense_notebook_runs(notebook):
    from ur_jax import run
    from ur_jax.config.validation import validate
    from ur_jax.data import registry

    ns, figures = notebook
    assert ns["SMOKE"] is True and ns["IN_COLAB"] is False
    assert pathlib.Path(ns["REPO_DIR"]) == ROOT
    assert ns["NYUV2_MTAN"] is False and ns["MESH"] is None  # the switch cell did not switch
    workdir = pathlib.Path(os.environ["UR_JAX_WORKDIR"])
    assert pathlib.Path(ns["WORKDIR"]) == workdir

    # The run: the smoke dense default, every stage evaluated, results.json written.
    config = ns["config"]
    assert config.dataset == "scenes" and config.scenes_config == "tiny"
    assert tuple(config.stages) == tuple(STAGES) and config.mtl.method == "uniform"
    results = ns["results"]
    assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
    for stage in STAGES:
        assert set(results[stage]) >= set(TASKS) | {"delta_mtl"}, stage
        for t in TASKS:
            assert all(math.isfinite(v) for v in results[stage][t].values()), (stage, t)
    for stage in ("mtl", "url"):  # against this run's STL (no published reference for scenes)
        assert set(results[stage]["delta_mtl"]) == {"stl"}, stage

    # (a) The NYU-style table and its bars.
    assert ns["table"] == run.tables.dense_table(results)
    _check_table(ns["table"], results)
    assert set(figures) == FIGURES
    _check_metric_bars(figures["test metrics"], results)

    # (b) The models the maps come from are the run's (same test metrics), and the maps
    # show their predictions on the first test scenes.
    data = registry.load_dense(config)
    models = _reference_models(workdir, config)
    _check_models_are_the_evaluated_ones(models, data, config, results)
    _check_prediction_maps(figures, ns, models, data)

    # (c) The training curves are the TensorBoard scalars.
    _check_curves(figures["training curves"], workdir, config)

    # (d) The TPU switch builds a valid MTAN-on-NYU-v2 config (not run here).
    c = ns["nyuv2_mtan_config"]("/data/nyuv2", epochs=3)
    assert (c.dataset, c.model.name, c.mtl.method, tuple(c.stages)) == \
        ("nyuv2", "mtan", "dwa", ("stl", "mtl"))
    assert c.manual_dir == "/data/nyuv2" and c.stl.epochs == c.mtl.epochs == 3
    validate(c, "dense", ns["sharding"].make_mesh(jax.devices()[:2]))
    assert ns["nyuv2_config"].model.name == "mtan"
    assert ns["mtan"].MTAN_SOURCES["nyuv2"].startswith("https://")
