"""Tests for ur_jax.mtl.alignment: GradVac, Aligned-MTL, UPGrad and ExcessMTL against closed
forms and NumPy (float64) references written from the papers."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import mtl
from ur_jax.mtl import alignment


@functools.partial(jax.jit, static_argnums=0)
def _combine(method, grads, losses, params, state, rng):
    return method.combine(grads, losses, params, state, rng)


@functools.partial(jax.jit, static_argnums=0)
def _update(method, state, losses, grads):
    return method.update_state(state, losses, grads)


def _key(seed: int = 0) -> jax.Array:
    return jax.random.key(seed)


def _run(method, g, state=None, key=None):
    """Jitted combine of float32 gradients ``g: (T, D)`` with unit losses."""
    t, d = g.shape
    state = method.init_state(t, grad_dim=d) if state is None else state
    return _combine(method, jnp.asarray(g, jnp.float32), jnp.ones(t), method.init_params(t),
                    state, _key() if key is None else key)


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# ------------------------------------------------------------------------------------------------
# Registry, options, jit
# ------------------------------------------------------------------------------------------------

def test_methods_are_registered_with_their_options():
    expected = {"gradvac": ("beta", "ema_update", "eps"),
                "aligned_mtl": ("scale_mode",),
                "upgrad": ("norm_eps", "reg_eps", "iterations"),
                "excess_mtl": ("robust_step_size", "eps")}
    for name, options in expected.items():
        assert name in mtl.METHODS
        assert alignment.CLASSES[name] is mtl.METHOD_CLASSES[name]
        assert set(mtl.method_options(name)) == {"space", *options}
        m = mtl.get_method(name)
        assert (m.name, m.uses_gradients, m.space) == (name, True, "params")
        assert hash(m) == hash(mtl.get_method(name))
    assert mtl.get_method("Aligned-MTL").name == "aligned_mtl"
    m = mtl.get_method("gradvac")
    assert (m.beta, m.ema_update, m.eps) == (0.5, "always", 1e-8)
    m = mtl.get_method("upgrad")
    assert (m.norm_eps, m.reg_eps, m.iterations) == (1e-4, 1e-4, 100)
    m = mtl.get_method("excess_mtl")
    assert (m.robust_step_size, m.eps) == (1e-2, 1e-7)


@pytest.mark.parametrize("name, options, error, match", [
    ("gradvac", {"beta": 1.5}, ValueError, r"beta must be a finite number in \[0.0, 1.0\]"),
    ("gradvac", {"beta": "0.5"}, ValueError, "beta must be a finite number"),
    ("gradvac", {"eps": -1e-8}, ValueError, "eps must be"),
    ("gradvac", {"ema_update": "sometimes"}, ValueError, "ema_update must be one of"),
    ("aligned_mtl", {"scale_mode": "max"}, ValueError, "scale_mode must be one of"),
    ("upgrad", {"reg_eps": float("nan")}, ValueError, "reg_eps must be a finite number"),
    ("upgrad", {"norm_eps": -1.0}, ValueError, "norm_eps must be"),
    ("upgrad", {"iterations": 0}, ValueError, "iterations must be >= 1"),
    ("upgrad", {"iterations": 2.5}, ValueError, "iterations must be an int"),
    ("excess_mtl", {"robust_step_size": -0.1}, ValueError, "robust_step_size must be"),
    ("excess_mtl", {"eps": 0.0}, ValueError, r"eps must be a finite number in \(0.0"),
    ("excess_mtl", {"num_params": 6}, ValueError, r"does not take option\(s\) \['num_params'\]"),
    ("upgrad", {"c": 0.4}, ValueError, r"does not take option\(s\) \['c'\]"),
])
def test_bad_options_raise_with_a_message(name, options, error, match):
    with pytest.raises(error, match=match):
        mtl.get_method(name, **options)


@pytest.mark.parametrize("grad_dim", [None, 0, True, 2.0])
def test_excess_mtl_init_state_needs_grad_dim(grad_dim):
    ex = mtl.get_method("excess_mtl")
    with pytest.raises(ValueError, match=r"call init_state\(T, grad_dim=D\)"):
        if grad_dim is None:
            ex.init_state(3)
        else:
            ex.init_state(3, grad_dim=grad_dim)
    state = ex.init_state(3, grad_dim=4)
    assert state["grad_sq_sum"].shape == (3, 4) and state["grad_sq_sum"].dtype == jnp.float32
    assert not np.any(np.asarray(state["grad_sq_sum"])) and int(state["step"]) == 0


def test_runtime_input_errors():
    gv = mtl.get_method("gradvac")
    with pytest.raises(ValueError, match="PRNG key"):
        gv.combine(jnp.ones((3, 4)), jnp.ones(3), {}, gv.init_state(3, grad_dim=4), None)
    with pytest.raises(ValueError, match=r"grads must have shape \(T, D\) = \(3, D\)"):
        mtl.get_method("upgrad").combine(jnp.ones((2, 4)), jnp.ones(3), {}, {"step": 0})
    ex = mtl.get_method("excess_mtl")
    with pytest.raises(ValueError, match="init_state's grad_dim must be D"):
        ex.combine(jnp.ones((3, 4)), jnp.ones(3), {}, ex.init_state(3, grad_dim=5))
    with pytest.raises(ValueError, match="init_state's grad_dim must be D"):
        ex.update_state(ex.init_state(3, grad_dim=5), jnp.ones(3), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="num_tasks >= 2"):
        mtl.get_method("gradvac").init_state(1)


@pytest.mark.parametrize("name", ["gradvac", "aligned_mtl", "upgrad", "excess_mtl"])
def test_jitted_combine_and_update_equal_eager(name):
    g = np.random.default_rng(1).normal(size=(3, 7)).astype(np.float32)
    losses = jnp.asarray([0.5, 1.0, 2.0])
    m = mtl.get_method(name)
    state = m.init_state(3, grad_dim=g.shape[1])
    for _ in range(2):                           # the second step sees a non-trivial state
        eager = m.combine(g, losses, {}, state, _key(3))
        jitted = _combine(m, jnp.asarray(g), losses, {}, state, _key(3))
        for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        new_eager = m.update_state(state, losses, g)
        new_jit = _update(m, state, losses, jnp.asarray(g))
        assert jax.tree_util.tree_structure(new_eager) == jax.tree_util.tree_structure(new_jit)
        for a, b in zip(jax.tree_util.tree_leaves(new_eager),
                        jax.tree_util.tree_leaves(new_jit)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        state = new_jit
        g = g[::-1] * np.array([[1.0], [0.3], [2.0]], np.float32)


# ------------------------------------------------------------------------------------------------
# GradVac
# ------------------------------------------------------------------------------------------------

def _gradvac_np(g: np.ndarray, orders: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The paper's rule (Algorithm 1) in float64: for i, for j in order, if
    cos(g_i', g_j) < phi_hat_ij add the multiple of g_j that makes the cosine phi_hat_ij."""
    out = []
    for i in range(g.shape[0]):
        gi = g[i].copy()
        for j in orders[i]:
            phi, tgt = _cos(gi, g[j]), targets[i, j]
            if phi < tgt:
                root_phi, root_tgt = np.sqrt(1 - phi ** 2), np.sqrt(1 - tgt ** 2)
                c = (np.linalg.norm(gi) * (tgt * root_phi - phi * root_tgt)
                     / (np.linalg.norm(g[j]) * root_tgt))
                gi = gi + c * g[j]
        out.append(gi)
    return np.sum(out, axis=0)


def test_gradvac_two_tasks_raises_each_cosine_exactly_to_its_target():
    g = np.array([[1.0, 0.0, 0.0], [-2.0, 2.0, 0.5]])
    targets = np.array([[0.0, 0.3], [0.2, 0.0]])
    m = mtl.get_method("gradvac")
    state = {"step": jnp.asarray(5, jnp.int32), "targets": jnp.asarray(targets, jnp.float32)}
    combined, p_grads, w = _run(m, g, state)
    assert p_grads == {}
    # Closed form: g_1' = g_1 + c_12 g_2 with cos(g_1', g_2) = 0.3, and likewise for task 2.
    phi = _cos(g[0], g[1])
    assert phi < 0.2
    c = [np.linalg.norm(g[i]) * (t * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - t ** 2))
         / (np.linalg.norm(g[1 - i]) * np.sqrt(1 - t ** 2)) for i, t in ((0, 0.3), (1, 0.2))]
    g1, g2 = g[0] + c[0] * g[1], g[1] + c[1] * g[0]
    np.testing.assert_allclose(_cos(g1, g[1]), 0.3, rtol=1e-12)
    np.testing.assert_allclose(_cos(g2, g[0]), 0.2, rtol=1e-12)
    np.testing.assert_allclose(w, [1 + c[1], 1 + c[0]], rtol=1e-5)
    np.testing.assert_allclose(combined, g1 + g2, rtol=1e-5, atol=1e-6)
    # Targets below the cosine: no correction, the plain sum.
    low = {"step": jnp.asarray(5, jnp.int32), "targets": jnp.full((2, 2), -0.9, jnp.float32)}
    combined, _, w = _run(m, g, low)
    np.testing.assert_allclose(w, [1.0, 1.0])
    np.testing.assert_allclose(combined, g.sum(0), rtol=1e-6)


def test_gradvac_three_tasks_matches_the_sequential_rule_with_rng_orders():
    rng = np.random.default_rng(2)
    g = rng.normal(size=(3, 8)) * np.array([[1.0], [3.0], [0.2]])
    g[1] -= 0.8 * g[0] * 3                                  # a strong conflict
    targets = np.array([[0.0, 0.4, -0.1], [0.3, 0.0, 0.2], [0.5, -0.3, 0.0]])
    m = mtl.get_method("gradvac")
    state = {"step": jnp.asarray(1, jnp.int32), "targets": jnp.asarray(targets, jnp.float32)}
    results = set()
    for seed in range(4):
        key = _key(seed)
        orders = np.asarray(mtl.pcgrad_orders(key, 3))     # the order GradVac draws
        combined, _, w = _run(m, g.astype(np.float32), state, key)
        ref = _gradvac_np(g, orders, targets)
        np.testing.assert_allclose(combined, ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(w, np.float64) @ g, ref, rtol=1e-4, atol=1e-5)
        assert np.abs(ref - g.sum(0)).max() > 0.1          # corrections happened
        results.add(tuple(np.round(ref, 4)))
    # The order matters for this input.
    every = {tuple(np.round(_gradvac_np(g, np.array(o), targets), 4))
             for o in itertools.product([(1, 2), (2, 1)], [(0, 2), (2, 0)], [(0, 1), (1, 0)])}
    assert len(every) > 1 and results <= every


def test_gradvac_with_zero_targets_is_pcgrad():
    """From the initial state (targets 0) the correction raises a negative cosine to 0,
    which is PCGrad's projection: same rng, same orders, same result."""
    g = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    gv, pc = mtl.get_method("gradvac"), mtl.get_method("pcgrad")
    for seed in range(3):
        a, _, wa = _run(gv, g, key=_key(seed))
        b, _, wb = _run(pc, g, key=_key(seed))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_gradvac_targets_follow_the_ema_of_the_cosines_over_steps():
    rng = np.random.default_rng(4)
    grads = [rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3)]
    for mode, beta in (("always", 0.5), ("on_conflict", 0.5), ("always", 0.1)):
        m = mtl.get_method("gradvac", beta=beta, ema_update=mode)
        state = m.init_state(3, grad_dim=5)
        ref = np.zeros((3, 3))
        moved = 0
        for g in grads:
            state = _update(m, state, jnp.ones(3), jnp.asarray(g))
            g64 = g.astype(np.float64)
            cos = (g64 @ g64.T) / np.outer(np.linalg.norm(g64, axis=1),
                                           np.linalg.norm(g64, axis=1))
            for i, j in itertools.permutations(range(3), 2):
                if mode == "always" or cos[i, j] < ref[i, j]:
                    ref[i, j] = (1 - beta) * ref[i, j] + beta * cos[i, j]
                    moved += 1
            np.testing.assert_allclose(state["targets"], ref, rtol=1e-5, atol=1e-6)
        assert int(state["step"]) == 3
        np.testing.assert_array_equal(np.diag(np.asarray(state["targets"])), np.zeros(3))
        assert moved == 18 if mode == "always" else 0 < moved < 18
    # Without gradients only the step counts.
    m = mtl.get_method("gradvac")
    state = m.update_state(m.init_state(2, grad_dim=5), jnp.ones(2))
    assert int(state["step"]) == 1 and not np.any(np.asarray(state["targets"]))


# ------------------------------------------------------------------------------------------------
# Aligned-MTL
# ------------------------------------------------------------------------------------------------

def _aligned_np(g: np.ndarray, mode: str = "min") -> np.ndarray:
    """The paper's alignment in float64: B = s V L^-1/2 V^T on the numerical rank."""
    lam, v = np.linalg.eigh(g @ g.T)
    keep = lam > lam.max() * len(lam) * np.finfo(np.float32).eps
    lam, v = lam[keep], v[:, keep]
    s2 = {"min": lam.min(), "median": np.sort(lam)[(len(lam) - 1) // 2],
          "rmse": lam.mean()}[mode]
    return np.sqrt(s2) * (v / np.sqrt(lam)) @ v.T


def test_aligned_mtl_two_orthogonal_gradients_closed_form():
    """g_1 = (3, 0), g_2 = (0, 0.5): M = diag(9, 0.25), B = diag(0.5/3, 1), so the weights
    are (1/6, 1) and both aligned gradients have the smaller norm 0.5."""
    g = np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]], np.float32)
    combined, p_grads, w = _run(mtl.get_method("aligned_mtl"), g)
    assert p_grads == {}
    np.testing.assert_allclose(w, [1 / 6, 1.0], rtol=1e-5)
    np.testing.assert_allclose(combined, [0.5, 0.5, 0.0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_gives_condition_number_one_and_matches_numpy(mode):
    rng = np.random.default_rng(5)
    g = (rng.normal(size=(4, 9)) * np.array([[0.1], [1.0], [4.0], [1.5]]))
    g[1] += 0.9 * g[2]                                        # correlated, ill-conditioned
    m = mtl.get_method("aligned_mtl", scale_mode=mode)
    combined, _, w = _run(m, g.astype(np.float32))
    b_ref = _aligned_np(g, mode)
    np.testing.assert_allclose(w, b_ref.sum(0), rtol=2e-4)
    np.testing.assert_allclose(combined, b_ref.sum(0) @ g, rtol=2e-4, atol=1e-5)
    # The aligned system B G is orthogonal with equal norms: Gram = s^2 I, condition number 1.
    b = np.asarray(alignment.aligned_mtl_transform(mtl.gram_matrix(g.astype(np.float32)), mode),
                   np.float64)
    aligned = b @ g
    gram = aligned @ aligned.T
    lam = np.linalg.eigvalsh(g @ g.T)
    s2 = {"min": lam[0], "median": lam[1], "rmse": lam.mean()}[mode]
    np.testing.assert_allclose(gram, s2 * np.eye(4), rtol=1e-3, atol=1e-3 * s2)
    assert np.linalg.cond(aligned) < 1.001
    assert np.linalg.cond(g) > 10                              # it was not already aligned
    # Scale invariance of the weights.
    _, _, w_big = _run(m, (1e3 * g).astype(np.float32))
    np.testing.assert_allclose(w_big, w, rtol=2e-4)


def test_aligned_mtl_rank_deficient_system_is_aligned_on_its_span():
    rng = np.random.default_rng(6)
    g = rng.normal(size=(3, 6))
    g[2] = g[0] + 2.0 * g[1]                                   # rank 2
    b = np.asarray(alignment.aligned_mtl_transform(mtl.gram_matrix(g.astype(np.float32))),
                   np.float64)
    b_ref = _aligned_np(g)
    np.testing.assert_allclose(b, b_ref, rtol=1e-3, atol=1e-4)
    aligned = b @ g
    sv = np.linalg.svd(aligned, compute_uv=False)
    np.testing.assert_allclose(sv[:2], sv[0], rtol=1e-3)      # two equal singular values
    assert sv[2] < 1e-4 * sv[0]
    # All-zero gradients: zero weights, zero update.
    combined, _, w = _run(mtl.get_method("aligned_mtl"), np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(w, np.zeros(3))
    np.testing.assert_array_equal(combined, np.zeros(4))


# ------------------------------------------------------------------------------------------------
# UPGrad
# ------------------------------------------------------------------------------------------------

def _nonneg_qp_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin_{x >= 0} 1/2 x'Ax + b'x by enumerating the free sets (float64)."""
    t = len(b)
    best, best_val = np.zeros(t), 0.0
    for r in range(1, t + 1):
        for free in itertools.combinations(range(t), r):
            f = list(free)
            x = np.zeros(t)
            x[f] = np.linalg.solve(a[np.ix_(f, f)], -b[f])
            if np.all(x >= 0):
                val = 0.5 * x @ a @ x + b @ x
                if val < best_val:
                    best, best_val = x, val
    return best


def _upgrad_np(g: np.ndarray, reg_eps: float = 1e-4) -> np.ndarray:
    gram = g @ g.T
    a = gram / np.trace(gram) + reg_eps * np.eye(len(g))
    return np.mean([np.eye(len(g))[i] + _nonneg_qp_np(a, a[:, i]) for i in range(len(g))],
                   axis=0)


def test_upgrad_two_tasks_closed_form_projections():
    """g_1 = (1, 0), g_2 = (-1, 1): the dual cone is {x_1 >= 0, x_2 >= x_1}; pi(g_1) =
    (0.5, 0.5), pi(g_2) = (0, 1), so the update is their mean (0.25, 0.75) = 1 g_1 + 0.75 g_2."""
    g = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32)
    exact = mtl.get_method("upgrad", norm_eps=0.0, reg_eps=0.0)
    combined, p_grads, w = _run(exact, g)
    assert p_grads == {}
    np.testing.assert_allclose(w, [1.0, 0.75], rtol=1e-5)
    np.testing.assert_allclose(combined, [0.25, 0.75], rtol=1e-5, atol=1e-7)
    # LibMTL's default regularisation moves it only slightly.
    combined, _, w = _run(mtl.get_method("upgrad"), g)
    np.testing.assert_allclose(w, _upgrad_np(g.astype(np.float64)), rtol=1e-4)
    np.testing.assert_allclose(combined, [0.25, 0.75], atol=1e-3)


def test_upgrad_result_is_in_the_dual_cone_and_matches_the_qp_optimum():
    rng = np.random.default_rng(7)
    checked = 0
    for t in (3, 5):
        for _ in range(3):
            g = rng.normal(size=(t, 12)) * rng.uniform(0.2, 5.0, size=(t, 1))
            g[1] = -0.7 * g[0] + 0.3 * g[1]                        # strong conflict
            gram = g @ g.T
            assert np.min(gram) < 0
            combined, _, w = _run(mtl.get_method("upgrad"), g.astype(np.float32))
            np.testing.assert_allclose(w, _upgrad_np(g), rtol=2e-3, atol=1e-4)
            # Non-negative inner product with every task gradient, up to the regulariser
            # (reg_eps v trace in these units), and the mean gradient would violate it here.
            inner = g @ np.asarray(combined, np.float64)
            assert np.all(inner >= -2e-4 * np.trace(gram) * np.max(w)), inner
            exact = mtl.get_method("upgrad", reg_eps=0.0)
            combined0, _, _ = _run(exact, g.astype(np.float32))
            inner0 = g @ np.asarray(combined0, np.float64)
            assert np.all(inner0 >= -1e-5 * np.trace(gram)), inner0
            checked += int(np.min(g @ g.mean(0)) < 0)
    assert checked >= 2


def test_upgrad_equals_the_mean_without_conflicts_and_for_tiny_gradients():
    rng = np.random.default_rng(8)
    g = np.abs(rng.normal(size=(4, 6))).astype(np.float32)          # all inner products > 0
    combined, _, w = _run(mtl.get_method("upgrad"), g)
    np.testing.assert_allclose(w, np.full(4, 0.25), rtol=1e-6)
    np.testing.assert_allclose(combined, g.mean(0), rtol=1e-5)
    # LibMTL's norm_eps: a squared Frobenius norm below 1e-4 gives the mean gradient.
    g = np.array([[1.0, 0.0], [-1.0, 1.0]], np.float32) * 3e-3
    _, _, w = _run(mtl.get_method("upgrad"), g)
    np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-6)
    _, _, w = _run(mtl.get_method("upgrad", norm_eps=0.0, reg_eps=0.0), g)
    np.testing.assert_allclose(w, [1.0, 0.75], rtol=1e-4)           # scale-free otherwise


def test_nonneg_quadratic_min_matches_enumeration():
    rng = np.random.default_rng(9)
    solve = jax.jit(alignment.nonneg_quadratic_min)
    active = set()
    for _ in range(6):
        m = rng.normal(size=(6, 6))
        a = m @ m.T + 0.05 * np.eye(6)
        b = rng.normal(size=6)
        x = np.asarray(solve(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
        ref = _nonneg_qp_np(a, b)
        np.testing.assert_allclose(x, ref, rtol=1e-3, atol=1e-4)
        assert np.all(x >= 0)
        active.add(int(np.sum(ref > 0)))
    assert len(active) > 1                                      # various active sets
    np.testing.assert_array_equal(solve(jnp.eye(3), jnp.ones(3)), np.zeros(3))


# ------------------------------------------------------------------------------------------------
# ExcessMTL
# ------------------------------------------------------------------------------------------------

def _excess_np(grads_seq, step_size=1e-2, eps=1e-7):
    """LibMTL's ExcessMTL loop in float64: the weights used at every step."""
    t = grads_seq[0].shape[0]
    lam, acc, base, out = np.ones(t), np.zeros_like(grads_seq[0]), None, []
    for g in grads_seq:
        acc = acc + g ** 2
        r = np.sum(g ** 2 / np.sqrt(acc + eps), axis=1)
        if base is None:
            base = r
        else:
            lam = lam * np.exp(step_size * r / base)
            lam = lam / lam.sum() * t
        out.append(lam.copy())
    return out, acc, base


def test_excess_mtl_matches_libmtl_loop_over_steps():
    rng = np.random.default_rng(10)
    grads = [(rng.normal(size=(3, 6)) * np.array([[0.1], [1.0], [5.0]]) * (0.7 ** k))
             for k in range(4)]
    grads[2][0] *= 20.0                                       # task 0 suddenly far away
    step_size = 0.5                                           # large, to make weights move
    m = mtl.get_method("excess_mtl", robust_step_size=step_size)
    state = m.init_state(3, grad_dim=6)
    assert state["grad_sq_sum"].shape == (3, 6)
    ref_weights, ref_acc, ref_base = _excess_np(grads, step_size)
    losses = jnp.ones(3)
    for k, g in enumerate(grads):
        g32 = jnp.asarray(g, jnp.float32)
        combined, p_grads, w = _combine(m, g32, losses, {}, state, _key())
        assert p_grads == {}
        np.testing.assert_allclose(w, ref_weights[k], rtol=1e-5)
        np.testing.assert_allclose(combined, ref_weights[k] @ g, rtol=1e-5, atol=1e-6)
        state = _update(m, state, losses, g32)
        np.testing.assert_allclose(state["loss_weights"], ref_weights[k], rtol=1e-5)
        assert int(state["step"]) == k + 1 and int(state["has_baseline"]) == 1
    np.testing.assert_allclose(ref_weights[0], np.ones(3))
    assert np.max(ref_weights[-1]) - np.min(ref_weights[-1]) > 0.05
    np.testing.assert_allclose(state["grad_sq_sum"], ref_acc, rtol=1e-5)
    np.testing.assert_allclose(state["initial_risks"], ref_base, rtol=1e-5)
    np.testing.assert_allclose(np.sum(state["loss_weights"]), 3.0, rtol=1e-6)


def test_excess_mtl_weight_update_closed_form():
    """Task 1's gradient is constant, so its excess risk decays like 1/sqrt(k) from its
    baseline (ratio 1/sqrt(k) at step k); task 0's gradient vanishes after step 1 (ratio 0).
    Then log(lambda_1 / lambda_0) = eta * sum_{k=2..K} 1/sqrt(k), with sum lambda = 2."""
    eta, steps = 0.3, 5
    g_const = np.array([1.0, -2.0, 0.5])
    m = mtl.get_method("excess_mtl", robust_step_size=eta)
    state = m.init_state(2, grad_dim=3)
    for k in range(1, steps + 1):
        g = np.stack([g_const if k == 1 else np.zeros(3), g_const]).astype(np.float32)
        _, _, w = _combine(m, jnp.asarray(g), jnp.ones(2), {}, state, _key())
        state = _update(m, state, jnp.ones(2), jnp.asarray(g))
        log_ratio = eta * sum(1 / np.sqrt(i) for i in range(2, k + 1))
        ref = 2.0 / (1.0 + np.exp(log_ratio)) * np.array([1.0, np.exp(log_ratio)])
        np.testing.assert_allclose(w, ref, rtol=1e-5)
    # Equal ratios for every task (all gradients constant): the weights stay uniform.
    m = mtl.get_method("excess_mtl", robust_step_size=1.0)
    state = m.init_state(3, grad_dim=4)
    g = np.random.default_rng(11).normal(size=(3, 4)).astype(np.float32)
    for _ in range(4):
        state = _update(m, state, jnp.ones(3), jnp.asarray(g))
    np.testing.assert_allclose(state["loss_weights"], np.ones(3), rtol=1e-5)
