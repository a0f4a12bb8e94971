"""Each process's part of every batch (several hosts, issue 16): the parts of all processes,
in process order, are exactly the one-process batch; evaluation reads every example once."""

import numpy as np
import pytest

from ur_jax.data import pipeline
from ur_jax.suites.dense import transforms as dense


def _source(n, seed, shape=(6, 6, 3)):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, shape, np.uint8), "label": i % 5, "image_id": 1000 + i}
            for i in range(n)]


def _dense_source(n, seed):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (8, 8, 3), np.uint8),
             "semantic": rng.integers(-1, 4, (8, 8)).astype(np.int32),
             "depth": rng.random((8, 8, 1)).astype(np.float32),
             "normal": rng.standard_normal((8, 8, 3)).astype(np.float32)} for _ in range(n)]


def _concat(parts):
    """Parts of one batch (a dict tree of arrays per process), joined in process order."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    return np.concatenate(parts)


def _assert_equal_trees(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_equal_trees(a[k], b[k])
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("count", [2, 4])
def test_train_parts_make_the_one_process_batch(count):
    """Same examples, same order, same augmentation (random numbers of the global position),
    over several epochs; each process's iterator state stays one resumable index."""
    sources = {"a": _source(13, 0), "b": _source(9, 1)}
    sizes = {"a": 8, "b": 4}
    whole = pipeline.train_batches(sources, sizes, seed=5, augment="crop_flip", pad=2)
    parts = [pipeline.train_batches(sources, sizes, seed=5, augment="crop_flip", pad=2,
                                    process_index=p, process_count=count) for p in range(count)]
    assert parts[0][0]["a"]["image"].shape == (8 // count, 6, 6, 3)
    for i in (0, 1, 2, 7):  # 7 batches of 'a' > 4 epochs: reshuffled epochs too
        _assert_equal_trees(_concat([part[i] for part in parts]), whole[i])
    it = pipeline.iterate(parts[1])
    next(it), next(it)
    resumed = pipeline.iterate(parts[1])
    resumed.set_state(it.get_state())
    _assert_equal_trees(next(resumed), parts[1][2])


def test_parts_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="batch size of domain 'b' 6 does not divide over the 4"):
        pipeline.train_batches({"a": _source(4, 0), "b": _source(4, 1)}, {"a": 8, "b": 6},
                               seed=0, process_index=0, process_count=4)
    with pytest.raises(ValueError, match="evaluation batch size 6 does not divide over the 4"):
        next(pipeline.eval_batches(_source(4, 0), 6, process_index=1, process_count=4))
    with pytest.raises(ValueError, match=r"process_index must lie in \[0, 2\); found 2"):
        pipeline.train_batches({"a": _source(4, 0)}, {"a": 2}, seed=0, process_index=2,
                               process_count=2)


def test_eval_parts_cover_every_example_once():
    """11 examples, global batches of 4 over 4 processes: the last global batch has 3 real
    examples, so process 3's part of it is all padding; every process yields 3 batches."""
    src = _source(11, 2)
    whole = list(pipeline.eval_batches(src, 4))
    parts = [list(pipeline.eval_batches(src, 4, process_index=p, process_count=4))
             for p in range(4)]
    assert [len(p) for p in parts] == [3, 3, 3, 3]
    seen = []
    for b, want in enumerate(whole):
        got = _concat([p[b] for p in parts])
        np.testing.assert_array_equal(got["mask"], want["mask"])
        real = want["mask"] == 1
        for key in ("image", "label", "image_id"):
            np.testing.assert_array_equal(got[key][real], want[key][real])
        np.testing.assert_array_equal(got["label"][~real], -1)
        np.testing.assert_array_equal(got["image_id"][~real], -1)
        seen.extend(got["image_id"][real])
    assert seen == list(range(1000, 1011))
    assert parts[3][2]["mask"].sum() == 0 and parts[3][2]["image"].shape == (1, 6, 6, 3)
    assert pipeline.process_eval_indices(11, 4, 1, 2)[2].tolist() == [10]
    assert pipeline.process_eval_indices(11, 4, 1, 4)[2].tolist() == [9]


def test_dense_parts_make_the_one_process_batches():
    src = _dense_source(7, 3)
    whole = dense.dense_train_batches(src, 4, seed=2, augment=True)
    parts = [dense.dense_train_batches(src, 4, seed=2, augment=True, process_index=p,
                                       process_count=2) for p in range(2)]
    for i in (0, 3):
        _assert_equal_trees(_concat([p[i] for p in parts]), whole[i])
    whole_eval = list(dense.dense_eval_batches(src, 4))
    parts_eval = [list(dense.dense_eval_batches(src, 4, process_index=p, process_count=2))
                  for p in range(2)]
    assert [len(p) for p in parts_eval] == [2, 2]
    for b, want in enumerate(whole_eval):
        _assert_equal_trees(_concat([p[b] for p in parts_eval]), want)
    # 6 examples, batch 8 over 4 processes: process 3's part (examples 6, 7) is padding only
    last = list(dense.dense_eval_batches(src[:6], 8, process_index=3, process_count=4))
    assert len(last) == 1 and last[0]["mask"].tolist() == [0.0, 0.0]
    assert (last[0]["semantic"] == -1).all() and last[0]["image"].shape == (2, 8, 8, 3)
