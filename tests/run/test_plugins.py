"""A training method and an evaluator are plug-ins: a stage and an evaluator registered from
inside this file run through the one runner with nothing else changed."""

import pathlib

import jax
import numpy as np
import pytest

from ur_jax import checkpointing
from ur_jax import run as run_lib
from ur_jax import stages
from ur_jax.config import load_config
from ur_jax.evaluation import evaluators
from ur_jax.stages import supervised
from ur_jax.stages.common import batch_size

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "default.py") + ":smoke"


def _mdl_twice(ctx):
    """A toy training method: the MDL recipe under another name (its own checkpoints)."""
    config = ctx.config
    model = supervised.student(config, ctx.data)
    variables = supervised.train_classifier(
        ctx, "mdl_twice", config.mdl, model, {d: d for d in config.domains},
        {d: batch_size(config.mdl, d) for d in config.domains}, (99,),
        supervised.student_spec(config, ctx.data))
    return {d: (model, variables) for d in config.domains}


def _parameter_count(ctx, name, models):
    """A toy evaluator: parameters of each stage's model(s)."""
    counts = {id(pair): sum(int(np.prod(x.shape)) for x in jax.tree.leaves(pair[1]["params"]))
              for pair in models.values()}
    return {"parameters": sum(counts.values())}


@pytest.fixture
def plugins():
    stages.register("classification", "mdl_twice")(_mdl_twice)
    evaluators.register("parameter_count", on="models")(_parameter_count)
    try:
        yield
    finally:
        stages.unregister("classification", "mdl_twice")
        evaluators.unregister("parameter_count")


def test_registered_stage_and_evaluator_run_end_to_end(plugins, tmp_path):
    config = load_config(CONFIG, stages=("teachers", "mdl_twice", "fewshot"),
                         evaluators=("classification", "parameter_count"),
                         **{"fewshot.models": ("mdl_twice",)})
    results = run_lib.run(config, str(tmp_path))
    row = results["mdl_twice"]
    assert set(row) == {*config.domains, "mean", "parameters"}
    saved = [checkpointing.load_model(str(tmp_path / "teachers" / d / "model"))[1]
             for d in config.domains]  # counted independently: the saved teachers
    assert results["teachers"]["parameters"] == sum(
        int(np.prod(x.shape)) for v in saved for x in jax.tree.leaves(v["params"]))
    assert row["parameters"] > 0
    assert set(results["fewshot"]) == {"mdl_twice", "protocol"}  # few-shot takes the new stage
    assert (tmp_path / "checkpoints" / "mdl_twice").is_dir()


def test_stage_order_and_unknown_evaluators_are_refused(plugins, tmp_path):
    with pytest.raises(ValueError, match="needs 'teachers' to run before it"):
        run_lib.run(load_config(CONFIG, stages=("url", "teachers")), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="more than once"):
        run_lib.run(load_config(CONFIG, stages=("teachers", "teachers")), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="serves \\['dense'\\]"):
        run_lib.run(load_config(CONFIG, evaluators=("dense",)), str(tmp_path / "c"))
    with pytest.raises(ValueError, match="inside the 'fewshot' stage"):
        run_lib.run(load_config(CONFIG, evaluators=("classification", "fewshot")),
                    str(tmp_path / "d"))
