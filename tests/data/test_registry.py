"""The dataset registry and the generic TFDS helper: the known suites register themselves, and a
toy suite defined in this file (a builder over ``tfds_helper.LocalBuilder`` plus one
``registry.register`` line) loads like the built-in ones."""

from __future__ import annotations

from typing import Any, ClassVar

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ur_jax.data import registry, tfds_helper


class UrToySuite(tfds_helper.LocalBuilder):
    """Two classes of 4x4 images: class 1 bright, class 0 dark; one config per domain."""

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name="a"), tfds.core.BuilderConfig(name="b")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=2)}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        return {"train": self._generate_examples(6), "test": self._generate_examples(4)}

    def _generate_examples(self, n: int):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 3), 200 * (i % 2), np.uint8), "label": i % 2}


class UrToyManual(tfds_helper.LocalBuilder):
    """A builder that reads a manual download (to check the missing-folder message)."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put anything in manual_dir."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"x": tfds.features.Tensor(shape=(), dtype=np.int64)}))

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        root = tfds_helper.manual_dir(dl_manager, lambda path: FileNotFoundError(
            f"toy: expected files in manual_dir {path}"))
        return {"train": self._generate_examples(root)}

    def _generate_examples(self, root: Any):
        yield 0, {"x": len(list(root.iterdir()))}


def _load_toy(config) -> registry.ClassificationData:
    root = registry.data_dir(config)
    sources = {}
    for d in config.domains:
        builder, prepared = tfds_helper.open_builder(UrToySuite, root, config=d)
        if not prepared:
            tfds_helper.build(builder)
        sources[d] = {s: builder.as_data_source(split=s) for s in ("train", "test")}
    return registry.ClassificationData(
        train={d: s["train"] for d, s in sources.items()},
        test={d: s["test"] for d, s in sources.items()},
        num_classes={d: 2 for d in sources}, image_shape=(4, 4, 3))


registry.register("toy_suite", _load_toy)  # the one registration line of the toy suite


def test_known_suites_register_their_loaders():
    assert {"embedded", "decathlon", "metadataset", "toy_suite"} <= set(registry.datasets())
    assert registry.dense_datasets() == ["cityscapes19", "cityscapes7", "nyuv2", "scenes"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("embedded", _load_toy)
    with pytest.raises(ValueError, match="Unknown dataset 'nope'.*toy_suite"):
        registry.load_classification(ml_collections.ConfigDict({"dataset": "nope"}))


def test_a_toy_suite_loads_through_the_registry(tmp_path):
    config = ml_collections.ConfigDict({"dataset": "toy_suite", "data_dir": str(tmp_path),
                                        "domains": ("a", "b")})
    data = registry.load_classification(config)
    assert sorted(data.train) == ["a", "b"] and data.shape("a") == (4, 4, 3)
    assert len(data.train["a"]) == 6 and len(data.test["b"]) == 4
    assert [int(data.train["a"][i]["label"]) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    assert int(data.train["a"][1]["image"].max()) == 200
    files = sorted(p.name for p in (tmp_path / "ur_toy_suite" / "a" / "1.0.0").iterdir())
    assert "ur_toy_suite-train.array_record-00000-of-00001" in files
    again = registry.load_classification(config)  # prepared: read, not rebuilt
    assert len(again.train["b"]) == 6


def test_manual_dir_errors_become_the_suites_own(tmp_path):
    builder, prepared = tfds_helper.open_builder(UrToyManual, tmp_path / "tfds")
    assert not prepared
    with pytest.raises(FileNotFoundError, match="toy: expected files in manual_dir"):
        tfds_helper.build(builder, manual_dir=tmp_path / "missing")
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "file").write_text("x")
    tfds_helper.build(builder, manual_dir=tmp_path / "manual")
    assert int(builder.as_data_source(split="train")[0]["x"]) == 1
    assert tfds_helper.open_builder(UrToyManual, tmp_path / "tfds")[1]
