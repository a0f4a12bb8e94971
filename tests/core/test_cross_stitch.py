"""Tests of the cross-stitch SegNet (ur_jax.models.cross_stitch): layout, shapes, the mixing
written out with NumPy, equality with independent SegNets at identity alphas, parameter
counts, registry, and use in the multi-task and URL steps.

Two-level columns (4 and 8 channels) on 32x32 images keep every compilation short.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ur_jax import dense_steps, mtl, optim
from ur_jax.adapters import AlignmentAdapters
from ur_jax.models import CrossStitchSegNet, SegNet, get_dense_model
from ur_jax.models import cross_stitch as cs
from ur_jax.models.segnet import NYU_TASKS

CLASSES = 5
TASK_SPEC = (("semantic", CLASSES), ("depth", 1), ("normal", 3))
TASKS = tuple(t for t, _ in TASK_SPEC)
FILTERS = (4, 8)
MODEL = CrossStitchSegNet(tasks=TASK_SPEC, filters=FILTERS)
B, H, W = 4, 32, 32


def _batch(seed: int, n: int = B) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return {"image": rng.uniform(0, 1, (n, H, W, 3)).astype(np.float32),
            "semantic": rng.integers(-1, CLASSES, (n, H, W)).astype(np.int32),
            "depth": rng.uniform(0.5, 5.0, (n, H, W, 1)).astype(np.float32),
            "normal": normal}


@pytest.fixture(scope="module")
def variables():
    return jax.device_get(jax.jit(lambda r, x: MODEL.init(r, x, train=False))(
        jax.random.key(0, impl="rbg"), jnp.zeros((1, H, W, 3))))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _with_alphas(variables, fn):
    params = dict(variables["params"])
    params["cross_stitch"] = {k: fn(np.asarray(a)) for k, a in params["cross_stitch"].items()}
    return {**variables, "params": params}


def test_layout_shapes_dtypes_and_initial_alphas(variables):
    params = variables["params"]
    assert set(params) == {"columns", "cross_stitch", "heads"}
    assert set(variables["batch_stats"]) == {"columns"}
    assert set(params["columns"]) == set(params["heads"]) == set(TASKS)
    # Every column's tree is a SegNet backbone's.
    segnet = jax.eval_shape(SegNet(tasks=TASK_SPEC, filters=FILTERS).init,
                            jax.random.key(0), jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    for t in TASKS:
        assert shapes(params["columns"][t]) == shapes(segnet["params"]["backbone"])
        assert shapes(variables["batch_stats"]["columns"][t]) == shapes(
            segnet["batch_stats"]["backbone"])
        assert shapes(params["heads"][t]) == shapes(segnet["params"]["heads"][t])
    # 2L - 1 units: after each encoder level's pool (the last one the bottleneck) and after
    # each decoder level but the last.
    assert MODEL.units == (("encoder_0", 4), ("encoder_1", 8), ("decoder_1", 4))
    expected = np.full((3, 3), 0.05, np.float32) + np.eye(3, dtype=np.float32) * 0.85
    for name, c in MODEL.units:
        alpha = params["cross_stitch"][name]
        assert alpha.shape == (3, 3, c) and alpha.dtype == np.float32
        np.testing.assert_allclose(alpha, np.repeat(expected[:, :, None], c, 2), rtol=1e-6)
        np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=1e-6)
    scalar = jax.eval_shape(CrossStitchSegNet(tasks=TASK_SPEC, filters=FILTERS,
                                              per_channel=False).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32))
    assert {k: v.shape for k, v in scalar["params"]["cross_stitch"].items()} == {
        "encoder_0": (3, 3), "encoder_1": (3, 3), "decoder_1": (3, 3)}
    np.testing.assert_allclose(cs.cross_stitch_init(2), [[0.9, 0.1], [0.1, 0.9]], rtol=1e-6)

    x = _batch(0)["image"]
    preds, feats = MODEL.apply(variables, x)
    assert {k: (v.shape, v.dtype) for k, v in preds.items()} == {
        "semantic": ((B, H, W, CLASSES), jnp.float32), "depth": ((B, H, W, 1), jnp.float32),
        "normal": ((B, H, W, 3), jnp.float32)}
    norms = np.linalg.norm(np.asarray(preds["normal"]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    assert feats["bottleneck"].shape == (B, H // 4, W // 4, 3 * 8)
    assert feats["decoder"].shape == (B, H, W, 3 * 4)
    assert feats["encoder1"].shape == (B, H // 2, W // 2, 3 * 8)
    for t in TASKS:
        assert feats[f"decoder/{t}"].shape == (B, H, W, 4)
    # The shared names are the columns' features concatenated in task order.
    np.testing.assert_array_equal(
        feats["decoder"], np.concatenate([feats[f"decoder/{t}"] for t in TASKS], -1))
    np.testing.assert_array_equal(
        feats["bottleneck"], np.concatenate([feats[f"bottleneck/{t}"] for t in TASKS], -1))
    with pytest.raises(ValueError, match="divisible by 4"):
        MODEL.apply(variables, jnp.zeros((1, 34, 32, 3)))


def test_cross_stitch_mix_matches_numpy():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 3, 5, 4)).astype(np.float32) for _ in range(3)]
    stacked = np.stack(xs).astype(np.float64)
    alpha = rng.normal(size=(3, 3, 4)).astype(np.float32)
    out = cs.cross_stitch(jnp.asarray(alpha), [jnp.asarray(x) for x in xs])
    ref = np.einsum("ijc,jbhwc->ibhwc", alpha.astype(np.float64), stacked)
    for i in range(3):
        np.testing.assert_allclose(out[i], ref[i], rtol=1e-5, atol=1e-6)
    scalar = rng.normal(size=(3, 3)).astype(np.float32)
    out = cs.cross_stitch(jnp.asarray(scalar), [jnp.asarray(x) for x in xs])
    ref = np.einsum("ij,jbhwc->ibhwc", scalar.astype(np.float64), stacked)
    for i in range(3):
        np.testing.assert_allclose(out[i], ref[i], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expected \\(2, 2"):
        cs.cross_stitch(jnp.asarray(alpha), xs[:2])


def test_model_applies_each_unit_as_written_out_in_numpy(variables):
    """Every unit the model calls mixes the columns' activations with its own alpha, in the
    documented order, at the documented resolutions."""
    rng = np.random.default_rng(1)
    v = _with_alphas(variables, lambda a: rng.uniform(-1, 1, a.shape).astype(np.float32))
    calls = []

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, cs._CrossStitchUnits) and context.method_name == "__call__":
            calls.append((args[0], [np.asarray(x) for x in args[1]],
                          [np.asarray(y) for y in out]))
        return out

    x = _batch(2)["image"]
    with nn.intercept_methods(capture):
        MODEL.apply(v, x)
    assert [c[0] for c in calls] == ["encoder_0", "encoder_1", "decoder_1"]
    sizes = {"encoder_0": (H // 2, 4), "encoder_1": (H // 4, 8), "decoder_1": (H // 2, 4)}
    for unit, inputs, outputs in calls:
        alpha = np.asarray(v["params"]["cross_stitch"][unit], np.float64)
        stacked = np.stack(inputs).astype(np.float64)
        assert stacked.shape == (3, B, sizes[unit][0], sizes[unit][0], sizes[unit][1])
        ref = np.einsum("ijc,jbhwc->ibhwc", alpha, stacked)
        np.testing.assert_allclose(np.stack(outputs), ref, rtol=1e-5, atol=1e-5, err_msg=unit)


def test_identity_alphas_give_independent_segnets(variables):
    """With every alpha the identity, each column with its head is exactly the single-task
    SegNet whose parameters it holds (outputs, features and BatchNorm statistics)."""
    x = _batch(3)["image"]
    single = {t: SegNet(tasks=((t, c),), filters=FILTERS) for t, c in TASK_SPEC}
    single_vars = {t: jax.device_get(m.init(jax.random.key(10 + i, impl="rbg"), x[:1]))
                   for i, (t, m) in enumerate(single.items())}
    v = cs.from_single_task(variables, single_vars)
    v = _with_alphas(v, lambda a: np.broadcast_to(np.eye(3, dtype=np.float32)[:, :, None],
                                                  a.shape).copy())
    for t in TASKS:
        for a, b in zip(jax.tree.leaves(v["params"]["columns"][t]),
                        jax.tree.leaves(single_vars[t]["params"]["backbone"])):
            np.testing.assert_array_equal(a, b)
    (preds, feats), stats = MODEL.apply(v, x, train=True, mutable=["batch_stats"])
    for t in TASKS:
        (p, f), s = single[t].apply(single_vars[t], x, train=True, mutable=["batch_stats"])
        np.testing.assert_array_equal(preds[t], p[t], err_msg=t)
        np.testing.assert_array_equal(feats[f"decoder/{t}"], f["decoder"], err_msg=t)
        np.testing.assert_array_equal(feats[f"bottleneck/{t}"], f["bottleneck"], err_msg=t)
        for a, b in zip(jax.tree.leaves(stats["batch_stats"]["columns"][t]),
                        jax.tree.leaves(s["batch_stats"]["backbone"])):
            np.testing.assert_array_equal(a, b, err_msg=t)
    preds, _ = MODEL.apply(v, x)  # running averages
    for t in TASKS:
        np.testing.assert_array_equal(preds[t], single[t].apply(single_vars[t], x)[0][t])
    # The default (0.9, 0.05) units do mix: task 0's output depends on the other columns.
    mixed, _ = MODEL.apply(cs.from_single_task(variables, single_vars), x)
    assert not np.allclose(mixed["semantic"], preds["semantic"])
    with pytest.raises(ValueError, match="do not match"):
        cs.from_single_task(variables, {"depth": jax.device_get(
            SegNet(tasks=(("depth", 1),), filters=(4, 6)).init(jax.random.key(0, impl="rbg"),
                                                                x[:1]))})


def test_parameter_count_at_width_one_for_nyu():
    """3 SegNet backbones + 3 MTAN heads + 9 channel-wise units (2432 channels) = 74,963,665;
    25,055,185 is the shared three-task SegNet."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    ours = jax.eval_shape(CrossStitchSegNet().init, jax.random.key(0), x)["params"]
    segnet = jax.eval_shape(SegNet().init, jax.random.key(0), x)["params"]
    assert _count(segnet) == 25_055_185
    units = 64 + 128 + 256 + 512 + 512 + 512 + 256 + 128 + 64
    assert _count(ours["cross_stitch"]) == 9 * units == 21_888
    assert _count(ours) == 3 * _count(segnet["backbone"]) + _count(segnet["heads"]) + 9 * units
    assert _count(ours) == 74_963_665
    scalar = jax.eval_shape(CrossStitchSegNet(tasks=NYU_TASKS, per_channel=False).init,
                            jax.random.key(0), x)["params"]
    assert _count(scalar) == 74_941_858


def test_single_task_is_a_plain_segnet_column():
    x = _batch(4)["image"]
    model = CrossStitchSegNet(tasks=(("depth", 1),), filters=FILTERS)
    assert model.units == ()
    segnet = SegNet(tasks=(("depth", 1),), filters=FILTERS)
    sv = jax.device_get(segnet.init(jax.random.key(3, impl="rbg"), x[:1]))
    v = jax.device_get(model.init(jax.random.key(0, impl="rbg"), x[:1]))
    assert set(v["params"]) == {"columns", "heads"}
    v = {"params": {"columns": {"depth": sv["params"]["backbone"]},
                    "heads": sv["params"]["heads"]},
         "batch_stats": {"columns": {"depth": sv["batch_stats"]["backbone"]}}}
    preds, feats = model.apply(v, x)
    ref_preds, ref_feats = segnet.apply(sv, x)
    np.testing.assert_array_equal(preds["depth"], ref_preds["depth"])
    for k in ("bottleneck", "decoder", "encoder0", "encoder1"):
        np.testing.assert_array_equal(feats[k], ref_feats[k], err_msg=k)


def test_registry_and_refusals():
    model = get_dense_model("cross_stitch", tasks=TASK_SPEC, filters=FILTERS, width=0.5,
                            per_channel=False)
    assert isinstance(model, CrossStitchSegNet)
    assert (model.tasks, model.filters, model.width, model.per_channel) == (
        TASK_SPEC, FILTERS, 0.5, False)
    with pytest.raises(ValueError, match="space='params'"):
        MODEL.parts()
    method = mtl.get_method("pcgrad")
    step = dense_steps.make_mtl_step(MODEL, TASKS, method, space="features")
    state = jax.eval_shape(lambda: dense_steps.init_mtl_state(
        MODEL.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, H, W, 3))), method, 3,
        optim.sgd(0.1)))
    with pytest.raises(ValueError, match="space='params'"):
        jax.eval_shape(step, state, _batch(0))
    with pytest.raises(ValueError, match="at least one task"):
        CrossStitchSegNet(tasks=()).init(jax.random.key(0), jnp.zeros((1, H, W, 3)))


def test_jitted_param_space_mtl_step_trains_the_alphas(variables):
    """One jitted gradient-method step (PCGrad, parameter space): finite, and the alphas
    (shared parameters, reached by every task) receive non-zero gradients."""
    method = mtl.get_method("pcgrad")
    state0 = dense_steps.init_mtl_state(variables, method, len(TASKS), optim.sgd(1.0, momentum=0.0))
    step = jax.jit(dense_steps.make_mtl_step(MODEL, TASKS, method, seed=1, space="params"))
    state, metrics = step(state0, _batch(5))
    metrics = jax.device_get(metrics)
    assert all(np.all(np.isfinite(v)) for v in metrics.values()), metrics
    assert int(state.step) == 1
    new = jax.device_get(state.params["model"])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new))
    for name, _ in MODEL.units:
        delta = np.asarray(new["cross_stitch"][name]) - variables["params"]["cross_stitch"][name]
        off_diagonal = delta[~np.eye(3, dtype=bool)]
        assert np.abs(off_diagonal).max() > 0, name
    # The heads are task-specific: each moved, and the columns' BatchNorm statistics too.
    for t in TASKS:
        assert not np.allclose(new["heads"][t]["conv1x1"]["kernel"],
                               variables["params"]["heads"][t]["conv1x1"]["kernel"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), jax.device_get(state.batch_stats),
                         variables["batch_stats"])
    assert all(jax.tree.leaves(moved))


def test_url_distill_step_uses_the_concatenated_features(variables):
    """The dense URL step with a cross-stitch student and single-column teachers: adapters
    sized from the student's (concatenated) features as the dense stage does; finite."""
    teachers = {t: CrossStitchSegNet(tasks=((t, c),), filters=FILTERS) for t, c in TASK_SPEC}
    probe = jnp.zeros((1, H, W, 3))
    teacher_vars = {t: m.init(jax.random.key(i + 1, impl="rbg"), probe)
                    for i, (t, m) in enumerate(teachers.items())}
    features = ("bottleneck", "decoder")
    s_feats = MODEL.apply(variables, probe)[1]
    width = teachers["depth"].apply(teacher_vars["depth"], probe)[1]["decoder"].shape[-1]
    assert width == 4 and s_feats["decoder"].shape[-1] == 12
    adapters = AlignmentAdapters(tuple((dense_steps.adapter_name(t, f), width)
                                       for t in TASKS for f in features))
    adapter_params = adapters.init(jax.random.key(9, impl="rbg"), {
        dense_steps.adapter_name(t, f): jnp.zeros((1, s_feats[f].shape[-1]))
        for t in TASKS for f in features})["params"]
    config = dense_steps.DenseDistillConfig(lambdas={t: 1.0 for t in TASKS})
    state = dense_steps.DenseState.create(
        {"student": variables["params"], "adapters": adapter_params}, variables["batch_stats"],
        dense_steps.distill_tx(optim.sgd(0.1), optim.sgd(0.1)))
    step = jax.jit(dense_steps.make_dense_distill_step(MODEL, adapters, teachers, config, TASKS))
    state, metrics = step(state, teacher_vars, _batch(6))
    metrics = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert float(metrics["align_loss/depth/decoder"]) > 0
    assert int(state.step) == 1
