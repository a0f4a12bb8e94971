"""Episodic Meta-Dataset evaluation (ur_jax.evaluation.metadataset): NCC, PA, TSA and the
linear probe on images, with bucketed variable-size episodes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import adapters as adapters_lib
from ur_jax import sharding
from ur_jax.data.episodes import Episode
from ur_jax.evaluation import fewshot, methods
from ur_jax.evaluation import metadataset as md_eval
from ur_jax.models import get_backbone

SIZE = 16  # tiny images: the evaluator does not care about 84x84


def _records(num_classes, per_class, noise, seed):
    """Class c: a constant colour (class-specific) plus uniform noise of +-noise levels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes, 3))
    records = []
    for c in range(num_classes):
        for _ in range(per_class):
            img = colours[c] + rng.integers(-noise, noise + 1, size=(SIZE, SIZE, 3))
            records.append({"image": np.clip(img, 0, 255).astype(np.uint8), "label": c})
    return records


def _episodes(num_classes, per_class, count, seed, max_ways=6):
    """Variable-way variable-shot episodes built by hand (class-major, disjoint sets)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ways = int(rng.integers(2, max_ways + 1))
        classes = rng.choice(num_classes, ways, replace=False)
        q = int(rng.integers(1, 4))
        sup, sl, qry, ql = [], [], [], []
        for i, c in enumerate(classes):
            k = int(rng.integers(1, per_class - q + 1))
            members = c * per_class + rng.permutation(per_class)
            sup += list(members[:k])
            sl += [i] * k
            qry += list(members[k:k + q])
            ql += [i] * q
        out.append(Episode(np.asarray(sup, np.int64), np.asarray(sl, np.int32),
                           np.asarray(qry, np.int64), np.asarray(ql, np.int32),
                           np.asarray(classes)))
    return out


@pytest.fixture(scope="module")
def backbone():
    net = get_backbone("resnet18_metadataset", width=1 / 16)
    variables = jax.jit(lambda r, x: net.init(r, x, train=False))(
        jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    return net, variables


@pytest.fixture(scope="module")
def evaluator(backbone):
    net, variables = backbone
    return md_eval.EpisodeEvaluator(net, variables, batch_size=16, buckets=(16, 32), chunk=4)


@pytest.fixture(scope="module")
def tsa_evaluator(backbone):
    """One support / query bucket: TSA's inner loop compiles once for every TSA test."""
    net, variables = backbone
    return md_eval.EpisodeEvaluator(net, variables, batch_size=16, buckets=(32,), chunk=4)


def test_bucket_size():
    assert md_eval.bucket_size(1, (16, 32)) == 16
    assert md_eval.bucket_size(16, (16, 32)) == 16
    assert md_eval.bucket_size(17, (16, 32)) == 32
    assert md_eval.bucket_size(33, (16, 32)) == 64  # beyond the ladder: powers of two
    with pytest.raises(ValueError, match="positive"):
        md_eval.bucket_size(0)


@pytest.mark.parametrize("method", ["ncc", "pa", pytest.param("tsa", marks=pytest.mark.slow),
                                    "linear"])
def test_separable_clusters_are_classified_perfectly(evaluator, tsa_evaluator, method):
    source = _records(6, 6, noise=2, seed=1)
    episodes = _episodes(6, 6, 3, seed=2)
    acc = (tsa_evaluator if method == "tsa" else evaluator).evaluate(source, episodes, method=method, seen=False)
    np.testing.assert_array_equal(acc, np.ones(len(episodes), np.float32))


def test_bucketed_episodes_match_unpadded_reference(evaluator, backbone):
    """Padding support / query / ways to buckets changes nothing: each episode's NCC accuracy
    equals a NumPy NCC on its own unpadded features."""
    net, variables = backbone
    source = _records(8, 8, noise=120, seed=3)  # hard: accuracies strictly between 0 and 1
    episodes = _episodes(8, 8, 10, seed=4, max_ways=8)
    acc = evaluator.evaluate(source, episodes, method="ncc")
    images = np.stack([r["image"] for r in source]).astype(np.float32) / 127.5 - 1.0
    feats = np.asarray(net.apply(variables, images, train=False)["pooled"], np.float64)
    expected = []
    for e in episodes:
        s, q = feats[e.support], feats[e.query]
        protos = np.stack([s[e.support_labels == i].mean(0) for i in range(e.ways)])
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        expected.append(np.mean(np.argmax(qn @ protos.T, 1) == e.query_labels))
    np.testing.assert_allclose(acc, expected, atol=1e-6)
    assert 0.0 < np.mean(acc) < 1.0


def test_validation_accuracy_is_the_mean_ncc_accuracy_per_source(backbone):
    """Model selection's score (VICO-UoE/URL): per source, 100 x the mean over episodes of a
    NumPy NCC (cosine prototypes) on the backbone's features."""
    net, variables = backbone
    sources = {"a": _records(8, 8, noise=120, seed=7), "b": _records(6, 8, noise=120, seed=8)}
    episodes = {"a": _episodes(8, 8, 5, seed=9, max_ways=8), "b": _episodes(6, 8, 4, seed=10)}
    got = md_eval.validation_accuracy(net, variables, sources, episodes, batch_size=16,
                                      buckets=(16, 32))
    assert list(got) == ["a", "b"]
    for name, source in sources.items():
        images = np.stack([r["image"] for r in source]).astype(np.float32) / 127.5 - 1.0
        feats = np.asarray(net.apply(variables, images, train=False)["pooled"], np.float64)
        accs = []
        for e in episodes[name]:
            s, q = feats[e.support], feats[e.query]
            protos = np.stack([s[e.support_labels == i].mean(0) for i in range(e.ways)])
            protos /= np.linalg.norm(protos, axis=1, keepdims=True)
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            accs.append(np.mean(np.argmax(qn @ protos.T, 1) == e.query_labels))
        assert got[name] == pytest.approx(100 * np.mean(accs), abs=1e-4)


def test_pa_with_zero_steps_equals_ncc(evaluator, tsa_evaluator):
    source = _records(8, 8, noise=120, seed=5)
    episodes = _episodes(8, 8, 6, seed=6, max_ways=6)
    ncc = evaluator.evaluate(source, episodes, method="ncc")
    pa0 = evaluator.evaluate(source, episodes, method="pa", steps=0)
    tsa0 = tsa_evaluator.evaluate(source, episodes, method="tsa", steps=0)
    np.testing.assert_array_equal(pa0, ncc)
    np.testing.assert_array_equal(tsa0, ncc)  # alpha = 1e-4 I barely moves the features
    pa = evaluator.evaluate(source, episodes, method="pa", seen=False)
    assert not np.array_equal(pa, ncc)  # 40 steps at lr 1 change something


def test_tsa_at_initialisation_reproduces_frozen_features(backbone):
    net, variables = backbone
    images = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    adapted = adapters_lib.attach(net, adapters_lib.tsa("residual", "matrix"))
    start = adapters_lib.init_adapters(adapted, jax.random.key(0), images)
    leaves = jax.tree.leaves(start)
    assert len(leaves) == 16  # every 3x3 conv of the 8 basic blocks
    frozen = net.apply(variables, images, train=False)["pooled"]
    tsa = adapted.apply({**variables, "adapters": start}, images, train=False)["pooled"]
    np.testing.assert_allclose(np.asarray(tsa), np.asarray(frozen), atol=1e-3)
    assert not np.array_equal(np.asarray(tsa), np.asarray(frozen))  # the adapters are there


def test_tsa_fits_the_adapters_and_pa_on_the_support_set(tsa_evaluator):
    """The inner loop lowers the support loss, moves both alpha and beta, and leaves the
    frozen backbone's arrays untouched. (Same shapes and sharding as the evaluator's calls:
    no new compilation.)"""
    source = _records(4, 8, noise=120, seed=7)
    images = np.stack([r["image"] for r in source]).astype(np.float32) / 127.5 - 1.0
    labels = np.asarray([r["label"] for r in source], np.int32)
    tsa = methods.get_method("tsa")
    adapted, start = tsa_evaluator._adapted_start(tsa, images)
    before = jax.tree.map(np.asarray, tsa_evaluator.variables)
    shard = lambda x: sharding.shard_batch(x, tsa_evaluator.mesh)
    lrs = {"alpha": jnp.float32(0.5), "beta": jnp.float32(1.0)}
    alpha, beta, feats = md_eval._fit_adapted(
        tsa, adapted, "pooled", 6, tsa_evaluator.variables, start, shard(images),
        shard(labels), jnp.int32(10), lrs)
    _, beta0, feats0 = md_eval._fit_adapted(
        tsa, adapted, "pooled", 6, tsa_evaluator.variables, start, shard(images),
        shard(labels), jnp.int32(0), lrs)
    np.testing.assert_array_equal(np.asarray(beta0), np.eye(beta.shape[0]))
    loss0 = fewshot.pa_loss(beta0, feats0, labels, 6)
    loss1 = fewshot.pa_loss(beta, feats, labels, 6)
    assert float(loss1) < float(loss0)
    assert not np.allclose(np.asarray(beta), np.eye(beta.shape[0]))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(alpha),
                                                     jax.tree.leaves(start)))
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.asarray, tsa_evaluator.variables))


def test_compilations_are_bounded_by_buckets(evaluator):
    """Twenty variable-size episodes: NCC compiles once per support bucket (two here) plus
    the feature extractor, whatever the number of episodes."""
    source = _records(8, 8, noise=60, seed=8)
    warm = _episodes(8, 8, 20, seed=9, max_ways=8)
    evaluator.evaluate(source, warm, method="ncc")  # compiles every bucket used
    more = _episodes(8, 8, 40, seed=10, max_ways=8)
    assert {md_eval.bucket_size(len(e.support), (16, 32)) for e in more} <= {
        md_eval.bucket_size(len(e.support), (16, 32)) for e in warm}
    def query_bucket(eps):
        return md_eval.bucket_size(max(len(e.query) for e in eps), (16, 32))

    assert query_bucket(more) == query_bucket(warm)
    assert max(e.ways for e in more) == max(e.ways for e in warm) == 8
    with md_eval.CompilationCounter() as counter:
        evaluator.evaluate(source, more, method="ncc")
    assert counter.count == 0


def test_learning_rates_follow_the_paper():
    assert md_eval.learning_rates("pa", seen=True) == {"beta": 0.1}
    assert md_eval.learning_rates("pa", seen=False) == {"beta": 1.0}
    assert md_eval.learning_rates("tsa", seen=True) == {"alpha": 0.05, "beta": 0.1}
    assert md_eval.learning_rates("tsa", seen=False) == {"alpha": 0.5, "beta": 1.0}
    with pytest.raises(ValueError, match="Unknown few-shot method"):
        md_eval.learning_rates("maml", seen=True)


def test_summary_confidence_interval_and_averages():
    rng = np.random.default_rng(0)
    acc = {"ilsvrc_2012": rng.uniform(0, 1, 600), "omniglot": rng.uniform(0, 1, 600),
           "mnist": rng.uniform(0, 1, 600)}
    out = md_eval.summarize(acc, seen=("ilsvrc_2012", "omniglot"))
    for name, a in acc.items():
        pct = 100 * a
        assert out[name]["accuracy"] == pytest.approx(pct.mean())
        assert out[name]["ci95"] == pytest.approx(1.96 * pct.std() / np.sqrt(600))
    avg = out["averages"]
    assert avg["seen"] == pytest.approx(np.mean([100 * acc["ilsvrc_2012"].mean(),
                                                 100 * acc["omniglot"].mean()]))
    assert avg["unseen"] == pytest.approx(100 * acc["mnist"].mean())
    assert avg["all"] == pytest.approx(np.mean([out[s]["accuracy"] for s in acc]))
    table = md_eval.format_results({"url ncc": out}, list(acc))
    assert "ilsvrc_2012" in table and f"{avg['all']:.1f}" in table


def test_evaluator_errors(backbone):
    net, variables = backbone
    with pytest.raises(ValueError, match="multiples of the 8 devices"):
        md_eval.EpisodeEvaluator(net, variables, batch_size=12)
    ev = md_eval.EpisodeEvaluator(net, variables, batch_size=16, buckets=(16,))
    with pytest.raises(ValueError, match="no episodes"):
        ev.evaluate(_records(2, 2, 1, 0), [], method="ncc")
    with pytest.raises(ValueError, match="Unknown few-shot method"):
        ev.evaluate(_records(2, 2, 1, 0), _episodes(2, 4, 1, 0, 2), method="proto")


# ------------------------------------------------------------------------ method registry


@pytest.fixture
def toy_method():
    """'ncc_scale1' (NCC with cosine x 1), registered for one test and then removed; its
    logits record every trace, which shows the protocols ran this entry."""
    traced = []

    def logits(state, support, support_labels, query, ways):
        del state
        traced.append(ways)
        return fewshot.ncc_logits(support, support_labels, query, ways, scale=1.0)

    entry = methods.register_method(methods.FewShotMethod(
        name="ncc_scale1", adapts="features", logits=logits, description="NCC, cosine x 1"))
    yield entry, traced
    methods.unregister_method("ncc_scale1")


def test_a_registered_method_runs_in_both_protocols(evaluator, toy_method):
    entry, traced = toy_method
    assert "ncc_scale1" in md_eval.METHODS and "ncc_scale1" in fewshot.METHODS
    assert md_eval.learning_rates("ncc_scale1", seen=True) == {}
    # Fixed-shape protocol, on a pool of features: the same argmax as NCC (x 10).
    rng = np.random.default_rng(11)
    labels = np.repeat(np.arange(8), 12)
    feats = (rng.normal(size=(8, 16))[labels] + rng.normal(size=(96, 16))).astype(np.float32)
    ep = fewshot.sample_episodes(labels, 6, 4, 3, 5, seed=0)
    toy = fewshot.evaluate_episodes(feats, ep, "ncc_scale1", chunk=6)
    assert traced  # the entry's logits were traced
    np.testing.assert_array_equal(toy, fewshot.evaluate_episodes(feats, ep, "ncc", chunk=6))
    assert 0.0 < toy.mean() < 1.0
    # Episodic protocol, on images with bucketed variable-size episodes.
    traced.clear()
    source = _records(8, 8, noise=120, seed=5)
    episodes = _episodes(8, 8, 6, seed=6, max_ways=6)
    toy = evaluator.evaluate(source, episodes, method="ncc_scale1")
    assert traced
    np.testing.assert_array_equal(toy, evaluator.evaluate(source, episodes, method="ncc"))


def test_unknown_or_unsupported_methods_are_refused(evaluator):
    source, episodes = _records(2, 4, 1, 0), _episodes(2, 4, 1, 0, 2)
    with pytest.raises(ValueError, match=r"Unknown few-shot method 'knn'; expected one of"):
        evaluator.evaluate(source, episodes, method="knn")
    with pytest.raises(ValueError, match="Unknown few-shot method"):
        methods.get_method("knn")
    with pytest.raises(ValueError, match=r"lrs names \['gamma'\], which method 'pa' does not"):
        evaluator.evaluate(source, episodes, method="pa", lrs={"gamma": 1.0})
    # TSA adapts the backbone: it needs images, so the fixed-shape protocol refuses it.
    pool = np.zeros((10, 4), np.float32)
    ep = fewshot.sample_episodes(np.repeat(np.arange(2), 5), 1, 2, 2, 2, seed=0)
    with pytest.raises(ValueError, match="'tsa' adapts the backbone.*EpisodeEvaluator"):
        fewshot.evaluate_episodes(pool, ep, "tsa")
    with pytest.raises(ValueError, match="already registered"):
        methods.register_method(methods.FewShotMethod(
            name="pa", adapts="features", logits=fewshot.pa_logits))
    with pytest.raises(ValueError, match="needs both fit and adapter"):
        methods.FewShotMethod(name="x", adapts="backbone", logits=fewshot.pa_logits)
    with pytest.raises(ValueError, match="same rates"):
        methods.FewShotMethod(name="x", adapts="features", logits=fewshot.pa_logits,
                              seen_learning_rates={"a": 1.0})
    with pytest.raises(ValueError, match="Unknown few-shot method 'knn'"):
        methods.unregister_method("knn")
