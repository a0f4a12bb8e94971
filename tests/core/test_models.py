"""Backbones and heads: shapes, parameter counts, BatchNorm modes, head slicing, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import models

# Parameter counts of torchvision's resnet18/34/50 (11,689,512 / 21,797,672 / 25,557,032)
# minus their 1000-way fc layer; the Meta-Dataset ResNet-18 swaps the 7x7 stem for a 5x5 one
# (3 * 64 * (49 - 25) = 4,608 fewer weights).
TORCHVISION_BACKBONE_PARAMS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet18_metadataset": 11_689_512 - 513_000 - 4_608,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_BACKBONE_PARAMS))
def test_full_size_parameter_count_matches_torchvision(name):
    net = models.get_backbone(name)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 84, 84, 3)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert count == TORCHVISION_BACKBONE_PARAMS[name]
    assert net.feature_dim == (2048 if name == "resnet50" else 512)


def test_metadataset_resnet18_feature_shapes_at_84px():
    net = models.get_backbone("resnet18_metadataset")
    feats = jax.eval_shape(lambda: net.init_with_output(
        jax.random.key(0), jnp.zeros((2, 84, 84, 3)))[0])
    # 5x5 stride-2 stem with padding 1: (84 + 2 - 5) // 2 + 1 = 41; no max-pool.
    assert feats["stem"].shape == (2, 41, 41, 64)
    assert feats["layer1"].shape == (2, 41, 41, 64)
    assert feats["layer2"].shape == (2, 21, 21, 128)
    assert feats["layer3"].shape == (2, 11, 11, 256)
    assert feats["layer4"].shape == (2, 6, 6, 512)
    assert feats["pooled"].shape == (2, 512)


def test_imagenet_stem_downsamples_by_four():
    net = models.get_backbone("resnet18", width=0.125)
    feats = jax.eval_shape(lambda: net.init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
    assert feats["stem"].shape == (1, 16, 16, 8)  # 7x7/2 conv then 3x3/2 max-pool
    assert feats["layer4"].shape == (1, 2, 2, 64)


def test_width_multiplier_and_free_input_size():
    net = models.get_backbone("resnet50", width=0.125)
    x = jnp.ones((2, 24, 40, 3))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    feats = jax.jit(net.apply)(variables, x)
    assert feats["pooled"].shape == (2, net.feature_dim) == (2, 256)
    np.testing.assert_allclose(feats["pooled"], feats["layer4"].mean(axis=(1, 2)), rtol=1e-6)


def test_batchnorm_train_updates_statistics_and_eval_uses_them():
    net = models.ResNet(stage_sizes=(1, 1), stage_widths=(4, 8), stem="metadataset")
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3)) * 3 + 1
    variables = jax.jit(net.init)(jax.random.key(0), x)
    _, updates = net.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["stem_bn"]["mean"]
    after = updates["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(before, after)
    # Eval mode is deterministic per example: a sample's output doesn't depend on the batch.
    full = net.apply(variables, x)["pooled"]
    single = net.apply(variables, x[:1])["pooled"]
    np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-6)
    # Train mode normalises with batch statistics, so it does depend on the batch.
    train_full = net.apply(variables, x, train=True, mutable=["batch_stats"])[0]["pooled"]
    train_single = net.apply(variables, x[:2], train=True, mutable=["batch_stats"])[0]["pooled"]
    assert not np.allclose(train_full[:1], train_single[:1], atol=1e-4)


def test_multihead_runs_backbone_once_and_slices_per_domain():
    net = models.ResNet(stage_sizes=(1, 1), stage_widths=(4, 8), stem="metadataset")
    model = models.MultiHeadClassifier(net, (("a", 3), ("b", 5)))
    imgs = {"b": jax.random.normal(jax.random.key(1), (2, 16, 16, 3)),
            "a": jax.random.normal(jax.random.key(2), (4, 16, 16, 3))}
    variables = jax.jit(model.init)(jax.random.key(0), imgs)
    assert set(variables["params"]) == {"backbone", "heads"}
    assert set(variables["params"]["heads"]) == {"a", "b"}
    feats, logits = model.apply(variables, imgs)
    assert logits["a"].shape == (4, 3) and logits["b"].shape == (2, 5)
    assert feats["a"]["pooled"].shape == (4, 8)
    # In eval mode, each domain's slice equals running that domain alone.
    _, alone = model.apply(variables, {"b": imgs["b"]})
    np.testing.assert_allclose(logits["b"], alone["b"], rtol=1e-5, atol=1e-6)
    head = variables["params"]["heads"]["a"]
    np.testing.assert_allclose(logits["a"], feats["a"]["pooled"] @ head["kernel"] + head["bias"],
                               rtol=1e-5, atol=1e-6)
    # In train mode BatchNorm statistics are shared across domains (one backbone call).
    (_, mixed), _ = model.apply(variables, imgs, train=True, mutable=["batch_stats"])
    (_, only_b), _ = model.apply(variables, {"b": imgs["b"]}, train=True, mutable=["batch_stats"])
    assert not np.allclose(mixed["b"], only_b["b"], atol=1e-4)


def test_multihead_shard_major_layout_gives_the_same_result():
    net = models.ResNet(stage_sizes=(1,), stage_widths=(4,), stem="metadataset")
    model = models.MultiHeadClassifier(net, (("a", 3), ("b", 5)))
    imgs = {"a": jax.random.normal(jax.random.key(1), (4, 8, 8, 3)),
            "b": jax.random.normal(jax.random.key(2), (8, 8, 8, 3))}
    variables = jax.jit(model.init)(jax.random.key(0), imgs)

    @jax.jit
    def run(v, x):
        outs = [model.apply(v, x, train=True, num_shards=s, mutable=["batch_stats"])
                for s in (1, 4)]
        return outs

    (one, stats1), (four, stats4) = run(variables, imgs)
    for a, b in zip(jax.tree.leaves((one, stats1)), jax.tree.leaves((four, stats4))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of num_shards=3"):
        model.apply(variables, imgs, num_shards=3)


def test_multihead_errors_are_clear():
    net = models.ResNet(stage_sizes=(1,), stage_widths=(4,), stem="metadataset")
    model = models.MultiHeadClassifier(net, (("a", 3),))
    with pytest.raises(KeyError, match="Unknown domain"):
        model.init(jax.random.key(0), {"zzz": jnp.zeros((1, 8, 8, 3))})
    with pytest.raises(TypeError, match="dict"):
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="Unknown backbone"):
        models.get_backbone("resnet1000")
    with pytest.raises(ValueError, match="rank 4"):
        net.init(jax.random.key(0), jnp.zeros((8, 8, 3)))


def test_bfloat16_computation_keeps_float32_parameters():
    net = models.get_backbone("resnet18_metadataset", width=0.125, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    feats = jax.jit(net.apply)(variables, x)
    assert feats["pooled"].dtype == jnp.bfloat16
    ref = jax.jit(net.clone(dtype=jnp.float32).apply)(variables, x)["pooled"]
    np.testing.assert_allclose(np.asarray(feats["pooled"], np.float32), ref, rtol=0.1, atol=0.05)


def test_batch_norm_uses_the_two_pass_variance_like_pytorch():
    """A channel with a large mean and a small spread: the one-pass E[x^2] - E[x]^2 of flax's
    default loses every digit in float32; ur_jax's BatchNorm (two passes, as PyTorch) keeps
    the running variance to float precision, so 1 and 8 devices train alike."""
    from ur_jax.models.resnet import BatchNorm

    rng = np.random.default_rng(0)
    x = (1000.0 + 0.01 * rng.standard_normal((64, 1, 1, 2))).astype(np.float32)
    bn = BatchNorm(use_running_average=False, momentum=0.0)  # running stats = batch stats
    variables = bn.init(jax.random.key(0), x)
    _, updated = bn.apply(variables, x, mutable=["batch_stats"])
    var = np.asarray(updated["batch_stats"]["var"])
    expected = np.var(x.astype(np.float64).reshape(-1, 2), axis=0)
    np.testing.assert_allclose(var, expected, rtol=1e-3)
