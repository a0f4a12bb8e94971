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


# ----------------------------------------------------------------------------- student input size

def _bilinear_align_corners_numpy(x, out_h, out_w):
    """Reference written from the definition: output (i, j) samples the input at
    (i (H-1)/(H'-1), j (W-1)/(W'-1)) and blends its 2 x 2 neighbours (PyTorch's
    F.interpolate(mode='bilinear', align_corners=True), kornia.augmentation.Resize's default)."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c))
    for i in range(out_h):
        sy = i * (h - 1) / (out_h - 1)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out_w):
            sx = j * (w - 1) / (out_w - 1)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            out[:, i, j] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                            + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
    return out


def test_resize_bilinear_align_corners_matches_the_definition():
    from ur_jax.models.heads import resize_bilinear_align_corners

    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    out = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), (72, 72)))
    assert out.shape == (2, 72, 72, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, _bilinear_align_corners_numpy(x, 72, 72), atol=1e-5)
    # corners are kept exactly; a ramp a*y + b*x + c maps to a*i*63/71 + b*j*63/71 + c
    np.testing.assert_array_equal(out[:, [0, 0, -1, -1], [0, -1, 0, -1]],
                                  x[:, [0, 0, -1, -1], [0, -1, 0, -1]])
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = (2.0 * yy - 0.5 * xx + 3.0)[None, ..., None]
    ii, jj = np.mgrid[0:72, 0:72] * (63 / 71)
    np.testing.assert_allclose(np.asarray(resize_bilinear_align_corners(ramp, (72, 72)))[0, ..., 0],
                               2.0 * ii - 0.5 * jj + 3.0, atol=1e-4)
    # not jax.image.resize's half-pixel convention
    half = np.asarray(jax.image.resize(x, (2, 72, 72, 3), "bilinear"))
    assert np.abs(half - out).max() > 0.1
    assert resize_bilinear_align_corners(x, (64, 64)) is x  # unchanged size: no-op
    with pytest.raises(ValueError, match="rank 4"):
        resize_bilinear_align_corners(x[0], (72, 72))


def test_multi_head_classifier_resizes_the_listed_domains_only():
    """input_sizes=(('aircraft', 72),): the backbone sees aircraft's 64 px images at 72 x 72
    (bilinear, corners aligned), imagenet12's 72 px images unchanged."""
    rng = np.random.default_rng(1)
    imgs = {"imagenet12": rng.normal(size=(2, 72, 72, 3)).astype(np.float32),
            "aircraft": rng.normal(size=(2, 64, 64, 3)).astype(np.float32)}
    model = MultiHeadClassifier(ResNet26(domains=tuple(imgs), width=0.125),
                                (("imagenet12", 4), ("aircraft", 3)),
                                input_sizes=(("aircraft", 72),))

    @jax.jit
    def backbone_inputs(imgs):
        seen = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, ResNet26) and context.method_name == "__call__":
                seen[kwargs["domain"]] = args[0]
            return next_fun(*args, **kwargs)

        variables = model.init(jax.random.key(0), imgs)
        with nn.intercept_methods(record):
            model.apply(variables, imgs)
        return seen

    seen = jax.tree.map(np.asarray, backbone_inputs(imgs))
    assert seen["aircraft"].shape == (2, 72, 72, 3)
    np.testing.assert_allclose(seen["aircraft"],
                               _bilinear_align_corners_numpy(imgs["aircraft"], 72, 72), atol=1e-5)
    np.testing.assert_array_equal(seen["imagenet12"], imgs["imagenet12"])
    # same parameters as without resizing (the backbone pools over space)
    plain = MultiHeadClassifier(model.backbone, model.num_classes)
    shapes = [jax.eval_shape(m.init, jax.random.key(0), imgs) for m in (model, plain)]
    assert shapes[0] == shapes[1]
