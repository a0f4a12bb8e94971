"""Adapters: formulas, initial behaviour, attaching to a pretrained backbone, partitions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ur_jax import adapters, models, optim

TINY = functools.partial(models.ResNet, stage_sizes=(1, 1), stage_widths=(4, 8),
                         stem="metadataset")


@pytest.fixture(scope="module")
def pretrained():
    """A tiny backbone with non-trivial (trained-looking) parameters and statistics."""
    net = TINY()
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    _, upd = jax.jit(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    return {"params": variables["params"], "batch_stats": upd["batch_stats"]}, x


# --------------------------------------------------------------------------- alignment


def test_linear_alignment_adapter_is_bias_free_xavier_dense_on_vectors_and_maps():
    ad = adapters.AlignmentAdapter(48)
    v = ad.init(jax.random.key(0), jnp.ones((1, 200)))
    assert jax.tree.map(jnp.shape, v["params"]) == {"linear": {"kernel": (200, 48)}}
    w = np.asarray(v["params"]["linear"]["kernel"])
    # Xavier-normal: variance 2 / (fan_in + fan_out).
    assert abs(w.var() / (2 / (200 + 48)) - 1) < 0.1 and abs(w.mean()) < 0.01
    x = np.random.default_rng(0).normal(size=(3, 5, 7, 200)).astype(np.float32)
    np.testing.assert_allclose(ad.apply(v, x), x @ w, rtol=1e-5, atol=1e-5)  # a 1x1 conv
    np.testing.assert_allclose(ad.apply(v, x[:, 0, 0]), x[:, 0, 0] @ w, rtol=1e-5, atol=1e-5)


def test_alignment_adapter_init_is_untruncated_xavier_normal():
    """Issue 14.14: torch.nn.init.xavier_normal_ draws an untruncated normal with
    std sqrt(2 / (fan_in + fan_out)); flax's glorot_normal truncates at 2 std (excess
    kurtosis about -0.6 and no weight beyond ~2.3 std), which these checks refuse."""
    w = np.asarray(adapters.AlignmentAdapter(512).init(jax.random.key(3), jnp.zeros((1, 512)))
                   ["params"]["linear"]["kernel"], np.float64)
    assert w.shape == (512, 512)
    std = np.sqrt(2.0 / (512 + 512))
    z = w.ravel() / std
    assert abs(z.std() - 1.0) < 0.01
    assert abs(z.mean()) < 0.01
    excess_kurtosis = np.mean((z - z.mean()) ** 4) / z.var() ** 2 - 3.0
    assert abs(excess_kurtosis) < 0.05  # normal: 0 (s.e. ~0.005 for 262144 draws)
    assert np.abs(z).max() > 4.0  # 262144 normal draws: max |z| is about 4.5 to 5
    assert 0.0400 < np.mean(np.abs(z) > 2.0) < 0.0510  # P(|z| > 2) = 0.0455


def test_mlp_alignment_adapter_has_twice_wide_hidden_layer():
    ad = adapters.AlignmentAdapter(6, kind="mlp")
    v = ad.init(jax.random.key(0), jnp.ones((1, 5)))
    assert jax.tree.map(jnp.shape, v["params"]) == {"hidden": {"kernel": (5, 10)},
                                                    "out": {"kernel": (10, 6)}}
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    p = v["params"]
    ref = np.maximum(x @ np.asarray(p["hidden"]["kernel"]), 0) @ np.asarray(p["out"]["kernel"])
    np.testing.assert_allclose(ad.apply(v, x), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        adapters.AlignmentAdapter(6, kind="nope").init(jax.random.key(0), jnp.ones((1, 5)))


def test_alignment_adapters_one_per_teacher():
    ads = adapters.AlignmentAdapters((("a", 3), ("b", 5)))
    v = ads.init(jax.random.key(0), {"a": jnp.ones((1, 4)), "b": jnp.ones((1, 4))})
    out = ads.apply(v, {"b": jnp.ones((2, 4))})
    assert set(out) == {"b"} and out["b"].shape == (2, 5)
    with pytest.raises(KeyError, match="No alignment adapter"):
        ads.apply(v, {"c": jnp.ones((2, 4))})


# --------------------------------------------------------------------------- conv adapters


def _conv1x1_reference(x, kernel, stride):
    """An independent 1x1 strided convolution (XLA's conv, no padding)."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("stride", [1, 2])
def test_residual_matrix_adapter_adds_a_strided_1x1_conv(stride):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
    y = rng.normal(size=(2, (9 - 1) // stride + 1, (9 - 1) // stride + 1, 5)).astype(np.float32)
    ad = adapters.ResidualAdapter(3, 5, stride, initializer="random")
    v = ad.init(jax.random.key(0), x, y)
    assert set(v) == {"adapters"}  # nothing in 'params'
    alpha = v["adapters"]["alpha"]
    assert alpha.shape == (1, 1, 3, 5)
    np.testing.assert_allclose(ad.apply(v, x, y), y + _conv1x1_reference(x, alpha, stride),
                               rtol=1e-5, atol=1e-5)


def test_residual_adapter_eye_init_and_vector_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    y = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    vec = adapters.ResidualAdapter(6, 6, shape="vector")
    v = vec.init(jax.random.key(0), x, y)
    np.testing.assert_array_equal(v["adapters"]["alpha"], np.full(6, 1e-4, np.float32))
    np.testing.assert_allclose(vec.apply(v, x, y), y + 1e-4 * x, rtol=1e-6)
    mat = adapters.ResidualAdapter(6, 6, shape="matrix")
    m = mat.init(jax.random.key(0), x, y)
    np.testing.assert_allclose(m["adapters"]["alpha"][0, 0], 1e-4 * np.eye(6), atol=0)
    np.testing.assert_allclose(mat.apply(m, x, y), y + 1e-4 * x, rtol=1e-6)
    # A channel-wise vector cannot change the width: falls back to a matrix.
    wide = adapters.ResidualAdapter(6, 8, shape="vector")
    w = wide.init(jax.random.key(0), x, np.zeros((2, 4, 4, 8), np.float32))
    assert w["adapters"]["alpha"].shape == (1, 1, 6, 8)


def test_serial_adapter_identity_at_init_then_affine():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
    for shape in ("matrix", "vector"):
        ad = adapters.SerialAdapter(5, 5, shape=shape)
        v = ad.init(jax.random.key(0), y, y)
        np.testing.assert_allclose(ad.apply(v, None, y), y, rtol=1e-6, atol=1e-7)
    ad = adapters.SerialAdapter(5, 5, shape="matrix", initializer="random")
    v = ad.init(jax.random.key(0), y, y)
    beta = np.asarray(v["adapters"]["beta"])[0, 0]
    bias = rng.normal(size=5).astype(np.float32)
    v = {"adapters": {"beta": v["adapters"]["beta"], "bias": bias}}
    np.testing.assert_allclose(ad.apply(v, None, y), y @ beta + bias, rtol=1e-5, atol=1e-5)


def test_pre_classifier_alignment_is_identity_at_init():
    f = np.random.default_rng(0).normal(size=(7, 12)).astype(np.float32)
    pa = adapters.PreClassifierAlignment()
    v = pa.init(jax.random.key(0), f)
    np.testing.assert_array_equal(v["params"]["linear"]["kernel"], np.eye(12, dtype=np.float32))
    np.testing.assert_allclose(pa.apply(v, f), f, rtol=1e-6)


def test_factories_reject_unknown_options():
    with pytest.raises(ValueError, match="mode"):
        adapters.tsa("sideways")
    ad = adapters.tsa("residual", init="bogus")(in_features=2, out_features=2)
    with pytest.raises(ValueError, match="init"):
        ad.init(jax.random.key(0), jnp.ones((1, 2, 2, 2)), jnp.ones((1, 2, 2, 2)))


# --------------------------------------------------------------------------- attaching


@pytest.mark.parametrize("factory,max_change", [
    (adapters.tsa("residual", "matrix"), 2e-2),   # alpha = 1e-4 I: changes up to that scale
    (adapters.tsa("residual", "vector"), 2e-2),
    (adapters.tsa("serial", "matrix"), 1e-5),     # identity: unchanged
    (adapters.series_adapter(), 1e-5),
])
def test_attached_adapters_leave_pretrained_tree_and_output_unchanged(pretrained, factory,
                                                                     max_change):
    variables, x = pretrained
    plain = TINY()
    adapted = adapters.attach(plain, factory)
    ad_vars = adapters.init_adapters(adapted, jax.random.key(3), x)
    # Every 3x3 conv of a block gets an adapter: 2 blocks x 2 convs.
    assert sorted(ad_vars) == ["layer1_0", "layer2_0"]
    assert sorted(ad_vars["layer2_0"]) == ["conv1_adapter", "conv2_adapter"]
    # The adapted model's own trees have exactly the pretrained structure and shapes.
    fresh = jax.eval_shape(adapted.init, jax.random.key(0), x)
    for col in ("params", "batch_stats"):
        assert jax.tree.map(jnp.shape, fresh[col]) == jax.tree.map(jnp.shape, variables[col])
    ref = jax.jit(plain.apply)(variables, x)["pooled"]
    out = jax.jit(adapted.apply)({**variables, "adapters": ad_vars}, x)["pooled"]
    scale = float(jnp.max(jnp.abs(ref)))
    assert float(jnp.max(jnp.abs(out - ref))) <= max_change * scale
    if max_change > 1e-4:  # the residual adapter is really there
        assert float(jnp.max(jnp.abs(out - ref))) > 0


def test_residual_tsa_changes_output_only_through_alpha(pretrained):
    """With alpha set to zero the adapted backbone equals the plain one exactly."""
    variables, x = pretrained
    adapted = adapters.attach(TINY(), adapters.tsa("residual", "matrix"))
    ad_vars = adapters.init_adapters(adapted, jax.random.key(3), x)
    zero = jax.tree.map(jnp.zeros_like, ad_vars)
    out = jax.jit(adapted.apply)({**variables, "adapters": zero}, x)
    ref = jax.jit(TINY().apply)(variables, x)
    np.testing.assert_allclose(out["pooled"], ref["pooled"], rtol=1e-6, atol=1e-7)


def test_attach_requires_a_hook():
    with pytest.raises(TypeError, match="conv_adapter"):
        adapters.attach(adapters.PreClassifierAlignment(), adapters.tsa())


def test_partitioned_optimizer_trains_only_chosen_parameters(pretrained):
    """Backbone frozen, adapters trained: the TSA setting, with an optax partition."""
    variables, x = pretrained
    adapted = adapters.attach(TINY(), adapters.tsa("residual", "matrix"))
    trainable = {"backbone": variables["params"],
                 "adapters": adapters.init_adapters(adapted, jax.random.key(3), x)}
    labels = optim.path_labels(trainable, [(r"^adapters/", "adapters")], optim.FROZEN)
    tx = optim.partitioned({"adapters": optax.sgd(0.5)}, labels)
    opt_state = tx.init(trainable)

    def loss(t):
        out = adapted.apply({"params": t["backbone"], "batch_stats": variables["batch_stats"],
                             "adapters": t["adapters"]}, x)
        return jnp.sum(out["pooled"] ** 2)

    grads = jax.grad(loss)(trainable)
    updates, _ = tx.update(grads, opt_state, trainable)
    new = optax.apply_updates(trainable, updates)
    for a, b in zip(jax.tree.leaves(new["backbone"]), jax.tree.leaves(trainable["backbone"])):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(new["adapters"]), jax.tree.leaves(trainable["adapters"]))]
    assert all(moved)
    np.testing.assert_allclose(
        new["adapters"]["layer1_0"]["conv1_adapter"]["alpha"],
        trainable["adapters"]["layer1_0"]["conv1_adapter"]["alpha"]
        - 0.5 * grads["adapters"]["layer1_0"]["conv1_adapter"]["alpha"], rtol=1e-6)
