"""Tests of the Meta-Dataset episode sampler (ur_jax.data.episodes) on hand-built splits.

References are written from the official rules (meta_dataset/data/sampling.py), not from the
module: the support sizes are re-derived from the very random draws the sampler made.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ur_jax.data.episodes import EpisodeError

from ur_jax.data.episodes import (
    PROTOCOLS,
    Episode,
    EpisodeConfig,
    SplitSpec,
    describe,
    episode_shapes,
    num_query,
    protocol_config,
    sample_episode,
    sample_episodes,
    support_set_size,
    support_sizes,
)

LOG_HALF, LOG_TWO = math.log(0.5), math.log(2.0)


def make_spec(sizes, name="fake", seed=0, **kwargs) -> SplitSpec:
    """A split whose class ``c`` has ``sizes[c]`` records, scattered over a shuffled range."""
    sizes = np.asarray(sizes, np.int64)
    perm = np.random.default_rng(seed).permutation(int(sizes.sum())) + 1000
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    members = tuple(perm[bounds[c]:bounds[c + 1]] for c in range(len(sizes)))
    return SplitSpec(name, members, **kwargs)


def check_episode(ep: Episode, spec: SplitSpec, config: EpisodeConfig) -> tuple[int, np.ndarray]:
    """Checks the invariants every episode has; returns (q, k_c)."""
    n_all = spec.images_per_class
    assert ep.support.dtype == np.int64 and ep.query.dtype == np.int64
    assert ep.support_labels.dtype == np.int32 and ep.query_labels.dtype == np.int32
    assert ep.classes.dtype == np.int64
    ways = ep.ways
    assert len(np.unique(ep.classes)) == ways
    assert 0 <= ep.classes.min() and ep.classes.max() < spec.num_classes
    k = ep.support_per_class
    qs = ep.query_per_class
    # Class-major labels 0 .. ways-1.
    np.testing.assert_array_equal(ep.support_labels, np.repeat(np.arange(ways), k))
    np.testing.assert_array_equal(ep.query_labels, np.repeat(np.arange(ways), qs))
    assert np.all(qs == qs[0]), "query sizes must be equal across classes"
    q = int(qs[0])
    n = n_all[ep.classes]
    assert 1 <= q <= config.max_query if config.queries is None else q == config.queries
    assert np.all(k >= 1) and np.all(k <= n - q)
    # Disjoint support / query, each example from its class.
    assert len(np.intersect1d(ep.support, ep.query)) == 0
    assert len(np.unique(ep.support)) == len(ep.support)
    assert len(np.unique(ep.query)) == len(ep.query)
    owner = record_owner(spec)
    np.testing.assert_array_equal(owner[ep.support], ep.classes[ep.support_labels])
    np.testing.assert_array_equal(owner[ep.query], ep.classes[ep.query_labels])
    return q, k


_OWNERS: dict[int, np.ndarray] = {}


def record_owner(spec: SplitSpec) -> np.ndarray:
    """``owner[i]``: the class of record ``i`` (-1: none), cached per spec."""
    if id(spec) not in _OWNERS:
        owner = np.full(max(int(m.max()) for m in spec.members if len(m)) + 1, -1)
        for c, m in enumerate(spec.members):
            owner[m] = c
        _OWNERS[id(spec)] = owner
    return _OWNERS[id(spec)]


class RecordingRng:
    """A np.random.Generator that records the results of its ``uniform`` calls."""

    def __init__(self, seed):
        self._rng = np.random.default_rng(seed)
        self.uniforms = []

    def uniform(self, *args, **kwargs):
        out = self._rng.uniform(*args, **kwargs)
        self.uniforms.append(out)
        return out

    def __getattr__(self, name):
        return getattr(self._rng, name)


def reference_shots(n, q, beta, log_weights, max_support=500, max_contrib=100):
    """k_c from the official formulas, in plain Python."""
    remaining = [int(x) - q for x in n]
    budget = min(max_support,
                 sum(math.floor(beta * min(max_contrib, r)) + 1 for r in remaining))
    weights = [int(x) * math.exp(w) for x, w in zip(n, log_weights, strict=True)]
    total = sum(weights)
    extra = budget - len(n)
    return [min(math.floor(wt / total * extra) + 1, r)
            for wt, r in zip(weights, remaining, strict=True)]


# -- the flat variable-way variable-shot sampler ------------------------------------------------

@pytest.fixture(scope="module")
def flat_spec():
    rng = np.random.default_rng(1)
    sizes = rng.integers(20, 700, size=100)
    sizes[:6] = [2, 3, 7, 12, 21, 1300]  # small classes force small q
    return make_spec(sizes)


def test_standard_invariants_and_recorded_draws(flat_spec):
    """Invariants over 500 episodes, and k_c re-derived from the sampler's own draws."""
    config = EpisodeConfig()
    rng = RecordingRng(7)
    n_all = flat_spec.images_per_class
    qs, ways = set(), []
    for _ in range(500):
        ep = sample_episode(flat_spec, rng, config)
        q, k = check_episode(ep, flat_spec, config)
        n = n_all[ep.classes]
        assert 5 <= ep.ways <= 50
        assert q == min(10, int((n // 2).min()))
        assert len(ep.support) <= 500
        beta, log_weights = rng.uniforms[-2], rng.uniforms[-1]
        assert np.ndim(beta) == 0 and 0.0 <= beta < 1.0
        assert log_weights.shape == (ep.ways,)
        assert np.all(log_weights >= LOG_HALF) and np.all(log_weights < LOG_TWO)
        assert list(k) == reference_shots(n, q, float(beta), log_weights)
        qs.add(q)
        ways.append(ep.ways)
    assert len(rng.uniforms) == 1000  # exactly beta + log-weights per episode
    assert {1, 10} <= qs  # small classes were drawn sometimes
    assert min(ways) == 5 and max(ways) == 50


def test_mean_ways_is_uniform():
    """N ~ U{5 .. 50} on a 100-class flat split: mean (5 + 50) / 2, every value reached."""
    spec = make_spec(np.full(100, 20))
    ways = np.array([e.ways for e in sample_episodes(spec, 2000, seed=11)])
    # std of U{5..50} is 13.27, so the mean of 2000 has std 0.30.
    assert abs(ways.mean() - 27.5) < 1.2
    assert set(ways.tolist()) == set(range(5, 51))
    # Fewer classes than max_ways: N ~ U{5 .. C}.
    small = make_spec(np.full(12, 20))
    ways = np.array([e.ways for e in sample_episodes(small, 1000, seed=2)])
    assert set(ways.tolist()) == set(range(5, 13))
    assert abs(ways.mean() - 8.5) < 0.4


def test_one_way_support_size_closed_form():
    """With one way the class gets the whole budget: k = floor(beta * min(100, n - q) + 1)
    is uniform on 1 .. n - q (here n = 40, q = 10 -> 1 .. 30, mean 15.5); with
    max_support = 20, E[k] = (1 + ... + 19 + 11 * 20) / 30."""
    spec = make_spec(np.full(10, 40))
    config = EpisodeConfig(min_ways=1, ways=1)
    episodes = sample_episodes(spec, 3000, config, seed=5)
    k = np.array([len(e.support) for e in episodes])
    assert all(len(e.query) == 10 for e in episodes)
    counts = np.bincount(k, minlength=31)
    assert counts[0] == 0 and counts[1:].min() > 50 and counts[1:].max() < 160
    assert abs(k.mean() - 15.5) < 0.6  # std of the mean 0.16
    capped = sample_episodes(spec, 3000, EpisodeConfig(min_ways=1, ways=1, max_support=20),
                             seed=6)
    k = np.array([len(e.support) for e in capped])
    assert k.max() == 20 and abs(k.mean() - (190 + 220) / 30) < 0.5


def test_support_helpers_hand_values():
    config = EpisodeConfig()
    n = [20, 40, 100]
    # S = floor(.5*10+1) + floor(.5*30+1) + floor(.5*90+1) = 6 + 16 + 46 = 68;
    # p = [1/8, 1/4, 5/8], S - N = 65 -> floor([8.125, 16.25, 40.625]) + 1.
    assert support_set_size(n, 10, 0.5, config) == 68
    np.testing.assert_array_equal(support_sizes(n, 10, 0.5, [0.0, 0.0, 0.0], config),
                                  [9, 17, 41])
    # Weights n * exp(w) = [40, 40, 50]; S = 6 + 17 + 50 = 73; 70 * [4, 4, 5] / 13 =
    # [21.5, 21.5, 26.9] -> [22, 22, 27], the first capped at n - q = 10.
    assert support_set_size(n, 10, 0.55, config) == 73
    np.testing.assert_array_equal(
        support_sizes(n, 10, 0.55, [LOG_TWO, 0.0, LOG_HALF], config), [10, 22, 27])
    # The +1 is per class, inside the sum: beta = 0 gives one example per class.
    assert support_set_size([20] * 7, 10, 0.0, config) == 7
    np.testing.assert_array_equal(support_sizes([20] * 7, 10, 0.0, np.zeros(7), config),
                                  np.ones(7))
    assert support_set_size([20] * 7, 10, 0.999, config) == 70
    # Per-class contribution capped at 100, total at 500.
    assert support_set_size([300], 10, 0.5, config) == 51
    assert support_set_size([600] * 50, 10, 0.5, config) == 500
    # Official compute_num_query.
    assert num_query([40, 7, 100], config) == 3
    assert num_query([400, 300], config) == 10
    assert num_query([12, 40], EpisodeConfig(shots=5)) == 7
    assert num_query([12, 40], EpisodeConfig(queries=4)) == 4
    with pytest.raises(EpisodeError, match="max_support"):
        support_set_size([20] * 7, 10, 0.5, EpisodeConfig(max_support=6))
    with pytest.raises(EpisodeError, match="none left"):
        support_sizes([20, 10], 10, 0.5, [0.0, 0.0], config)


# -- protocols ----------------------------------------------------------------------------------

def test_protocol_configs():
    assert protocol_config("standard") == EpisodeConfig()
    one = protocol_config("five_way_one_shot")
    assert (one.min_ways, one.max_ways, one.max_query, one.max_support_per_class) == (5, 5, 10, 1)
    assert (one.ways, one.shots, one.queries) == (None, None, None)
    five = protocol_config("varying_way_five_shot")
    assert (five.ways, five.shots, five.queries, five.max_query) == (None, 5, None, 10)
    d = EpisodeConfig()
    assert (d.min_ways, d.max_ways, d.max_query, d.max_support, d.max_support_per_class,
            d.max_spanning_leaves) == (5, 50, 10, 500, 100, 392)
    assert d.min_log_weight == pytest.approx(-0.6931471805599453)
    assert d.max_log_weight == pytest.approx(0.6931471805599453)
    with pytest.raises(ValueError, match="Unknown episode protocol"):
        protocol_config("ten_way")


def test_five_way_one_shot():
    spec = make_spec(np.random.default_rng(3).integers(20, 500, size=60))
    config = protocol_config("five_way_one_shot")
    for ep in sample_episodes(spec, 300, "five_way_one_shot", seed=1):
        check_episode(ep, spec, config)
        assert ep.ways == 5
        np.testing.assert_array_equal(ep.support_per_class, np.ones(5))
        np.testing.assert_array_equal(ep.query_per_class, np.full(5, 10))
    # Classes under 20 images give min_c floor(n_c / 2) queries, as in URL's setup.
    small = make_spec([8, 30, 30, 30, 30])
    ep = sample_episodes(small, 1, "five_way_one_shot")[0]
    np.testing.assert_array_equal(ep.query_per_class, np.full(5, 4))


def test_varying_way_five_shot():
    spec = make_spec(np.random.default_rng(4).integers(12, 300, size=80))
    config = protocol_config("varying_way_five_shot")
    ways = set()
    for ep in sample_episodes(spec, 300, config, seed=2):
        q, k = check_episode(ep, spec, config)
        np.testing.assert_array_equal(k, np.full(ep.ways, 5))
        assert q == min(10, int(spec.images_per_class[ep.classes].min()) - 5)
        ways.add(ep.ways)
    assert min(ways) == 5 and max(ways) == 50 and len(ways) > 30


def test_fixed_ways_shots_queries():
    spec = make_spec(np.full(30, 20))
    config = EpisodeConfig(ways=7, shots=3, queries=15)
    for ep in sample_episodes(spec, 50, config, seed=0):
        check_episode(ep, spec, config)
        assert (ep.ways, len(ep.support), len(ep.query)) == (7, 21, 105)


# -- hierarchies --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dag_spec():
    sizes = np.random.default_rng(5).integers(20, 60, size=450)
    nodes = {
        "root": np.arange(450),          # 450 leaves > 392: never eligible
        "A": np.arange(300),             # eligible, sub-sampled to 50
        "B": np.arange(300, 450),        # eligible, sub-sampled to 50
        "C": np.arange(60),              # eligible, sub-sampled to 50
        "D": np.arange(60, 70),          # 10 leaves
        "E": np.arange(70, 75),          # exactly min_ways
        "F": np.arange(75, 79),          # 4 leaves < min_ways: never eligible
        "G": np.array([3, 100, 200, 310, 420, 5]),
    }
    return make_spec(sizes, "ilsvrc_2012", hierarchy=tuple(nodes.values())), nodes


def test_imagenet_dag(dag_spec):
    spec, nodes = dag_spec
    config = EpisodeConfig()
    eligible = {k: set(v.tolist()) for k, v in nodes.items() if k not in ("root", "F")}
    exact = dict.fromkeys(("D", "E", "G"), 0)
    big = 0
    for ep in sample_episodes(spec, 600, config, seed=3):
        check_episode(ep, spec, config)
        classes = set(ep.classes.tolist())
        owners = [k for k, leaves in eligible.items() if classes <= leaves]
        assert owners, f"episode classes {sorted(classes)} not under one eligible node"
        assert ep.ways == min(50, min(len(eligible[k]) for k in owners))
        for k in exact:
            if classes == eligible[k]:
                exact[k] += 1
                np.testing.assert_array_equal(ep.classes, nodes[k])  # the node's order
        big += ep.ways == 50
    # Six eligible nodes, picked uniformly: ~100 episodes each (binomial std 9).
    assert all(55 < c < 145 for c in exact.values()), exact
    assert 230 < big < 370  # A, B, C


def test_dag_eligibility_bounds():
    """Eligible: min_ways <= #leaves <= max_spanning_leaves, both bounds included."""
    nodes = (np.arange(4), np.arange(10), np.arange(11), np.arange(2, 7))
    spec = make_spec([20] * 12, hierarchy=nodes)
    config = EpisodeConfig(max_spanning_leaves=10, max_ways=8)
    seen = set()
    for ep in sample_episodes(spec, 100, config, seed=1):
        if ep.ways == 5:
            np.testing.assert_array_equal(ep.classes, nodes[3])
        else:  # the 10-leaf node, sub-sampled to max_ways
            assert ep.ways == 8 and ep.classes.max() < 10
        seen.add(ep.ways)
    assert seen == {5, 8}


def test_imagenet_five_way_one_shot(dag_spec):
    spec, nodes = dag_spec
    leaf_sets = [set(v.tolist()) for k, v in nodes.items() if k not in ("root", "F")]
    for ep in sample_episodes(spec, 200, "five_way_one_shot", seed=4):
        assert ep.ways == 5 and len(ep.support) == 5 and len(ep.query) == 50
        assert any(set(ep.classes.tolist()) <= s for s in leaf_sets)


@pytest.fixture(scope="module")
def omniglot_spec():
    alphabet_sizes = [5, 8, 14, 20, 26]
    bounds = np.concatenate([[0], np.cumsum(alphabet_sizes)])
    alphabets = tuple(np.arange(bounds[i], bounds[i + 1]) for i in range(5))
    return make_spec(np.full(bounds[-1], 20), "omniglot", superclasses=alphabets), alphabets


def test_omniglot_alphabets(omniglot_spec):
    spec, alphabets = omniglot_spec
    config = EpisodeConfig()
    picked = np.zeros(5, int)
    ways_by_alphabet = [[] for _ in alphabets]
    for ep in sample_episodes(spec, 600, config, seed=8):
        q, _ = check_episode(ep, spec, config)
        assert q == 10
        owner = [i for i, a in enumerate(alphabets) if np.isin(ep.classes, a).all()]
        assert len(owner) == 1, "classes must come from one alphabet"
        i = owner[0]
        picked[i] += 1
        assert 5 <= ep.ways <= len(alphabets[i])
        ways_by_alphabet[i].append(ep.ways)
    # Alphabets are picked uniformly, not by size: ~120 each (binomial std 9.8).
    assert picked.min() > 75 and picked.max() < 165, picked
    assert set(ways_by_alphabet[0]) == {5}
    assert set(ways_by_alphabet[1]) == set(range(5, 9))
    assert abs(np.mean(ways_by_alphabet[4]) - 15.5) < 2.0
    for ep in sample_episodes(spec, 100, "five_way_one_shot", seed=9):
        assert ep.ways == 5 and len(ep.support) == 5 and len(ep.query) == 50
        assert any(np.isin(ep.classes, a).all() for a in alphabets)


def test_fixed_ways_and_hierarchy(omniglot_spec, dag_spec):
    spec, alphabets = omniglot_spec
    for s in (spec, dag_spec[0]):
        with pytest.raises(EpisodeError, match="incompatible"):
            sample_episodes(s, 1, EpisodeConfig(ways=5))
    # ignore_hierarchy samples the split as a flat one: alphabets get mixed.
    episodes = sample_episodes(spec, 50, EpisodeConfig(ways=10, ignore_hierarchy=True))
    assert all(e.ways == 10 for e in episodes)
    assert any(not any(np.isin(e.classes, a).all() for a in alphabets) for e in episodes)


# -- determinism --------------------------------------------------------------------------------

def test_determinism(flat_spec, omniglot_spec, dag_spec):
    for spec in (make_spec(np.arange(20, 120)), omniglot_spec[0], dag_spec[0]):
        for protocol in PROTOCOLS:
            a = sample_episodes(spec, 15, protocol, seed=3)
            b = sample_episodes(spec, 15, protocol, seed=3)
            c = sample_episodes(spec, 15, protocol, seed=4)
            for x, y in zip(a, b, strict=True):
                for field in ("support", "support_labels", "query", "query_labels", "classes"):
                    np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
            assert any(not np.array_equal(x.support, y.support) for x, y in zip(a, c,
                                                                                strict=True))
    # One generator, episode after episode.
    rng = np.random.default_rng(3)
    seq = [sample_episode(flat_spec, rng) for _ in range(5)]
    for x, y in zip(sample_episodes(flat_spec, 5, seed=3), seq, strict=True):
        np.testing.assert_array_equal(x.query, y.query)


# -- summaries ----------------------------------------------------------------------------------

def test_shapes_and_describe():
    def ep(k, q):
        ways = len(k)
        lab = np.arange(ways, dtype=np.int32)
        return Episode(np.arange(sum(k)), np.repeat(lab, k), np.arange(q * ways) + 100,
                       np.repeat(lab, q), np.arange(ways))

    episodes = [ep([1, 4, 2], 3), ep([5] * 5, 10)]
    assert episode_shapes(episodes) == {"ways": 5, "support": 25, "query": 50,
                                        "support_per_class": 5, "query_per_class": 10}
    d = describe(episodes)
    assert d["episodes"] == 2 and d["mean_ways"] == 4 and d["max_ways"] == 5
    assert d["mean_support"] == 16 and d["mean_query"] == (9 + 50) / 2
    assert d["mean_shots"] == pytest.approx(32 / 8) and d["min_shots"] == 1
    assert d["mean_query_per_class"] == pytest.approx((9 + 50) / 8)
    with pytest.raises(ValueError, match="at least one episode"):
        describe([])
    with pytest.raises(ValueError, match="at least one episode"):
        episode_shapes([])


# -- errors -------------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(EpisodeError, match="fewer than min_ways"):
        sample_episodes(make_spec([20] * 4), 1)
    with pytest.raises(EpisodeError, match="fewer than ways"):
        sample_episodes(make_spec([20] * 8), 1, EpisodeConfig(ways=9))
    with pytest.raises(EpisodeError, match="at least 2"):
        sample_episodes(make_spec([20] * 6 + [1]), 1)
    with pytest.raises(EpisodeError, match="at least 16"):
        sample_episodes(make_spec([20] * 6 + [14]), 1, EpisodeConfig(shots=5, queries=11))
    with pytest.raises(EpisodeError, match="at least 6"):
        sample_episodes(make_spec([20] * 6 + [5]), 1, "varying_way_five_shot")
    with pytest.raises(EpisodeError, match="max_support"):
        sample_episodes(make_spec([20] * 6), 1, EpisodeConfig(max_support=4))
    with pytest.raises(EpisodeError, match="only 6 classes"):
        make_spec([20] * 6, superclasses=([0, 1, 2], [3, 4, 6]))
    with pytest.raises(EpisodeError, match="only 6 classes"):
        make_spec([20] * 6, hierarchy=([0, 1, 2, 3, 4, 5, 6],))
    with pytest.raises(EpisodeError, match="more than once"):
        make_spec([20] * 6, hierarchy=([0, 1, 2, 3, 3],))
    with pytest.raises(EpisodeError, match="both"):
        make_spec([20] * 6, hierarchy=([0, 1, 2, 3, 4],), superclasses=([0, 1, 2, 3, 4, 5],))
    with pytest.raises(EpisodeError, match="integer"):
        SplitSpec("x", (np.arange(3.0),))
    with pytest.raises(EpisodeError, match="1-D"):
        SplitSpec("x", (np.zeros((2, 2), int),))
    with pytest.raises(EpisodeError, match="min_ways"):
        sample_episodes(make_spec([20] * 9, superclasses=([0, 1, 2, 3, 4], [5, 6, 7, 8])), 1)
    with pytest.raises(EpisodeError, match="No node"):
        sample_episodes(make_spec([20] * 9, hierarchy=([0, 1], np.arange(9))), 1,
                        EpisodeConfig(max_spanning_leaves=8))
    with pytest.raises(ValueError, match="min_ways"):
        EpisodeConfig(min_ways=6, max_ways=5)
    with pytest.raises(ValueError, match="shots"):
        EpisodeConfig(shots=0)
    with pytest.raises(ValueError, match="max_query"):
        EpisodeConfig(max_query=2.5)
    with pytest.raises(ValueError, match="log_weight"):
        EpisodeConfig(min_log_weight=1.0, max_log_weight=0.0)
    with pytest.raises(ValueError, match="num_episodes"):
        sample_episodes(make_spec([20] * 6), 0)
    with pytest.raises(ValueError, match="pair up"):
        Episode(np.arange(3), np.zeros(2, np.int32), np.arange(1), np.zeros(1, np.int32),
                np.arange(1))
