"""Few-shot episodic evaluation: sampler, cosine NCC, PA (Adadelta), chunked evaluation, CI."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax.evaluation import (
    Episodes,
    episode_accuracy,
    evaluate_episodes,
    mean_confidence_interval,
    ncc_logits,
    pa_fit,
    pa_loss,
    pa_transform,
    sample_episodes,
)
from ur_jax.evaluation import fewshot as fs

# One episode shape for (almost) every test, so compiled functions are shared.
WAYS, SHOTS, QUERIES, D = 5, 5, 10, 16


def _clusters(seed: int, num_classes: int = 10, per_class: int = 30, spread: float = 0.3,
              nuisance: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters in D dims; optionally a last dimension of pure noise * nuisance."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, D))
    labels = np.repeat(np.arange(num_classes), per_class)
    x = means[labels] + spread * rng.normal(size=(len(labels), D))
    if nuisance:
        x[:, -1] = nuisance * rng.normal(size=len(labels))
    return x.astype(np.float32), labels


# ------------------------------------------------------------------ reference (NumPy, f64)


def _ref_ncc_logits(support, support_labels, query, ways, scale=10.0):
    s, q = np.asarray(support, np.float64), np.asarray(query, np.float64)
    protos = np.stack([s[support_labels == c].mean(0) for c in range(ways)])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return scale * q @ protos.T


def _ref_pa_loss(w, support, support_labels, ways):
    z = np.asarray(support, np.float64) @ w
    logits = _ref_ncc_logits(z, support_labels, z, ways)
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(support_labels)), support_labels].mean()


# ------------------------------------------------------------------------------- sampler


@pytest.fixture(scope="module")
def pool_labels() -> np.ndarray:
    # Classes 3, 10, ..., non-contiguous; class sizes 20..31 except two small ones.
    sizes = {7 * c + 3: 20 + c for c in range(12)}
    sizes[3], sizes[10] = 14, 2  # 14 < SHOTS + QUERIES = 15: never eligible
    labels = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    return np.random.default_rng(123).permutation(labels)


def test_sampler_structure(pool_labels):
    e = 40
    ep = sample_episodes(pool_labels, e, WAYS, SHOTS, QUERIES, seed=0)
    assert isinstance(ep, Episodes) and len(ep) == e
    assert (ep.ways, ep.shots, ep.queries) == (WAYS, SHOTS, QUERIES)
    assert ep.support.shape == ep.support_labels.shape == (e, WAYS * SHOTS)
    assert ep.query.shape == ep.query_labels.shape == (e, WAYS * QUERIES)
    for a in (ep.support, ep.support_labels, ep.query, ep.query_labels):
        assert a.dtype == np.int32
    seen_classes = set()
    for i in range(e):
        s, q = ep.support[i], ep.query[i]
        assert len(set(s) | set(q)) == len(s) + len(q)  # distinct, support/query disjoint
        np.testing.assert_array_equal(np.bincount(ep.support_labels[i], minlength=WAYS),
                                      [SHOTS] * WAYS)
        np.testing.assert_array_equal(np.bincount(ep.query_labels[i], minlength=WAYS),
                                      [QUERIES] * WAYS)
        classes = []
        for j in range(WAYS):  # episode label j <-> one pool class, same in both sets
            pool = set(pool_labels[s[ep.support_labels[i] == j]]) | set(
                pool_labels[q[ep.query_labels[i] == j]])
            assert len(pool) == 1
            classes.append(pool.pop())
        assert len(set(classes)) == WAYS
        seen_classes |= set(classes)
    eligible = {7 * c + 3 for c in range(2, 12)}
    assert seen_classes == eligible  # small classes never, all others eventually


def test_sampler_is_deterministic_and_seeded(pool_labels):
    a = sample_episodes(pool_labels, 6, WAYS, SHOTS, QUERIES, seed=7)
    np.random.seed(99)  # the global NumPy state plays no role
    b = sample_episodes(pool_labels, 6, WAYS, SHOTS, QUERIES, seed=7)
    c = sample_episodes(pool_labels, 6, WAYS, SHOTS, QUERIES, seed=8)
    for f in ("support", "support_labels", "query", "query_labels"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.support, c.support)
    assert not np.array_equal(a.query, c.query)
    sub = a[2:4]
    np.testing.assert_array_equal(sub.query, a.query[2:4])
    np.testing.assert_array_equal(a[-1].support, a.support[-1:])


def test_sampler_errors(pool_labels):
    with pytest.raises(ValueError, match=r"only 10 have >= 15"):
        sample_episodes(pool_labels, 1, 11, SHOTS, QUERIES, seed=0)
    with pytest.raises(ValueError, match=r"only 0 have >= 100.*largest class: 31"):
        sample_episodes(pool_labels, 1, 2, 50, 50, seed=0)
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        sample_episodes(pool_labels, 1, WAYS, 0, QUERIES, seed=0)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        sample_episodes(pool_labels[:, None], 1, WAYS, SHOTS, QUERIES, seed=0)


# ----------------------------------------------------------------------------------- NCC


def test_ncc_logits_match_reference():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(WAYS * SHOTS, D)).astype(np.float32)
    sl = np.repeat(np.arange(WAYS), SHOTS)
    q = rng.normal(size=(WAYS * QUERIES, D)).astype(np.float32)
    got = ncc_logits(s, sl, q, WAYS)
    assert got.shape == (WAYS * QUERIES, WAYS) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _ref_ncc_logits(s, sl, q, WAYS), rtol=0, atol=1e-5)
    # Support rows labelled outside 0..ways-1 (padding) are ignored.
    s_pad = np.concatenate([s, 100 * rng.normal(size=(3, D)).astype(np.float32)])
    sl_pad = np.concatenate([sl, [-1, WAYS, -1]])
    np.testing.assert_allclose(ncc_logits(s_pad, sl_pad, q, WAYS), got, rtol=0, atol=1e-5)


def test_ncc_separated_clusters_are_perfect():
    x, labels = _clusters(seed=1, spread=0.05)
    ep = sample_episodes(labels, 8, WAYS, SHOTS, QUERIES, seed=0)
    np.testing.assert_array_equal(evaluate_episodes(x, ep, "ncc", chunk=8), np.ones(8))


def test_ncc_uses_cosine_not_euclidean():
    # Prototype 0 at (10, 0), prototype 1 at (1, 1); query (1, 0.2): Euclidean says class 1
    # (distance 0.8 vs 9.0), cosine says class 0 (0.98 vs 0.83).
    s = np.array([[10.0, 0.0], [1.0, 1.0]], np.float32)
    q = np.array([[1.0, 0.2]], np.float32)
    euclid = np.linalg.norm(q[:, None] - s[None], axis=-1)
    assert np.argmin(euclid) == 1
    assert int(jnp.argmax(ncc_logits(s, np.array([0, 1]), q, 2))) == 0


# ------------------------------------------------------------------------------------ PA


@pytest.fixture(scope="module")
def support_set():
    x, labels = _clusters(seed=2, spread=1.0, nuisance=3.0)
    ep = sample_episodes(labels, 1, WAYS, SHOTS, QUERIES, seed=3)
    return x[ep.support[0]], ep.support_labels[0]


def test_pa_zero_steps_is_ncc():
    x, labels = _clusters(seed=4, spread=1.0)
    ep = sample_episodes(labels, 6, WAYS, SHOTS, QUERIES, seed=0)
    w = pa_fit(x[ep.support[0]], ep.support_labels[0], WAYS, steps=0)
    np.testing.assert_array_equal(w, np.eye(D, dtype=np.float32))
    s, q = x[ep.support[0]], x[ep.query[0]]
    np.testing.assert_array_equal(ncc_logits(pa_transform(s, w), ep.support_labels[0],
                                             pa_transform(q, w), WAYS),
                                  ncc_logits(s, ep.support_labels[0], q, WAYS))
    np.testing.assert_array_equal(evaluate_episodes(x, ep, "pa", steps=0, chunk=6),
                                  evaluate_episodes(x, ep, "ncc", chunk=6))


def test_pa_decreases_support_loss(support_set):
    s, sl = support_set
    w = pa_fit(s, sl, WAYS, steps=40, learning_rate=1.0)
    assert w.shape == (D, D) and w.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(w - jnp.eye(D)))) > 1e-2
    losses = [float(pa_loss(pa_fit(s, sl, WAYS, steps=k, learning_rate=1.0), s, sl, WAYS))
              for k in (0, 10, 20, 40)]
    assert losses[-1] < 0.9 * losses[0]
    assert all(b <= a + 1e-4 for a, b in itertools.pairwise(losses)), losses


def test_pa_gradient_and_adadelta_steps_match_reference(support_set):
    s, sl = support_set
    rng = np.random.default_rng(5)
    w = np.eye(D) + 0.05 * rng.normal(size=(D, D))
    # jax.grad of the PA loss against central finite differences of the float64 reference.
    g = np.asarray(jax.grad(pa_loss)(jnp.asarray(w, jnp.float32), s, sl, WAYS), np.float64)
    np.testing.assert_allclose(float(pa_loss(jnp.asarray(w, jnp.float32), s, sl, WAYS)),
                               _ref_pa_loss(w, s, sl, WAYS), rtol=1e-5)
    h, fd = 1e-5, np.zeros_like(w)
    for i, j in [(0, 0), (3, 7), (D - 1, D - 1), (D - 1, 2), (5, 5), (9, 1)]:
        e = np.zeros_like(w)
        e[i, j] = h
        fd[i, j] = (_ref_pa_loss(w + e, s, sl, WAYS) - _ref_pa_loss(w - e, s, sl, WAYS)) / (2 * h)
        np.testing.assert_allclose(g[i, j], fd[i, j], rtol=2e-3, atol=1e-5)
    # torch.optim.Adadelta written from its formula, fed with jax.grad gradients.
    lr, rho, eps = 0.5, 0.9, 1e-6
    p, sq, acc = np.eye(D), np.zeros((D, D)), np.zeros((D, D))
    for _ in range(3):
        grad = np.asarray(jax.grad(pa_loss)(jnp.asarray(p, jnp.float32), s, sl, WAYS),
                          np.float64)
        sq = rho * sq + (1 - rho) * grad ** 2
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * grad
        acc = rho * acc + (1 - rho) * delta ** 2
        p = p - lr * delta
    got = np.asarray(pa_fit(s, sl, WAYS, steps=3, learning_rate=lr), np.float64)
    assert np.abs(p - np.eye(D)).max() > 1e-3  # the steps moved W
    np.testing.assert_allclose(got, p, rtol=0, atol=1e-5)


def test_pa_recovers_from_a_nuisance_dimension():
    # The last dimension is noise with 5x the class-mean scale: cosine NCC suffers; PA
    # (lr 1, the unseen-domain setting) learns to damp it.
    x, labels = _clusters(seed=6, spread=0.3, nuisance=5.0)
    ep = sample_episodes(labels, 16, WAYS, SHOTS, QUERIES, seed=1)
    ncc = evaluate_episodes(x, ep, "ncc", chunk=8)
    pa = evaluate_episodes(x, ep, "pa", learning_rate=fs.UNSEEN_PA_LR, chunk=8)
    assert pa.mean() > ncc.mean() + 0.1, (ncc.mean(), pa.mean())


# ----------------------------------------------------------------------- chunked evaluation


@pytest.mark.parametrize("method", ["ncc", "pa"])
def test_chunking_matches_direct_computation(method):
    x, labels = _clusters(seed=7, spread=1.2, nuisance=2.0)
    ep = sample_episodes(labels, 7, WAYS, SHOTS, QUERIES, seed=2)
    kw = {"method": method, "learning_rate": 1.0}
    by3 = evaluate_episodes(x, ep, chunk=3, **kw)  # 3 chunks, the last padded with 2
    by1 = evaluate_episodes(x, ep, chunk=1, **kw)
    whole = np.asarray(episode_accuracy(x, ep.support, ep.support_labels, ep.query,
                                        ep.query_labels, method=method, ways=WAYS,
                                        learning_rate=1.0))
    direct = []
    for i in range(len(ep)):
        s, q = x[ep.support[i]], x[ep.query[i]]
        if method == "pa":
            w = pa_fit(s, ep.support_labels[i], WAYS, learning_rate=1.0)
            s, q = pa_transform(s, w), pa_transform(q, w)
        pred = np.argmax(ncc_logits(s, ep.support_labels[i], q, WAYS), axis=1)
        direct.append(np.mean(pred == ep.query_labels[i]))
    rates = {"beta": 1.0} if method == "pa" else {}  # the rates by name: the same numbers
    np.testing.assert_array_equal(evaluate_episodes(x, ep, chunk=3, method=method,
                                                    learning_rate=rates), by3)
    assert by3.shape == (7,) and by3.dtype == np.float32
    assert 0.2 < by3.mean() < 1.0  # a non-trivial case
    np.testing.assert_allclose(by3, by1, atol=1e-6)
    np.testing.assert_allclose(by3, whole, atol=1e-6)
    np.testing.assert_allclose(by3, direct, atol=1e-6)


def test_one_compilation_per_method_whatever_the_episode_count():
    jitted = fs._episode_accuracy_jit
    if not hasattr(jitted, "_cache_size"):
        pytest.skip("this JAX version has no jit _cache_size()")
    x, labels = _clusters(seed=8, num_classes=7, per_class=17)  # a pool shape of its own
    before = jitted._cache_size()
    for method in ("ncc", "pa"):
        for e in (2, 5, 9, 4):
            ep = sample_episodes(labels, e, WAYS, SHOTS, QUERIES, seed=e)
            out = evaluate_episodes(x, ep, method, chunk=4, learning_rate=0.1 * e,
                                    steps=e)
            assert out.shape == (e,)
    assert jitted._cache_size() - before == 2


def test_evaluate_errors():
    x, labels = _clusters(seed=9, num_classes=6, per_class=15)
    ep = sample_episodes(labels, 2, WAYS, SHOTS, QUERIES, seed=0)
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate_episodes(x, ep, "knn")
    with pytest.raises(ValueError, match=r"'pa' has the learning rates \['beta'\]"):
        evaluate_episodes(x, ep, "pa", learning_rate={"alpha": 1.0})
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 50\)"):
        evaluate_episodes(x[:50], ep)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        evaluate_episodes(x, ep, chunk=0)
    with pytest.raises(TypeError, match="must be an Episodes batch"):
        evaluate_episodes(x, ep.support)


# ----------------------------------------------------------------------------- reporting


def test_mean_confidence_interval():
    mean, ci = mean_confidence_interval([0, 1, 0, 1])
    assert mean == pytest.approx(0.5) and ci == pytest.approx(1.96 * 0.5 / 2)
    acc = np.array([0.6, 0.8, 0.7, 0.9, 0.5])
    mean, ci = mean_confidence_interval(100 * acc)
    assert mean == pytest.approx(70.0)
    assert ci == pytest.approx(1.96 * np.std(100 * acc) / np.sqrt(5))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mean_confidence_interval([])
