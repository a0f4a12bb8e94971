"""colabs/adapters.ipynb runs as written: its code cells, in order, in one namespace,
in-process (no Jupyter needed), in its smoke setting; its checks hold and every figure
shows the notebook's own results."""

import math
import pathlib

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")  # before the cells import pyplot

import jax  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from ur_jax import checkpointing  # noqa: E402

import _notebooks  # noqa: E402  (tests/docs/_notebooks.py)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "adapters.ipynb"
FIGURES = {"adapters at init", "support set", "tsa fit", "distillation"}

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Executes the notebook from colabs/; returns (namespace, {figure label: figure})."""
    tmp = tmp_path_factory.mktemp("ur_colab_adapters")
    env = {"UR_JAX_DATA_DIR": str(tmp / "data"), "UR_JAX_WORKDIR": str(tmp / "run")}
    with _notebooks.executed(NOTEBOOK, ROOT / "colabs", env) as result:
        yield result


def _lines(fig) -> dict:
    return {(ax.get_title(), line.get_label()): line for ax in fig.axes for line in ax.get_lines()}


def _equal_trees(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_setup_and_teachers(notebook):
    ns, figures = notebook
    assert ns["SMOKE"] is True and ns["IN_COLAB"] is False
    assert pathlib.Path(ns["REPO_DIR"]) == ROOT
    assert set(figures) == FIGURES
    workdir = pathlib.Path(ns["WORKDIR"])
    for d in ("digits", "shapes"):
        assert (workdir / "teachers" / d / "model" / checkpointing.MODEL_FILE).is_file()
        assert 0.0 <= ns["results"]["teacher_accuracy"][d] <= 100.0


def test_adapters_attach_without_changing_the_backbone(notebook):
    ns, figures = notebook
    pretrained, alpha = ns["pretrained"], ns["alpha_init"]
    # The pretrained tree the notebook uses is the one on disk, loaded unchanged.
    _, saved = checkpointing.load_model(str(pathlib.Path(ns["WORKDIR"]) / "teachers/digits/model"))
    assert _equal_trees(pretrained["params"], saved["params"]["backbone"])
    assert _equal_trees(pretrained["batch_stats"], saved["batch_stats"]["backbone"])
    assert ns["same_params"] is True
    assert set(ns["declared"]) == {"params", "batch_stats", "adapters"}

    # One 1e-4 * I matrix adapter per 3x3 conv of the 8 blocks (widths 8, 16, 32, 64).
    widths = [8, 16, 32, 64]
    expected = {}
    for i, w in enumerate(widths):
        for j in range(2):
            cin = widths[i - 1] if (i > 0 and j == 0) else w
            expected[f"layer{i + 1}_{j}/conv1_adapter"] = (1, 1, cin, w)
            expected[f"layer{i + 1}_{j}/conv2_adapter"] = (1, 1, w, w)
    assert ns["adapter_shapes"] == expected
    for block, convs in alpha.items():
        for name, v in convs.items():
            a = np.asarray(v["alpha"])
            assert np.array_equal(a[0, 0], 1e-4 * np.eye(*a.shape[2:], dtype=np.float32)), name

    # At init the adapted backbone computes what the original does: exactly with alpha = 0,
    # within a small fraction of the features' size with alpha = 1e-4 * I.
    original, adapted = np.asarray(ns["original"]), np.asarray(ns["adapted"])
    assert original.shape == adapted.shape == (64, 64)
    recomputed = ns["backbone"].apply(pretrained, ns["check_images"])["pooled"]
    np.testing.assert_allclose(original, recomputed, rtol=1e-5, atol=1e-5)
    check = ns["results"]["init_check"]
    assert check["zero_adapters_exact"] is True
    assert check["max_abs_diff"] == pytest.approx(float(np.max(np.abs(adapted - original))))
    assert 0.0 < check["max_abs_diff"] < 1e-2 * check["max_abs_feature"]

    (ax,) = figures["adapters at init"].axes
    (points,) = ax.collections
    np.testing.assert_array_equal(points.get_offsets(),
                                  np.stack([original.ravel(), adapted.ravel()], axis=1))


def test_tsa_fits_only_the_adapters(notebook):
    ns, figures = notebook
    res = ns["results"]["tsa"]
    ways, shots, queries = ns["WAYS"], ns["SHOTS"], ns["QUERIES"]
    assert (ways, shots, queries) == (5, 5, 15)
    assert ns["support"].shape == (ways * shots, 32, 32, 3)
    assert ns["query"].shape == (ways * queries, 32, 32, 3)

    # The backbone's variables are bitwise those before fitting; only alpha and beta moved.
    assert _equal_trees(ns["frozen_before"], ns["pretrained"])
    assert res["backbone_unchanged"] is True
    assert jax.tree.structure(ns["alpha_fit"]) == jax.tree.structure(ns["alpha_init"])
    assert ns["beta_fit"].shape == (64, 64)
    assert res["alpha_max_change"] > 1e-3
    assert not np.allclose(ns["beta_fit"], np.eye(64))

    # The support loss falls; TSA (features adapt) reaches lower than PA alone. At step 0
    # both are NCC on the same features.
    steps, tsa_loss, pa_loss = res["curve_steps"], res["tsa_loss"], res["pa_loss"]
    assert steps[0] == 0 and steps[-1] == ns["FIT_STEPS"] == 40
    assert all(math.isfinite(v) for v in tsa_loss + pa_loss)
    assert tsa_loss[0] == pytest.approx(pa_loss[0], rel=1e-4)
    assert tsa_loss[-1] < 0.5 * tsa_loss[0] and pa_loss[-1] < pa_loss[0]
    assert tsa_loss[-1] < pa_loss[-1]

    # Accuracy: recomputing episode 0 gives the stored values.
    acc = res["accuracy"]
    assert list(acc) == ["NCC (before)", "PA", "TSA (adapters + PA)"]
    assert all(len(v) == res["episodes"] == 3 for v in ns["accuracy"].values())
    for method, values in ns["accuracy"].items():
        assert acc[method] == pytest.approx(100 * np.mean(values))
    s, sl, q, ql = ns["episode"](0)
    again = ns["tsa_episode"](ns["pretrained"], ns["alpha_init"], s, sl, q, ql, 40)
    assert float(again[3]) == pytest.approx(ns["accuracy"]["TSA (adapters + PA)"][0])
    assert float(again[2]) == pytest.approx(tsa_loss[-1])

    # Figures: the support images as drawn (uint8, 32x32 RGB), the curves and the bars.
    episodes, images = ns["episodes"], ns["novel_images"]
    shown = [im for ax in figures["support set"].axes for im in ax.get_images()]
    assert len(shown) == ways * shots and all(isinstance(im, AxesImage) for im in shown)
    for im, idx in zip(shown, episodes.support[0]):
        assert im.get_array().shape == (32, 32, 3)
        np.testing.assert_array_equal(np.asarray(im.get_array()), images[idx])
    lines = _lines(figures["tsa fit"])
    title = "Fitting on the 25 support images (episode 0)"
    for label, values in (("TSA: adapters + PA", tsa_loss), ("PA alone (features fixed)", pa_loss)):
        line = lines[(title, label)]
        assert list(line.get_xdata()) == steps
        assert list(line.get_ydata()) == pytest.approx(values)
    bar_ax = figures["tsa fit"].axes[1]
    (bars,) = _notebooks.bars(bar_ax)
    assert [p.get_height() for p in bars.patches] == pytest.approx(list(acc.values()))
    assert [t.get_text() for t in bar_ax.get_xticklabels()] == list(acc)


def test_distillation_from_two_teachers(notebook):
    ns, figures = notebook
    res = ns["results"]["distill"]
    n = ns["DISTILL_STEPS"]
    assert n == 30 and int(ns["state"].step) == n
    assert res["steps"] == list(range(1, n + 1))
    assert len(ns["history"]) == n and [h["loss"] for h in ns["history"]] == res["loss"]
    terms = [f"{t}/{d}" for t in ("task_loss", "align_loss", "kd_loss") for d in ("digits", "shapes")]
    for key in ["loss"] + terms:
        assert len(res[key]) == n and all(math.isfinite(v) for v in res[key]), key
    assert np.mean(res["loss"][-5:]) < np.mean(res["loss"][:5])
    # The student: both heads on the one backbone; the adapters map 64-d features to 64-d.
    student_params = ns["state"].params
    assert set(student_params["student"]["heads"]) == {"digits", "shapes"}
    assert {d: v["linear"]["kernel"].shape for d, v in student_params["adapters"].items()} == \
        {"digits": (64, 64), "shapes": (64, 64)}
    for d in ("digits", "shapes"):
        assert 0.0 <= res["student_accuracy"][d] <= 100.0
        assert math.isfinite(res["test_align_loss"][d])

    fig = figures["distillation"]
    lines = _lines(fig)
    assert list(lines[("Distillation: total loss", "total")].get_ydata()) == pytest.approx(res["loss"])
    names = {"task_loss": "task CE", "align_loss": "feature (kernel CKA)", "kd_loss": "logit KD (KL)"}
    for key in terms:
        term, d = key.split("/")
        line = lines[("Loss terms per domain", f"{d}: {names[term]}")]
        assert list(line.get_xdata()) == res["steps"]
        assert list(line.get_ydata()) == pytest.approx(res[key])
    acc_ax = fig.axes[2]
    teachers, student = _notebooks.bars(acc_ax)
    domains = ["digits", "shapes"]
    assert [p.get_height() for p in teachers.patches] == \
        pytest.approx([ns["results"]["teacher_accuracy"][d] for d in domains])
    assert [p.get_height() for p in student.patches] == \
        pytest.approx([res["student_accuracy"][d] for d in domains])
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == domains
