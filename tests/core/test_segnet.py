"""SegNet (MTAN) and max-pooling with indices / unpooling, against NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax.models.segnet import (
    SegNet,
    from_torch_indices,
    l2_normalize,
    max_pool_with_indices,
    max_unpool,
    to_torch_indices,
)

MTAN_FILTERS = (64, 128, 256, 512, 512)


# ------------------------------------------------------------------ NumPy references

def np_pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loop reference: pooled values, window position (dy*2+dx) and PyTorch flat index."""
    b, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    pooled = np.zeros((b, ho, wo, c), x.dtype)
    pos = np.zeros((b, ho, wo, c), np.int64)
    flat = np.zeros((b, ho, wo, c), np.int64)
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    best, best_k = None, None
                    for dy in range(2):
                        for dx in range(2):
                            v = x[n, 2 * i + dy, 2 * j + dx, ch]
                            if best is None or v > best:  # strict: the first maximum wins
                                best, best_k = v, (dy, dx)
                    pooled[n, i, j, ch] = best
                    pos[n, i, j, ch] = best_k[0] * 2 + best_k[1]
                    flat[n, i, j, ch] = (2 * i + best_k[0]) * w + (2 * j + best_k[1])
    return pooled, pos, flat


def np_unpool(v: np.ndarray, pos: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Loop reference of MaxUnpool2d(2, 2): v at its argmax position, zeros elsewhere."""
    b, ho, wo, c = v.shape
    out = np.zeros((b,) + tuple(out_hw) + (c,), v.dtype)
    for n, i, j, ch in np.ndindex(b, ho, wo, c):
        dy, dx = divmod(int(pos[n, i, j, ch]), 2)
        out[n, 2 * i + dy, 2 * j + dx, ch] = v[n, i, j, ch]
    return out


def _inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    ties = rng.integers(0, 2, size=(2, 6, 8, 3)).astype(np.float32)  # many tied windows
    ties[0, :2, :2, 0] = 1.0  # an all-equal window: position 0
    return [rng.normal(size=(2, 6, 8, 3)).astype(np.float32), ties,
            rng.normal(size=(1, 7, 9, 2)).astype(np.float32)]  # odd: floor mode


_pool = jax.jit(max_pool_with_indices)


@pytest.mark.parametrize("case", range(3))
def test_pool_unpool_match_numpy(case):
    x = _inputs()[case]
    h, w = x.shape[1:3]
    ref_pooled, ref_pos, ref_flat = np_pool(x)
    pooled, idx = _pool(jnp.asarray(x))
    assert pooled.shape == ref_pooled.shape and idx.dtype == jnp.int8
    np.testing.assert_array_equal(np.asarray(pooled), ref_pooled)
    np.testing.assert_array_equal(np.asarray(idx), ref_pos)
    if case == 1:
        assert np.asarray(idx)[0, 0, 0, 0] == 0 and (ref_pos > 0).any()
    # Unpooling the pooled values puts x back at every window's argmax and 0 elsewhere.
    up = np.asarray(max_unpool(pooled, idx, output_hw=(h, w)))
    expected = np_unpool(ref_pooled, ref_pos, (h, w))
    np.testing.assert_array_equal(up, expected)
    mask = np_unpool(np.ones_like(ref_pooled), ref_pos, (h, w)) > 0
    np.testing.assert_array_equal(up[mask], x[mask])
    assert mask.reshape(-1).sum() == ref_pooled.size  # exactly one position per window
    # PyTorch flat indices and back.
    flat = np.asarray(to_torch_indices(idx, w))
    assert flat.dtype == np.int32
    np.testing.assert_array_equal(flat, ref_flat)
    np.testing.assert_array_equal(np.asarray(from_torch_indices(flat, w)), ref_pos)


def test_pool_default_output_size_and_bad_arguments():
    x = jnp.asarray(_inputs()[0])
    pooled, idx = _pool(x)
    assert max_unpool(pooled, idx).shape == x.shape
    with pytest.raises(ValueError, match="output_hw"):
        max_unpool(pooled, idx, output_hw=(9, 8))
    with pytest.raises(ValueError, match="indices shape"):
        max_unpool(pooled, idx[:, :1])
    with pytest.raises(TypeError, match="integers"):
        max_unpool(pooled, idx.astype(jnp.float32))
    with pytest.raises(ValueError, match="rank 4"):
        max_pool_with_indices(x[0])


def test_gradients_go_to_the_argmax_only():
    x = _inputs()[1]  # ties: an averaging max would split the gradient
    rng = np.random.default_rng(1)
    _, ref_pos, _ = np_pool(x)
    wt = rng.normal(size=ref_pos.shape).astype(np.float32)

    def pooled_sum(z):
        return jnp.sum(max_pool_with_indices(z)[0] * wt)

    g = np.asarray(jax.jit(jax.grad(pooled_sum))(jnp.asarray(x)))
    np.testing.assert_array_equal(g, np_unpool(wt, ref_pos, x.shape[1:3]))

    # Through unpooling: d/dv sum(unpool(v) * G) = G read at each value's position.
    big_g = rng.normal(size=x.shape).astype(np.float32)
    idx = jnp.asarray(ref_pos, jnp.int8)
    gv = np.asarray(jax.grad(lambda v: jnp.sum(max_unpool(v, idx) * big_g))(jnp.asarray(wt)))
    n, i, j, c = np.indices(ref_pos.shape)
    np.testing.assert_array_equal(gv, big_g[n, 2 * i + ref_pos // 2, 2 * j + ref_pos % 2, c])


def test_l2_normalize_is_safe_at_zero():
    v = jnp.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(l2_normalize(v)), [[0.6, 0.8, 0.0], [0, 0, 0]],
                               rtol=1e-6)
    g = jax.grad(lambda z: jnp.sum(l2_normalize(z) * jnp.arange(3.0)))(v)
    assert np.isfinite(np.asarray(g)).all()


# ------------------------------------------------------------------ the model

def _expected_convs(f, tasks):
    """(path, c_in, c_out, k) of every conv, from MTAN's model_segnet_split.py."""
    convs = []
    for i in range(5):
        convs.append((f"encoder_block_{i}", 3 if i == 0 else f[i - 1], f[i], 3))
        for k in range(1 if i < 2 else 2):
            convs.append((f"conv_block_enc_{i}_{k}", f[i], f[i], 3))
        out = f[max(i - 1, 0)]
        convs.append((f"decoder_block_{i}", f[i], out, 3))
        for k in range(1 if i < 2 else 2):
            convs.append((f"conv_block_dec_{i}_{k}", out, out, 3))
    heads = [(f"heads/{t}/conv3x3", f[0], f[0], 3) for t, _ in tasks]
    heads += [(f"heads/{t}/conv1x1", f[0], n, 1) for t, n in tasks]
    return convs, heads


def _by_hand_count(f, tasks):
    convs, heads = _expected_convs(f, tasks)
    # conv_layer: k*k*cin*cout weights + cout bias + BN scale and shift.
    trunk = sum(k * k * ci * co + co + 2 * co for _, ci, co, k in convs)
    return trunk + sum(k * k * ci * co + co for _, ci, co, k in heads)


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_parameter_count_and_layer_shapes_width_1():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    tasks = (("semantic", 13), ("depth", 1), ("normal", 3))
    shapes = jax.eval_shape(SegNet(tasks=tasks).init, jax.random.PRNGKey(0), x)
    expected = _by_hand_count(MTAN_FILTERS, tasks)
    assert _count(shapes["params"]) == expected
    convs, heads = _expected_convs(MTAN_FILTERS, tasks)
    for name, ci, co, k in convs:
        layer = shapes["params"]["backbone"][name]
        assert layer["conv"]["kernel"].shape == (k, k, ci, co), name
        assert layer["bn"]["scale"].shape == (co,), name
        assert shapes["batch_stats"]["backbone"][name]["bn"]["mean"].shape == (co,), name
    for path, ci, co, k in heads:
        _, task, conv = path.split("/")
        assert shapes["params"]["heads"][task][conv]["kernel"].shape == (k, k, ci, co), path
    assert len(shapes["params"]["backbone"]) == len(convs) == 26
    # MTAN's scripts print parameter counts relative to 24,981,069: its single-task
    # (semantic, 13 classes) SegNet. The same module with one task has exactly that many.
    stl = jax.eval_shape(SegNet(tasks=(("semantic", 13),)).init, jax.random.PRNGKey(0), x)
    assert _count(stl["params"]) == 24_981_069


def test_bfloat16_model_outputs_float32_predictions():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    model = SegNet(width=1 / 16, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes["params"]))
    preds, feats = jax.eval_shape(model.apply, shapes, x)
    assert all(p.dtype == jnp.float32 for p in preds.values())
    assert feats["decoder"].dtype == jnp.bfloat16


def test_bad_input_size_is_refused():
    model = SegNet(width=1 / 16)
    for shape in [(1, 40, 64, 3), (1, 32, 48, 3)]:
        with pytest.raises(ValueError, match="divisible by 32"):
            jax.eval_shape(model.init, jax.random.PRNGKey(0),
                           jax.ShapeDtypeStruct(shape, jnp.float32))
    with pytest.raises(ValueError, match="unique"):
        jax.eval_shape(SegNet(tasks=(("a", 1), ("a", 2)), width=1 / 16).init,
                       jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


@pytest.fixture(scope="module")
def small():
    """A width-1/16 three-task SegNet (f = 4, 8, 16, 32, 32), initialised, with 2x32x64 input."""
    model = SegNet(width=1 / 16)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 64, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    preds, feats = jax.jit(model.apply)(variables, x)  # eval mode, compiled once
    return model, x, variables, preds, feats


def test_multi_task_outputs_features_and_init(small):
    _, _, variables, preds, feats = small
    assert {k: v.shape for k, v in preds.items()} == {
        "semantic": (2, 32, 64, 13), "depth": (2, 32, 64, 1), "normal": (2, 32, 64, 3)}
    assert all(v.dtype == jnp.float32 for v in preds.values())
    assert feats["bottleneck"].shape == (2, 1, 2, 32)
    assert feats["decoder"].shape == (2, 32, 64, 4)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(preds["normal"]), axis=-1), 1.0,
                               rtol=1e-5)
    # The bottleneck is the fifth max-pool of the deepest encoder level.
    np.testing.assert_array_equal(np.asarray(feats["bottleneck"]),
                                  np.asarray(max_pool_with_indices(feats["encoder4"])[0]))
    # MTAN init: conv biases 0, BN scale 1 / shift 0, kernels untruncated Xavier normal.
    params = variables["params"]
    for name, layer in params["backbone"].items():
        assert not np.asarray(layer["conv"]["bias"]).any(), name
        np.testing.assert_array_equal(np.asarray(layer["bn"]["scale"]), 1.0)
        assert not np.asarray(layer["bn"]["bias"]).any(), name
    assert not np.asarray(params["heads"]["semantic"]["conv1x1"]["bias"]).any()
    kernel = np.asarray(params["backbone"]["conv_block_enc_4_0"]["conv"]["kernel"])  # 3x3x32x32
    std = np.sqrt(2.0 / (9 * 32 + 9 * 32))
    assert abs(kernel.std() / std - 1) < 0.05
    assert np.abs(kernel).max() > 3 * std  # not truncated at 2 sigma


def test_single_task_model_is_the_shared_network_plus_one_head(small):
    _, x, variables, full, _ = small
    stl = SegNet(tasks=(("semantic", 13),), width=1 / 16)
    stl_vars = {"params": {"backbone": variables["params"]["backbone"],
                           "heads": {"semantic": variables["params"]["heads"]["semantic"]}},
                "batch_stats": variables["batch_stats"]}
    preds, feats = jax.jit(stl.apply)(stl_vars, x)
    assert set(preds) == {"semantic"} and preds["semantic"].shape == (2, 32, 64, 13)
    np.testing.assert_allclose(np.asarray(preds["semantic"]), np.asarray(full["semantic"]),
                               rtol=1e-5, atol=1e-6)
    assert feats["bottleneck"].shape == (2, 1, 2, 32)


def test_train_updates_batch_stats_eval_does_not(small):
    model, x, variables, _, _ = small
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    _, new = apply(variables, x, train=True, mutable=("batch_stats",))
    # (train=False leaves batch_stats unchanged: test_parts_compose_to_the_model.)
    # First BN's running mean: 0.9 * 0 + 0.1 * batch mean of conv(x) (3x3, pad 1, bias 0).
    kernel = np.asarray(variables["params"]["backbone"]["encoder_block_0"]["conv"]["kernel"])
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    conv = sum(np.einsum("bhwc,cd->bhwd", xp[:, dy:dy + 32, dx:dx + 64], kernel[dy, dx])
               for dy in range(3) for dx in range(3))
    bn = new["batch_stats"]["backbone"]["encoder_block_0"]["bn"]
    np.testing.assert_allclose(np.asarray(bn["mean"]), 0.1 * conv.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn["var"]), 0.9 + 0.1 * conv.var(axis=(0, 1, 2)),
                               rtol=1e-4)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new["batch_stats"]),
                                                         jax.tree.leaves(variables["batch_stats"]))]
    assert all(changed)


def test_parts_compose_to_the_model(small):
    model, x, variables, full, full_feats = small
    backbone, heads = model.parts()
    stats = variables["batch_stats"]["backbone"]
    feats, same = jax.jit(backbone.apply, static_argnames="mutable")(
        {"params": variables["params"]["backbone"], "batch_stats": stats}, x,
        mutable="batch_stats")
    # Evaluation (train=False, the default) reads the running statistics, never writes them.
    jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], stats)
    preds = jax.jit(heads.apply)({"params": variables["params"]["heads"]}, feats["decoder"])
    for k in full:
        np.testing.assert_allclose(np.asarray(preds[k]), np.asarray(full[k]), rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(np.asarray(feats["bottleneck"]),
                               np.asarray(full_feats["bottleneck"]), rtol=1e-6)


# ------------------------------------------------------------------ stretch: DeepLabv3 ResNet-50

def _resnet50_count(width_in=3):
    n, cin = 7 * 7 * width_in * 64 + 2 * 64, 64
    for i, (blocks, f) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for j in range(blocks):
            n += cin * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
            if j == 0:  # projection shortcut (channels change in every stage's first block)
                n += cin * 4 * f + 2 * 4 * f
            cin = 4 * f
    return n


def _deeplab_head_count(c, n_out, feat=256, rates=3):
    aspp = (c * feat + 2 * feat) * 2 + rates * (9 * c * feat + 2 * feat)  # 1x1, pool, 3x3s
    aspp += (rates + 2) * feat * feat + 2 * feat  # projection of the concatenation
    return aspp + 9 * feat * feat + 2 * feat + feat * n_out + n_out


def _conv_dilations(model, x):
    """Kernel dilation -> number of convolutions in the forward pass (ur_jax's convolutions
    sit inside custom_jvp calls: sub-jaxprs are walked too)."""
    jaxpr = jax.make_jaxpr(model.apply)(jax.eval_shape(model.init, jax.random.PRNGKey(0), x), x)
    counts: dict[int, int] = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                d = eqn.params["rhs_dilation"]
                assert d[0] == d[1]
                counts[d[0]] = counts.get(d[0], 0) + 1
            for value in eqn.params.values():
                if isinstance(value, jax.extend.core.ClosedJaxpr):
                    walk(value.jaxpr)
                elif isinstance(value, jax.extend.core.Jaxpr):
                    walk(value)

    walk(jaxpr.jaxpr)
    return counts


def test_deeplab_parameters_match_resnet50_and_torchvision():
    from ur_jax.models.resnet import ResNet50
    from ur_jax.models.segnet import DeepLabV3ResNet50

    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(DeepLabV3ResNet50(tasks=(("semantic", 21),)).init,
                            jax.random.PRNGKey(0), x)
    expected = _resnet50_count() + _deeplab_head_count(2048, 21)
    assert _count(shapes["params"]) == expected
    # torchvision's deeplabv3_resnet50 (21 classes) lists 42,004,074 parameters, including
    # its auxiliary FCN head on layer3 (3x3 conv 1024->256, BN, 1x1 conv 256->21).
    aux = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21
    assert expected == 42_004_074 - aux
    # The dilated backbone's tree is exactly an ImageNet ResNet-50's.
    plain = jax.eval_shape(ResNet50().init, jax.random.PRNGKey(0), x)
    ours = {"params": shapes["params"]["backbone"],
            "batch_stats": shapes["batch_stats"]["backbone"]}
    assert jax.tree.map(lambda a: a.shape, ours) == jax.tree.map(lambda a: a.shape, plain)


def test_deeplab_dilations_shapes_and_interface():
    from ur_jax.models.segnet import DeepLabV3ResNet50

    x = jax.ShapeDtypeStruct((2, 32, 64, 3), jnp.float32)
    model = DeepLabV3ResNet50(width=1 / 16)
    # ResNet-50 has 53 convs (stem, 16 x 3 in blocks, 4 projections), 16 of them 3x3. Output
    # stride 8: layer3's 3x3s = 1 block at dilation 1 + 5 at 2; layer4's = 1 at 2 + 2 at 4.
    # Each head: ASPP convs at 12, 24, 36, and 5 undilated (3 in ASPP, 3x3, classifier).
    assert _conv_dilations(model, x) == {1: 53 - 6 - 2 + 3 * 5, 2: 6, 4: 2, 12: 3, 24: 3,
                                         36: 3}
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    preds, feats = jax.eval_shape(model.apply, variables, x)
    assert {k: (v.shape, v.dtype) for k, v in preds.items()} == {
        "semantic": ((2, 32, 64, 13), jnp.float32), "depth": ((2, 32, 64, 1), jnp.float32),
        "normal": ((2, 32, 64, 3), jnp.float32)}
    assert feats["layer4"].shape == feats["bottleneck"].shape == (2, 4, 8, 128)
    assert feats["decoder"].shape == (2, 4, 8, 128)
    os16 = DeepLabV3ResNet50(width=1 / 16, output_stride=16, tasks=(("depth", 1),))
    assert _conv_dilations(os16, x) == {1: 53 - 2 + 5, 2: 2, 12: 1, 24: 1, 36: 1}
    _, feats16 = jax.eval_shape(os16.apply, jax.eval_shape(os16.init, jax.random.PRNGKey(0), x),
                                x)
    assert feats16["layer4"].shape == (2, 2, 4, 128)
    with pytest.raises(ValueError, match="divisible by output_stride=8"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0),
                       jax.ShapeDtypeStruct((1, 36, 64, 3), jnp.float32))


def test_bilinear_upsampling_matches_pytorch_half_pixel_formula():
    """The heads upsample like F.interpolate(mode='bilinear', align_corners=False)."""
    rng = np.random.default_rng(2)
    small_map = rng.normal(size=(1, 3, 5, 2)).astype(np.float32)
    s = 4

    def src(n_in, n_out):  # PyTorch: source = (dst + 0.5) / scale - 0.5, clamped at 0
        pos = np.maximum((np.arange(n_out) + 0.5) / s - 0.5, 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, pos - lo

    (y0, y1, fy), (x0, x1, fx) = src(3, 12), src(5, 20)
    m = small_map[0]
    top = m[y0][:, x0] * (1 - fx)[None, :, None] + m[y0][:, x1] * fx[None, :, None]
    bot = m[y1][:, x0] * (1 - fx)[None, :, None] + m[y1][:, x1] * fx[None, :, None]
    ref = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    out = jax.image.resize(jnp.asarray(small_map), (1, 12, 20, 2), "bilinear")
    np.testing.assert_allclose(np.asarray(out)[0], ref, rtol=1e-5, atol=1e-6)
