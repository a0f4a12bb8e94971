"""Meta-Dataset end to end on a fake records directory: every config's smoke run, the runner's
Meta-Dataset pieces (warm-restart schedule, per-source annealing, per-source steps)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from ur_jax.suites import metadataset as md
from ur_jax.suites.metadataset.fake import write_fake_records
from ur_jax import run as run_lib
from ur_jax import optim
from ur_jax.stages import common, distill
from ur_jax.config import validation

# One compiled-function cache for this module's runs: equal models share their compiled steps.
_CACHE = run_lib.CompiledCache()


def _run(config, workdir, **kwargs):
    return run_lib.run(config, workdir, cache=_CACHE, **kwargs)


CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "configs")


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
    records = write_fake_records(str(root / "records"))
    return records, str(root / "tfds")


@pytest.fixture(scope="module")
def sdl_run(fake, tmp_path_factory):
    records, data = fake
    workdir = str(tmp_path_factory.mktemp("sdl"))
    results = _run(_config("metadataset_sdl", "omniglot,smoke", records, data), workdir)
    return workdir, results


def test_learning_rate_warm_restarts():
    """PyTorch's CosineAnnealingWarmRestarts(T_0=4): lr (1 + cos(pi (t mod 4) / 4)) / 2."""
    schedule = optim.learning_rate_schedule(0.03, 12, kind="cosine_restarts", restart_every=4)
    got = np.asarray([schedule(t) for t in range(12)])
    expected = [0.03 * (1 + np.cos(np.pi * (t % 4) / 4)) / 2 for t in range(12)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got[4] == pytest.approx(0.03)  # the restart
    with pytest.raises(ValueError, match="restart_every"):
        optim.learning_rate_schedule(0.03, 12, kind="cosine_restarts")


def test_recipe_is_the_papers():
    spec = importlib.util.spec_from_file_location("u", os.path.join(CONFIGS, "metadataset_url.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert common.batch_size(c.url, "ilsvrc_2012") == 448
    assert common.batch_size(c.url, "fungi") == 64
    assert common.stage_steps(c.teachers, "ilsvrc_2012") == 480_000
    assert common.stage_steps(c.teachers, "dtd") == 50_000
    assert common.stage_value(c.teachers, "restart_every", "dtd") == 1_500
    assert common.stage_value(c.teachers, "learning_rate", "quickdraw") == 1e-2
    # Annealing: weight 1 - t / (48k k): ImageNet k = 5 reaches 0 at 240k, others at 48k / 96k.
    anneal = distill.distill_config(c, tuple(c.domains)).anneal
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
    sizes = {d: common.batch_size(c.mdl, d) for d in c.domains}
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
    with open(os.path.join(workdir, "selection", "teacher_omniglot", "best.json")) as f:
        assert json.load(f)["step"] in (2, 3)  # validated at steps 2 and 3
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
    out = _run(c, str(tmp_path / "eval"))
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
        _run(c, str(tmp_path / "x"))
    c.fewshot.checkpoints = {"m": "somewhere"}
    c.fewshot.protocol = "ten_way"
    with pytest.raises(ValueError, match="protocol"):
        validation.validate(c, "classification")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metadataset_mdl", "metadataset_url"])
def test_student_smoke_runs(name, fake, tmp_path):
    records, data = fake
    out = _run(_config(name, "smoke", records, data), str(tmp_path / name))
    stage = name.split("_")[1]
    row = out["fewshot"]["rows"][f"{stage} ncc"]
    assert set(row["averages"]) == {"seen", "unseen", "all"}
    assert row["averages"]["unseen"] == pytest.approx(row["traffic_sign"]["accuracy"])
    assert os.path.exists(os.path.join(str(tmp_path / name), "students", stage, "model"))
    with open(os.path.join(str(tmp_path / name), "selection", stage, "best.json")) as f:
        assert json.load(f)["step"] in (2, 3)


# ----------------------------------------------------------------------------- issue 14: protocol


def _paper_config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_adapter_learning_rate_restarts_with_the_student():
    """VICO-UoE/URL steps the adapters' Adam with the student's CosineAnnealRestartLR (48k):
    lr = 0.1 (1 + cos(pi (t mod 48k) / 48k)) / 2, not one cosine over the 240k steps."""
    c = _paper_config("metadataset_url")
    schedule = common.adapter_learning_rate_schedule(c.url)
    student = optim.learning_rate_schedule(0.03, 240_000, 0, "cosine_restarts",
                                           restart_every=48_000)
    for t in (47_999, 48_001, 200_000):
        expected = 0.1 * (1 + np.cos(np.pi * (t % 48_000) / 48_000)) / 2
        assert float(schedule(t)) == pytest.approx(expected, abs=1e-6)
        assert float(schedule(t)) == pytest.approx(float(student(t)) * 0.1 / 0.03, abs=1e-6)
    assert float(schedule(48_001)) == pytest.approx(0.1, rel=1e-6)  # restarted
    assert float(schedule(200_000)) == pytest.approx(0.05 * (1 + np.cos(np.pi / 6)), rel=1e-5)
    # the one-cosine convention stays available
    c.url.adapter_schedule = "cosine"
    once = common.adapter_learning_rate_schedule(c.url)
    assert float(once(200_000)) == pytest.approx(0.05 * (1 + np.cos(np.pi * 200_000 / 240_000)),
                                                 rel=1e-5)
    c.url.adapter_schedule = "linear"
    with pytest.raises(ValueError, match="adapter_schedule"):
        common.adapter_learning_rate_schedule(c.url)


def test_adapter_schedule_elsewhere_is_one_cosine_over_the_run():
    """The embedded default (stage schedule 'cosine') keeps bitwise the values it had; the
    Decathlon (student 'step' schedule) keeps the adapters' cosine over the 12k steps."""
    import optax

    spec = importlib.util.spec_from_file_location("d", os.path.join(CONFIGS, "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    u = module.get_config().url
    before = optax.warmup_cosine_decay_schedule(  # the schedule train_url built before
        0.0, u.adapter_learning_rate, min(u.warmup_steps, max(u.steps - 1, 0)), max(u.steps, 1))
    now = common.adapter_learning_rate_schedule(u)
    t = np.arange(0, u.steps + 2)
    np.testing.assert_array_equal(np.asarray(now(t)), np.asarray(before(t)))
    d = _paper_config("decathlon_url").url
    sched = common.adapter_learning_rate_schedule(d)
    for step in (0, 6_000, 9_000):
        assert float(sched(step)) == pytest.approx(
            0.005 * (1 + np.cos(np.pi * step / 12_000)), rel=1e-5)


def test_model_selection_follows_the_authors_scripts():
    """eval_freq: each teacher's restart period (train_resnet18_sdl.sh), 48k for MDL / URL;
    eval_size 300 validation episodes per source."""
    c = _paper_config("metadataset_url")
    for d, period in (("ilsvrc_2012", 48_000), ("omniglot", 3_000), ("dtd", 1_500),
                      ("fungi", 15_000), ("vgg_flower", 1_500)):
        assert common.stage_select_every(c, c.teachers, d) == period
    assert common.stage_select_every(c, c.url) == 48_000
    assert common.stage_select_every(_paper_config("metadataset_mdl"), c.mdl) == 48_000
    assert c.select_episodes == 300 and c.select_protocol == "standard"
    validation.validate(c, "classification", mesh=_one_device_mesh())  # every period divides by checkpoint_every
    c.checkpoint_every = 1000
    with pytest.raises(ValueError, match="teachers.select_every is 1500"):
        validation.validate(c, "classification", mesh=_one_device_mesh())


def _one_device_mesh():
    import jax

    from ur_jax import sharding

    return sharding.make_mesh(jax.devices()[:1])


def test_training_sources_of_a_saved_model():
    from ur_jax.evaluation import metadataset as md_eval

    assert md_eval.training_sources([("ilsvrc_2012", 712)]) == ("ilsvrc_2012",)
    assert md_eval.training_sources({"ilsvrc_2012": 10, "omniglot": 11}) == ("ilsvrc_2012",
                                                                            "omniglot")
    # a converted teacher's default head name: its class count names the source
    assert md_eval.training_sources([("teacher", 70)]) == ("aircraft",)
    assert md_eval.training_sources([("teacher", 712)]) == ("ilsvrc_2012",)
    with pytest.raises(ValueError, match="checkpoint_seen.mine"):
        md_eval.training_sources([("teacher", 5)], name="mine")
    with pytest.raises(ValueError, match="checkpoint_seen"):
        md_eval.training_sources([("a", 712), ("b", 883)])


def _save_model(path, heads):
    import jax
    import jax.numpy as jnp

    from ur_jax import checkpointing

    spec = checkpointing.model_spec("resnet18_metadataset", {"width": 1 / 16}, heads)
    model = checkpointing.model_from_spec(spec)
    variables = model.init(jax.random.key(0), {d: jnp.zeros((1, 84, 84, 3)) for d, _ in heads},
                           train=False)
    checkpointing.save_model(path, spec, variables)
    return path


def test_loaded_models_get_seen_rates_only_on_their_own_sources(tmp_path, monkeypatch):
    """An ImageNet-only model evaluated on aircraft gets the unseen rates (TSA alpha 0.5,
    beta 1; PA 1), on ImageNet the seen ones; a two-source student is seen on both;
    checkpoint_seen overrides one model."""
    from ur_jax.evaluation import metadataset as md_eval

    records = write_fake_records(str(tmp_path / "records"), ("ilsvrc_2012", "aircraft"))
    c = _config("metadataset_eval", "smoke", records, str(tmp_path / "tfds"))
    c.fewshot.domains = ("ilsvrc_2012", "aircraft")
    c.fewshot.methods = ("pa", "tsa")
    c.fewshot.episodes = 1
    c.fewshot.checkpoints.sdl = _save_model(str(tmp_path / "imagenet"), [("ilsvrc_2012", 10)])
    c.fewshot.checkpoints.url = _save_model(str(tmp_path / "student"),
                                            [("ilsvrc_2012", 10), ("aircraft", 6)])
    used = []

    class Recorder:  # the rates the evaluator would run with, without running it
        def __init__(self, backbone, variables, **kwargs):
            pass

        def evaluate(self, source, episodes, method, seen=False, steps=None, lrs=None,
                     progress=None):
            used.append({**md_eval.learning_rates(method, seen), **dict(lrs or {})})
            return np.zeros(len(episodes), np.float32)

    monkeypatch.setattr(md_eval, "EpisodeEvaluator", Recorder)
    fs = _run(c, str(tmp_path / "run"))["fewshot"]
    # calls: model (sdl, url) x method (pa, tsa) x source (ilsvrc_2012, aircraft)
    assert used == [{"beta": 0.1}, {"beta": 1.0},
                    {"alpha": 0.05, "beta": 0.1}, {"alpha": 0.5, "beta": 1.0},
                    {"beta": 0.1}, {"beta": 0.1},
                    {"alpha": 0.05, "beta": 0.1}, {"alpha": 0.05, "beta": 0.1}]
    assert fs["seen"] == {"sdl": ["ilsvrc_2012"], "url": ["ilsvrc_2012", "aircraft"]}
    assert fs["learning_rates"]["sdl tsa"]["aircraft"] == {"alpha": 0.5, "beta": 1.0}
    assert fs["learning_rates"]["sdl pa"]["aircraft"] == {"beta": 1.0}
    assert fs["rows"]["sdl pa"]["averages"]["unseen"] is not None  # aircraft counts as unseen
    used.clear()
    c.fewshot.checkpoint_seen.url = "ilsvrc_2012"
    c.fewshot.methods = ("pa",)
    fs = _run(c, str(tmp_path / "override"))["fewshot"]
    assert fs["seen"]["url"] == ["ilsvrc_2012"] and used[-1] == {"beta": 1.0}
    c.fewshot.checkpoint_seen.url = "aircraftt"
    with pytest.raises(ValueError, match="aircraftt"):
        _run(c, str(tmp_path / "typo"))


def _selection_config(records, data):
    c = _config("metadataset_mdl", "smoke", records, data)
    c.stages = ("mdl",)
    c.mdl.select_every = 1
    return c


class _Recorder:
    """Records every validation (the episodes and the per-source NCC accuracy)."""

    def __init__(self):
        from ur_jax.evaluation import metadataset as md_eval

        self.real, self.calls = md_eval.validation_accuracy, []

    def __call__(self, backbone, variables, sources, episodes, **kwargs):
        out = self.real(backbone, variables, sources, episodes, **kwargs)
        self.calls.append((episodes, out))
        return out


def _same_episodes(a, b):
    assert a.keys() == b.keys()
    for d in a:
        for x, y in zip(a[d], b[d], strict=True):
            for field in ("support", "support_labels", "query", "query_labels", "classes"):
                np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


@pytest.fixture(scope="module")
def selection_run(fake, tmp_path_factory):
    """MDL smoke with episodic model selection every step: ``(workdir, validations,
    variables after each step)``."""
    import jax

    from ur_jax.evaluation import metadataset as md_eval

    records, data = fake
    workdir = tmp_path_factory.mktemp("selection")
    recorder, snapshots = _Recorder(), {}

    def snapshot(stage, step, state):
        snapshots[step] = jax.device_get({"params": state.params,
                                          "batch_stats": state.batch_stats})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(md_eval, "validation_accuracy", recorder)
        _run(_selection_config(records, data), str(workdir), step_hooks=(snapshot,))
    return workdir, recorder.calls, snapshots


def test_episodic_model_selection_keeps_the_best_model(selection_run, fake):
    """NCC on validation episodes of the valid classes (VICO-UoE/URL's model selection):
    best.json names the step of the best mean validation accuracy, the saved and returned
    model is that step's, and every validation scores the same seeded episodes."""
    import jax

    from ur_jax import checkpointing

    workdir, calls, snapshots = selection_run
    _, data = fake
    assert len(calls) == 3  # steps 1, 2, 3
    means = [np.mean(list(out.values())) for _, out in calls]
    best_step = 1 + int(np.argmax(means))  # the first best, as the authors' strict '>'
    with open(workdir / "selection" / "mdl" / "best.json") as f:
        best = json.load(f)
    assert best["step"] == best_step
    assert best["accuracy"] == pytest.approx(means[best_step - 1])
    assert best["per_domain"] == pytest.approx(calls[best_step - 1][1])
    for path in ("selection/mdl/model", "students/mdl/model"):
        _, saved = checkpointing.load_model(str(workdir / path))
        jax.tree.map(np.testing.assert_array_equal, saved, snapshots[best_step])
    episodes = calls[0][0]
    assert set(episodes) == {"ilsvrc_2012", "omniglot"}
    for d, eps in episodes.items():  # 3 episodes per source, from the valid split
        assert len(eps) == 3
        n_valid = len(md.data_source(d, "valid", data))
        assert all(e.support.max() < n_valid and e.query.max() < n_valid for e in eps)
    for eps, _ in calls[1:]:
        _same_episodes(eps, episodes)


def test_episodic_model_selection_resumes_exactly(selection_run, fake, tmp_path, monkeypatch):
    """A run killed after the validation at step 2 resumes to the same validation episodes,
    the same best.json and the same selected model as the uninterrupted run."""
    import jax

    from ur_jax import checkpointing
    from ur_jax.evaluation import metadataset as md_eval

    workdir, reference, _ = selection_run
    records, data = fake
    recorder = _Recorder()
    monkeypatch.setattr(md_eval, "validation_accuracy", recorder)

    class Killed(Exception):
        pass

    def kill(stage, step, state):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        _run(_selection_config(records, data), str(tmp_path), step_hooks=(kill,))
    _run(_selection_config(records, data), str(tmp_path))
    assert len(recorder.calls) == 3  # steps 1, 2, then 3 after the resume
    for (eps, out), (ref_eps, ref_out) in zip(recorder.calls, reference, strict=True):
        _same_episodes(eps, ref_eps)
        assert out == ref_out
    with open(workdir / "selection" / "mdl" / "best.json") as f, \
            open(tmp_path / "selection" / "mdl" / "best.json") as g:
        assert json.load(g) == json.load(f)
    _, selected = checkpointing.load_model(str(workdir / "students" / "mdl" / "model"))
    _, resumed = checkpointing.load_model(str(tmp_path / "students" / "mdl" / "model"))
    jax.tree.map(np.testing.assert_array_equal, resumed, selected)
