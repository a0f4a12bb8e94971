"""grain pipelines: per-domain batch sizes, determinism, exact iterator resume, padded eval."""

import ml_collections
import numpy as np
import pytest

from ur_jax.data import pipeline
from ur_jax.stages import common


def _source(n, offset):
    """A random-access source whose record i is recognisable: every pixel = (i + offset) % 256."""
    return [{"image": np.full((4, 4, 3), (i + offset) % 256, np.uint8), "label": i % 5}
            for i in range(n)]


SOURCES = {"a": _source(10, 0), "b": _source(7, 100)}


def _ids(batch):
    return {d: np.round((b["image"][:, 0, 0, 0] * 0.5 + 0.5) * 255).astype(int) for d, b in
            batch.items()}


def test_train_batches_have_per_domain_sizes_and_cover_each_epoch():
    ds = pipeline.train_batches(SOURCES, {"a": 5, "b": 7}, seed=3)
    first = ds[0]
    assert list(first) == ["a", "b"]
    assert first["a"]["image"].shape == (5, 4, 4, 3) and first["a"]["image"].dtype == np.float32
    assert first["b"]["label"].shape == (7,) and first["b"]["label"].dtype == np.int32
    ids = _ids(first)
    assert sorted(ids["b"]) == list(range(100, 107))  # one batch of b = one whole epoch
    epoch_a = np.concatenate([_ids(ds[0])["a"], _ids(ds[1])["a"]])
    assert sorted(epoch_a) == list(range(10))  # two batches of a = one epoch, no repeats
    # labels travel with their images
    np.testing.assert_array_equal(first["a"]["label"], ids["a"] % 5)
    # reshuffled every epoch, and deterministic for a seed
    assert not np.array_equal(_ids(ds[1])["b"], ids["b"])
    again = pipeline.train_batches(SOURCES, {"a": 5, "b": 7}, seed=3)
    np.testing.assert_array_equal(_ids(again[4])["a"], _ids(ds[4])["a"])
    other = pipeline.train_batches(SOURCES, {"a": 5, "b": 7}, seed=4)
    assert not all(np.array_equal(_ids(other[i])["a"], _ids(ds[i])["a"]) for i in range(3))


def test_iterator_state_resumes_exactly():
    ds = pipeline.train_batches(SOURCES, {"a": 2, "b": 3}, seed=0, augment="crop_flip", pad=1)
    it = pipeline.iterate(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = pipeline.iterate(ds)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for d in want:
            np.testing.assert_array_equal(got[d]["image"], want[d]["image"])
            np.testing.assert_array_equal(got[d]["label"], want[d]["label"])


def test_eval_batches_pad_and_mask_the_last_batch():
    batches = list(pipeline.eval_batches(SOURCES["a"], 4))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[-1]["label"], [8 % 5, 9 % 5, -1, -1])
    real = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(real, np.arange(10) % 5)
    assert sum(len(b["label"]) for b in pipeline.eval_batches(SOURCES["a"], 4, limit=3)) == 4


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="No batch size for domain"):
        pipeline.train_batches(SOURCES, {"a": 2}, seed=0)
    with pytest.raises(ValueError, match="Unknown augmentation"):
        pipeline.train_batches(SOURCES, {"a": 2, "b": 2}, seed=0, augment="mixup")


def test_stage_batch_size_may_be_per_domain():
    stage = ml_collections.ConfigDict({"batch_size": {"imagenet": 448, "default": 64}})
    assert common.batch_size(stage, "imagenet") == 448
    assert common.batch_size(stage, "omniglot") == 64
    assert common.batch_size(ml_collections.ConfigDict({"batch_size": 16}), "x") == 16
    with pytest.raises(ValueError, match="no entry for 'omniglot'"):
        common.batch_size(ml_collections.ConfigDict({"batch_size": {"imagenet": 8}}), "omniglot")


def test_holdout_split_partitions_each_class_deterministically():
    source = [{"image": np.zeros((2, 2, 3), np.uint8), "label": i % 4} for i in range(40)]
    train_part, val_part = pipeline.holdout_split(source, per_class=3, seed=0)
    assert len(train_part) == 28 and len(val_part) == 12
    assert sorted(np.concatenate([train_part.indices, val_part.indices])) == list(range(40))
    assert np.all(np.diff(train_part.indices) > 0)  # training records keep their order
    assert np.bincount([val_part[i]["label"] for i in range(len(val_part))]).tolist() == [3] * 4
    assert [train_part[i]["label"] for i in range(3)] == [source[j]["label"] for j in
                                                          train_part.indices[:3]]
    again = pipeline.holdout_split(source, per_class=3, seed=0)[1]
    other = pipeline.holdout_split(source, per_class=3, seed=1)[1]
    np.testing.assert_array_equal(again.indices, val_part.indices)
    assert not np.array_equal(other.indices, val_part.indices)
    with pytest.raises(ValueError, match="would keep no training example"):
        pipeline.holdout_split(source, per_class=10)
    with pytest.raises(ValueError, match="per_class >= 1"):
        pipeline.holdout_split(source, per_class=0)
    with pytest.raises(IndexError, match=r"\[0, 40\)"):
        pipeline.Subset(source, [0, 40])
