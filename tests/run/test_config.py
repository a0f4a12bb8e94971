"""ur_jax.config: the one argument parser, the declared keys and their defaults, command-line
overrides of every key (and refusal of misspelt ones), and validation."""

import glob
import os
import re
import subprocess
import sys
import types

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from ur_jax import config as config_lib
from ur_jax.config import blocks, load_config, parse_arg, validation

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
#: Every choice each config file takes (each also with ',smoke'); None: no argument.
CHOICES = {
    "default.py": (None, "tune"),
    "dense_default.py": (None,),
    "nyuv2_stl.py": ("semantic", "depth", "normal"),
    "nyuv2_mtl.py": (None, *blocks.MTL_STAGE_METHODS),
    "nyuv2_url.py": (None,),
    "cityscapes_stl.py": ("semantic", "depth"),
    "cityscapes_mtl.py": (None, *blocks.MTL_STAGE_METHODS),
    "cityscapes_url.py": (None,),
    "decathlon_sdl.py": (None, "imagenet12", "dtd", "vgg-flowers"),
    "decathlon_mdl.py": (None, "parallel", "series"),
    "decathlon_url.py": (None,),
    "decathlon_url_parallel.py": (None,),
    "metadataset_sdl.py": ("ilsvrc_2012", "omniglot", "dtd"),
    "metadataset_mdl.py": (None,),
    "metadataset_url.py": (None,),
    "metadataset_eval.py": (None, *blocks.PROTOCOLS),
}
ONE_DEVICE = types.SimpleNamespace(size=1)  # validation only reads the mesh's size


def _load(name: str, arg: str | None = None, **overrides) -> ml_collections.ConfigDict:
    path = os.path.join(ROOT, "configs", name)
    return load_config(f"{path}:{arg}" if arg else path, **overrides)


def _parse(argv: list[str]) -> ml_collections.ConfigDict:
    """The config as ``python -m ur_jax.main`` parses ``--config ... --config.k=v``
    (ml_collections' config_flags, locked), on a fresh flag registry."""
    argv = ["ur_jax.main", *argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return values.config


def _validate(config) -> None:
    if set(config.stages) == {"fewshot"}:  # an evaluation config needs a saved model
        config.fewshot.checkpoints[next(iter(config.fewshot.checkpoints))] = "saved/model"
    validation.validate(config, config.problem, mesh=ONE_DEVICE)


# ----------------------------------------------------------------------------- parse_arg

def test_parse_arg_reads_a_choice_and_flags_in_any_order():
    assert parse_arg(None, "x.py") == (None, frozenset())
    assert parse_arg("", "x.py") == (None, frozenset())
    assert parse_arg("smoke", "x.py") == (None, {"smoke"})
    assert parse_arg("bam,smoke", "x.py", ("bam", "dwa")) == ("bam", {"smoke"})
    assert parse_arg("smoke,bam", "x.py", ("bam", "dwa")) == ("bam", {"smoke"})
    assert parse_arg("smoke", "x.py", ("bam", "dwa"), default="dwa") == ("dwa", {"smoke"})
    assert parse_arg(None, "x.py", ("a", "b")) == (None, frozenset())
    assert parse_arg("a,fast", "x.py", ("a",), flags=("smoke", "fast")) == ("a", {"fast"})


@pytest.mark.parametrize("arg, kwargs, match", [
    ("magic", {"choices": ("bam", "dwa"), "default": "bam"},
     r"x\.py takes one of \('bam', 'dwa'\) or nothing \(= 'bam'\), optionally followed by "
     r"',smoke', e\.g\. x\.py:bam,smoke; found 'magic'"),
    ("bam,dwa", {"choices": ("bam", "dwa")}, "takes one of"),
    ("smoke", {"choices": ("a", "b"), "required": True}, r"takes one of \('a', 'b'\), "),
    ("tune", {}, r"x\.py takes no argument other than 'smoke'; found 'tune'"),
])
def test_parse_arg_refuses_what_the_file_does_not_take(arg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        parse_arg(arg, "x.py", **kwargs)


# ----------------------------------------------------------------------------- every config

def _documented_forms() -> set[tuple[str, str]]:
    """``(config file, arg)`` of every ``<file>.py:<arg>`` in README.md, configs/README.md and
    the config files' docstrings (``:<arg>`` there means the file itself; ``<method>`` any)."""
    forms = set()
    for path in ["README.md", os.path.join("configs", "README.md"), *(
            os.path.join("configs", c) for c in CONFIGS)]:
        with open(os.path.join(ROOT, path)) as f:
            text = f.read()
        for name, arg in re.findall(r"\b([a-z0-9_]+\.py):([a-z][a-z0-9_]*(?:,[a-z0-9_]+)*)", text):
            if name in CONFIGS:
                forms.add((name, arg))
        if path.endswith(".py"):
            doc = text.split('"""')[1]
            name = os.path.basename(path)
            for arg in re.findall(r"(?<![\w/.:]):([a-z][a-z0-9_]*(?:,[a-z0-9_]+)*)", doc):
                forms.add((name, arg))
            for suffix in re.findall(r":<method>((?:,[a-z]+)*)", doc):
                forms.update((name, m + suffix) for m in blocks.MTL_STAGE_METHODS)
    return forms


def test_every_documented_form_is_a_form_the_configs_take():
    forms = _documented_forms()
    for name, arg in [("default.py", "smoke"), ("default.py", "tune"),
                      ("nyuv2_mtl.py", "pcgrad"), ("nyuv2_mtl.py", "bam,smoke"),
                      ("decathlon_sdl.py", "dtd,smoke"), ("metadataset_eval.py", "standard,smoke"),
                      ("metadataset_sdl.py", "omniglot")]:
        assert (name, arg) in forms  # the scraping finds what the docs show
    for name, arg in sorted(forms):
        choice = next((p for p in arg.split(",") if p != "smoke"), None)
        assert choice in CHOICES[name], (name, arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_and_form_loads_with_every_declared_key(name):
    assert set(CHOICES) == set(CONFIGS)
    forms = {(c + ",smoke" if c else "smoke") for c in CHOICES[name]} | set(CHOICES[name])
    if name == "metadataset_sdl.py":  # the fake records hold these two training sources
        forms = {f for f in forms if f.split(",")[0] in ("ilsvrc_2012", "omniglot")
                 or "smoke" not in f}
    forms |= {arg for n, arg in _documented_forms() if n == name}
    for arg in sorted(forms, key=str):
        config = _load(name, arg)
        _validate(config)  # every declared key present, of its kind; the problem's checks
        assert config.problem in ("classification", "dense")
    with pytest.raises(ValueError, match=f"{re.escape(name)} takes"):
        _load(name, "no_such_choice")


def test_a_required_choice_is_asked_for():
    with pytest.raises(ValueError, match=r"metadataset_sdl\.py takes one of .*ilsvrc_2012.* e\.g\. "
                                         r"metadataset_sdl\.py:ilsvrc_2012,smoke"):
        _load("metadataset_sdl.py")
    with pytest.raises(ValueError, match=r"nyuv2_stl\.py takes one of"):
        _load("nyuv2_stl.py", "smoke")


def test_default_tune_smoke_combines_both():
    c = _load("default.py", "tune,smoke")
    assert c.evaluate_on == "val" and c.holdout_per_class == 50 and c.teachers.steps == 4


# ----------------------------------------------------------------------------- defaults

def test_declared_defaults_are_what_the_runner_used_before():
    """The defaults of the keys the runner used to read with ``.get(key, default)``."""
    c = _load("default.py")
    for stage in ("teachers", "mdl", "url"):
        s = c[stage]
        assert (s.schedule, s.decay_at, s.decay_factor, s.restart_every) == ("cosine", (), 0.1, 0)
        assert s.select_every == config_lib.FROM_RUN
        assert config_lib.stage_select_every(c, s, "digits") == 0  # the run's, 0: no selection
    assert c.teachers.finetune_from == "" and c.mdl.init_from == "" and c.url.init_from == ""
    assert (c.url.adapter_schedule, c.url.anneal_every, dict(c.url.anneal_k)) == (
        "", 1, {"default": 1.0})
    assert (c.model.student_input_size, dict(c.model.student_kwargs), c.model.per_domain) == (
        0, {}, False)
    assert (c.problem, c.evaluators, c.select_every, c.select_episodes, c.select_protocol) == (
        "classification", (), 0, 300, "standard")
    assert (c.train_split, c.evaluate_on, c.score, dict(c.score_bounds)) == (
        "train", "test", "", {})
    md = _load("metadataset_eval.py")
    assert (md.fewshot.split, md.fewshot.seen, md.fewshot.inner_steps) == ("test", (), 0)
    d = _load("nyuv2_url.py")
    assert (d.problem, d.evaluators, d.stl.steps, d.mtl.space, dict(d.mtl.options)) == (
        "dense", (), 0, "", {})
    assert d.scenes_config == "default" and d.manual_dir == ""


def test_the_decathlon_run_level_select_every_reaches_every_stage():
    c = _load("decathlon_url.py", "smoke")
    assert c.select_every == 2
    assert all(config_lib.stage_select_every(c, c[s], "aircraft") == 2
               for s in ("teachers", "mdl", "url"))


def test_value_lists_match_the_library():
    from ur_jax import optim
    from ur_jax.data import episodes
    from ur_jax.stages import common

    assert blocks.SCHEDULES == optim.SCHEDULES
    assert blocks.PROTOCOLS == episodes.PROTOCOLS
    assert common.ADAPTER_SCHEDULES is blocks.ADAPTER_SCHEDULES


def test_loading_configs_imports_no_jax():
    code = ("import sys; from ur_jax.config import load_config; "
            "[load_config(f'configs/{n}') for n in ('default.py:smoke', 'nyuv2_mtl.py:bam', "
            "'decathlon_url.py', 'metadataset_eval.py:smoke')]; print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_builders_refuse_keys_they_do_not_declare():
    with pytest.raises(ValueError, match=r"config.url has no key\(s\) \['anneal_evry'\]"):
        config_lib.url_stage(anneal_evry=2)
    assert config_lib.sgd_stage(steps=3).steps == 3


# ----------------------------------------------------------------------------- command line

def test_formerly_optional_keys_can_be_set_from_the_command_line():
    c = _parse(["--config", "configs/default.py:smoke", "--config.teachers.select_every=500",
                "--config.url.anneal_every=2", "--config.url.anneal_k.default=3",
                "--config.url.adapter_schedule=cosine", "--config.model.student_input_size=40",
                "--config.teachers.checkpoints.digits=/some/model", "--config.stages=teachers",
                "--config.evaluators=classification", "--config.mdl.decay_at=(0.5, 0.75)"])
    assert config_lib.stage_select_every(c, c.teachers, "digits") == 500
    assert c.stages == ("teachers",) and c.evaluators == ("classification",)
    assert c.teachers.checkpoints.digits == "/some/model" and c.mdl.decay_at == (0.5, 0.75)
    assert c.model.student_input_size == 40 and c.url.adapter_schedule == "cosine"
    from ur_jax.stages import distill

    anneal = distill.distill_config(c, ("digits",)).anneal["digits"]  # 3 x 6 steps, every 2
    assert [float(anneal(s)) for s in (0, 1, 2, 18)] == pytest.approx([1.0, 1.0, 1 - 2 / 18, 0.0])
    m = _parse(["--config", "configs/metadataset_eval.py:standard,smoke",
                "--config.fewshot.seen=ilsvrc_2012,omniglot", "--config.fewshot.inner_steps=7",
                "--config.fewshot.checkpoints.url=/saved/url"])
    from ur_jax.evaluation.evaluators.fewshot import parse_sources

    assert parse_sources(m.fewshot.seen) == ("ilsvrc_2012", "omniglot")
    assert m.fewshot.inner_steps == 7 and m.fewshot.checkpoints.url == "/saved/url"
    _validate(m)


def test_comma_separated_names_become_tuples():
    c = _parse(["--config", "configs/metadataset_eval.py:smoke", "--config.fewshot.methods=pa,tsa",
                "--config.stages=fewshot", "--config.fewshot.domains=omniglot"])
    assert c.fewshot.methods == ("pa,tsa",)  # what ml_collections makes of it
    config_lib.split_names(c)  # what ur_jax.main does next
    assert (c.fewshot.methods, c.stages, c.fewshot.domains) == (("pa", "tsa"), ("fewshot",),
                                                                ("omniglot",))


def test_a_misspelt_key_is_refused_on_the_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "ur_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", "/nonexistent/never_created", "--config.url.anneal_evry=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no key 'url.anneal_evry'" in proc.stderr and "anneal_every" in proc.stderr


def test_a_command_line_override_reaches_the_runner():
    """``--config.teachers.select_every`` (absent from default.py before it was declared)
    is parsed by ur_jax.main and read by the run's checks, which refuse 3 (not a multiple of
    checkpoint_every) before anything is written."""
    proc = subprocess.run(
        [sys.executable, "-m", "ur_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", "/tmp/ur_jax_test_config_never_created", "--config.checkpoint_every=2",
         "--config.teachers.select_every=3", "--config.stages=teachers,mdl"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config.teachers.select_every is 3 for 'digits'" in proc.stderr
    assert not os.path.exists("/tmp/ur_jax_test_config_never_created")


# ----------------------------------------------------------------------------- validation

def test_a_value_of_the_wrong_kind_is_refused_naming_the_key():
    c = _load("metadataset_sdl.py", "omniglot,smoke")
    c.teachers.steps = {"default": "3"}
    with pytest.raises(ValueError, match=r"config.teachers.steps=\{'default': '3'\}: expected an "
                                         r"integer, or a mapping \{domain: integer\}"):
        validation.check_declared(c, "classification")
    c = _load("default.py", "smoke")
    c.url.adapter_schedule = "linear"
    with pytest.raises(ValueError, match=r"config.url.adapter_schedule='linear': expected one of"):
        validation.check_declared(c, "classification")
    c = _load("metadataset_eval.py", "smoke")
    c.fewshot.seen = (1, 2)
    with pytest.raises(ValueError, match=r"config.fewshot.seen=\(1, 2\): expected a tuple of "
                                         r"names or one comma-separated string"):
        validation.check_declared(c, "classification")


def test_missing_and_unknown_block_keys_are_refused():
    c = _load("default.py", "smoke")
    c.url.anneal_evry = 2  # an unlocked config accepts a new key; the check does not
    with pytest.raises(ValueError, match=r"config.url has no key\(s\) \['anneal_evry'\]"):
        validation.check_declared(c, "classification")
    c = _load("default.py", "smoke")
    del c.url["anneal_every"]
    with pytest.raises(ValueError, match=r"config.url.anneal_every is missing .*its default is 1"):
        validation.check_declared(c, "classification")
    c = _load("nyuv2_url.py", "smoke")
    del c["stl"]
    with pytest.raises(ValueError, match=r"config.stl is missing"):
        validation.check_declared(c, "dense")
    c = _load("default.py", "smoke")
    c.url.anneal_every = 0
    with pytest.raises(ValueError, match="anneal_every"):
        _validate(c)


def test_a_run_recorded_before_keys_were_declared_resumes(tmp_path):
    """A workdir's config.json written before a key was declared lacks it: the run used the
    default, so the same config (now spelling the default out) resumes there; a value other
    than the default is still another config."""
    import json

    from ur_jax.run.workdir import WorkdirError, prepare_workdir

    config = _load("default.py", "smoke")
    recorded = json.loads(config.to_json_best_effort())
    for block, key in (("", "problem"), ("", "select_episodes"), ("mdl", "decay_at"),
                       ("url", "anneal_k"), ("url", "anneal_every"), ("model", "per_domain")):
        del (recorded[block] if block else recorded)[key]
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    prepare_workdir(str(tmp_path), config)
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(WorkdirError, match=r"url.anneal_every: 'absent' -> 2"):
        prepare_workdir(str(tmp_path), _load("default.py", "smoke", **{"url.anneal_every": 2}))
