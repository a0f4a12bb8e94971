"""MTAN's attention SegNet (ur_jax.models.mtan): shapes, parameter count, masks, the shared
network being SegNet's, the registry, parts() refusal and one multi-task step.

Two-level networks (4 and 8 channels) on 32x32 images keep the compilations short; the
width-1 count uses ``jax.eval_shape`` (no initialisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import dense_steps, losses, mtl, optim
from ur_jax.models import MTANSegNet, SegNet, dense_model_names, get_dense_model
from ur_jax.models.mtan import (
    MTAN_NYU_PARAMETERS,
    mtan_parameter_count,
    upsample2x_align_corners,
)

TASKS = (("semantic", 5), ("depth", 1), ("normal", 3))
SMALL = MTANSegNet(tasks=TASKS, filters=(4, 8))
B, H, W = 2, 32, 32


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def small():
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (B, H, W, 3)), jnp.float32)
    variables = jax.jit(lambda r, a: SMALL.init(r, a, train=False))(jax.random.key(0), x)
    return variables, x


def test_parameter_count_width_1_nyu_and_closed_form():
    """44,229,073 at width 1 with NYU-v2's tasks (MTAN's printed 44,229,076 includes its three
    logsigma loss weights); the closed form agrees for other tasks, filters and widths."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(MTANSegNet().init, jax.random.PRNGKey(0), x)
    params = shapes["params"]
    assert _count(params) == MTAN_NYU_PARAMETERS == mtan_parameter_count() == 44_229_073
    assert _count(params["backbone"]) == 24_943_296  # MTAN's shared SegNet
    assert _count({k: v for k, v in params.items() if "block_att" in k}) == 10_220_160
    for task, out in (("semantic", 13), ("depth", 1), ("normal", 3)):
        head = params["heads"][task]
        assert _count({k: v for k, v in head.items() if "_att_" in k}) == 2_984_576
        assert _count({k: head[k] for k in ("conv3x3", "conv1x1")}) == 36_928 + 65 * out
    # Shapes of MTAN's layers (PyTorch in -> out channels), incl. the 512 -> 512 level 4.
    assert params["heads"]["depth"]["encoder_att_3"]["conv0"]["kernel"].shape == (1, 1, 1024, 512)
    assert params["heads"]["depth"]["decoder_att_2"]["conv0"]["kernel"].shape == (1, 1, 384, 128)
    assert params["heads"]["depth"]["decoder_att_0"]["conv1"]["kernel"].shape == (1, 1, 64, 64)
    assert params["encoder_block_att_0"]["conv"]["kernel"].shape == (3, 3, 64, 128)
    assert params["encoder_block_att_4"]["conv"]["kernel"].shape == (3, 3, 512, 512)
    assert params["decoder_block_att_4"]["conv"]["kernel"].shape == (3, 3, 512, 512)
    assert params["decoder_block_att_1"]["conv"]["kernel"].shape == (3, 3, 128, 64)
    # The shared network has SegNet's backbone layout exactly.
    segnet = jax.eval_shape(SegNet().init, jax.random.PRNGKey(0), x)
    assert (jax.tree.map(lambda a: a.shape, segnet["params"]["backbone"])
            == jax.tree.map(lambda a: a.shape, params["backbone"]))
    assert (jax.tree.map(lambda a: a.shape, segnet["batch_stats"]["backbone"])
            == jax.tree.map(lambda a: a.shape, shapes["batch_stats"]["backbone"]))
    for tasks, filters, width in (((("a", 7),), (64, 128, 256, 512, 512), 0.25),
                                  ((("a", 2), ("b", 1), ("c", 3), ("d", 4)), (4, 8, 12), 1.0),
                                  ((("a", 2),), (6,), 0.5)):
        model = MTANSegNet(tasks=tasks, filters=filters, width=width)
        got = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
        assert _count(got["params"]) == mtan_parameter_count(tasks, filters, width)


def test_outputs_features_masks_and_dtypes(small):
    variables, x = small
    (preds, feats), inter = jax.jit(lambda v, a: SMALL.apply(
        v, a, train=False, mutable=["intermediates"]))(variables, x)
    assert {t: p.shape for t, p in preds.items()} == {
        "semantic": (B, H, W, 5), "depth": (B, H, W, 1), "normal": (B, H, W, 3)}
    assert all(p.dtype == jnp.float32 for p in preds.values())
    np.testing.assert_allclose(np.linalg.norm(preds["normal"], axis=-1), 1.0, atol=1e-5)
    assert feats["bottleneck"].shape == (B, H // 4, W // 4, 8)
    assert feats["decoder"].shape == (B, H, W, 4)
    assert feats["encoder0"].shape == (B, H, W, 4) and feats["encoder1"].shape == (B, 16, 16, 8)
    for t, _ in TASKS:
        assert feats[f"decoder_{t}"].shape == (B, H, W, 4)
    masks = inter["intermediates"]["heads"]
    assert set(masks) == {t for t, _ in TASKS}
    shapes = {"encoder_mask_0": (B, 32, 32, 4), "encoder_mask_1": (B, 16, 16, 8),
              "decoder_mask_1": (B, 16, 16, 4), "decoder_mask_0": (B, 32, 32, 4)}
    for t in masks:
        assert {k: v[0].shape for k, v in masks[t].items()} == shapes
        for m in masks[t].values():
            assert np.all((m[0] > 0) & (m[0] < 1))
    # With batch statistics (training) the masks' inputs are normalised: spread over (0, 1).
    _, train_inter = jax.jit(lambda v, a: SMALL.apply(
        v, a, train=True, mutable=["intermediates", "batch_stats"]))(variables, x)
    for t, per_task in train_inter["intermediates"]["heads"].items():
        for k, (m,) in per_task.items():
            m = np.asarray(m)
            assert np.all((m > 0) & (m < 1)) and m.std() > 0.05, (t, k, m.std())
    # The head reads the attended feature: the last decoder mask times the shared decoder.
    np.testing.assert_allclose(feats["decoder_depth"],
                               masks["depth"]["decoder_mask_0"][0] * feats["decoder"], rtol=1e-6)


def test_shared_network_is_segnets_backbone(small):
    """A SegNet with MTAN's backbone subtree computes MTAN's shared features exactly."""
    variables, x = small
    segnet = SegNet(tasks=(("depth", 1),), filters=(4, 8))
    seg_vars = jax.jit(lambda r, a: segnet.init(r, a))(jax.random.key(1), x)
    seg_vars = {"params": {**seg_vars["params"], "backbone": variables["params"]["backbone"]},
                "batch_stats": {"backbone": variables["batch_stats"]["backbone"]}}
    _, seg_feats = jax.jit(lambda v, a: segnet.apply(v, a))(seg_vars, x)
    _, feats = jax.jit(lambda v, a: SMALL.apply(v, a))(variables, x)
    for k in ("encoder0", "encoder1", "bottleneck", "decoder"):
        np.testing.assert_array_equal(feats[k], seg_feats[k])


def test_train_mode_updates_statistics_of_every_batchnorm(small):
    variables, x = small
    (preds, _), new = jax.jit(lambda v, a: SMALL.apply(v, a, train=True,
                                                       mutable=["batch_stats"]))(variables, x)
    assert all(np.isfinite(p).all() for p in preds.values())
    assert jax.tree.structure(new["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new["batch_stats"]),
                                                     jax.tree.leaves(variables["batch_stats"]))]
    assert all(changed)


def test_one_task_model_and_registry():
    assert "mtan" in dense_model_names()
    model = get_dense_model("mtan", tasks=(("depth", 1),), filters=(4,), width=1.0)
    assert isinstance(model, MTANSegNet) and model.task_names == ("depth",)
    x = jnp.ones((1, 16, 16, 3), jnp.float32)
    variables = jax.jit(lambda r, a: model.init(r, a))(jax.random.key(2), x)
    preds, feats = jax.jit(lambda v, a: model.apply(v, a))(variables, x)
    assert preds["depth"].shape == (1, 16, 16, 1) and np.isfinite(preds["depth"]).all()
    assert feats["bottleneck"].shape == (1, 8, 8, 4)
    assert set(variables["params"]["heads"]) == {"depth"}
    bf16 = get_dense_model("mtan", tasks=TASKS, filters=(4, 8), dtype=jnp.bfloat16)
    shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    preds, feats = jax.eval_shape(bf16.apply, shapes, jnp.zeros((1, 32, 32, 3)))
    assert all(p.dtype == jnp.float32 for p in preds.values())
    assert feats["decoder"].dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(shapes))
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(SMALL.init, jax.random.PRNGKey(0), jnp.zeros((1, 30, 32, 3)))
    with pytest.raises(ValueError, match="unique"):
        jax.eval_shape(MTANSegNet(tasks=(("a", 1), ("a", 2)), filters=(4,)).init,
                       jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


def test_upsampling_matches_align_corners_formula():
    rng = np.random.default_rng(3)
    for h, w in ((1, 1), (2, 3), (5, 4)):
        x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
        ref = np.zeros((2, 2 * h, 2 * w, 3))
        for i in range(2 * h):
            sy = i * (h - 1) / (2 * h - 1)
            y0 = int(np.floor(sy)); y1 = min(y0 + 1, h - 1); ty = sy - y0
            for j in range(2 * w):
                sx = j * (w - 1) / (2 * w - 1)
                x0 = int(np.floor(sx)); x1 = min(x0 + 1, w - 1); tx = sx - x0
                ref[:, i, j] = ((1 - ty) * ((1 - tx) * x[:, y0, x0] + tx * x[:, y0, x1])
                                + ty * ((1 - tx) * x[:, y1, x0] + tx * x[:, y1, x1]))
        got = np.asarray(upsample2x_align_corners(jnp.asarray(x)))
        np.testing.assert_allclose(got, ref, atol=1e-6)
        for i, j in ((0, 0), (-1, -1), (0, -1), (-1, 0)):  # corners on corners
            np.testing.assert_allclose(got[:, i, j], x[:, i, j], rtol=1e-6)


def _batch(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(B, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return {"image": rng.uniform(0, 1, (B, H, W, 3)).astype(np.float32),
            "semantic": rng.integers(-1, 5, (B, H, W)).astype(np.int32),
            "depth": rng.uniform(0.5, 5.0, (B, H, W, 1)).astype(np.float32),
            "normal": normal}


def test_parts_refused_and_feature_space_step_says_use_params(small):
    with pytest.raises(ValueError, match=r"space='params'"):
        SMALL.parts()
    variables, _ = small
    method = mtl.get_method("pcgrad")
    state = dense_steps.init_mtl_state(jax.device_get(variables), method, 3, optim.sgd(0.1))
    step = dense_steps.make_mtl_step(SMALL, tuple(t for t, _ in TASKS), method,
                                     space="features")
    with pytest.raises(ValueError, match=r"MTANSegNet cannot be split.*Use space='params'"):
        jax.jit(step)(state, _batch(1))


def test_param_space_mtl_step_is_finite_and_attention_is_task_specific(small):
    """One jitted PCGrad step (parameter space): finite, and each task's attention modules
    (under 'heads') get exactly their own task's SGD update, as a head does."""
    variables, _ = small
    tasks = tuple(t for t, _ in TASKS)
    method = mtl.get_method("pcgrad")
    state = dense_steps.init_mtl_state(jax.device_get(variables), method, 3,
                                       optim.sgd(1.0, momentum=0.0))
    batch = _batch(2)
    new, metrics = jax.jit(dense_steps.make_mtl_step(SMALL, tasks, method, seed=0,
                                                     space="params"))(state, batch)
    assert all(np.isfinite(v).all() for v in jax.device_get(metrics).values())
    assert all(np.isfinite(a).all() for a in jax.tree.leaves(new.params))
    params = variables["params"]

    def depth_loss(heads):
        (preds, _), _ = SMALL.apply({"params": {**params, "heads": heads},
                                     "batch_stats": variables["batch_stats"]},
                                    batch["image"], train=True, mutable=["batch_stats"])
        return losses.dense_task_loss("depth", preds["depth"], batch["depth"])

    grad = jax.grad(depth_loss)(params["heads"])["depth"]["encoder_att_1"]
    moved = jax.tree.map(lambda a, b: a - b, params["heads"]["depth"]["encoder_att_1"],
                         new.params["model"]["heads"]["depth"]["encoder_att_1"])
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(grad)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
    shared = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                          params["encoder_block_att_0"],
                                          new.params["model"]["encoder_block_att_0"]))
    assert max(shared) > 0
