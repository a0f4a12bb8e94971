"""Tests for ur_jax.mtl.moo (Nash-MTL, FairGrad, MoCo, MoDo, SDMGrad) against closed forms and
NumPy references written from the papers / LibMTL's update rules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import mtl
from ur_jax.mtl import moo

NAMES = ("nash_mtl", "fairgrad", "moco", "modo", "sdmgrad")


@functools.partial(jax.jit, static_argnums=0)
def _step(method, grads, losses, params, state):
    """combine() then update_state() with the same gradients, as a training step calls them."""
    out = method.combine(grads, losses, params, state, None)
    return out, method.update_state(state, losses, grads)


def _run(method, grads_seq, losses_seq, state=None, jit=True):
    """Run ``len(grads_seq)`` steps; return the per-step (combined, weights) and final state."""
    t, d = grads_seq[0].shape
    state = method.init_state(t, grad_dim=d) if state is None else state
    params = method.init_params(t)
    outs = []
    for g, l in zip(grads_seq, losses_seq):
        g, l = jnp.asarray(g, jnp.float32), jnp.asarray(l, jnp.float32)
        if jit:
            (combined, pg, w), state = _step(method, g, l, params, state)
        else:
            combined, pg, w = method.combine(g, l, params, state, None)
            state = method.update_state(state, l, g)
        assert pg == {}
        outs.append((np.asarray(combined, np.float64), np.asarray(w, np.float64)))
    return outs, state


def _proj_simplex(v):
    """NumPy Euclidean projection onto the simplex (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.nonzero(u - css / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0.0)


def _random_grads(seed, steps, t=3, d=16):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(steps, t, d)) * rng.uniform(0.5, 2.0, size=(steps, t, 1))
    losses = rng.uniform(0.5, 2.0, size=(steps, t))
    return g.astype(np.float32), losses.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Registry and options
# ------------------------------------------------------------------------------------------------

def test_registered_with_documented_options_and_hashable():
    expected = {
        "nash_mtl": ("space", "max_norm", "update_weights_every", "iterations"),
        "fairgrad": ("space", "alpha", "iterations", "max_norm"),
        "moco": ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho", "lambda_update",
                 "grad_normalization", "sum_scale"),
        "modo": ("gamma", "rho", "second_sample", "sum_scale"),
        "sdmgrad": ("lamda", "iterations", "lr", "momentum", "second_sample", "sum_scale"),
    }
    assert tuple(moo.CLASSES) == NAMES
    for name in NAMES:
        assert name in mtl.METHODS
        m = mtl.get_method(name)
        assert (m.name, m.uses_gradients, m.space) == (name, True, "params")
        assert mtl.method_options(name) == expected[name]
        assert hash(m) == hash(mtl.get_method(name))
    # LibMTL's defaults.
    nash = mtl.get_method("nash_mtl")
    assert (nash.max_norm, nash.update_weights_every, nash.iterations) == (1.0, 1, 20)
    assert mtl.get_method("fairgrad").alpha == 1.0
    mo = mtl.get_method("moco")
    assert (mo.beta, mo.beta_sigma, mo.gamma, mo.gamma_sigma, mo.rho) == (0.5, 0.5, 0.1, 0.5, 0)
    md = mtl.get_method("modo")
    assert (md.gamma, md.rho) == (1e-3, 0.1)
    sd = mtl.get_method("sdmgrad")
    assert (sd.lamda, sd.iterations, sd.lr, sd.momentum) == (0.3, 20, 5.0, 0.5)


@pytest.mark.parametrize("name, options, error, match", [
    ("nash_mtl", {"max_norm": -1.0}, ValueError, "max_norm must be a finite number >= 0"),
    ("nash_mtl", {"update_weights_every": 0}, ValueError, "update_weights_every must be an int"),
    ("nash_mtl", {"iterations": -1}, ValueError, "iterations must be an int >= 0"),
    ("nash_mtl", {"space": "pixels"}, ValueError, "space must be one of"),
    ("fairgrad", {"alpha": 0.0}, ValueError, "alpha must be a finite number > 0"),
    ("fairgrad", {"alpha": float("inf")}, ValueError, "alpha must be a finite number > 0"),
    ("fairgrad", {"alpha": True}, ValueError, "alpha must be a finite number > 0"),
    ("moco", {"beta": 1.5}, ValueError, r"beta must be in \(0, 1\]"),
    ("moco", {"gamma": 0.0}, ValueError, "gamma must be > 0"),
    ("moco", {"rho": -0.1}, ValueError, "rho must be a finite number >= 0"),
    ("moco", {"lambda_update": "adam"}, ValueError, "lambda_update must be one of"),
    ("moco", {"grad_normalization": "l2"}, ValueError, "grad_normalization must be one of"),
    ("moco", {"sum_scale": 1}, TypeError, "sum_scale must be True or False"),
    ("modo", {"gamma": -1e-3}, ValueError, "gamma must be a finite number >= 0"),
    ("modo", {"second_sample": "next"}, ValueError, "second_sample must be one of"),
    ("sdmgrad", {"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ("sdmgrad", {"lr": 0}, ValueError, "lr must be > 0"),
    ("sdmgrad", {"lamda": -0.3}, ValueError, "lamda must be a finite number >= 0"),
    ("sdmgrad", {"iterations": 2.5}, ValueError, "iterations must be an int >= 0"),
])
def test_bad_options_raise_with_a_message(name, options, error, match):
    with pytest.raises(error, match=match):
        mtl.get_method(name, **options)


def test_space_is_fixed_for_the_stateful_methods_and_grad_dim_is_checked():
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['space'\]"):
        mtl.get_method("moco", space="features")
    for name in ("moco", "modo", "sdmgrad"):
        with pytest.raises(ValueError, match=r"call init_state\(T, grad_dim=D\)"):
            mtl.get_method(name).init_state(3)
        with pytest.raises(ValueError, match="grad_dim=0"):
            mtl.get_method(name).init_state(3, grad_dim=0)
    # Without a previous sample there is no (T, D) state and grad_dim is not needed.
    for name in ("modo", "sdmgrad"):
        assert "prev_grads" not in mtl.get_method(name, second_sample="current").init_state(3)
    assert set(mtl.get_method("nash_mtl").init_state(3)) == {"step", "alpha"}
    m = mtl.get_method("modo")
    state = m.init_state(3, grad_dim=7)
    assert state["prev_grads"].shape == (3, 7)
    with pytest.raises(ValueError, match=r"prev_grads has shape \(3, 7\).*init_state\(T, "
                                         r"grad_dim=D\)"):
        m.combine(jnp.ones((3, 5)), jnp.ones(3), {}, state)
    with pytest.raises(ValueError, match="fair_weights alpha must be a finite number > 0"):
        moo.fair_weights(jnp.eye(2), alpha=-1.0)


# ------------------------------------------------------------------------------------------------
# Nash-MTL
# ------------------------------------------------------------------------------------------------

def test_nash_mtl_bargaining_solution_on_two_orthogonal_gradients():
    g = np.zeros((2, 6), np.float32)
    g[0, 0], g[1, 3] = 3.0, 0.5                                     # |g| = 3, 0.5
    # Paper: G alpha = 1/alpha, G = diag(9, 0.25) -> alpha_i = 1/|g_i|.
    raw = mtl.get_method("nash_mtl", max_norm=0.0)
    (combined, w), = _run(raw, [g], [np.ones(2)])[0]
    np.testing.assert_allclose(w, [1 / 3, 2.0], rtol=1e-5)
    np.testing.assert_allclose(combined, w @ g, rtol=1e-6)
    # Every task gets g_i . d = 1 / alpha_i (here 3 and 0.5).
    np.testing.assert_allclose(g @ combined, [3.0, 0.5], rtol=1e-5)
    # Default max_norm=1 (LibMTL: the raw alpha, then clip_grad_norm_): |sum alpha g| =
    # sqrt(T) = sqrt(2) > 1 is clipped to 1, whatever the gradients' scale.
    for scale in (1.0, 1e-3, 1e3):
        (c1, w1), = _run(mtl.get_method("nash_mtl"), [g * scale], [np.ones(2)])[0]
        coef = 1.0 / (np.sqrt(2.0) + 1e-6)
        np.testing.assert_allclose(np.linalg.norm(c1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(w1, coef * np.array([1 / 3, 2.0]) / scale, rtol=1e-5)


def test_nash_mtl_solves_g_alpha_equals_one_over_alpha_on_random_cases():
    rng = np.random.default_rng(1)
    m = mtl.get_method("nash_mtl", max_norm=0.0)
    for t in (2, 3, 5):
        for _ in range(3):
            g = (rng.normal(size=(t, 40)) * rng.uniform(0.1, 10.0, size=(t, 1))).astype(
                np.float32)
            if t > 2:                                                # a conflicting pair
                g[1] = -0.6 * g[0] + 0.4 * g[1]
            (combined, alpha), = _run(m, [g], [np.ones(t)])[0]
            gram = g.astype(np.float64) @ g.T.astype(np.float64)
            assert np.all(alpha > 0)
            np.testing.assert_allclose(gram @ alpha, 1.0 / alpha, rtol=2e-4)
            # d = G^T alpha gives every task g_i . d = 1 / alpha_i > 0 (no task gets worse).
            np.testing.assert_allclose(g.astype(np.float64) @ combined, 1 / alpha, rtol=2e-4)


def test_nash_mtl_update_weights_every_reuses_the_stored_weights():
    grads, losses = _random_grads(2, 4)
    every = mtl.get_method("nash_mtl", update_weights_every=3, max_norm=0.0)
    fresh = mtl.get_method("nash_mtl", max_norm=0.0)
    outs, state = _run(every, grads, losses)
    solved = [_run(fresh, [g], [l])[0][0][1] for g, l in zip(grads, losses)]
    # Solved at steps 0 and 3, reused at steps 1 and 2.
    for step, ref in zip(range(4), [solved[0], solved[0], solved[0], solved[3]]):
        np.testing.assert_allclose(outs[step][1], ref, rtol=1e-5)
        np.testing.assert_allclose(outs[step][0], ref @ grads[step], rtol=1e-4, atol=1e-6)
    assert not np.allclose(solved[0], solved[1], rtol=1e-2)
    assert int(state["step"]) == 4
    np.testing.assert_allclose(state["alpha"], solved[3], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# FairGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_orthogonal_closed_form_and_random_residual(alpha):
    norms = np.array([0.2, 1.0, 4.0])
    g = np.zeros((3, 5), np.float32)
    g[[0, 1, 2], [0, 2, 4]] = norms
    m = mtl.get_method("fairgrad", alpha=alpha)
    (combined, w), = _run(m, [g], [np.ones(3)])[0]
    # G = diag(n^2): n_i^2 w_i = w_i^(-1/alpha) -> w_i = n_i^(-2 alpha / (alpha + 1)).
    np.testing.assert_allclose(w, norms ** (-2 * alpha / (alpha + 1)), rtol=1e-5)
    np.testing.assert_allclose(combined, w @ g, rtol=1e-6)
    # Random, correlated gradients: the residual of G w = w^(-1/alpha).
    rng = np.random.default_rng(int(alpha * 10))
    for t in (2, 4):
        g = (rng.normal(size=(t, 30)) * rng.uniform(0.3, 3.0, size=(t, 1))).astype(np.float32)
        g[1] = 0.5 * g[1] - 0.5 * g[0]
        # Newton converges quadratically: 8 steps are plenty here (default 20).
        (_, w), = _run(mtl.get_method("fairgrad", alpha=alpha, iterations=8), [g],
                       [np.ones(t)])[0]
        gram = g.astype(np.float64) @ g.T.astype(np.float64)
        assert np.all(w > 0)
        np.testing.assert_allclose(gram @ w, w ** (-1 / alpha), rtol=3e-4)


def test_fairgrad_alpha_one_is_nash_and_scale_law_and_zero_task():
    grads, _ = _random_grads(3, 1, t=3, d=12)
    g = grads[0]
    _, w_fair = _run(mtl.get_method("fairgrad"), [g], [np.ones(3)])[0][0]
    _, w_nash = _run(mtl.get_method("nash_mtl", max_norm=0.0), [g],
                     [np.ones(3)])[0][0]
    np.testing.assert_allclose(w_fair, w_nash, rtol=1e-5)
    # Scaling every gradient by c scales w by c^(-2 alpha / (alpha + 1)) (alpha = 2: c^(-4/3)).
    w2 = np.asarray(moo.fair_weights(mtl.gram_matrix(g), 2.0))
    w2c = np.asarray(moo.fair_weights(mtl.gram_matrix(10.0 * g), 2.0))
    np.testing.assert_allclose(w2c, w2 * 10.0 ** (-4 / 3), rtol=1e-4)
    # A zero task gradient: no positive solution; finite weights, the other tasks unchanged
    # up to the ridge (their system does not involve the zero task).
    gz = g.copy()
    gz[2] = 0.0
    combined, wz = _run(mtl.get_method("fairgrad"), [gz], [np.ones(3)])[0][0]
    assert np.all(np.isfinite(wz)) and np.all(np.isfinite(combined))
    w_two = np.asarray(moo.fair_weights(mtl.gram_matrix(g[:2]), 1.0))
    np.testing.assert_allclose(wz[:2], w_two, rtol=1e-4)
    assert wz[2] > 1e3 * wz[:2].max()


# ------------------------------------------------------------------------------------------------
# MoCo
# ------------------------------------------------------------------------------------------------

def _moco_reference(grads, losses, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5,
                    rho=0.0, projection=True, loss_norm=True):
    """Paper Algorithm 1 / LibMTL MoCo.backward, step by step in float64."""
    t, d = grads.shape[1:]
    y, lam, outs = np.zeros((t, d)), np.full(t, 1 / t), []
    for k, (g, l) in enumerate(zip(grads.astype(np.float64), losses), start=1):
        h = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-8) * l[:, None] if loss_norm else g
        y = y - beta / k ** beta_sigma * (y - h)
        v = lam - gamma / k ** gamma_sigma * (y @ y.T + rho * np.eye(t)) @ lam
        lam = _proj_simplex(v) if projection else np.exp(v) / np.exp(v).sum()
        outs.append((y.T @ lam, lam.copy()))
    return outs, y, lam


@pytest.mark.parametrize("options", [
    {}, {"lambda_update": "softmax", "rho": 0.3},
    {"grad_normalization": "none", "gamma": 0.5, "beta": 0.9, "beta_sigma": 0.0},
])
def test_moco_matches_the_tracker_and_lambda_recursion(options):
    grads, losses = _random_grads(4, 4, t=3, d=10)
    ref_opts = {k: v for k, v in options.items() if k in ("beta", "beta_sigma", "gamma", "rho")}
    ref_opts["projection"] = options.get("lambda_update", "projection") == "projection"
    ref_opts["loss_norm"] = options.get("grad_normalization", "loss") == "loss"
    ref, y_ref, lam_ref = _moco_reference(grads, losses, **ref_opts)
    m = mtl.get_method("moco", **options)
    outs, state = _run(m, grads, losses)
    for (c, w), (c_ref, w_ref) in zip(outs, ref):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state["y"], y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["lambd"], lam_ref, rtol=1e-5, atol=1e-6)
    assert int(state["step"]) == 4
    # The weights moved away from uniform (the test would not see a missing lambda update).
    assert np.abs(lam_ref - 1 / 3).max() > 1e-3
    # sum_scale multiplies the combination and the weights by T.
    (c3, w3), = _run(mtl.get_method("moco", sum_scale=True, **options), grads[:1],
                     losses[:1])[0]
    np.testing.assert_allclose(w3, 3 * ref[0][1], rtol=1e-5)
    np.testing.assert_allclose(c3, 3 * ref[0][0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# MoDo
# ------------------------------------------------------------------------------------------------

def _modo_reference(grads, gamma=1e-3, rho=0.1, previous=True):
    t = grads.shape[1]
    lam, outs, prev = np.full(t, 1 / t), [], None
    for g in grads.astype(np.float64):
        second = prev if (previous and prev is not None) else g
        lam = _proj_simplex(lam - gamma * (g @ (second.T @ lam) + rho * lam))
        outs.append((g.T @ lam, lam.copy()))
        prev = g
    return outs, lam


@pytest.mark.parametrize("second_sample", ["previous", "current"])
def test_modo_double_sampling_lambda_update(second_sample):
    grads, losses = _random_grads(5, 4, t=3, d=8)
    grads = 3.0 * grads                                    # visible steps with gamma = 0.01
    m = mtl.get_method("modo", gamma=0.01, second_sample=second_sample)
    ref, lam_ref = _modo_reference(grads, gamma=0.01, previous=second_sample == "previous")
    outs, state = _run(m, grads, losses)
    for (c, w), (c_ref, w_ref) in zip(outs, ref):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["lambd"], lam_ref, rtol=1e-5, atol=1e-6)
    other, _ = _modo_reference(grads, gamma=0.01, previous=second_sample != "previous")
    assert np.abs(other[-1][1] - ref[-1][1]).max() > 1e-3    # the two forms differ
    if second_sample == "previous":
        np.testing.assert_array_equal(state["prev_grads"], grads[-1])
    else:
        assert "prev_grads" not in state


def test_modo_two_tasks_closed_form_first_step():
    # lambda = Proj(1/2 - gamma (G G^T 1/2 + rho/2)) with G = diag(2, 1): step 2 gamma and
    # gamma/2 on top of gamma rho/2 -> Proj([0.5 - 1.05 g, 0.5 - 0.3 g]) for gamma = g.
    g = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    gamma = 0.2
    (combined, w), = _run(mtl.get_method("modo", gamma=gamma), [g], [np.ones(2)])[0]
    v = np.array([0.5 - gamma * (2.0 + 0.05), 0.5 - gamma * (0.5 + 0.05)])
    lam = v + (1 - v.sum()) / 2                               # interior projection
    np.testing.assert_allclose(w, lam, rtol=1e-6)
    np.testing.assert_allclose(combined, [2 * lam[0], lam[1]], rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# SDMGrad
# ------------------------------------------------------------------------------------------------

def _sdmgrad_reference(grads, lamda=0.3, niter=20, lr=5.0, momentum=0.5, previous=True):
    t = grads.shape[1]
    w, outs, prev = np.full(t, 1 / t), [], None
    for g in grads.astype(np.float64):
        second = prev if (previous and prev is not None) else g
        a = g @ second.T
        a = a / np.mean(np.sqrt(np.maximum(np.diag(a), 0))) ** 2
        ag0 = a.mean(axis=1)
        buf = np.zeros(t)
        for _ in range(niter):
            buf = momentum * buf + a @ w + lamda * ag0
            w = _proj_simplex(w - lr * buf)
        weights = (w + lamda / t) / (1 + lamda)
        outs.append((weights @ g, weights))
        prev = g
    return outs, w


@pytest.mark.parametrize("options", [{}, {"second_sample": "current", "lamda": 1.0},
                                     {"iterations": 3, "lr": 0.5, "momentum": 0.0},
                                     {"iterations": 4, "lr": 0.5, "momentum": 0.9}])
def test_sdmgrad_matches_projected_momentum_sgd_reference(options):
    grads, losses = _random_grads(6, 3, t=3, d=8)
    grads[:, 1] = -0.8 * grads[:, 0] + 0.3 * grads[:, 1]     # a conflict, so w is not uniform
    ref_opts = {"lamda": options.get("lamda", 0.3), "niter": options.get("iterations", 20),
                "lr": options.get("lr", 5.0), "momentum": options.get("momentum", 0.5),
                "previous": options.get("second_sample", "previous") == "previous"}
    ref, w_ref = _sdmgrad_reference(grads, **ref_opts)
    outs, state = _run(mtl.get_method("sdmgrad", **options), grads, losses)
    for (c, w), (c_ref, wt_ref) in zip(outs, ref):
        np.testing.assert_allclose(w, wt_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c, c_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(state["w"], w_ref, rtol=1e-4, atol=1e-5)
    assert np.abs(w_ref - 1 / 3).max() > 1e-2


def test_sdmgrad_symmetric_tasks_keep_uniform_weights_and_large_lamda_gives_the_mean():
    # Orthogonal, equal-norm gradients: |G^T w + lamda g0| is minimised at w = 1/T.
    g = 2.0 * np.eye(3, 6, dtype=np.float32)
    (combined, w), = _run(mtl.get_method("sdmgrad"), [g], [np.ones(3)])[0]
    np.testing.assert_allclose(w, np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(combined, g.mean(0), rtol=1e-6)
    # lamda -> large: the update tends to the mean gradient g0, whatever w is.
    grads, _ = _random_grads(7, 1, t=3, d=8)
    (c, w), = _run(mtl.get_method("sdmgrad", lamda=1e4), grads, [np.ones(3)])[0]
    np.testing.assert_allclose(c, grads[0].mean(0), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Every method of the module: jit == eager, update_state without grads
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_jitted_steps_equal_eager_steps(name):
    grads, losses = _random_grads(8, 3, t=3, d=9)
    method = mtl.get_method(name)
    jitted, s_jit = _run(method, grads, losses)
    eager, s_eager = _run(method, grads, losses, jit=False)
    # Equal up to float32 round-off (XLA fuses the jitted step differently): 1e-6 of the
    # combined gradient's scale (~1).
    for (cj, wj), (ce, we) in zip(jitted, eager):
        np.testing.assert_allclose(cj, ce, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wj, we, rtol=1e-5, atol=1e-7)
    for leaf_j, leaf_e in zip(jax.tree_util.tree_leaves(s_jit), jax.tree_util.tree_leaves(s_eager)):
        np.testing.assert_allclose(leaf_j, leaf_e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nash_mtl", "moco", "modo", "sdmgrad"])
def test_update_state_needs_the_gradients(name):
    method = mtl.get_method(name)
    state = method.init_state(2, grad_dim=4)
    with pytest.raises(ValueError, match=f"{name}.update_state needs the step's"):
        method.update_state(state, jnp.ones(2))
    # FairGrad keeps no gradient state: a plain step counter.
    fair = mtl.get_method("fairgrad")
    assert int(fair.update_state(fair.init_state(2), jnp.ones(2))["step"]) == 1
