"""Meta-Dataset end to end on a fake records directory: every config's smoke run, the runner's
Meta-Dataset pieces (warm-restart schedule, per-source annealing, per-source steps)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from ur_jax import train
from ur_jax.data import metadataset as md

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _config(name, arg, records, data):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.metadataset.records_dir = records
    c.data_dir = data
    return c


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("md")
    records = md.write_fake_records(str(root / "records"))
    return records, str(root / "tfds")


@pytest.fixture(scope="module")
def sdl_run(fake, tmp_path_factory):
    records, data = fake
    workdir = str(tmp_path_factory.mktemp("sdl"))
    results = train.run(_config("metadataset_sdl", "omniglot,smoke", records, data), workdir)
    return workdir, results


def test_learning_rate_warm_restarts():
    """PyTorch's CosineAnnealingWarmRestarts(T_0=4): lr (1 + cos(pi (t mod 4) / 4)) / 2."""
    schedule = train.learning_rate_schedule(0.03, 12, kind="cosine_restarts", restart_every=4)
    got = np.asarray([schedule(t) for t in range(12)])
    expected = [0.03 * (1 + np.cos(np.pi * (t % 4) / 4)) / 2 for t in range(12)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[4] == pytest.approx(0.03)  # the restart
    with pytest.raises(ValueError, match="restart_every"):
        train.learning_rate_schedule(0.03, 12, kind="cosine_restarts")


def test_recipe_is_the_papers():
    spec = importlib.util.spec_from_file_location("u", os.path.join(CONFIGS, "metadataset_url.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert train.batch_size(c.url, "ilsvrc_2012") == 448
    assert train.batch_size(c.url, "fungi") == 64
    assert train.stage_steps(c.teachers, "ilsvrc_2012") == 480_000
    assert train.stage_steps(c.teachers, "dtd") == 50_000
    assert train.stage_value(c.teachers, "restart_every", "dtd") == 1_500
    assert train.stage_value(c.teachers, "learning_rate", "quickdraw") == 1e-2
    # Annealing: weight 1 - t / (48k k): ImageNet k = 5 reaches 0 at 240k, others at 48k / 96k.
    anneal = train._distill_config(c, tuple(c.domains)).anneal
    assert float(anneal["ilsvrc_2012"](120_000)) == pytest.approx(0.5)
    assert float(anneal["omniglot"](48_000)) == pytest.approx(0.5)
    assert float(anneal["dtd"](24_000)) == pytest.approx(0.5)
    assert float(anneal["dtd"](60_000)) == 0.0
    assert c.url.temperature == 4.0 and dict(c.url.lambda_f) == {"ilsvrc_2012": 4.0,
                                                                  "default": 1.0}


def test_training_input_is_one_batch_per_source(fake):
    """448 ImageNet + 64 per other source by default; here 16 + 8: one batch per source per
    step, 84x84 images in [-1, 1], labels among the source's training classes."""
    from ur_jax.data import pipeline, registry

    records, data = fake
    c = _config("metadataset_mdl", "smoke", records, data)
    c.mdl.batch_size = {"ilsvrc_2012": 16, "default": 8}
    sources = registry.load_classification(c)
    assert sources.num_classes == {"ilsvrc_2012": 10, "omniglot": 11}  # the fakes' train classes
    assert sources.test == {} and set(sources.fewshot_specs) == set(c.fewshot.domains)
    sizes = {d: train.batch_size(c.mdl, d) for d in c.domains}
    batch = pipeline.train_batches(sources.train, sizes, seed=0, augment="crop_flip")[0]
    assert list(batch) == ["ilsvrc_2012", "omniglot"]
    for d, n in (("ilsvrc_2012", 16), ("omniglot", 8)):
        assert batch[d]["image"].shape == (n, 84, 84, 3)
        assert -1.0 <= batch[d]["image"].min() and batch[d]["image"].max() <= 1.0
        assert 0 <= batch[d]["label"].min() and batch[d]["label"].max() < sources.num_classes[d]


@pytest.mark.slow
def test_sdl_smoke_run(sdl_run):
    workdir, results = sdl_run
    assert results["teachers"] == {}  # no classification test split: episodes only
    fs = results["fewshot"]
    assert fs["kind"] == "episodic" and fs["protocol"] == "standard"
    assert fs["domains"] == ["ilsvrc_2012", "omniglot", "traffic_sign"]
    for method in ("ncc", "pa"):
        row = fs["rows"][f"teacher_omniglot {method}"]
        for d in fs["domains"]:
            assert 0.0 <= row[d]["accuracy"] <= 100.0 and row[d]["episodes"] == 4
        # the teacher saw omniglot only
        assert row["averages"]["seen"] == pytest.approx(row["omniglot"]["accuracy"])
        assert row["averages"]["unseen"] == pytest.approx(
            np.mean([row["ilsvrc_2012"]["accuracy"], row["traffic_sign"]["accuracy"]]))
    assert os.path.exists(os.path.join(workdir, "teachers", "omniglot", "model"))
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["fewshot"]["rows"].keys() == fs["rows"].keys()


@pytest.mark.slow
def test_eval_smoke_run_is_deterministic(sdl_run, fake, tmp_path):
    """metadataset_eval.py on the saved teacher: the same episodes and accuracies as the SDL
    run's own few-shot stage (same seed, same sources), plus TSA."""
    records, data = fake
    workdir, results = sdl_run
    c = _config("metadataset_eval", "standard,smoke", records, data)
    c.fewshot.checkpoints = {"teacher": os.path.join(workdir, "teachers", "omniglot", "model")}
    c.fewshot.seen = ("omniglot",)
    out = train.run(c, str(tmp_path / "eval"))
    rows = out["fewshot"]["rows"]
    assert set(rows) == {"teacher ncc", "teacher pa", "teacher tsa"}
    for method in ("ncc", "pa"):
        mine, theirs = rows[f"teacher {method}"], results["fewshot"]["rows"][
            f"teacher_omniglot {method}"]
        for d in out["fewshot"]["domains"]:
            assert mine[d]["accuracy"] == pytest.approx(theirs[d]["accuracy"])


def test_eval_config_needs_a_checkpoint(fake, tmp_path):
    records, data = fake
    c = _config("metadataset_eval", "smoke", records, data)
    with pytest.raises(ValueError, match="checkpoints"):
        train.run(c, str(tmp_path / "x"))
    c.fewshot.checkpoints = {"m": "somewhere"}
    c.fewshot.protocol = "ten_way"
    with pytest.raises(ValueError, match="protocol"):
        train.validate_config(c)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metadataset_mdl", "metadataset_url"])
def test_student_smoke_runs(name, fake, tmp_path):
    records, data = fake
    out = train.run(_config(name, "smoke", records, data), str(tmp_path / name))
    stage = name.split("_")[1]
    row = out["fewshot"]["rows"][f"{stage} ncc"]
    assert set(row["averages"]) == {"seen", "unseen", "all"}
    assert row["averages"]["unseen"] == pytest.approx(row["traffic_sign"]["accuracy"])
    assert os.path.exists(os.path.join(str(tmp_path / name), "students", stage, "model"))
