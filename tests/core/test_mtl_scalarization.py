"""Tests for ur_jax.mtl.scalarization (GLS, RLW, STCH, FAMO, DB-MTL) against closed forms and
NumPy references written from the papers / LibMTL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import mtl
from ur_jax.mtl import scalarization

# The options a method needs to be built (the others have defaults).
_REQUIRED = {"gls": {}, "rlw": {}, "stch": {"steps_per_epoch": 2}, "famo": {}, "db_mtl": {}}
# D, the length of one task's gradient row, given to every init_state (the protocol's grad_dim;
# db_mtl needs it for its (T, D) state, the others ignore it).
_GRAD_DIM = 5


def _key(seed: int = 0) -> jax.Array:
    return jax.random.key(seed)


def _loss_value_weights_dl(method, losses, state, rng=None):
    """total, weights and d total / d losses (un-jitted)."""
    (total, weights), dl = jax.value_and_grad(
        lambda l: method.loss(l, {}, state, rng), has_aux=True)(jnp.asarray(losses, jnp.float32))
    return float(total), np.asarray(weights, np.float64), np.asarray(dl, np.float64)


# ------------------------------------------------------------------------------------------------
# Registry, construction and option validation
# ------------------------------------------------------------------------------------------------

def test_registry_builds_every_scalarization_method_with_its_attributes_and_options():
    expected = {"gls": (False, ()), "rlw": (False, ("distribution",)),
                "stch": (False, ("steps_per_epoch", "warmup_epochs", "mu")),
                "famo": (False, ("lr", "gamma", "optimizer")),
                "db_mtl": (True, ("beta", "beta_sigma"))}
    assert tuple(scalarization.CLASSES) == tuple(expected)
    assert set(expected) <= set(mtl.METHODS)
    for name, (uses_grads, options) in expected.items():
        m = mtl.get_method(name, **_REQUIRED[name])
        assert (m.name, m.uses_gradients, m.space) == (name, uses_grads, "params")
        assert mtl.method_options(name) == options
        assert hash(m) == hash(mtl.get_method(name, **_REQUIRED[name]))
        assert mtl.METHOD_CLASSES[name] is scalarization.CLASSES[name]
    assert mtl.get_method("DB-MTL").name == "db_mtl"
    m = mtl.get_method("stch", steps_per_epoch=3)
    assert (m.warmup_epochs, m.mu) == (4, 1.0)                    # LibMTL's defaults
    m = mtl.get_method("famo")
    assert (m.lr, m.gamma, m.optimizer) == (0.025, 1e-3, "adam")  # LibMTL's defaults
    m = mtl.get_method("db_mtl")
    assert (m.beta, m.beta_sigma) == (0.9, 0.0)                   # LibMTL's defaults
    assert mtl.get_method("rlw").distribution == "normal"
    for name in scalarization.__all__:
        assert hasattr(scalarization, name)


@pytest.mark.parametrize("name, options, error, match", [
    ("rlw", {"distribution": "bernoulli"}, ValueError, "distribution must be one of"),
    ("stch", {}, ValueError, "steps_per_epoch must be an int >= 1"),
    ("stch", {"steps_per_epoch": 0}, ValueError, "steps_per_epoch must be an int >= 1"),
    ("stch", {"steps_per_epoch": 2.5}, ValueError, "steps_per_epoch"),
    ("stch", {"steps_per_epoch": 2, "warmup_epochs": -1}, ValueError, "warmup_epochs"),
    ("stch", {"steps_per_epoch": 2, "mu": 0.0}, ValueError, "mu must be a finite number > 0"),
    ("famo", {"lr": -0.1}, ValueError, "lr must be a finite number > 0"),
    ("famo", {"gamma": -1e-3}, ValueError, "gamma must be a finite number >= 0"),
    ("famo", {"gamma": float("nan")}, ValueError, "gamma"),
    ("famo", {"optimizer": "rmsprop"}, ValueError, "optimizer must be one of"),
    ("db_mtl", {"beta": 1.0}, ValueError, r"beta must be a number in \[0, 1\)"),
    ("db_mtl", {"beta_sigma": -0.5}, ValueError, "beta_sigma"),
    ("gls", {"mu": 1.0}, ValueError, "valid options: none"),
    ("db_mtl", {"space": "features"}, ValueError, r"does not take option"),
    ("db_mtl", {"grad_dim": 4}, ValueError, r"does not take option\(s\) \['grad_dim'\]"),
])
def test_bad_options_raise_with_a_message(name, options, error, match):
    with pytest.raises(error, match=match):
        mtl.get_method(name, **options)


@pytest.mark.parametrize("grad_dim", [None, 0, True, 2.0])
def test_db_mtl_init_state_needs_grad_dim(grad_dim):
    db = mtl.get_method("db_mtl")
    with pytest.raises(ValueError, match=r"call init_state\(T, grad_dim=D\)"):
        if grad_dim is None:
            db.init_state(3)
        else:
            db.init_state(3, grad_dim=grad_dim)
    state = db.init_state(3, grad_dim=4)
    assert state["grad_ema"].shape == (3, 4) and state["grad_ema"].dtype == jnp.float32
    assert not np.any(np.asarray(state["grad_ema"])) and int(state["step"]) == 0


def test_bad_calls_raise_with_a_message():
    rlw = mtl.get_method("rlw")
    with pytest.raises(ValueError, match="PRNG key"):
        rlw.loss(jnp.ones(3), {}, rlw.init_state(3), None)
    db = mtl.get_method("db_mtl")
    state = db.init_state(3, grad_dim=4)
    with pytest.raises(ValueError, match=r"grads have shape \(3, 5\).*\(3, 4\).*grad_dim"):
        db.combine(jnp.ones((3, 5)), jnp.ones(3), {}, state)
    with pytest.raises(ValueError, match="needs the step's"):
        db.update_state(state, jnp.ones(3))
    with pytest.raises(ValueError, match="call combine"):
        db.loss(jnp.ones(3), {}, state)
    with pytest.raises(ValueError, match="num_tasks >= 2"):
        mtl.get_method("famo").init_state(1)


# ------------------------------------------------------------------------------------------------
# GLS
# ------------------------------------------------------------------------------------------------

def test_gls_is_the_geometric_mean_with_weights_total_over_t_loss():
    gls = mtl.get_method("gls")
    losses = np.array([0.5, 2.0, 4.0])
    total, weights, dl = _loss_value_weights_dl(gls, losses, gls.init_state(3))
    ref = 4.0 ** (1 / 3)                                # (0.5 * 2 * 4)^(1/3)
    np.testing.assert_allclose(total, ref, rtol=1e-6)
    np.testing.assert_allclose(weights, ref / (3 * losses), rtol=1e-6)
    np.testing.assert_allclose(dl, weights, rtol=1e-6)
    # The base combine is the chain rule: sum_t w_t g_t.
    g = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    combined, p_grads, w = gls.combine(g, losses, {}, {})
    np.testing.assert_allclose(combined, weights @ g, rtol=1e-5, atol=1e-6)
    assert p_grads == {}
    # Scale invariance: multiplying one loss by 10 leaves the normalised direction unchanged
    # (d log total / d L_t = 1 / (T L_t)).
    scaled = losses * np.array([10.0, 1.0, 1.0])
    t2, w2, _ = _loss_value_weights_dl(gls, scaled, {})
    np.testing.assert_allclose(w2 * scaled / t2, weights * losses / total, rtol=1e-5)


def test_gls_log_space_total_does_not_overflow_and_zero_losses_are_finite():
    gls = mtl.get_method("gls")
    big = np.full(8, 1e6)                       # the naive product is 1e48: inf in float32
    total, weights, _ = _loss_value_weights_dl(gls, big, {})
    np.testing.assert_allclose(total, 1e6, rtol=1e-5)
    np.testing.assert_allclose(weights, 1 / 8, rtol=1e-5)
    total, weights, dl = _loss_value_weights_dl(gls, np.array([0.0, 1.0]), {})
    np.testing.assert_allclose(total, np.sqrt(scalarization.GLS_EPS), rtol=1e-5)
    assert weights[0] == 0.0 and dl[0] == 0.0
    np.testing.assert_allclose(weights[1], total / 2, rtol=1e-5)
    assert np.all(np.isfinite(dl))


# ------------------------------------------------------------------------------------------------
# RLW
# ------------------------------------------------------------------------------------------------

def test_rlw_weights_are_reproducible_from_rng_and_give_the_weighted_sum():
    rlw = mtl.get_method("rlw")
    losses = np.array([0.3, 1.2, 2.5], np.float32)
    key = jax.random.fold_in(_key(7), 3)
    total, weights, dl = _loss_value_weights_dl(rlw, losses, {}, key)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    assert np.all(weights > 0)
    np.testing.assert_allclose(total, weights @ losses, rtol=1e-6)
    np.testing.assert_allclose(dl, weights, rtol=1e-6)
    _, again, _ = _loss_value_weights_dl(rlw, losses * 2, {}, key)
    np.testing.assert_array_equal(again, weights)               # a function of rng only
    _, other, _ = _loss_value_weights_dl(rlw, losses, {}, jax.random.fold_in(_key(7), 4))
    assert not np.allclose(other, weights)
    g = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    combined, _, w = rlw.combine(g, losses, {}, {}, key)
    np.testing.assert_allclose(w, weights, rtol=1e-6)
    np.testing.assert_allclose(combined, weights @ g, rtol=1e-5, atol=1e-6)


def test_rlw_distributions_match_their_moments():
    """log w_t - mean_s log w_s recovers the raw sample minus its mean (softmax is shift
    invariant): its statistics identify the distribution."""
    keys = jax.random.split(_key(11), 4000)

    def centred(dist):
        m = mtl.get_method("rlw", distribution=dist)
        w = jax.jit(jax.vmap(lambda k: m.sample_weights(k, 3)))(keys)
        lw = np.log(np.asarray(w, np.float64))
        np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-5)
        return lw - lw.mean(1, keepdims=True)

    x = centred("normal")                    # x1 - x2 ~ N(0, 2)
    d = x[:, 0] - x[:, 1]
    assert abs(d.mean()) < 0.1 and abs(d.var() - 2.0) < 0.2
    assert np.abs(d).max() > 2.0
    x = centred("uniform")                   # x1 - x2 = u1 - u2: variance 1/6, |.| < 1
    d = x[:, 0] - x[:, 1]
    assert abs(d.var() - 1 / 6) < 0.02 and np.abs(d).max() < 1.0
    x = centred("dirichlet")                 # x + 1/3 is the Dir(1,1,1) sample itself
    p = x + 1 / 3
    assert p.min() > -1e-5
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert abs(p[:, 0].mean() - 1 / 3) < 0.02 and abs(p[:, 0].var() - 1 / 18) < 0.008


# ------------------------------------------------------------------------------------------------
# STCH
# ------------------------------------------------------------------------------------------------

def _stch_reference(losses, nadir, mu):
    """LibMTL's STCH total and its derivative, in float64."""
    t = len(losses)
    a = np.log(losses / nadir + scalarization.STCH_EPS)
    m = a.max()
    e = np.exp((a - m) / mu)
    total = t * mu * np.log(e.sum())
    weights = t * (e / e.sum()) / (losses + scalarization.STCH_EPS * nadir)
    return total, weights


def test_stch_warm_up_nadir_epoch_then_smooth_tchebycheff():
    stch = mtl.get_method("stch", steps_per_epoch=2, warmup_epochs=1, mu=1.0)
    rng = np.random.default_rng(3)
    seq = rng.uniform(0.5, 3.0, size=(6, 3))
    state = stch.init_state(3)
    for k in range(4):                                   # epochs 0 and 1: sum of log-losses
        total, weights, dl = _loss_value_weights_dl(stch, seq[k], state)
        np.testing.assert_allclose(total, np.log(seq[k]).sum(), rtol=1e-5)
        np.testing.assert_allclose(weights, 1 / seq[k], rtol=1e-5)
        np.testing.assert_allclose(dl, weights, rtol=1e-5)
        state = stch.update_state(state, seq[k])
        # only epoch 1 (= warmup_epochs) is summed for the nadir point
        expected_sum = seq[2:k + 1].sum(0) if k >= 2 else np.zeros(3)
        np.testing.assert_allclose(state["nadir_sum"], expected_sum, rtol=1e-6)
        assert int(state["step"]) == k + 1
    nadir = (seq[2] + seq[3]) / 2
    np.testing.assert_allclose(stch.nadir(state), nadir, rtol=1e-6)
    total, weights, dl = _loss_value_weights_dl(stch, seq[4], state)
    ref_total, ref_w = _stch_reference(seq[4], nadir, 1.0)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-5)
    np.testing.assert_allclose(dl, weights, rtol=1e-5)
    # mu = 1 closed form: d/dL_t [T log sum_s L_s / n_s] = T / (n_t sum_s L_s / n_s).
    np.testing.assert_allclose(weights, 3 / (nadir * (seq[4] / nadir).sum()), rtol=1e-5)
    # The nadir sums stay fixed after epoch 1.
    after = stch.update_state(state, seq[4])
    np.testing.assert_allclose(after["nadir_sum"], state["nadir_sum"])


def test_stch_small_mu_approaches_the_tchebycheff_max():
    stch = mtl.get_method("stch", steps_per_epoch=1, warmup_epochs=0, mu=0.02)
    state = stch.update_state(stch.init_state(3), np.array([1.0, 2.0, 4.0]))  # nadir
    losses = np.array([1.5, 2.0, 4.4])        # normalised: 1.5, 1.0, 1.1 -> task 0 is worst
    total, weights, _ = _loss_value_weights_dl(stch, losses, state)
    ref_total, ref_w = _stch_reference(losses, np.array([1.0, 2.0, 4.0]), 0.02)
    np.testing.assert_allclose(total, ref_total, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-4, atol=1e-9)
    # Nearly all the weight on the worst normalised task: T / L_0, the others ~ 0.
    np.testing.assert_allclose(weights[0], 3 / 1.5, rtol=1e-4)
    assert weights[1] < 1e-6 and weights[2] < 1e-6


# ------------------------------------------------------------------------------------------------
# FAMO
# ------------------------------------------------------------------------------------------------

def _famo_reference(loss_seq, lr, gamma, optimizer):
    """The logits after update_state on each of ``loss_seq`` (NumPy float64, from the paper's
    update and torch.optim.Adam's documented algorithm), delayed by one step as ur_jax's."""
    t = loss_seq.shape[1]
    xi, m, v = np.zeros(t), np.zeros(t), np.zeros(t)
    out = []
    for k, losses in enumerate(loss_seq):
        if k >= 1:
            delta = np.log(loss_seq[k - 1] + 1e-8) - np.log(losses + 1e-8)
            z = np.exp(xi) / np.exp(xi).sum()
            g = z * delta - z * (z @ delta) + gamma * xi
            if optimizer == "adam":
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                xi = xi - lr * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
            else:
                xi = xi - lr * g
        out.append(xi.copy())
    return np.asarray(out)


def test_famo_loss_weights_are_normalised_inverse_losses_times_softmax():
    famo = mtl.get_method("famo")
    losses = np.array([0.5, 1.0, 4.0])
    state = famo.init_state(3)
    total, weights, dl = _loss_value_weights_dl(famo, losses, state)
    inv = 1 / losses                                   # xi = 0: harmonic weights
    np.testing.assert_allclose(weights, inv / inv.sum(), rtol=1e-5)
    np.testing.assert_allclose(total, (np.log(losses) / 3).sum() / (inv / 3).sum(), rtol=1e-5)
    np.testing.assert_allclose(dl, weights, rtol=1e-5)
    xi = np.array([0.3, -0.2, 0.1])
    z = np.exp(xi) / np.exp(xi).sum()
    c = (z / losses).sum()
    state = {**state, "logits": jnp.asarray(xi, jnp.float32)}
    total, weights, dl = _loss_value_weights_dl(famo, losses, state)
    np.testing.assert_allclose(weights, z / (c * losses), rtol=1e-5)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(total, (z * np.log(losses)).sum() / c, rtol=1e-5)
    np.testing.assert_allclose(dl, weights, rtol=1e-5)


def test_famo_logit_update_on_constant_loss_ratios():
    """L_k = L_0 r^k: every step's log-loss decrease is -log r. The slower task (r = 0.9)
    gains weight; equal ratios leave the logits at 0."""
    famo = mtl.get_method("famo")
    ratios = np.array([0.9, 0.5])
    seq = np.array([2.0, 1.0]) * ratios[None, :] ** np.arange(6)[:, None]
    state = famo.init_state(2)
    logits = []
    for losses in seq:
        state = famo.update_state(state, losses)
        logits.append(np.asarray(state["logits"]))
        np.testing.assert_allclose(state["prev_losses"], losses, rtol=1e-6)
    logits = np.asarray(logits)
    np.testing.assert_array_equal(logits[0], [0.0, 0.0])         # no previous losses yet
    # First Adam step: m_hat / sqrt(v_hat) = sign(g), g = z (delta - z.delta) with
    # delta = -log r, so xi = -lr sign(g) = lr (1, -1) (gamma xi = 0 at xi = 0).
    np.testing.assert_allclose(logits[1], [0.025, -0.025], rtol=1e-5)
    np.testing.assert_allclose(logits, _famo_reference(seq, 0.025, 1e-3, "adam"),
                               rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(logits[1:, 0]) > 0)                      # the slow task keeps gaining
    z = np.exp(logits[-1]) / np.exp(logits[-1]).sum()
    assert z[0] > 0.5 + 0.05
    # Equal ratios: delta is constant across tasks, J_z^T delta = 0, logits stay 0.
    same = 1.5 * 0.8 ** np.arange(4)[:, None] * np.ones((1, 3))
    st = famo.init_state(3)
    for losses in same:
        st = famo.update_state(st, losses)
    np.testing.assert_allclose(st["logits"], np.zeros(3), atol=1e-7)


def test_famo_sgd_is_the_papers_update_with_decay():
    famo = mtl.get_method("famo", optimizer="sgd", lr=0.5, gamma=0.01)
    seq = np.array([[1.0, 1.0, 1.0], [0.9, 0.5, 1.2], [0.8, 0.3, 1.1], [0.75, 0.2, 1.0]])
    state = famo.init_state(3)
    logits = []
    for losses in seq:
        state = famo.update_state(state, losses)
        logits.append(np.asarray(state["logits"]))
    # Step 1 closed form at xi = 0: xi = -lr (delta - mean delta) / T.
    delta = np.log(seq[0] + 1e-8) - np.log(seq[1] + 1e-8)
    np.testing.assert_allclose(logits[1], -0.5 * (delta - delta.mean()) / 3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), _famo_reference(seq, 0.5, 0.01, "sgd"),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(state["adam_mu"], np.zeros(3))


# ------------------------------------------------------------------------------------------------
# DB-MTL
# ------------------------------------------------------------------------------------------------

def _db_mtl_reference(grad_seq, loss_seq, beta, sigma):
    """LibMTL's DB-MTL, in NumPy float64: combined gradient and scales of every step."""
    ema = np.zeros_like(grad_seq[0])
    out = []
    for k, (g, losses) in enumerate(zip(grad_seq, loss_seq), start=1):
        h = g / (losses + 1e-8)[:, None]
        ema = h + (beta / k ** sigma) * (ema - h)
        u = np.linalg.norm(ema, axis=1)
        a = u.max() / (u + 1e-8)
        out.append((a @ ema, a))
    return out


@pytest.mark.parametrize("beta, sigma", [(0.9, 0.0), (0.5, 0.5)])
def test_db_mtl_matches_the_numpy_reference_over_steps(beta, sigma):
    rng = np.random.default_rng(5)
    grad_seq = rng.normal(size=(4, 3, 7)) * np.array([1.0, 10.0, 0.1])[None, :, None]
    loss_seq = rng.uniform(0.2, 5.0, size=(4, 3))
    db = mtl.get_method("db_mtl", beta=beta, beta_sigma=sigma)
    state = db.init_state(3, grad_dim=7)
    for k, (ref_combined, ref_a) in enumerate(_db_mtl_reference(grad_seq, loss_seq, beta, sigma)):
        g = grad_seq[k].astype(np.float32)
        combined, p_grads, a = db.combine(g, loss_seq[k], {}, state)
        np.testing.assert_allclose(combined, ref_combined, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, ref_a, rtol=1e-5)
        assert p_grads == {}
        state = db.update_state(state, loss_seq[k], g)
        assert int(state["step"]) == k + 1
        # Every rescaled average has the largest norm.
        norms = np.linalg.norm(np.asarray(a)[:, None] * np.asarray(state["grad_ema"]), axis=1)
        np.testing.assert_allclose(norms, norms.max(), rtol=1e-5)


def test_db_mtl_first_step_closed_form():
    """Step 1 (ema = 0): m_t = (1 - beta) g_t / L_t, so combined =
    (1 - beta) max_t(|g_t| / L_t) sum_t g_t / |g_t|."""
    g = np.array([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -0.5]], np.float32)
    losses = np.array([2.0, 0.1, 1.0])
    db = mtl.get_method("db_mtl")
    combined, _, a = db.combine(g, losses, {}, db.init_state(3, grad_dim=3))
    top = 0.1 * max(3.0 / 2.0, 1.0 / 0.1, 0.5 / 1.0)          # task 1: 10, times 1 - beta
    np.testing.assert_allclose(combined, top * np.array([1.0, 1.0, -1.0]), rtol=1e-5)
    np.testing.assert_allclose(a, [10 / 1.5, 1.0, 10 / 0.5], rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Every method: jit equals eager, finite on zero gradients / zero losses
# ------------------------------------------------------------------------------------------------

def _run_steps(method, jit, t=3, d=_GRAD_DIM, steps=3):
    """Outputs of a few combine/update_state calls (rlw with its rng), jitted or not."""
    rng = np.random.default_rng(9)
    combine = jax.jit(method.combine) if jit else method.combine
    update = jax.jit(method.update_state) if jit else method.update_state
    loss = jax.jit(method.loss) if jit and not method.uses_gradients else method.loss
    params, state = method.init_params(t), method.init_state(t, grad_dim=d)
    outs = []
    for k in range(steps):
        g = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
        losses = jnp.asarray(rng.uniform(0.2, 3.0, size=t), jnp.float32)
        key = jax.random.fold_in(_key(1), k)
        combined, _, w = combine(g, losses, params, state, key)
        outs += [combined, w]
        if not method.uses_gradients:
            outs += list(loss(losses, params, state, key))
        state = update(state, losses, g)
        outs += jax.tree_util.tree_leaves(state)
    return outs


@pytest.mark.parametrize("name", list(scalarization.CLASSES))
def test_jitted_results_equal_eager_ones(name):
    m = mtl.get_method(name, **{**_REQUIRED[name], **({"steps_per_epoch": 1, "warmup_epochs": 0}
                                                       if name == "stch" else {})})
    for a, b in zip(_run_steps(m, jit=True), _run_steps(m, jit=False), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("t", [2, 3])
def test_every_scalarization_method_is_finite_for_zero_gradients_and_losses(t):
    for name in scalarization.CLASSES:
        opts = {**_REQUIRED[name], **({"steps_per_epoch": 1, "warmup_epochs": 0}
                                      if name == "stch" else {})}
        m = mtl.get_method(name, **opts)
        params, state = m.init_params(t), m.init_state(t, grad_dim=_GRAD_DIM)
        for losses in (jnp.zeros(t), jnp.ones(t), jnp.zeros(t)):
            grads = jnp.zeros((t, _GRAD_DIM))
            combined, p_grads, w = m.combine(grads, losses, params, state, _key())
            np.testing.assert_array_equal(combined, np.zeros(_GRAD_DIM))
            assert all(np.all(np.isfinite(x)) for x in [w, *jax.tree_util.tree_leaves(p_grads)])
            if not m.uses_gradients:
                (value, w2), dl = jax.value_and_grad(
                    lambda l: m.loss(l, params, state, _key()), has_aux=True)(losses)
                assert all(np.all(np.isfinite(x)) for x in (value, w2, dl)), name
            state = m.update_state(state, losses, grads)
            assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state)), name
        assert int(state["step"]) == 3


def test_state_leaves_are_distinct_buffers():
    """Steps donate their state: two leaves sharing one buffer would be donated twice."""
    for name in scalarization.CLASSES:
        m = mtl.get_method(name, **_REQUIRED[name])
        leaves = jax.tree_util.tree_leaves((m.init_params(3),
                                            m.init_state(3, grad_dim=_GRAD_DIM)))
        assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves), name
