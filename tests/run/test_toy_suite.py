"""Adding a benchmark is one registration: a toy suite registered from inside this file
runs end to end through the one runner (teachers, MDL, URL, few-shot, results.json)."""

import json
import pathlib

import numpy as np

from ur_jax import run as run_lib
from ur_jax.config import load_config
from ur_jax.data import registry

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "default.py") + ":smoke"
SHAPE = (32, 32, 3)


def _records(n: int, classes: int, seed: int) -> list[dict]:
    """Images whose class is their colour: class ``k`` is a flat image at 255 * k / classes
    plus noise; labels cycle through the classes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % classes
        image = np.clip(255.0 * k / classes + rng.normal(0, 8, SHAPE), 0, 255).astype(np.uint8)
        out.append({"image": image, "label": np.int64(k)})
    return out


def _load_toy(config) -> registry.ClassificationData:
    domains, held_out = tuple(config.domains), tuple(config.fewshot.domains)
    return registry.ClassificationData(
        train={d: _records(64, 4, i) for i, d in enumerate(domains)},
        test={d: _records(24, 4, 100 + i) for i, d in enumerate(domains)},
        num_classes={d: 4 for d in domains},
        image_shape=SHAPE,
        fewshot={d: _records(60, 6, 200 + i) for i, d in enumerate(held_out)})


registry.register("toy_suite_of_this_test", _load_toy)  # the one registration line


def test_a_suite_registered_here_runs_end_to_end(tmp_path):
    config = load_config(CONFIG, dataset="toy_suite_of_this_test", domains=("red", "blue"),
                         **{"fewshot.domains": ("green",), "fewshot.pa_learning_rate":
                            {"green": 1.0}, "fewshot.ways": 3, "fewshot.shots": 2, "fewshot.queries": 3})
    results = run_lib.run(config, str(tmp_path))
    assert results == json.loads((tmp_path / "results.json").read_text())
    for row in ("teachers", "mdl", "url"):
        assert set(results[row]) == {"red", "blue", "mean"}
        assert all(results[row][d]["examples"] == 24 for d in ("red", "blue"))
        assert 0.0 <= results[row]["mean"]["accuracy"] <= 100.0
    fewshot = results["fewshot"]
    assert set(fewshot) == {"mdl", "url", "protocol"} and fewshot["protocol"]["ways"] == 3
    assert set(fewshot["url"]) == set(config.fewshot.methods)
    assert (tmp_path / "students" / "url" / "model").is_dir()
