"""colabs/decathlon.ipynb runs as written: its code cells, in order, in one namespace,
in-process (no Jupyter needed), in its smoke setting (a fake decathlon-1.0/ tree with labelled
test annotations; SDL teachers, MDL and URL of configs/decathlon_url.py:smoke); its accuracy
bars and decathlon scores are the run's, the results files it writes score what the run
reports, the runner writes the same file without test labels, the notebook finds teachers
that a run loaded (not trained) where the run took them, and the converted released-layout
ResNet-26 computes its PyTorch twin's logits.

Slow (about 1.5 minutes on 2 CPU cores, checked under two): CI runs it with
``python -m pytest -m slow``.
The notebook runs through tests/docs/_notebooks.py, as the other notebooks do."""

import importlib.util
import json
import math
import os
import pathlib
import time

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before the cells import pyplot

import jax  # noqa: E402

from ur_jax import checkpointing, convert  # noqa: E402
from ur_jax.evaluation import decathlon as dec  # noqa: E402
from ur_jax.suites import decathlon  # noqa: E402

import _notebooks  # noqa: E402  (tests/docs/_notebooks.py)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "decathlon.ipynb"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
DOMAINS = ["imagenet12", "aircraft"]
STAGES = ["teachers", "mdl", "url"]
FIGURES = {"test images", "per-domain accuracy", "decathlon score"} | (
    {"conversion parity"} if HAVE_TORCH else set())
MODELS = STAGES + (["released"] if HAVE_TORCH else [])

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Executes the notebook from colabs/; returns (namespace, {figure label: figure},
    seconds taken)."""
    tmp = tmp_path_factory.mktemp("ur_colab_decathlon")
    env = {"UR_JAX_DATA_DIR": str(tmp / "data"), "UR_JAX_WORKDIR": str(tmp / "run")}
    start = time.perf_counter()
    with _notebooks.executed(NOTEBOOK, ROOT / "colabs", env) as (ns, figures):
        yield ns, figures, time.perf_counter() - start


def _workdir(ns) -> pathlib.Path:
    return pathlib.Path(ns["WORKDIR"])


def _annotations(ns) -> pathlib.Path:
    return pathlib.Path(ns["MANUAL_DIR"]) / "annotations"


def _test_truth(ns, d) -> dict[int, int]:
    """{image_id: category_id} of the labelled fake test split, read from <d>_test.json."""
    truth = json.loads((_annotations(ns) / f"{d}_test.json").read_text())
    return {a["image_id"]: a["category_id"] for a in truth["annotations"]}


def _predict(ns, model, variables, d) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, predicted label indices) of the test split, one record at a time (not
    through the notebook's batched ``predict``)."""
    data = ns["data"]
    logits_fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[1][d])
    n = min(len(data.test[d]), ns["config"].eval_limit or len(data.test[d]))
    ids, labels = [], []
    for i in range(n):
        example = data.eval_transform[d](data.test[d][i])
        image = data.normalize(d)(example["image"][None])
        ids.append(int(example["image_id"]))
        labels.append(int(np.argmax(np.asarray(logits_fn(variables, {d: image}))[0])))
    return np.asarray(ids), np.asarray(labels)


def test_setup_data_and_run(notebook):
    ns, figures, seconds = notebook
    assert ns["SMOKE"] is True and ns["IN_COLAB"] is False and ns["TRAIN"] is True
    assert seconds < 120, f"the smoke notebook took {seconds:.0f} s"
    assert pathlib.Path(ns["REPO_DIR"]) == ROOT
    assert _workdir(ns) == pathlib.Path(os.environ["UR_JAX_WORKDIR"])
    assert set(figures) == FIGURES
    assert ns["RELEASED"] == "" and ns["RELEASED_TEACHERS"] == {}

    # The fake tree: official layout, labelled test annotations, under UR_JAX_DATA_DIR.
    manual = pathlib.Path(ns["MANUAL_DIR"])
    assert manual.name == "decathlon-1.0"
    assert manual.is_relative_to(os.environ["UR_JAX_DATA_DIR"])
    assert pathlib.Path(ns["DATA_DIR"]).is_relative_to(os.environ["UR_JAX_DATA_DIR"])
    for d in DOMAINS:
        for name in ("train", "val", "test_stripped", "test"):
            assert (manual / "annotations" / f"{d}_{name}.json").is_file(), (d, name)
        assert len(_test_truth(ns, d)) == 12

    # The run: decathlon_url.py:smoke with the MDL stage, scored on the labelled test split.
    config = ns["config"]
    assert tuple(config.stages) == tuple(STAGES) and list(config.domains) == DOMAINS
    assert config.score == "decathlon" and config.train_split == "train"
    assert all(config[s].steps == 30 for s in STAGES)
    results = ns["results"]
    saved = json.loads((_workdir(ns) / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert results["evaluated_on"] == "test"
    for stage in STAGES:
        for d in DOMAINS:
            assert results[stage][d]["examples"] == 12
            assert 0.0 <= results[stage][d]["accuracy"] <= 100.0
    # The printed table: each model's accuracies, their mean and its decathlon score.
    assert ns["table"].startswith("Test accuracy (%)")
    lines = {line.split()[0]: line.split()[1:] for line in ns["table"].splitlines()[2:]
             if line.split()}
    for stage in STAGES:
        accs = [results[stage][d]["accuracy"] for d in DOMAINS]
        cells = [float(v) for v in lines[stage][:len(DOMAINS) + 2]]
        assert cells[:-1] == pytest.approx(accs + [np.mean(accs)], abs=0.005001), stage
        assert cells[-1] == pytest.approx(dec.decathlon_score(dict(zip(DOMAINS, accs)),
                                                              percent=True), abs=0.5), stage
    # The saved models' predictions (section 4) reproduce the run's accuracies exactly.
    assert ns["numbers"]["run_difference"] == {s: pytest.approx(0.0, abs=1e-9) for s in STAGES}

    # The test images shown are the evaluation crops (72 px ImageNet, 64 px aircraft).
    data = ns["data"]
    axes = np.asarray(figures["test images"].axes).reshape(len(DOMAINS), ns["N_SHOW"])
    names = {d: decathlon.metadata(d, ns["DATA_DIR"])["category_names"] for d in DOMAINS}
    for row, d in zip(axes, DOMAINS):
        side = decathlon.crop_size(d)
        for i, ax in enumerate(row):
            (image,) = ax.get_images()
            expected = data.eval_transform[d](data.test[d][i])
            assert image.get_array().shape == (side, side, 3)
            np.testing.assert_array_equal(np.asarray(image.get_array()), expected["image"])
            assert ax.get_title() == f"{d}\n{names[d][int(expected['label'])]}"


@pytest.mark.skipif(not HAVE_TORCH, reason="the conversion cell needs PyTorch")
def test_converted_twin_matches_pytorch(notebook):
    import torch
    from torch.nn import functional as F

    ns, figures, _ = notebook
    twin_file = _workdir(ns) / "converted" / "twin_url.pth"
    saved = torch.load(twin_file, weights_only=False)  # the release's layout
    assert set(saved) == {"net", "acc", "epoch"}
    assert {"conv1.weight", "end_bn.running_mean", "cls_fn.0.weight", "cls_fn.1.weight",
            "layer3.3.bn2.running_var"} <= set(saved["net"])

    released_dir = pathlib.Path(ns["released_dir"])
    assert released_dir == _workdir(ns) / "converted" / "released"
    model, variables = convert.load(released_dir)
    spec = json.loads((released_dir / checkpointing.MODEL_FILE).read_text())
    assert spec["backbone"] == "resnet26"
    assert spec["backbone_kwargs"]["end_relu"] is False
    # one shared backbone (BatchNorm shared, as released), ten heads
    assert model.backbone.domains == () and model.backbone.stage_sizes == (4, 4, 4)
    assert dict(model.num_classes) == {d: 5 for d in DOMAINS}
    assert dict(model.input_sizes) == {"aircraft": 72}
    n_torch = sum(v.numel() for k, v in saved["net"].items() if "num_batches_tracked" not in k)
    assert sum(x.size for x in jax.tree.leaves(variables)) == n_torch  # every tensor, once

    # The figure: x = the twin's logits, y = the converted model's, on the shown test images.
    twin = ns["twin"]
    axes = {ax.get_title().split(":")[0]: ax for ax in figures["conversion parity"].axes}
    assert list(axes) == DOMAINS
    data = ns["data"]
    for t, d in enumerate(DOMAINS):
        crops = [data.eval_transform[d](data.test[d][i])["image"] for i in range(ns["N_SHOW"])]
        images = np.asarray(data.normalize(d)(np.stack(crops)))
        x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
        if d == "aircraft":
            x = F.interpolate(x, size=(72, 72), mode="bilinear", align_corners=True)
        with torch.no_grad():
            want_x = twin(x, t)["logits"].numpy()
        want_y = np.asarray(model.apply(variables, {d: images}, train=False)[1][d])
        (points,) = axes[d].collections
        offsets = np.asarray(points.get_offsets())
        np.testing.assert_allclose(offsets[:, 0], want_x.ravel(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(offsets[:, 1], want_y.ravel(), rtol=1e-5, atol=1e-5)
        diff = ns["numbers"]["parity"][d]
        assert diff == pytest.approx(float(np.max(np.abs(offsets[:, 0] - offsets[:, 1]))))
        assert diff < 1e-4 and float(np.max(np.abs(want_x))) > 0.1  # not a trivial comparison


def test_accuracy_bars_and_decathlon_score(notebook):
    ns, figures, _ = notebook
    results, numbers = ns["results"], ns["numbers"]
    rows = {s: {d: results[s][d]["accuracy"] for d in DOMAINS} for s in STAGES}
    if HAVE_TORCH:  # the converted twin, scored one image at a time here
        model, variables = convert.load(ns["released_dir"])
        rows["released"] = {}
        for d in DOMAINS:
            ids, labels = _predict(ns, model, variables, d)
            truth = _test_truth(ns, d)
            cats = decathlon.metadata(d, ns["DATA_DIR"])["category_ids"]
            hits = [cats[k] == truth[i] for i, k in zip(ids, labels)]
            rows["released"][d] = 100 * float(np.mean(hits))
    assert list(ns["rows"]) == MODELS

    (ax,) = figures["per-domain accuracy"].axes
    groups = _notebooks.bars(ax)
    assert len(groups) == len(MODELS)
    assert [t.get_text() for t in ax.get_xticklabels()] == DOMAINS + ["mean"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [ns["MODELS"][m] for m in MODELS]
    for group, m in zip(groups, MODELS):
        heights = [rows[m][d] for d in DOMAINS] + [np.mean([rows[m][d] for d in DOMAINS])]
        assert [p.get_height() for p in group.patches] == pytest.approx(heights), m

    # Stacked per-domain shares of the score; totals = results.json's decathlon score.
    score_ax, paper_ax = figures["decathlon score"].axes
    stacks = _notebooks.bars(score_ax)
    assert len(stacks) == len(DOMAINS)
    totals = np.zeros(len(MODELS))
    for stack, d in zip(stacks, DOMAINS):
        shares = [dec.domain_scores(rows[m], percent=True)[d] for m in MODELS]
        assert [p.get_height() for p in stack.patches] == pytest.approx(shares, abs=1e-9), d
        totals += shares
    for i, m in enumerate(MODELS):
        assert numbers["decathlon_score"][m] == pytest.approx(totals[i])
        if m in results["scores"]:
            assert results["scores"][m]["decathlon_score"] == pytest.approx(totals[i])
    assert [t.get_text() for t in score_ax.texts] == [f"{v:.0f}" for v in totals]
    for m in MODELS:
        for d in DOMAINS:
            e_max = 2 * (100 - dec.FINETUNE_ACCURACY[d])
            expected = 1000 * (max(0.0, e_max - (100 - rows[m][d])) / e_max) ** 2
            assert numbers["domain_scores"][m][d] == pytest.approx(expected)

    (paper,) = _notebooks.bars(paper_ax)
    heights = [p.get_height() for p in paper.patches]
    assert [t.get_text() for t in paper_ax.get_xticklabels()] == list(dec.PAPER_TABLE)
    assert heights == pytest.approx([dec.decathlon_score(r) for r in dec.PAPER_TABLE.values()])
    assert heights == pytest.approx(list(dec.PAPER_SCORES.values()), abs=1.5)  # rounded rows
    assert heights[0] == pytest.approx(2500)


def test_results_files_score_what_the_run_reports(notebook):
    ns, _, _ = notebook
    results, numbers = ns["results"], ns["numbers"]
    predictions = _workdir(ns) / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == sorted(f"{m}_test.json" for m in MODELS)
    url_model, url_vars = convert.load(_workdir(ns) / "students" / "url" / "model")
    for m in MODELS:
        entries = json.loads((predictions / f"{m}_test.json").read_text())
        assert isinstance(entries, list) and len(entries) == 12 * len(DOMAINS)
        assert all(set(e) == {"image_id", "category_id"} for e in entries)
        assert all(type(e["image_id"]) is int and type(e["category_id"]) is int for e in entries)
        predicted = {e["image_id"]: e["category_id"] for e in entries}
        for d in DOMAINS:
            truth = _test_truth(ns, d)
            assert set(truth) <= set(predicted)
            cats = decathlon.metadata(d, ns["DATA_DIR"])["category_ids"]
            assert {predicted[i] for i in truth} <= set(cats)
            acc = 100 * float(np.mean([predicted[i] == c for i, c in truth.items()]))
            assert numbers["file_accuracy"][m][d] == pytest.approx(acc)
            if m in STAGES:
                assert acc == pytest.approx(results[m][d]["accuracy"]), (m, d)
            if m == "url":  # the file holds the URL student's own predictions
                ids, labels = _predict(ns, url_model, url_vars, d)
                assert {i: predicted[i] for i in ids} == {i: cats[k] for i, k in zip(ids, labels)}
    assert pathlib.Path(ns["files"]["url"]) == predictions / "url_test.json"


def test_runner_writes_the_same_file_without_test_labels(notebook):
    ns, _, _ = notebook
    unlabelled = pathlib.Path(ns["unlabelled_dir"])
    for d in DOMAINS:
        assert (unlabelled / "annotations" / f"{d}_test_stripped.json").is_file()
        assert not (unlabelled / "annotations" / f"{d}_test.json").exists()
    res = ns["unlabelled_results"]
    assert res["evaluated_on"] == "val" and set(DOMAINS) <= set(res["teachers"])
    assert not res.get("mdl") and not res.get("url")  # teachers loaded, nothing trained
    challenge = pathlib.Path(ns["CHALLENGE_WORKDIR"])
    assert not (challenge / "teachers").exists()
    server = json.loads((challenge / "predictions" / "teachers_test.json").read_text())
    ours = json.loads((_workdir(ns) / "predictions" / "teachers_test.json").read_text())
    assert server == ours and ns["numbers"]["server_file_identical"] is True


def test_load_saved_finds_teachers_the_run_loaded(notebook):
    """A run that loads its teachers (config.teachers.checkpoints, as with converted released
    teachers) does not save them in its workdir: the notebook's load_saved reads them where the
    run took them, and they predict what the runner wrote."""
    ns, _, _ = notebook
    challenge, workdir = ns["challenge"], pathlib.Path(ns["CHALLENGE_WORKDIR"])
    assert not (workdir / "teachers").exists()  # <workdir>/teachers/<d>/model would fail
    saved = ns["load_saved"](challenge, str(workdir))
    assert list(saved) == ["teachers"] and list(saved["teachers"]) == DOMAINS
    server = json.loads((workdir / "predictions" / "teachers_test.json").read_text())
    server = {e["image_id"]: e["category_id"] for e in server}
    for d in DOMAINS:
        model, variables = saved["teachers"][d]
        _, trained = convert.load(_workdir(ns) / "teachers" / d / "model")  # the labelled run's
        assert jax.tree.all(jax.tree.map(np.array_equal, variables, trained))
        ids, labels = _predict(ns, model, variables, d)
        cats = decathlon.metadata(d, ns["DATA_DIR"])["category_ids"]
        assert {i: server[i] for i in ids} == {i: cats[k] for i, k in zip(ids, labels)}


def test_real_run_config(notebook):
    """The config the notebook builds for a real run (not run here) is valid."""
    from ur_jax.config.validation import validate

    ns, _, _ = notebook
    build = ns["decathlon_config"]
    c = build(False, "/data/decathlon", "/data/tfds")
    assert tuple(c.stages) == tuple(STAGES) and tuple(c.domains) == decathlon.DOMAINS
    assert c.train_split == "train+val" and c.manual_dir == "/data/decathlon"
    assert all(c[s].steps == 120 * 100 for s in STAGES)
    assert c.model.kwargs.end_relu is True and c.model.student_input_size == 72
    validate(c, "classification")
    c = build(False, "/data/decathlon", "/data/tfds", domains=("imagenet12", "dtd"), epochs=2,
              teachers={"imagenet12": "/models/sdl/imagenet12"})
    assert tuple(c.domains) == ("imagenet12", "dtd") and all(c[s].steps == 200 for s in STAGES)
    assert dict(c.teachers.checkpoints) == {"imagenet12": "/models/sdl/imagenet12", "dtd": ""}
    assert c.model.kwargs.end_relu is False
    validate(c, "classification")
    assert math.isclose(c.url.lambda_f["imagenet12"], 10.0)
