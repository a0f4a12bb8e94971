"""The runner end to end: the CLI on default.py:smoke, exact resume, 1 vs 8 devices, errors.

One smoke run through ``python -m ur_jax.main`` (8 fake CPU devices, inherited from
conftest's XLA_FLAGS) is the reference; the in-process runs below reuse compilations
through one shared CompiledCache (run(..., cache=...)).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ur_jax import checkpointing, sharding
from ur_jax.config import load_config
from ur_jax import run as run_lib

# One compiled-function cache for this module's runs: equal models share their compiled steps.
_CACHE = run_lib.CompiledCache()


def _run(config, workdir, **kwargs):
    return run_lib.run(config, workdir, cache=_CACHE, **kwargs)


ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def _load_config(arg="smoke", **overrides):
    path = os.path.join(ROOT, "configs", "default.py")
    return load_config(f"{path}:{arg}" if arg else path, **overrides)


@pytest.fixture(scope="module")
def cli_run(data_dir, tmp_path_factory):
    """The smoke config through the command line, as a user runs it."""
    workdir = str(tmp_path_factory.mktemp("cli"))
    proc = subprocess.run(
        [sys.executable, "-m", "ur_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", workdir, f"--config.data_dir={data_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, "results.json")) as f:
        return workdir, json.load(f), proc


def _metrics(results):
    return {k: results[k] for k in ("teachers", "mdl", "url", "fewshot")}


def test_cli_smoke_writes_complete_results(cli_run):
    workdir, results, proc = cli_run
    config = _load_config()
    domains = list(config.domains)
    assert results["config"]["domains"] == domains
    for name in ("teachers", "mdl", "url"):
        assert sorted(results[name]) == sorted(domains + ["mean"])
        for d in domains:
            r = results[name][d]
            assert r["examples"] == config.eval_limit
            assert 0.0 <= r["accuracy"] <= 100.0 and np.isfinite(r["loss"])
            # accuracy is a count of correct predictions over the examples
            assert abs(r["accuracy"] * r["examples"] / 100 - round(r["accuracy"] * r["examples"]
                                                                    / 100)) < 1e-6
        assert results[name]["mean"]["accuracy"] == pytest.approx(
            np.mean([results[name][d]["accuracy"] for d in domains]))
    fs = results["fewshot"]
    assert set(fs) == {"mdl", "url", "protocol"}
    for model in ("mdl", "url"):
        for method in ("ncc", "pa"):
            for d in config.fewshot.domains:
                assert 0.0 <= fs[model][method][d]["accuracy"] <= 100.0
                assert fs[model][method][d]["ci95"] > 0.0
    # the printed table, progress with throughput, and the TensorBoard events
    assert "Test accuracy (%)" in proc.stdout and "url" in proc.stdout
    assert "examples/s" in proc.stderr and "ETA" in proc.stderr
    scalars = __import__("ur_jax.writers", fromlist=["read_scalars"]).read_scalars(
        os.path.join(workdir, "tensorboard"))
    assert [s for s, _ in scalars["url/loss"]] == list(range(2, config.url.steps + 1, 2))
    assert "url/align_loss/digits" in scalars and "teacher_shapes/loss" in scalars
    # every teacher is saved in the exchange format, loadable as a frozen teacher
    for d in domains:
        model, variables = checkpointing.load_model(os.path.join(workdir, "teachers", d, "model"))
        assert model.domains == (d,)
        assert "batch_stats" in variables


def test_resume_after_interruption_is_exact(cli_run, data_dir, tmp_path, devices):
    """A run killed during distillation and started again ends with the same numbers."""
    _, reference, _ = cli_run
    config = _load_config(data_dir=data_dir)
    workdir = str(tmp_path / "resumed")

    class Killed(Exception):
        pass

    def kill(stage, step, state):
        if stage == "url" and step == 5:  # after step 5; the last checkpoint is step 4
            raise Killed

    with pytest.raises(Killed):
        _run(config, workdir, step_hooks=(kill,))
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints", "url")).latest_step() == 4
    seen = []

    def hook(stage, step, state):
        seen.append((stage, step))

    resumed = _run(config, workdir, step_hooks=(hook,))
    # finished stages are not trained again; distillation continues from step 4
    assert seen == [("url", 5), ("url", 6)]
    assert _metrics(resumed) == _metrics(reference)


def _damage(step_dir: str) -> list[str]:
    """Cuts every file of a checkpoint's state to 10 bytes, as a pre-empted job can leave it."""
    cut = []
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(10)
            cut.append(path)
    assert cut, f"nothing to damage under {step_dir}"
    return cut


def test_resume_falls_back_past_a_damaged_checkpoint(cli_run, data_dir, tmp_path, devices,
                                                      caplog):
    """A truncated latest checkpoint: a warning naming its step, the previous one restores,
    and the run ends with the numbers of an uninterrupted run; all damaged: one clear error."""
    _, reference, _ = cli_run
    config = _load_config(data_dir=data_dir)
    workdir = str(tmp_path / "damaged")
    url_dir = os.path.join(workdir, "checkpoints", "url")

    class Killed(Exception):
        pass

    def kill(stage, step, state):
        if stage == "url" and step == 5:
            raise Killed

    with pytest.raises(Killed):
        _run(config, workdir, step_hooks=(kill,))
    _damage(os.path.join(url_dir, "4"))
    seen = []

    def hook(stage, step, state):
        seen.append((stage, step))

    with caplog.at_level("WARNING"):
        resumed = _run(config, workdir, step_hooks=(hook,))
    assert "The checkpoint at step 4" in caplog.text and "cannot be restored" in caplog.text
    assert seen == [("url", 3), ("url", 4), ("url", 5), ("url", 6)]  # from step 2
    assert _metrics(resumed) == _metrics(reference)
    for step in checkpointing.Checkpointer(url_dir).all_steps():
        _damage(os.path.join(url_dir, str(step)))
    with pytest.raises(checkpointing.CheckpointError, match="can be restored"):
        _run(config, workdir)  # a finished stage is restored too, so this one must fail


def test_one_device_matches_eight(cli_run, data_dir, tmp_path, devices):
    _, reference, _ = cli_run
    config = _load_config(data_dir=data_dir)
    single = _run(config, str(tmp_path / "one"), mesh=sharding.make_mesh(devices[:1]))
    for name in ("teachers", "mdl", "url"):
        for d in config.domains:
            a, b = single[name][d], reference[name][d]
            assert a["loss"] == pytest.approx(b["loss"], rel=2e-3, abs=2e-3), (name, d)
            # float summation order may flip an argmax of a near-tie: at most one example
            assert abs(a["accuracy"] - b["accuracy"]) <= 100.0 / a["examples"] + 1e-9, (name, d)
    for model in ("mdl", "url"):
        for method in ("ncc", "pa"):
            for d in config.fewshot.domains:
                assert single["fewshot"][model][method][d]["accuracy"] == pytest.approx(
                    reference["fewshot"][model][method][d]["accuracy"], abs=1.0)


# ----------------------------------------------------------------------------- errors


def test_unknown_config_key_is_a_clear_cli_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ur_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", str(tmp_path), "--config.url.stepz=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no key 'url.stepz'" in proc.stderr and 'Did you mean "steps"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_teacher_checkpoint_is_refused(data_dir, tmp_path):
    config = _load_config(data_dir=data_dir)
    config.teachers.checkpoints.digits = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No saved model in .*nowhere"):
        _run(config, str(tmp_path / "run"))


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory):
    """A digits teacher of the smoke architecture, saved in the exchange format."""
    config = _load_config()
    spec = checkpointing.model_spec(config.model.backbone, config.model.kwargs.to_dict(),
                                    {"digits": 10})
    model = checkpointing.model_from_spec(spec)
    variables = jax.jit(lambda r: model.init(r, {"digits": np.zeros((1, 32, 32, 3), np.float32)}))(
        jax.random.key(0))
    path = str(tmp_path_factory.mktemp("teacher") / "model")
    checkpointing.save_model(path, spec, jax.device_get(variables))
    return path, spec, variables


def test_loaded_teacher_round_trips(saved_teacher):
    path, spec, variables = saved_teacher
    model, loaded = checkpointing.load_model(path, expected=spec)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(jax.device_get(variables))):
        np.testing.assert_array_equal(a, b)


def test_teacher_with_other_class_count_or_architecture_is_refused(saved_teacher, data_dir,
                                                                   tmp_path):
    path, spec, _ = saved_teacher
    wrong_classes = dict(spec, num_classes=[["digits", 7]])
    with pytest.raises(ValueError, match="num_classes: expected .*7.*found .*10"):
        checkpointing.load_model(path, expected=wrong_classes)
    config = _load_config(data_dir=data_dir)
    config.model.kwargs.width = 0.25  # the saved teacher is 1/8 wide
    config.teachers.checkpoints.digits = path
    with pytest.raises(ValueError, match="backbone_kwargs: expected .*0.25.*found .*0.125"):
        _run(config, str(tmp_path / "run"))


def test_teacher_whose_weights_do_not_fit_its_spec_is_refused(saved_teacher, tmp_path):
    path, spec, _ = saved_teacher
    liar = str(tmp_path / "liar")
    checkpointing.save_model(liar, dict(spec, num_classes=[["digits", 7]]),
                             checkpointing.load_model(path)[1])
    with pytest.raises(ValueError, match=r"do not fit the architecture.*\(64, 10\)|\(64, 7\)"):
        checkpointing.load_model(liar)


def test_unwritable_workdir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(run_lib.WorkdirError, match="Cannot write to the workdir"):
        run_lib.prepare_workdir(str(blocker / "run"), _load_config())


def test_workdir_of_another_config_is_refused_unless_overwrite(tmp_path):
    workdir = str(tmp_path / "run")
    run_lib.prepare_workdir(workdir, _load_config())
    (tmp_path / "run" / "results.json").write_text("{}")
    (tmp_path / "run" / "mine.txt").write_text("user file")
    # settings that change no number may differ (a continued run with more logging)
    run_lib.prepare_workdir(workdir, _load_config(log_every=1))
    other = _load_config(seed=1)
    with pytest.raises(run_lib.WorkdirError, match=r"different config:\n  seed: 0 -> 1"):
        run_lib.prepare_workdir(workdir, other)
    assert (tmp_path / "run" / "results.json").exists()  # nothing was touched
    run_lib.prepare_workdir(workdir, other, overwrite=True)
    assert not (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "mine.txt").exists()  # only the run's own outputs go
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["seed"] == 1


def test_bad_config_values_are_refused_before_running(tmp_path):
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        _run(_load_config(**{"url.batch_size": 12}), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="Unknown stage"):
        _run(_load_config(stages=("teachers", "distill")), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="needs stage 'teachers'"):
        _run(_load_config(stages=("url",)), str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"default\.py takes one of \('tune',\) or nothing"):
        _load_config("tiny")
    with pytest.raises(ValueError, match="evaluate_on='val' but the data has no validation"):
        _run(_load_config(evaluate_on="val", data_dir=str(tmp_path / "d")),
                  str(tmp_path / "d"))
    with pytest.raises(ValueError, match="evaluate_on='tset'"):
        _run(_load_config(evaluate_on="tset"), str(tmp_path / "e"))
    assert not os.path.exists(tmp_path / "a")  # refused before the workdir was touched


def test_tuning_reports_on_a_validation_split_carved_from_train(data_dir, tmp_path):
    """configs/default.py:tune reports its tables on held-out training images, never on test
    (the learning-rate search of the default's docstring)."""
    config = _load_config(stages=("teachers",), data_dir=data_dir, holdout_per_class=3,
                          evaluate_on="val")
    results = _run(config, str(tmp_path / "run"))
    assert results["evaluated_on"] == "val"
    for d in config.domains:
        assert results["teachers"][d]["examples"] == 30  # 3 per class x 10 classes, not test's
    tune = _load_config("tune")
    assert tune.evaluate_on == "val" and tune.holdout_per_class == 50
    assert "fewshot" not in tune.stages
