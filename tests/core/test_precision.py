"""Mixed precision (config.precision='bf16'): bfloat16 compute with float32 parameters,
BatchNorm statistics, heads and losses; finite, and close to float32 after a few steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import checkpointing, dense_steps, models, mtl, optim, sharding, steps
from ur_jax import teachers as teachers_lib
from ur_jax.adapters import AlignmentAdapters
from ur_jax.models.precision import compute_dtype, with_precision

CLASSES = {"a": 5, "b": 7}
HW = 16
STEPS = 3
ARCH = functools.partial(models.ResNet, stage_sizes=(1, 1), stage_widths=(8, 16),
                         stem="metadataset")


def _batches(n=8):
    rng = np.random.default_rng(0)
    return [{d: {"image": rng.normal(size=(n, HW, HW, 3)).astype(np.float32),
                 "label": rng.integers(0, c, n).astype(np.int32)} for d, c in CLASSES.items()}
            for _ in range(STEPS)]


def _dtypes(tree):
    return {str(x.dtype) for x in jax.tree.leaves(tree)}


def test_with_precision_sets_the_compute_dtype_throughout():
    model = models.MultiHeadClassifier(ARCH(), tuple(CLASSES.items()))
    assert with_precision(model, "fp32") is model  # float32 runs keep their compiled steps
    low = with_precision(model, "bf16")
    assert low.backbone.dtype == jnp.bfloat16 and model.backbone.dtype == jnp.float32
    images = {d: jnp.ones((2, HW, HW, 3)) for d in CLASSES}
    variables = low.init(jax.random.key(0), images)
    (features, logits), updates = low.apply(variables, images, train=True,
                                            mutable=["batch_stats"])
    assert features["a"]["pooled"].dtype == jnp.bfloat16
    assert logits["a"].dtype == jnp.float32
    assert _dtypes(variables["params"]) == _dtypes(updates["batch_stats"]) == {"float32"}
    assert compute_dtype("bf16") == jnp.bfloat16
    with pytest.raises(ValueError, match="precision='fp16'; expected one of"):
        with_precision(model, "fp16")
    spec = checkpointing.dense_model_spec("segnet", {"width": 0.125}, {"depth": 1})
    assert checkpointing.model_from_spec(spec, "bf16").dtype == jnp.bfloat16


def _train(precision, distill):
    """``STEPS`` steps of the student (or URL distillation) step on one device; returns the
    per-step losses and the final state."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    student = with_precision(models.MultiHeadClassifier(ARCH(), tuple(CLASSES.items())),
                             precision)
    batches = _batches()
    images = {d: b["image"] for d, b in batches[0].items()}
    sgd = optim.sgd(0.05, 0.9, 5e-4)
    if distill:
        teachers = {}
        for i, (d, c) in enumerate(CLASSES.items()):
            t = with_precision(models.MultiHeadClassifier(ARCH(), ((d, c),)), precision)
            teachers[d] = (t, t.init(jax.random.key(10 + i), {d: images[d]}))
        bank, tvars = teachers_lib.stack_teachers(teachers)
        adapters = AlignmentAdapters(tuple((d, 16) for d in CLASSES))
        state = steps.init_distill_state(student, adapters, jax.random.key(0), images, sgd,
                                         optim.adam(1e-2, 5e-4))
        config = steps.DistillConfig(lambda_f={d: 1.0 for d in CLASSES},
                                     lambda_p={d: 1.0 for d in CLASSES}, temperature=4.0,
                                     feature_loss="kernel_cka")
        fn = steps.jit_step(steps.make_distill_step(student, adapters, bank, config), mesh,
                            with_teachers=True)
        tvars = sharding.replicate(tvars, mesh)
    else:
        v = student.init(jax.random.key(0), images)
        state = steps.TrainState.create(v["params"], v["batch_stats"], sgd)
        fn = steps.jit_step(steps.make_train_step(student), mesh)
    state = sharding.replicate(state, mesh)
    start = jax.device_get(state)
    losses = []
    for batch in batches:
        batch = sharding.shard_batch(batch, mesh)
        state, metrics = fn(state, tvars, batch) if distill else fn(state, batch)
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), start, jax.device_get(state)


@pytest.mark.parametrize("distill", [False, True], ids=["student", "url_distill"])
def test_bf16_steps_are_finite_and_follow_float32(distill):
    """Tolerance: bfloat16 keeps 8 bits of mantissa (~0.4% per rounding); after 3 steps the
    losses agree to 3%, and the parameters' whole update (3 steps) points the same way
    (cosine > 0.98) with the same size (5%). Element by element the updates differ more:
    Adam's update of the alignment adapters, of size lr whatever the gradient, flips with
    the sign of a near-zero gradient."""
    ref_losses, start, ref = _train("fp32", distill)
    low_losses, _, low = _train("bf16", distill)
    assert np.isfinite(low_losses).all()
    np.testing.assert_allclose(low_losses, ref_losses, rtol=3e-2)
    assert _dtypes(low.params) == {"float32"} and _dtypes(low.batch_stats) == {"float32"}
    flat = lambda s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(s.params)])
    p_start, p_ref, p_low = flat(start), flat(ref), flat(low)
    assert np.isfinite(p_low).all()
    d_ref, d_low = p_ref - p_start, p_low - p_start
    cosine = d_ref @ d_low / (np.linalg.norm(d_ref) * np.linalg.norm(d_low))
    assert cosine > 0.98, cosine  # measured 0.992 (URL) and 0.994 (student)
    assert np.linalg.norm(d_low) == pytest.approx(np.linalg.norm(d_ref), rel=0.05)


def test_bf16_dense_mtl_step_is_finite_and_follows_float32():
    mesh = sharding.make_mesh(jax.devices()[:1])
    tasks = ("semantic", "depth", "normal")
    rng = np.random.default_rng(1)
    batch = {"image": rng.random((2, 16, 16, 3), np.float32),
             "semantic": rng.integers(-1, 4, (2, 16, 16)).astype(np.int32),
             "depth": rng.random((2, 16, 16, 1), np.float32),
             "normal": rng.standard_normal((2, 16, 16, 3)).astype(np.float32)}
    losses = {}
    for precision in ("fp32", "bf16"):
        model = with_precision(models.SegNet(tasks=(("semantic", 4), ("depth", 1),
                                                    ("normal", 3)), filters=(4, 8)), precision)
        v = model.init(jax.random.key(0), jnp.asarray(batch["image"]))
        state = dense_steps.init_mtl_state(v, mtl.get_method("uniform"), len(tasks),
                                           optim.sgd(1e-2, momentum=0.9))
        step = sharding.jit_data_parallel(
            dense_steps.make_mtl_step(model, tasks, mtl.get_method("uniform")), mesh,
            batch_argnums=(1,), num_args=2)
        state = sharding.replicate(state, mesh)
        out = []
        for _ in range(STEPS):
            state, metrics = step(state, sharding.shard_batch(batch, mesh))
            out.append(float(metrics["loss"]))
        losses[precision] = np.asarray(out)
        assert _dtypes(jax.device_get(state.params)) == {"float32"}
    assert np.isfinite(losses["bf16"]).all()
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=3e-2)
