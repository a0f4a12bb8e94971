"""colabs/metadataset.ipynb runs as written: its code cells, in order, in one namespace,
in-process (no Jupyter needed), in its smoke setting (fake records, a random 1/16-wide
PyTorch stand-in for the released URL model); the conversion matches PyTorch, the figures
show results.json's numbers and the episode the run scored, with NCC's predictions."""

import json
import pathlib
import re
import time

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before the cells import pyplot
torch = pytest.importorskip("torch")  # the notebook reads a PyTorch checkpoint

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from ur_jax import checkpointing  # noqa: E402
from ur_jax.convert import twins  # noqa: E402
from ur_jax.evaluation import fewshot  # noqa: E402
from ur_jax.suites.metadataset.common import CLASS_SPLITS, SHORT_NAMES, TRAIN_SOURCES  # noqa: E402

import _notebooks  # noqa: E402  (tests/docs/_notebooks.py)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "metadataset.ipynb"
METHODS = ("ncc", "pa", "tsa")
SOURCES = ["ilsvrc_2012", "omniglot", "traffic_sign"]

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Executes the notebook from colabs/; returns (namespace, {figure label: figure},
    seconds taken)."""
    tmp = tmp_path_factory.mktemp("ur_colab_metadataset")
    env = {"UR_JAX_DATA_DIR": str(tmp / "data"), "UR_JAX_WORKDIR": str(tmp / "work")}
    start = time.perf_counter()
    with _notebooks.executed(NOTEBOOK, ROOT / "colabs", env) as (ns, figures):
        yield ns, figures, time.perf_counter() - start


def _results_json(ns) -> dict:
    return json.loads((pathlib.Path(ns["EVAL_DIR"]) / "results.json").read_text())


def test_setup_inputs_and_files(notebook):
    ns, figures, seconds = notebook
    assert ns["SMOKE"] is True and ns["IN_COLAB"] is False
    assert pathlib.Path(ns["REPO_DIR"]) == ROOT
    assert set(figures) == {"per-source accuracy", "episode"}
    assert seconds < 120, f"the smoke notebook took {seconds:.0f} s"
    work = pathlib.Path(ns["WORKDIR"])
    # Fake records in the official layout, the stand-in checkpoint, the converted model and
    # the run, all under the workdir; the decoded fake sources in a folder of their own.
    for s in SOURCES:
        assert (work / "fake_records" / s / "dataset_spec.json").is_file()
    data_dir = pathlib.Path(ns["DATA_DIR"])
    assert data_dir.name == "fake_metadataset" and data_dir.parent.name == "data"
    assert data_dir.is_dir()
    released = pathlib.Path(ns["RELEASED"])
    assert released == work / "released" / "url" / "model_best.pth.tar" and released.is_file()
    blob = torch.load(released, map_location="cpu", weights_only=True)
    assert {"epoch", "args", "state_dict"} <= set(blob)
    assert [tuple(blob["state_dict"][f"cls_fn.{i}.weight"].shape) for i in range(8)] == \
        [(CLASS_SPLITS[d][0], 32) for d in TRAIN_SOURCES]
    assert tuple(blob["state_dict"]["conv1.weight"].shape) == (4, 3, 5, 5)  # 1/16 wide
    spec = json.loads((pathlib.Path(ns["CONVERTED"]) / checkpointing.MODEL_FILE).read_text())
    assert spec["backbone"] == "resnet18_metadataset" and spec["backbone_kwargs"] == {"width": 1 / 16}
    assert (pathlib.Path(ns["EVAL_DIR"]) / "results.json").is_file()


def test_conversion_matches_pytorch(notebook):
    ns, _, _ = notebook
    model, variables = ns["model"], ns["variables"]
    assert model.domains == tuple(TRAIN_SOURCES)
    assert dict(model.num_classes) == {d: CLASS_SPLITS[d][0] for d in TRAIN_SOURCES}
    parity = ns["results"]["parity"]
    assert parity["images"] == 8
    assert parity["feature_max_abs_diff"] < 1e-4 and parity["logit_max_abs_diff"] < 1e-4
    assert parity["feature_max_abs"] > 0.1  # non-trivial features

    # Recomputed here: the stand-in the notebook saved (seed 0) against the converted model,
    # on the notebook's parity images.
    net = twins.resnet18_metadataset(1 / 16, [CLASS_SPLITS[d][0] for d in TRAIN_SOURCES], seed=0)
    x = np.asarray(ns["parity_images"])
    assert x.shape == (8, 84, 84, 3) and x.min() >= -1.0 and x.max() <= 1.0
    with torch.no_grad():
        theirs = net.embed(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    backbone_vars = {c: v["backbone"] for c, v in variables.items()}
    ours = np.asarray(model.backbone.apply(backbone_vars, jnp.asarray(x), train=False)["pooled"])
    diff = float(np.max(np.abs(ours - theirs)))
    assert diff < 1e-4
    assert parity["feature_max_abs_diff"] == pytest.approx(diff, abs=2e-6)


def test_evaluation_and_per_source_figure(notebook):
    ns, figures, _ = notebook
    fs = _results_json(ns)["fewshot"]
    assert fs["kind"] == "episodic" and fs["protocol"] == "standard" and fs["episodes"] == 4
    assert fs["domains"] == SOURCES
    assert set(fs["rows"]) == {f"url {m}" for m in METHODS}
    assert fs["seen"]["url"] == list(TRAIN_SOURCES)  # read from the converted model's heads
    assert fs["learning_rates"]["url tsa"]["traffic_sign"] == {"alpha": 0.5, "beta": 1.0}
    assert fs["learning_rates"]["url tsa"]["omniglot"] == {"alpha": 0.05, "beta": 0.1}

    per_source, averages = figures["per-source accuracy"].axes
    groups = _notebooks.bars(per_source)
    assert len(groups) == len(METHODS)
    for container, m in zip(groups, METHODS):
        row = fs["rows"][f"url {m}"]
        assert container.get_label() == f"URL + {m.upper()}"
        assert [p.get_height() for p in container.patches] == \
            pytest.approx([row[s]["accuracy"] for s in SOURCES])
        # The error bars: one vertical segment per bar, mean ± ci95.
        (segments,) = container.errorbar.lines[2]
        spans = [(seg[1][1] - seg[0][1]) / 2 for seg in segments.get_segments()]
        centres = [(seg[1][1] + seg[0][1]) / 2 for seg in segments.get_segments()]
        assert spans == pytest.approx([row[s]["ci95"] for s in SOURCES])
        assert centres == pytest.approx([row[s]["accuracy"] for s in SOURCES])
    # traffic_sign is unseen by the URL model (marked *).
    assert [t.get_text() for t in per_source.get_xticklabels()] == \
        [SHORT_NAMES[s] + ("*" if s == "traffic_sign" else "") for s in SOURCES]
    # No paper marks in a smoke run (they are for the full standard protocol).
    assert not [c for c in per_source.collections if isinstance(c, PathCollection)]

    avg_groups = _notebooks.bars(averages)
    assert [t.get_text() for t in averages.get_xticklabels()] == ["seen", "unseen", "all"]
    for container, m in zip(avg_groups, METHODS):
        avg = fs["rows"][f"url {m}"]["averages"]
        assert [p.get_height() for p in container.patches] == \
            pytest.approx([avg[g] for g in ("seen", "unseen", "all")])


def _grid_images(fig):
    """The episode figure's image axes in drawing order: [(axes, image)]."""
    out = []
    for ax in fig.axes:
        images = ax.get_images()
        assert len(images) == 1 and isinstance(images[0], AxesImage)
        out.append((ax, images[0]))
    return out


def test_episode_figure_shows_the_runs_episode_with_ncc_predictions(notebook):
    ns, figures, _ = notebook
    fs = _results_json(ns)["fewshot"]
    episode, source = ns["episode"], ns["source"]
    res = ns["results"]["episodes"]
    assert res["source"] == "omniglot"

    # The notebook drew the run's episodes: NCC on them reproduces results.json.
    assert len(ns["run_episodes"]) == 4
    assert res["ncc_recomputed"] == pytest.approx(fs["rows"]["url ncc"]["omniglot"]["accuracy"],
                                                  abs=1e-4)
    mean, ci = fewshot.mean_confidence_interval(100 * np.asarray(ns["ncc_per_episode"]))
    assert (mean, ci) == pytest.approx((fs["rows"]["url ncc"]["omniglot"]["accuracy"],
                                        fs["rows"]["url ncc"]["omniglot"]["ci95"]), abs=1e-4)

    # NCC recomputed here, from the converted backbone applied directly (not the evaluator).
    model, variables = ns["model"], ns["variables"]
    backbone_vars = {c: v["backbone"] for c, v in variables.items()}
    embed = jax.jit(lambda x: model.backbone.apply(backbone_vars, x, train=False)["pooled"])

    def images(indices):
        return jnp.asarray(np.stack([source[int(i)]["image"] for i in indices]),
                           jnp.float32) / 127.5 - 1.0

    logits = fewshot.ncc_logits(embed(images(episode.support)), episode.support_labels,
                                embed(images(episode.query)), episode.ways)
    predictions = np.asarray(jnp.argmax(logits, -1))
    np.testing.assert_array_equal(ns["predictions"], predictions)
    accuracy = 100 * float(np.mean(predictions == episode.query_labels))
    assert res["episode0"]["ncc_accuracy"] == pytest.approx(accuracy)
    assert res["episode0"]["evaluator_accuracy"] == pytest.approx(accuracy)
    assert (res["episode0"]["ways"], res["episode0"]["support"], res["episode0"]["query"]) == \
        (episode.ways, len(episode.support), len(episode.query))

    # Every support and query image of the (small) smoke episode is drawn, support first in
    # each class row; each image is the record's 84x84 RGB image.
    assert episode.ways <= ns["MAX_CLASSES"]
    assert max(episode.support_per_class) <= ns["MAX_SUPPORT"]
    assert max(episode.query_per_class) <= ns["MAX_QUERY"]
    drawn = _grid_images(figures["episode"])
    assert len(drawn) == len(episode.support) + len(episode.query)
    support = [(int(i), int(c)) for i, c in zip(episode.support, episode.support_labels)]
    query = [(int(i), int(c), int(p)) for i, c, p in
             zip(episode.query, episode.query_labels, predictions)]
    assert sorted(ns["shown"]["support"]) == sorted(support)
    assert sorted(ns["shown"]["query"]) == sorted(query)
    by_kind = {"support": [], "query": []}
    for ax, im in drawn:
        kind = "query" if ax.get_title().startswith("pred") else "support"
        by_kind[kind].append((ax, im))
    assert len(by_kind["support"]) == len(support) and len(by_kind["query"]) == len(query)
    for (ax, im), (idx, _) in zip(by_kind["support"], ns["shown"]["support"]):
        assert im.get_array().shape == (84, 84, 3)
        np.testing.assert_array_equal(np.asarray(im.get_array()), source[idx]["image"])
    for (ax, im), (idx, true, pred) in zip(by_kind["query"], ns["shown"]["query"]):
        np.testing.assert_array_equal(np.asarray(im.get_array()), source[idx]["image"])
        assert int(re.fullmatch(r"pred (\d+)", ax.get_title()).group(1)) == pred
        colour = matplotlib.colors.to_hex(ax.title.get_color())
        assert colour == matplotlib.colors.to_hex("tab:green" if pred == true else "tab:red")
