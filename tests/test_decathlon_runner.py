"""The Decathlon configs end to end on a fake decathlon-1.0/ tree: every config's smoke
run, model selection with exact resume, test-prediction export, scores, config errors."""

import json
import os
import subprocess
import sys

import numpy as np
import optax
import pytest

from ur_jax import checkpointing, decathlon_config, train
from ur_jax.configs import load_config
from ur_jax.data import decathlon
from ur_jax.evaluation import decathlon_score, delta_mdl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, arg="smoke", **overrides):
    return load_config(os.path.join(ROOT, "configs", name) + (f":{arg}" if arg else ""),
                       **overrides)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Two fake trees (the challenge's stripped test file; test labels supplied) and a
    prepared-data folder for each."""
    base = tmp_path_factory.mktemp("decathlon")
    domains = ("imagenet12", "aircraft", "dtd")
    stripped = str(base / "stripped")
    labelled = str(base / "labelled")
    decathlon.write_fake_decathlon(stripped, domains=domains)
    decathlon.write_fake_decathlon(labelled, domains=domains, test_labels=True)
    return {"stripped": (stripped, str(base / "data_stripped")),
            "labelled": (labelled, str(base / "data_labelled"))}


def _run(name, arg, tree, workdir, which="stripped", **overrides):
    manual, data = tree[which]
    config = _config(name, arg, manual_dir=manual, data_dir=data, **overrides)
    return config, train.run(config, str(workdir))


def _check_scores(results, config):
    for row, scores in results["scores"].items():
        acc = {d: results[row][d]["accuracy"] for d in config.domains}
        assert scores["decathlon_score"] == pytest.approx(decathlon_score(acc))
        assert scores["delta_mdl_paper"] == pytest.approx(delta_mdl(acc))


@pytest.mark.parametrize("name,arg,rows", [
    ("decathlon_sdl.py", "dtd,smoke", ("teachers",)),
    ("decathlon_mdl.py", "smoke", ("teachers", "mdl")),
    ("decathlon_url.py", "smoke", ("teachers", "url")),
    ("decathlon_url_parallel.py", "smoke", ("teachers", "url")),
])
def test_every_config_runs_on_the_fake_tree(name, arg, rows, tree, tmp_path, capsys):
    config, results = _run(name, arg, tree, tmp_path)
    # the fake tree strips the test labels, as the challenge does: results on val, and the
    # test predictions in the challenge's format
    assert results["evaluated_on"] == "val"
    for row in rows:
        assert sorted(results[row]) == sorted(list(config.domains) + ["mean"])
        for d in config.domains:
            assert 0 <= results[row][d]["accuracy"] <= 100
            assert results[row][d]["examples"] == len(decathlon.data_source(d, "val", tree["stripped"][1]))
        with open(tmp_path / "predictions" / f"{row}_test.json") as f:
            predictions = json.load(f)
        for d in config.domains:
            meta = decathlon.metadata(d, tree["stripped"][1])
            ids = {int(r["image_id"]) for r in decathlon.data_source(d, "test", tree["stripped"][1])}
            mine = [p for p in predictions if p["image_id"] in ids]
            assert len(mine) == len(ids)
            assert {p["category_id"] for p in mine} <= set(meta["category_ids"])
        selected = row if row != "teachers" else f"teacher_{config.domains[-1]}"
        with open(tmp_path / "selection" / selected / "best.json") as f:
            best = json.load(f)
        assert best["step"] in (2, 3)
    _check_scores(results, config)
    assert "Validation accuracy (%)" in capsys.readouterr().out
    if name == "decathlon_url_parallel.py":  # the student has per-domain parallel adapters
        model, variables = checkpointing.load_model(str(tmp_path / "selection" / "url" / "model"))
        layer = variables["params"]["backbone"]["layer1_0"]
        assert set(layer["conv1_adapter"]) == set(config.domains)
        assert set(layer["bn1"]) == set(config.domains)
        assert model.backbone.adapter == "parallel"


def test_labelled_test_split_is_scored_and_resume_with_selection_is_exact(tree, tmp_path):
    """With annotations/<d>_test.json the test split is scored; a run killed in the middle
    of MDL (after a selection point) resumes to bitwise the same results."""
    config, reference = _run("decathlon_mdl.py", "smoke", tree, tmp_path / "ref", "labelled")
    assert reference["evaluated_on"] == "test"
    assert not os.path.exists(tmp_path / "ref" / "predictions")
    n_test = len(decathlon.data_source("aircraft", "test", tree["labelled"][1]))
    assert reference["mdl"]["aircraft"]["examples"] == min(n_test, config.eval_limit)
    _check_scores(reference, config)
    teacher_acc = {d: reference["teachers"][d]["accuracy"] for d in config.domains}
    if all(a > 0 for a in teacher_acc.values()):  # Delta_MDL vs the teachers is defined
        assert reference["scores"]["mdl"]["delta_mdl"] == pytest.approx(
            delta_mdl({d: reference["mdl"][d]["accuracy"] for d in config.domains}, teacher_acc))
    else:
        assert "delta_mdl" not in reference["scores"]["mdl"]

    class Killed(Exception):
        pass

    def kill(stage, step, state):
        if stage == "mdl" and step == 2:
            raise Killed

    train.step_callbacks.append(kill)
    try:
        with pytest.raises(Killed):
            _run("decathlon_mdl.py", "smoke", tree, tmp_path / "resumed", "labelled")
    finally:
        train.step_callbacks.remove(kill)
    with open(tmp_path / "resumed" / "selection" / "mdl" / "best.json") as f:
        best = json.load(f)
    assert best["step"] == 2  # selected before the kill
    _, resumed = _run("decathlon_mdl.py", "smoke", tree, tmp_path / "resumed", "labelled")
    for row in ("teachers", "mdl", "scores"):
        assert resumed[row] == reference[row]


def test_step_schedule_matches_the_recipe():
    """x0.1 at epochs 80 and 100 of 120 (100 iterations each)."""
    sched = train.learning_rate_schedule(0.01, 12000, 0, "step", (80 / 120, 100 / 120), 0.1)
    for step, want in ((0, 0.01), (7999, 0.01), (8000, 1e-3), (9999, 1e-3), (10000, 1e-4),
                       (11999, 1e-4)):
        assert float(sched(step)) == pytest.approx(want, rel=1e-6)
    warm = train.learning_rate_schedule(0.1, 100, 10, "step", (0.5,), 0.1)
    assert float(warm(0)) == pytest.approx(0.01) and float(warm(9)) == pytest.approx(0.1)
    assert float(warm(50)) == pytest.approx(0.01)
    cos = train.learning_rate_schedule(0.1, 100, 0, "cosine")
    assert float(cos(50)) == pytest.approx(float(optax.cosine_decay_schedule(0.1, 100)(50)))
    with pytest.raises(ValueError, match="fractions"):
        train.learning_rate_schedule(0.1, 100, 0, "step", (80.0,))


def test_recipe_matches_paper():
    c = decathlon_config.base(("teachers", "url"))
    assert c.url.steps == 12000 and c.url.temperature == 8.0
    assert train.batch_size(c.url, "imagenet12") == 512 and train.batch_size(c.url, "dtd") == 128
    assert dict(c.url.lambda_f) == {"imagenet12": 10.0, "daimlerpedcls": 0.1, "default": 1.0}
    assert train.stage_value(c.teachers, "learning_rate", "imagenet12") == 0.1
    assert train.stage_value(c.teachers, "weight_decay", "dtd") == 5e-4
    assert c.select_every % c.checkpoint_every == 0
    assert set(c.domains) == set(decathlon.DOMAINS)


def test_bad_configs_are_refused(tree, tmp_path):
    manual, data = tree["stripped"]
    for overrides, match in (({"select_every": 3, "checkpoint_every": 2}, "select_every"),
                             ({"teachers.finetune_from": "svhn"}, "finetune_from"),
                             ({"url.init_from": "cifar100"}, "init_from"),
                             ({"teachers.schedule": "linear"}, "schedule"),
                             ({"score": "other"}, "score")):
        config = _config("decathlon_url.py", manual_dir=manual, data_dir=data, **overrides)
        with pytest.raises(ValueError, match=match):
            train.run(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="takes"):
        _config("decathlon_mdl.py", "bogus")
    config = _config("decathlon_url.py", manual_dir=str(tmp_path / "nothing"),
                     data_dir=str(tmp_path / "empty"))
    with pytest.raises(decathlon.DecathlonDataError, match="decathlon-1.0"):
        train.run(config, str(tmp_path / "w2"))


def test_cli_writes_a_fake_tree(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ur_jax.data.decathlon", "--fake", str(tmp_path),
                           "--domains", "dtd"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    files = sorted(os.listdir(tmp_path / "decathlon-1.0" / "annotations"))
    assert files == ["dtd_test_stripped.json", "dtd_train.json", "dtd_val.json"]
    assert np.any([f.endswith(".jpg") for f in os.listdir(
        tmp_path / "decathlon-1.0" / "data" / "dtd" / "test")])
