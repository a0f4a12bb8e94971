"""Optimizers against PyTorch's update rules written by hand; partitions; annealing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ur_jax import optim


def _run(tx, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5,)).astype(np.float32)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(4)]
    return p0, grads


def test_sgd_is_torch_sgd_with_coupled_weight_decay(problem):
    p0, grads = problem
    lr, mu, wd = 0.1, 0.9, 1e-2
    p, buf = p0.astype(np.float64), None
    for g in grads:  # torch.optim.SGD: d = g + wd p; buf = mu buf + d (buf = d at first); p -= lr buf
        d = g + wd * p
        buf = d if buf is None else mu * buf + d
        p = p - lr * buf
    got = _run(optim.sgd(lr, mu, wd), jnp.asarray(p0), [jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


def test_adam_is_torch_adam_with_coupled_weight_decay(problem):
    p0, grads = problem
    lr, wd, b1, b2, eps = 0.05, 5e-4, 0.9, 0.999, 1e-8
    p, m, v = p0.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        d = g + wd * p
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    got = _run(optim.adam(lr, wd), jnp.asarray(p0), [jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


def test_adadelta_is_torch_adadelta(problem):
    p0, grads = problem
    lr, rho, eps = 1.0, 0.9, 1e-6
    p, sq, acc = p0.astype(np.float64), 0.0, 0.0
    for g in grads:
        sq = rho * sq + (1 - rho) * g * g
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc = rho * acc + (1 - rho) * delta * delta
        p = p - lr * delta
    got = _run(optim.adadelta(lr, rho, eps), jnp.asarray(p0), [jnp.asarray(g) for g in grads])
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=1e-6)


def test_schedules_are_accepted_as_learning_rates(problem):
    p0, grads = problem
    sched = optax.piecewise_constant_schedule(0.1, {2: 0.1})  # 0.1, 0.1, 0.01, 0.01
    got = _run(optim.sgd(sched, momentum=0.0), jnp.asarray(p0), [jnp.asarray(g) for g in grads])
    expected = p0 - 0.1 * (grads[0] + grads[1]) - 0.01 * (grads[2] + grads[3])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_path_labels_partitioned_and_masks():
    params = {"backbone": {"conv": {"kernel": jnp.ones(2)}},
              "heads": {"a": {"kernel": jnp.ones(2), "bias": jnp.ones(1)}}}
    labels = optim.path_labels(params, [(r"^heads/", "heads"), (r"conv", "frozen")], "rest")
    assert labels == {"backbone": {"conv": {"kernel": "frozen"}},
                      "heads": {"a": {"kernel": "heads", "bias": "heads"}}}
    assert optim.trainable_mask(params, r"bias$") == {
        "backbone": {"conv": {"kernel": False}}, "heads": {"a": {"kernel": False, "bias": True}}}
    tx = optim.partitioned({"heads": optax.sgd(1.0)}, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["backbone"]["conv"]["kernel"], 1.0)  # frozen
    np.testing.assert_array_equal(new["heads"]["a"]["bias"], 0.0)


def test_linear_anneal():
    f = optim.linear_anneal(120 * 100, every=100)  # the Decathlon's per-epoch annealing
    assert float(f(0)) == 1.0
    assert float(f(199)) == pytest.approx(1 - 1 / 120)  # still epoch 1
    assert float(f(6000)) == pytest.approx(0.5)
    assert float(f(20000)) == 0.0
    g = optim.linear_anneal(48_000 * 5)  # Meta-Dataset ImageNet: 1 - t / (48k * 5)
    assert float(jax.jit(g)(24_000)) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="total_steps > 0"):
        optim.linear_anneal(0)
