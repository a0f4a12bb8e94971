"""The dense runner end to end: a smoke run of every dense config on fake data in MTAN's exact
on-disk format (NYU-v2, Cityscapes) and on the tiny procedural scenes, exact resume of a
stateful multi-task method, and the user-facing errors.

Runs are in-process over the 8 fake devices and share compiled steps through
one CompiledCache (run(..., cache=...)); one run goes through the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ur_jax import checkpointing
from ur_jax.config import load_config
from ur_jax.suites import dense as dense_data
from ur_jax.suites.dense.fake import write_fake_mtan
from ur_jax.evaluation import dense as dense_eval
from ur_jax import run as run_lib
from ur_jax.run import tables

# One compiled-function cache for this module's runs: equal models share their compiled steps.
_CACHE = run_lib.CompiledCache()


def _run(config, workdir, **kwargs):
    return run_lib.run(config, workdir, cache=_CACHE, **kwargs)


ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
SHAPE = (16, 32)  # the smoke SegNet has two levels: sides must be multiples of 4


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Fake MTAN trees (train 16, test 8 images) and one TFDS data_dir for everything."""
    base = tmp_path_factory.mktemp("dense")
    out = {"data_dir": str(base / "tfds")}
    for name, dataset in (("nyuv2", "nyuv2"), ("cityscapes", "cityscapes7")):
        out[name] = str(write_fake_mtan(base / name, dataset, 16, 8, shape=SHAPE))
    return out


def _config(name: str, arg: str, dirs, **overrides):
    manual = dirs["cityscapes"] if name.startswith("cityscapes") else dirs.get("nyuv2")
    overrides = {"data_dir": dirs["data_dir"], **overrides}
    if not name.startswith("dense_default"):
        overrides.setdefault("manual_dir", manual)
    return load_config(os.path.join(ROOT, "configs", f"{name}.py:{arg}"), **overrides)


def _check_metrics(per_task, tasks):
    for t in tasks:
        assert set(per_task[t]) >= {k for k, _ in tables.TABLE_METRICS[t]}, per_task[t]
        assert all(np.isfinite(v) for v in per_task[t].values()), per_task[t]


@pytest.mark.parametrize("name, arg, stages", [
    ("nyuv2_stl", "normal,smoke", ("stl",)),
    ("nyuv2_mtl", "imtl_h,smoke", ("stl", "mtl")),
    ("nyuv2_mtl", "bam,smoke", ("stl", "mtl")),
    ("nyuv2_url", "smoke", ("stl", "url")),
    ("cityscapes_stl", "depth,smoke", ("stl",)),
    pytest.param("cityscapes_mtl", "mgda,smoke", ("stl", "mtl"), marks=pytest.mark.slow),
    pytest.param("cityscapes_url", "smoke", ("stl", "url"), marks=pytest.mark.slow),
    ("dense_default", "smoke", ("stl", "mtl", "url")),
])
def test_every_dense_config_runs(dirs, tmp_path, capsys, name, arg, stages):
    config = _config(name, arg, dirs)
    assert tuple(config.stages) == stages
    results = _run(config, str(tmp_path))
    tasks = tuple(config.tasks)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(results))
    for stage in stages:
        _check_metrics(results[stage], tasks if stage != "stl" else tuple(config.tasks))
        if stage != "stl":  # the students are saved as models, like the teachers
            model, variables = checkpointing.load_model(
                str(tmp_path / "students" / stage / "model"))
            assert set(variables) <= {"params", "batch_stats"} and "params" in variables
    for t in (config.tasks if "stl" in stages else ()):  # teachers saved, loadable
        model, _ = checkpointing.load_model(str(tmp_path / "teachers" / t / "model"))
        assert model.task_names == (t,)
    if "stl" in stages and len(stages) > 1:
        own = {t: results["stl"][t] for t in tasks}
        other = results[stages[1]]
        np.testing.assert_allclose(other["delta_mtl"]["stl"],
                                   dense_eval.delta_mtl({t: other[t] for t in tasks}, own))
    # Only NYU-v2 has published STL results to compare with.
    has_reference = ["reference" in results[s].get("delta_mtl", {}) for s in stages]
    assert has_reference == [config.dataset == "nyuv2"] * len(stages)
    printed = capsys.readouterr().out
    assert "Delta_MTL" in printed and "STL" in printed


def test_cli_and_resume_of_a_stateful_method(dirs, tmp_path):
    """nyuv2_mtl:dwa (the mtl stage alone) through the command line; then the same config
    in-process, interrupted after mtl step 1 and continued, gives exactly the CLI's numbers
    (model, optimizer, DWA's loss history and the data iterator all come back from the
    checkpoint)."""
    args = ["--config", "configs/nyuv2_mtl.py:dwa,smoke", f"--config.manual_dir={dirs['nyuv2']}",
            f"--config.data_dir={dirs['data_dir']}", "--config.mtl.steps=3",
            "--config.stages=('mtl',)"]
    cli_dir = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "ur_jax.main", *args, "--workdir", str(cli_dir)],
                          check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dwa" in proc.stdout and "Delta_MTL" in proc.stdout
    reference = json.loads((cli_dir / "results.json").read_text())

    config = _config("nyuv2_mtl", "dwa,smoke", dirs, **{"mtl.steps": 3, "stages": ("mtl",)})
    workdir = str(tmp_path / "resumed")

    class Interrupt(Exception):
        pass

    def stop(stage, step, state):
        if stage == "mtl" and step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        _run(config, workdir, step_hooks=(stop,))
    resumed = _run(config, workdir)
    assert resumed["mtl"] == reference["mtl"]
    assert "reference" in resumed["mtl"]["delta_mtl"]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["mtan", "cross_stitch"])
def test_multi_task_architectures_run_against_single_task_segnets(dirs, tmp_path, architecture):
    """--config.model.name=mtan / cross_stitch: the mtl (a LibMTL method, parameter space)
    and url stages train the architecture, the stl teachers are single-task SegNets (the
    papers' baseline); a feature-space method is refused before any teacher trains."""
    overrides = {"model.name": architecture, "stages": ("stl", "mtl", "url"),
                 "mtl.steps": 2, "url.steps": 2}
    config = _config("nyuv2_mtl", "nash_mtl,smoke", dirs, **overrides)
    results = _run(config, str(tmp_path / "run"))
    for stage in ("stl", "mtl", "url"):
        _check_metrics(results[stage], tuple(config.tasks))
    for t in config.tasks:
        spec = json.loads((tmp_path / "run" / "teachers" / t / "model" / "model.json").read_text())
        assert spec["dense_model"] == "segnet", spec
    feature_space = _config("nyuv2_mtl", "graddrop,smoke", dirs, **{"model.name": architecture})
    with pytest.raises(ValueError, match="space='params'"):
        _run(feature_space, str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "teachers").exists()


def test_errors_are_clear(dirs, tmp_path):
    # No manual download where the config says.
    config = _config("nyuv2_stl", "semantic,smoke", dirs, manual_dir=str(tmp_path / "nowhere"),
                     data_dir=str(tmp_path / "fresh"))
    with pytest.raises(dense_data.DenseDataError, match="(?s)does not exist.*image/0.npy.*mtan"):
        _run(config, str(tmp_path / "a"))
    # Cityscapes has no normals.
    config = _config("cityscapes_stl", "semantic,smoke", dirs, tasks=("semantic", "normal"))
    config.teachers.checkpoints = {"semantic": "", "normal": ""}
    with pytest.raises(ValueError, match="no \\['normal'\\] targets"):
        _run(config, str(tmp_path / "b"))
    # URL without the teachers' stage; an unknown method; a bad config argument.
    with pytest.raises(ValueError, match="needs stage 'stl'"):
        _run(_config("nyuv2_url", "smoke", dirs, stages=("url",)), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="Unknown multi-task method"):
        _run(_config("nyuv2_mtl", "smoke", dirs, **{"mtl.method": "magic"}),
                        str(tmp_path / "d"))
    with pytest.raises(ValueError, match="takes one of"):
        _config("nyuv2_mtl", "magic", dirs)
    with pytest.raises(ValueError, match="'bam' needs stage 'stl'"):
        _run(_config("nyuv2_mtl", "bam,smoke", dirs, stages=("mtl",)),
                        str(tmp_path / "g"))
    with pytest.raises(ValueError, match="'bam' takes no options"):
        _run(_config("nyuv2_mtl", "bam,smoke", dirs, **{"mtl.options": {"c": 0.4}}),
                        str(tmp_path / "h"))
    # A teacher of the wrong task is refused before training.
    config = _config("nyuv2_stl", "depth,smoke", dirs)
    _run(config, str(tmp_path / "e"))
    wrong = _config("nyuv2_url", "smoke", dirs)
    wrong.teachers.checkpoints.semantic = str(tmp_path / "e" / "teachers" / "depth" / "model")
    with pytest.raises(ValueError, match="does not match"):
        _run(wrong, str(tmp_path / "f"))


def test_config_method_list_matches_the_library():
    from ur_jax import mtl
    from ur_jax.suites.dense import recipe as dense_config

    assert dense_config.MTL_METHODS == mtl.METHODS
    assert dense_config.MTL_STAGE_METHODS == (*mtl.METHODS,
                                                                                 "bam")
