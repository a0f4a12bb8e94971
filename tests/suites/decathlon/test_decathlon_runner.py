"""The Decathlon configs end to end on a fake decathlon-1.0/ tree: every config's smoke
run, model selection with exact resume, test-prediction export, scores, config errors."""

import json
import os
import subprocess
import sys

import numpy as np
import optax
import pytest

from ur_jax import checkpointing
from ur_jax.config import load_config
from ur_jax.suites import decathlon
from ur_jax.suites.decathlon import recipe as decathlon_config
from ur_jax.suites.decathlon.fake import write_fake_decathlon
from ur_jax.evaluation import decathlon_score, delta_mdl
from ur_jax import run as run_lib
from ur_jax import optim
from ur_jax.stages import common, supervised, distill
from ur_jax.run import tables

# One compiled-function cache for this module's runs: equal models share their compiled steps.
_CACHE = run_lib.CompiledCache()


def _run_config(config, workdir, **kwargs):
    return run_lib.run(config, workdir, cache=_CACHE, **kwargs)


ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


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
    write_fake_decathlon(stripped, domains=domains)
    write_fake_decathlon(labelled, domains=domains, test_labels=True)
    return {"stripped": (stripped, str(base / "data_stripped")),
            "labelled": (labelled, str(base / "data_labelled"))}


def _run(name, arg, tree, workdir, which="stripped", step_hooks=(), **overrides):
    manual, data = tree[which]
    config = _config(name, arg, manual_dir=manual, data_dir=data, **overrides)
    return config, _run_config(config, str(workdir), step_hooks=step_hooks)


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

    with pytest.raises(Killed):
        _run("decathlon_mdl.py", "smoke", tree, tmp_path / "resumed", "labelled", step_hooks=(kill,))
    with open(tmp_path / "resumed" / "selection" / "mdl" / "best.json") as f:
        best = json.load(f)
    assert best["step"] == 2  # selected before the kill
    _, resumed = _run("decathlon_mdl.py", "smoke", tree, tmp_path / "resumed", "labelled")
    for row in ("teachers", "mdl", "scores"):
        assert resumed[row] == reference[row]


def test_step_schedule_matches_the_recipe():
    """x0.1 at epochs 80 and 100 of 120 (100 iterations each)."""
    sched = optim.learning_rate_schedule(0.01, 12000, 0, "step", (80 / 120, 100 / 120), 0.1)
    for step, want in ((0, 0.01), (7999, 0.01), (8000, 1e-3), (9999, 1e-3), (10000, 1e-4),
                       (11999, 1e-4)):
        assert float(sched(step)) == pytest.approx(want, rel=1e-6)
    warm = optim.learning_rate_schedule(0.1, 100, 10, "step", (0.5,), 0.1)
    assert float(warm(0)) == pytest.approx(0.01) and float(warm(9)) == pytest.approx(0.1)
    assert float(warm(50)) == pytest.approx(0.01)
    cos = optim.learning_rate_schedule(0.1, 100, 0, "cosine")
    assert float(cos(50)) == pytest.approx(float(optax.cosine_decay_schedule(0.1, 100)(50)))
    with pytest.raises(ValueError, match="fractions"):
        optim.learning_rate_schedule(0.1, 100, 0, "step", (80.0,))


def test_recipe_matches_paper():
    c = decathlon_config.base(("teachers", "url"))
    assert c.url.steps == 12000 and c.url.temperature == 8.0
    assert common.batch_size(c.url, "imagenet12") == 512 and common.batch_size(c.url, "dtd") == 128
    assert dict(c.url.lambda_f) == {"imagenet12": 10.0, "daimlerpedcls": 0.1, "default": 1.0}
    assert common.stage_value(c.teachers, "learning_rate", "imagenet12") == 0.1
    assert common.stage_value(c.teachers, "weight_decay", "dtd") == 5e-4
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
            _run_config(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="takes"):
        _config("decathlon_mdl.py", "bogus")
    config = _config("decathlon_url.py", manual_dir=str(tmp_path / "nothing"),
                     data_dir=str(tmp_path / "empty"))
    with pytest.raises(decathlon.DecathlonDataError, match="decathlon-1.0"):
        _run_config(config, str(tmp_path / "w2"))


def test_cli_writes_a_fake_tree(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ur_jax.suites.decathlon", "--fake", str(tmp_path),
                           "--domains", "dtd"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    files = sorted(os.listdir(tmp_path / "decathlon-1.0" / "annotations"))
    assert files == ["dtd_test_stripped.json", "dtd_train.json", "dtd_val.json"]
    assert np.any([f.endswith(".jpg") for f in os.listdir(
        tmp_path / "decathlon-1.0" / "data" / "dtd" / "test")])


# ----------------------------------------------------------------------------- issue 14 protocol

def test_paper_configs_follow_the_authors_protocol():
    for name in ("decathlon_sdl.py", "decathlon_mdl.py", "decathlon_url.py",
                 "decathlon_url_parallel.py"):
        c = _config(name, None)
        assert c.train_split == "train+val", name
        assert c.decathlon_normalization == "published", name
        assert "--config.train_split=train+val" in open(os.path.join(ROOT, "configs", name)).read()
        assert _config(name).train_split == "train"  # smoke: validation selection
    assert _config("decathlon_mdl.py", None).model.student_input_size == 72
    assert _config("decathlon_mdl.py", "parallel").model.student_input_size == 72
    assert _config("decathlon_url.py", None).model.student_input_size == 72
    # the authors' adapter code (trainurlad, urltest(ad=True)) feeds the native crops
    assert _config("decathlon_url_parallel.py", None).model.student_input_size == 0


def test_train_plus_val_trains_on_both_splits_and_keeps_the_last_model(tree, tmp_path):
    """train_split='train+val': every domain's training source is the union of its train and
    val examples (count and labels), no validation selection runs, the labelled test split
    is scored; the smoke config runs end to end."""
    from ur_jax.data import registry

    manual, data_dir = tree["labelled"]
    config = _config("decathlon_mdl.py", manual_dir=manual, data_dir=data_dir,
                     train_split="train+val")
    data = registry.load_classification(config)
    for d in config.domains:
        want = {}
        for split in ("train", "val"):
            path = os.path.join(manual, "decathlon-1.0", "annotations", f"{d}_{split}.json")
            with open(path) as f:
                ann = json.load(f)
            cats = sorted(c["id"] for c in ann["categories"])
            want.update({a["image_id"]: cats.index(a["category_id"]) for a in ann["annotations"]})
        src = data.train[d]
        assert len(src) == len(want) == 5 * (3 + 2)  # fake tree: 5 classes, 3 train + 2 val
        assert {int(src[i]["image_id"]): int(src[i]["label"]) for i in range(len(src))} == want
    results = _run_config(config, str(tmp_path))
    assert results["evaluated_on"] == "test"
    assert not os.path.exists(tmp_path / "selection")  # no model selection: the last model
    for row in ("teachers", "mdl"):
        for d in config.domains:
            assert 0 <= results[row][d]["accuracy"] <= 100
    _check_scores(results, config)
    # without test labels the validation numbers are flagged as seen in training
    assert "trained on: train_split=train+val" in tables.classification_table(
        {**results, "evaluated_on": "val"})
    with pytest.raises(ValueError, match="train_split"):
        registry.load_classification(_config("decathlon_mdl.py", manual_dir=manual,
                                             data_dir=data_dir, train_split="trainval"))


def test_url_student_sees_72_px_crops_and_teachers_their_native_64(tree):
    """A URL step on an imagenet12 + aircraft batch of the smoke config: the student's
    aircraft images are the batch's 64 x 64 crops resized to 72 x 72 (bilinear, corners
    aligned, as kornia.augmentation.Resize), its imagenet12 images unchanged; the aircraft
    teacher gets the 64 x 64 crops; images are normalised with the published constants."""
    import flax.linen as nn
    import jax

    from ur_jax import optim, steps
    from ur_jax.adapters import AlignmentAdapters
    from ur_jax.data import pipeline, registry
    from ur_jax.models import ResNet26
    from ur_jax.teachers import stack_teachers

    manual, data_dir = tree["stripped"]
    config = _config("decathlon_url.py", manual_dir=manual, data_dir=data_dir)
    assert tuple(config.domains) == ("imagenet12", "aircraft")
    data = registry.load_classification(config)
    for d in config.domains:
        assert data.normalize(d) == decathlon.normalization(d)  # published, not estimated
    assert data.normalize("aircraft").mean == (0.47983041, 0.51074066, 0.53437998)
    assert supervised.student_input_sizes(config, data) == {"aircraft": 72}
    student = supervised.student(config, data)
    assert tuple(student.input_sizes) == (("aircraft", 72),)
    batch = next(iter(pipeline.train_batches(
        {d: data.train[d] for d in config.domains}, {d: 8 for d in config.domains}, seed=0,
        augment=data.train_transform, normalize={d: data.normalize(d) for d in config.domains})))
    assert batch["aircraft"]["image"].shape == (8, 64, 64, 3)
    images = {d: b["image"] for d, b in batch.items()}
    seen = {"student": {}, "teacher": {}}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ResNet26) and context.method_name == "__call__":
            who = "student" if context.module.domains else "teacher"
            seen[who][kwargs.get("domain") or args[0].shape] = args[0]
        return next_fun(*args, **kwargs)

    def url_step(batch):  # teachers, student and adapters set up as train_url does
        teachers = {}
        for i, d in enumerate(config.domains):
            model = checkpointing.model_from_spec(common.classifier_spec(config, {d: data.num_classes[d]}))
            assert not model.input_sizes
            teachers[d] = (model, model.init(jax.random.key(i), {d: batch[d]["image"]}))
        bank, teacher_vars = stack_teachers(teachers, {d: (8,) + data.shape(d)
                                                       for d in config.domains})
        adapters = AlignmentAdapters(tuple((d, 16) for d in config.domains), kind="linear")
        state = steps.init_distill_state(student, adapters, jax.random.key(0), images,
                                         optax.sgd(0.01), optim.adam(1e-3))
        step = steps.make_distill_step(student, adapters, bank, distill.distill_config(
            config, config.domains), num_shards=1)
        seen["student"].clear()  # the step's calls, not init's
        seen["teacher"].clear()
        with nn.intercept_methods(record):
            return step(state, teacher_vars, batch)

    jax.eval_shape(url_step, batch)  # traced abstractly: what each network receives
    assert {d: x.shape for d, x in seen["student"].items()} == {
        "imagenet12": (8, 72, 72, 3), "aircraft": (8, 72, 72, 3)}
    assert set(seen["teacher"]) == {(8, 72, 72, 3), (8, 64, 64, 3)}  # native crops

    @jax.jit
    def student_inputs(images):  # the values the student's backbone receives
        variables = student.init(jax.random.key(0), images)
        with nn.intercept_methods(record):
            student.apply(variables, images)
        return dict(seen["student"])

    received = student_inputs(images)
    aircraft = batch["aircraft"]["image"]
    n, h, w, c = aircraft.shape
    want = np.zeros((n, 72, 72, c))
    for i in range(72):  # bilinear with align_corners=True, from the definition
        sy = i * (h - 1) / 71
        y0 = int(sy)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(72):
            sx = j * (w - 1) / 71
            x0 = int(sx)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            want[:, i, j] = ((1 - fy) * ((1 - fx) * aircraft[:, y0, x0] + fx * aircraft[:, y0, x1])
                             + fy * ((1 - fx) * aircraft[:, y1, x0] + fx * aircraft[:, y1, x1]))
    np.testing.assert_allclose(np.asarray(received["aircraft"]), want, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(received["imagenet12"]), images["imagenet12"])
    # the saved student keeps the resize (evaluation sees 72 px too); off with size 0
    spec = supervised.student_spec(config, data)
    assert spec["input_sizes"] == [["aircraft", 72]]
    assert checkpointing.model_from_spec(spec).input_sizes == (("aircraft", 72),)
    config.model.student_input_size = 0
    assert "input_sizes" not in supervised.student_spec(config, data)
