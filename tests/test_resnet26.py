"""ResNet-26 of the residual-adapter papers: architecture, per-domain parts, adapters."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from ur_jax.models import (
    MultiHeadClassifier,
    ResNet26,
    from_single_domain,
    get_backbone,
)
from ur_jax.models.resnet26 import AdapterBlock


def _conv_params_by_hand():
    # stem 3x3x3x32; stage i: first block c_in -> c, then 7 convs c -> c (3x3, no bias)
    total = 3 * 3 * 3 * 32
    c_in = 32
    for c in (64, 128, 256):
        total += 9 * c_in * c + 7 * 9 * c * c
        c_in = c
    return total


def test_architecture_shapes_and_parameter_count():
    b = get_backbone("resnet26")
    v = jax.eval_shape(lambda: b.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    flat = flatten_dict(v["params"])
    convs = sum(np.prod(x.shape) for k, x in flat.items() if k[-1] == "kernel")
    assert convs == _conv_params_by_hand() == 5_806_944
    bns = sum(np.prod(x.shape) for k, x in flat.items() if k[-1] in ("scale", "bias"))
    # stem 32, 24 convs each with a BN, the final BN 256
    assert bns == 2 * (32 + 2 * 4 * (64 + 128 + 256) + 256)
    feats = jax.eval_shape(lambda v: b.apply(v, jnp.zeros((2, 64, 64, 3))), v)
    assert feats["stem"].shape == (2, 64, 64, 32)
    assert feats["layer1"].shape == (2, 32, 32, 64)
    assert feats["layer3"].shape == (2, 8, 8, 256)
    assert feats["pooled"].shape == (2, 256)
    big = jax.eval_shape(lambda v: b.apply(v, jnp.zeros((1, 72, 72, 3))), v)
    assert big["layer3"].shape == (1, 9, 9, 256)
    assert b.feature_dim == 256 and not b.domain_specific


def test_shortcut_is_average_pool_with_zero_channels():
    """With its convs zeroed, a block is relu(shortcut(x)) (BatchNorm of 0 is its bias, 0):
    2x2 average pooling, then zero channels up to the block's width."""
    blk = AdapterBlock(features=8, strides=2, norm=functools.partial(nn.BatchNorm,
                                                                     use_running_average=True))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 4))
    v = blk.init(jax.random.key(0), x, None)
    v = {**v, "params": jax.tree.map(lambda a: jnp.zeros_like(a) if a.ndim == 4 else a, v["params"])}
    out = np.asarray(blk.apply(v, x, None))
    pooled = np.asarray(x).reshape(2, 8, 2, 8, 2, 4).mean(axis=(2, 4))
    want = np.maximum(np.concatenate([pooled, np.zeros_like(pooled)], -1), 0)
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert out.shape == (2, 8, 8, 8)


def test_per_domain_batchnorm_is_isolated_and_convs_shared():
    m = MultiHeadClassifier(ResNet26(domains=("a", "b"), width=0.125), (("a", 3), ("b", 4)))
    imgs = {"a": jnp.ones((2, 16, 16, 3)), "b": jnp.ones((2, 24, 24, 3))}
    v = m.init(jax.random.key(0), imgs)
    layer = v["params"]["backbone"]["layer2_1"]
    assert set(layer["bn1"]) == {"a", "b"} and "kernel" in layer["conv1"]
    (_, logits), upd = m.apply(v, {"a": 3 * jax.random.normal(jax.random.key(2), (4, 16, 16, 3))},
                               train=True, mutable=["batch_stats"])
    assert set(logits) == {"a"}
    before, after = flatten_dict(v["batch_stats"]), flatten_dict(upd["batch_stats"])
    changed = {k for k in before if not np.allclose(before[k], after[k])}
    assert changed and all("a" in k for k in changed)
    assert not any("b" in k for k in changed)
    with pytest.raises(ValueError, match="pass domain"):
        m.backbone.apply({"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]},
                         imgs["a"])
    with pytest.raises(KeyError, match="Unknown domain"):
        m.backbone.apply({"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]},
                         imgs["a"], domain="c")


@pytest.mark.parametrize("adapter", ["parallel", "series"])
def test_adapters_start_at_the_pretrained_network(adapter):
    """From a teacher, a per-domain student with zero-init parallel (or identity series)
    adapters computes the teacher's features on every domain."""
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    teacher = MultiHeadClassifier(ResNet26(width=0.125), (("a", 5),))
    tv = teacher.init(jax.random.key(0), {"a": x})
    # non-trivial BatchNorm statistics
    leaves, tdef = jax.tree.flatten(tv["batch_stats"])
    rng = np.random.default_rng(0)
    tv = {**tv, "batch_stats": jax.tree.unflatten(tdef, [
        a * rng.uniform(0.5, 1.5, a.shape) if a.min() > 0.5 else a + rng.normal(0, 0.05, a.shape)
        for a in map(np.asarray, leaves)])}  # variances scaled, means shifted
    student = MultiHeadClassifier(ResNet26(domains=("a", "b"), adapter=adapter, width=0.125),
                                  (("a", 5), ("b", 2)))
    sv = student.init(jax.random.key(1), {"a": x, "b": x})
    sv, copied = from_single_domain(sv, tv, ("a", "b"), heads={"a": "a"})
    assert copied > 0
    keys = flatten_dict(sv["params"]["backbone"])
    assert any(k[-1] in ("alpha", "beta") for k in keys)
    t_feats, t_logits = teacher.apply(tv, {"a": x})
    assert float(jnp.std(t_feats["a"]["pooled"])) > 1e-3
    s_feats, s_logits = student.apply(sv, {"a": x, "b": x})
    for d in ("a", "b"):
        np.testing.assert_allclose(s_feats[d]["pooled"], t_feats["a"]["pooled"], atol=1e-5)
    np.testing.assert_allclose(s_logits["a"], t_logits["a"], atol=1e-5)
    # the adapters are trainable parameters and change the output once non-zero
    bumped = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.05 if any(getattr(k, "key", "") in ("alpha", "beta") for k in p) else a,
        sv["params"])
    out = student.apply({**sv, "params": bumped}, {"b": x})[0]["b"]["pooled"]
    assert not np.allclose(out, t_feats["a"]["pooled"], atol=1e-3)


def test_random_parallel_init_and_bad_adapter():
    b = ResNet26(domains=("a",), adapter="parallel", adapter_init="random", width=0.125)
    v = b.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    alpha = v["params"]["layer1_0"]["conv1_adapter"]["a"]["alpha"]
    assert float(jnp.std(alpha)) > 0
    with pytest.raises(ValueError, match="Unknown adapter"):
        ResNet26(adapter="bogus").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
