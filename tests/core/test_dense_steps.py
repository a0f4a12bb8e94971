"""Tests of the dense steps (ur_jax.dense_steps): multi-task baselines inside one jitted step,
URL distillation for dense tasks, and evaluation sums.

A two-level SegNet (4 and 8 channels) on 32x32 images keeps every compilation short.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import dense_steps, losses, mtl, optim, sharding
from ur_jax.adapters import AlignmentAdapters
from ur_jax.evaluation import dense as dense_eval
from ur_jax.models import SegNet

TASKS = ("semantic", "depth", "normal")
CLASSES = 5
MODEL = SegNet(tasks=(("semantic", CLASSES), ("depth", 1), ("normal", 3)), filters=(4, 8))
B, H, W = 8, 32, 32


def _batch(seed: int, n: int = B) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    semantic = rng.integers(-1, CLASSES, (n, H, W)).astype(np.int32)
    depth = rng.uniform(0.5, 5.0, (n, H, W, 1)).astype(np.float32)
    depth[rng.random((n, H, W)) < 0.2] = 0.0
    normal = rng.normal(size=(n, H, W, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[rng.random((n, H, W)) < 0.2] = 0.0
    return {"image": rng.uniform(0, 1, (n, H, W, 3)).astype(np.float32), "semantic": semantic,
            "depth": depth, "normal": normal}


@pytest.fixture(scope="module")
def variables():
    return jax.jit(lambda r, x: MODEL.init(r, x, train=False))(
        jax.random.key(0, impl="rbg"), jnp.zeros((1, H, W, 3)))


def _state(variables, method, lr: float = 1e-2):
    # Host copies: data-parallel steps donate their state, which must not delete the fixture.
    return dense_steps.init_mtl_state(jax.device_get(variables), method, len(TASKS),
                                      optim.sgd(lr, momentum=0.0))


@dataclasses.dataclass(frozen=True)
class _SumOfGradients:
    """A gradient 'method' that adds the task gradients: must reproduce uniform exactly."""

    space: str
    name: str = "sum"
    uses_gradients: bool = True

    def init_params(self, num_tasks):
        return {}

    def init_state(self, num_tasks):
        return {}

    def combine(self, grads, losses_, params, state, rng):
        return grads.sum(0), {}, jnp.ones(grads.shape[0])

    def update_state(self, state, losses_, grads=None):
        return state


@pytest.mark.parametrize("space", ["params", "features"])
def test_per_task_gradients_add_up_to_the_uniform_gradient(variables, space):
    """The vmapped pullbacks, the flattening and the head split are exact: summing the T
    per-task gradients (shared parameters or shared feature) is the uniform update."""
    batch = _batch(1)
    uniform = mtl.get_method("uniform")
    ref_state, ref_metrics = jax.jit(dense_steps.make_mtl_step(MODEL, TASKS, uniform))(
        _state(variables, uniform), batch)
    method = _SumOfGradients(space)
    state, metrics = jax.jit(dense_steps.make_mtl_step(MODEL, TASKS, method))(
        _state(variables, method), batch)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    (preds, _), _ = MODEL.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    for t in TASKS:  # the step's task losses are the loss functions on the training forward
        np.testing.assert_allclose(metrics[f"task_loss/{t}"],
                                   losses.dense_task_loss(t, preds[t], batch[t]), rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params["model"]),
                            jax.tree.leaves(ref_state.params["model"])):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(ref_state.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


#: One of each kind runs by default: a loss method with parameters, one with state, gradient
#: methods with randomness, method gradients and feature-space gradients. All with -m slow.
_DEFAULT_METHODS = ("uncertainty", "dwa", "pcgrad", "gradnorm", "graddrop")


@pytest.mark.parametrize("name", [m if m in _DEFAULT_METHODS else
                                  pytest.param(m, marks=pytest.mark.slow) for m in mtl.METHODS])
def test_every_method_trains_data_parallel(variables, devices, name):
    """Two steps of every baseline over 8 devices: finite, the state moves, the method's
    state is carried (DWA rolls its epochs every step here)."""
    method = mtl.get_method(name, **_method_options(name))
    mesh = sharding.make_mesh(devices)
    step = sharding.jit_data_parallel(dense_steps.make_mtl_step(MODEL, TASKS, method, seed=3),
                                      mesh, batch_argnums=(1,), num_args=2)
    state0 = _state(variables, method)
    before = jax.device_get(state0.params)
    state = sharding.replicate(state0, mesh)
    for i in range(2):
        state, metrics = step(state, sharding.shard_batch(_batch(10 + i), mesh))
    assert int(state.step) == 2
    for k, v in jax.device_get(metrics).items():
        assert np.all(np.isfinite(v)), (name, k, v)
    leaves = jax.tree.leaves(jax.device_get(state.params))
    assert all(np.all(np.isfinite(x)) for x in leaves)
    moved = [not np.allclose(a, b) for a, b in zip(leaves, jax.tree.leaves(before))]
    assert sum(moved) > len(moved) // 2, name


def _method_options(name):
    return {"steps_per_epoch": 1} if "steps_per_epoch" in mtl.method_options(name) else {}


#: Checked by default against the written-out update; every method with -m slow.
_DEFAULT_WRITTEN_OUT = ("uniform", "uncertainty", "pcgrad", "cagrad")


@pytest.mark.parametrize("name", [m if m in _DEFAULT_WRITTEN_OUT else
                                  pytest.param(m, marks=pytest.mark.slow) for m in mtl.METHODS])
def test_step_applies_the_method_to_separately_computed_task_gradients(variables, name):
    """For every method, the parameter-space step's update (SGD, lr 0.1) is the method applied
    to per-task quantities computed here independently of the step's vmapped pullbacks: a
    separate jax.grad per task (gradient methods: combine on the stacked flattened shared
    gradients, heads get the sum of their task gradients) or jax.grad of method.loss (loss
    methods), with the step's random key fold_in(key(seed), step); and the method state is
    update_state of the same losses (and gradients)."""
    from jax.flatten_util import ravel_pytree

    method = mtl.get_method(name, **_method_options(name))
    batch, seed, lr = _batch(7), 11, 0.1
    state0 = dense_steps.init_mtl_state(jax.device_get(variables), method, len(TASKS),
                                        optim.sgd(lr, momentum=0.0))
    state, _ = jax.jit(dense_steps.make_mtl_step(MODEL, TASKS, method, seed=seed,
                                                 space="params"))(state0, batch)
    params, mparams, mstate = (state0.params["model"], state0.params["method"],
                               state0.mtl_state)
    rng = jax.random.fold_in(jax.random.key(seed), 0)

    def task_loss(model_params, t):
        (preds, _), _ = MODEL.apply({"params": model_params,
                                     "batch_stats": state0.batch_stats}, batch["image"],
                                    train=True, mutable=["batch_stats"])
        return losses.dense_task_loss(t, preds[t], batch[t])

    per_task = jnp.stack([task_loss(params, t) for t in TASKS])
    expected_mstate = None
    if method.uses_gradients:
        grads = [jax.grad(task_loss)(params, t) for t in TASKS]
        shared = [dense_steps.split_heads(g)[0] for g in grads]
        rows = []
        for g in shared:
            flat, unravel = ravel_pytree(g)
            rows.append(flat)
        matrix = jnp.stack(rows)
        combined, dm, _ = method.combine(matrix, per_task, mparams, mstate, rng)
        heads = jax.tree.map(lambda *g: sum(g), *[dense_steps.split_heads(g)[1] for g in grads])
        model_grads = {**unravel(combined), **heads}
        expected_mstate = method.update_state(mstate, per_task, matrix)
    else:
        def objective(p):
            per = jnp.stack([task_loss(p["model"], t) for t in TASKS])
            return method.loss(per, p["method"], mstate, rng)[0]
        g = jax.grad(objective)({"model": params, "method": mparams})
        model_grads, dm = g["model"], g["method"]
        expected_mstate = method.update_state(mstate, per_task)
    for (path, a), b, g in zip(jax.tree_util.tree_leaves_with_path(state.params["model"]),
                               jax.tree.leaves(params), jax.tree.leaves(model_grads)):
        expected = b - lr * g
        np.testing.assert_allclose(a, expected, rtol=2e-4,
                                   atol=2e-4 * float(np.abs(lr * g).max()) + 1e-7,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
    for a, b, g in zip(jax.tree.leaves(state.params["method"]), jax.tree.leaves(mparams),
                       jax.tree.leaves(dm)):
        np.testing.assert_allclose(a, b - lr * g, rtol=2e-4, atol=1e-6, err_msg=name)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state.mtl_state),
                            jax.tree.leaves(expected_mstate)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5,
                                   err_msg=f"{name} state {jax.tree_util.keystr(path)}")


def test_a_method_that_fixes_its_space_refuses_another():
    """DB-MTL, MoCo, MoDo and SDMGrad keep gradient-sized state that means nothing for
    per-example feature gradients: a features override is refused, not silently run."""
    for name in ("db_mtl", "moco", "modo", "sdmgrad"):
        with pytest.raises(ValueError, match="works on 'params' gradients only"):
            dense_steps.make_mtl_step(MODEL, TASKS, mtl.get_method(name), space="features")
    assert dense_steps.gradient_space(mtl.get_method("pcgrad"), "features") == "features"
    assert dense_steps.gradient_space(mtl.get_method("graddrop")) == "features"


def test_feature_space_graddrop_uses_one_mask_per_feature_for_the_batch(variables):
    """GradDrop in the step: the per-example gradients w.r.t. the shared decoder feature are
    sign-corrected by the feature, summed over the batch, and one mask per feature (from the
    step's uniform draw, a function of (seed, step)) is applied to every example; the
    backbone gets the pullback of that. Written out here with NumPy (paper, Algorithm 1)."""
    n, seed = 4, 3
    batch = _batch(21, n)
    method = mtl.get_method("graddrop")
    state = _state(variables, method, lr=1.0)             # SGD lr 1: the update is -grad
    new_state, _ = jax.jit(dense_steps.make_mtl_step(MODEL, TASKS, method, seed=seed))(
        state, batch)

    backbone, heads = MODEL.parts()
    params, stats = variables["params"], variables["batch_stats"]

    def encode(p):
        feats, _ = backbone.apply({"params": p, "batch_stats": stats["backbone"]},
                                  batch["image"], True, mutable=["batch_stats"])
        return feats["decoder"]

    z, pull = jax.vjp(encode, params["backbone"])
    z_grads = np.stack([np.asarray(jax.grad(lambda f, t=t: losses.dense_task_loss(
        t, heads.apply({"params": params["heads"]}, f)[t], batch[t]))(z), np.float64)
        for t in TASKS]).reshape(len(TASKS), n, -1)
    inputs = np.asarray(z, np.float64).reshape(n, -1)
    assert 0.2 < np.mean(inputs > 0) < 0.8
    u = np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(seed), 0),
                                      (inputs.shape[1],)), np.float64)
    g = np.einsum("tbd,bd->td", z_grads, np.sign(inputs))
    p = 0.5 * (1.0 + g.sum(0) / (np.abs(g).sum(0) + 1e-7))
    mask = ((p > u) & (g > 0)) | ((p < u) & (g < 0))
    combined = np.einsum("td,tbd->bd", mask, z_grads)
    assert 0.05 < mask.mean() < 0.95
    (expected,) = pull(jnp.asarray(combined.reshape(z.shape), jnp.float32))
    got = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                       state.params["model"]["backbone"], new_state.params["model"]["backbone"])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, atol=1e-4 * scale + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", [m if m == "pcgrad" else pytest.param(m, marks=pytest.mark.slow)
                                  for m in mtl.METHODS])
def test_methods_are_the_same_on_one_and_eight_devices(variables, devices, name):
    """Randomised methods (PCGrad's task order, GradDrop's mask, RLW's weights, ...) draw
    from (seed, step) and every method's state follows the global batch: two steps give
    the same parameters and method state on 1 and 8 devices."""
    method = mtl.get_method(name, **_method_options(name))
    out = []
    for n in (1, 8):
        mesh = sharding.make_mesh(devices[:n])
        step = sharding.jit_data_parallel(dense_steps.make_mtl_step(MODEL, TASKS, method, seed=5),
                                          mesh, batch_argnums=(1,), num_args=2)
        state = sharding.replicate(_state(variables, method), mesh)
        for i in range(2):
            state, _ = step(state, sharding.shard_batch(_batch(4 + i), mesh))
        out.append(jax.device_get((state.params, state.mtl_state)))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(out[0]),
                            jax.tree.leaves(out[1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4,
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")


def test_distill_step_matches_the_objective_written_out(variables):
    """align_loss/<t>/<f> = normalized_l2(resize(adapter(student_f)), teacher decoder feature),
    objective = sum of task losses + sum_t lambda_t * sum_f align; teachers stay frozen."""
    teacher_models = {t: SegNet(tasks=((t, CLASSES if t == "semantic" else
                                        {"depth": 1, "normal": 3}[t]),), filters=(6, 8))
                      for t in TASKS}
    teacher_vars = {t: m.init(jax.random.key(i + 1, impl="rbg"), jnp.zeros((1, H, W, 3)))
                    for i, (t, m) in enumerate(teacher_models.items())}
    width = teacher_models["semantic"].apply(teacher_vars["semantic"], jnp.zeros((1, H, W, 3))
                                             )[1]["decoder"].shape[-1]
    features = ("bottleneck", "decoder")
    adapters = AlignmentAdapters(tuple((dense_steps.adapter_name(t, f), width)
                                       for t in TASKS for f in features))
    feats = MODEL.apply(variables, jnp.zeros((1, H, W, 3)))[1]
    adapter_params = adapters.init(jax.random.key(9, impl="rbg"), {
        dense_steps.adapter_name(t, f): jnp.zeros((1, feats[f].shape[-1]))
        for t in TASKS for f in features})["params"]
    config = dense_steps.DenseDistillConfig(lambdas={"semantic": 1.0, "depth": 1.0, "normal": 2.0})
    tx = dense_steps.distill_tx(optim.sgd(0.1), optim.sgd(0.1))
    state = dense_steps.DenseState.create({"student": variables["params"],
                                           "adapters": adapter_params},
                                          variables["batch_stats"], tx)
    step = jax.jit(dense_steps.make_dense_distill_step(MODEL, adapters, teacher_models, config,
                                                        TASKS))
    batch = _batch(5)
    new_state, metrics = step(state, teacher_vars, batch)

    (preds, s_feats), _ = MODEL.apply(variables, batch["image"], train=True,
                                      mutable=["batch_stats"])
    adapted = adapters.apply({"params": adapter_params},
                             {dense_steps.adapter_name(t, f): s_feats[f]
                              for t in TASKS for f in features})
    objective = sum(float(losses.dense_task_loss(t, preds[t], batch[t])) for t in TASKS)
    for t in TASKS:
        target = teacher_models[t].apply(teacher_vars[t], batch["image"])[1]["decoder"]
        for f in features:
            a = adapted[dense_steps.adapter_name(t, f)]
            a = jax.image.resize(a, (B, H, W, a.shape[-1]), "bilinear")
            an = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
            tn = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), 1e-12)
            expected = np.mean(np.sum((an - tn) ** 2, -1))
            np.testing.assert_allclose(metrics[f"align_loss/{t}/{f}"], expected, rtol=1e-4)
            objective += config.lambdas[t] * expected
    np.testing.assert_allclose(metrics["objective"], objective, rtol=1e-4)
    assert int(new_state.step) == 1
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new_state.params["adapters"],
                           state.params["adapters"])
    assert all(jax.tree.leaves(changed))


def test_bam_step_anneals_from_teacher_targets_to_the_ground_truth(variables):
    """The BAM step: at its first update the objective is the loss towards the teachers'
    predictions alone (written out with NumPy on the step's forward outputs); after
    num_steps updates it is the ground-truth task loss; lambda is logged."""
    teacher_models = {t: SegNet(tasks=((t, CLASSES if t == "semantic" else
                                        {"depth": 1, "normal": 3}[t]),), filters=(6, 8))
                      for t in TASKS}
    teacher_vars = {t: m.init(jax.random.key(i + 1, impl="rbg"), jnp.zeros((1, H, W, 3)))
                    for i, (t, m) in enumerate(teacher_models.items())}
    num_steps = 4
    uniform = mtl.get_method("uniform")
    step = jax.jit(dense_steps.make_bam_step(MODEL, teacher_models, TASKS, num_steps))
    batch = _batch(8)
    state = _state(variables, uniform)
    new_state, metrics = step(state, teacher_vars, batch)
    assert float(metrics["bam_lambda"]) == 0.0 and int(new_state.step) == 1

    (preds, _), _ = MODEL.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    t_out = {t: np.asarray(teacher_models[t].apply(teacher_vars[t], batch["image"])[0][t],
                           np.float64) for t in TASKS}
    p = {t: np.asarray(preds[t], np.float64) for t in TASKS}
    labels = batch["semantic"]
    valid = (labels >= 0) & (labels < CLASSES)
    log_p = p["semantic"] - np.log(np.exp(p["semantic"]).sum(-1, keepdims=True))
    q = np.exp(t_out["semantic"]) / np.exp(t_out["semantic"]).sum(-1, keepdims=True)
    sem = -(q * log_p).sum(-1)[valid].mean()
    dv = batch["depth"][..., 0] != 0
    dep = np.abs(p["depth"] - t_out["depth"])[..., 0][dv].mean()
    nv = batch["normal"].sum(-1) != 0
    unit = p["normal"] / np.linalg.norm(p["normal"], axis=-1, keepdims=True)
    nor = 1.0 - (unit * t_out["normal"]).sum(-1)[nv].mean()
    for t, want in zip(TASKS, (sem, dep, nor)):
        np.testing.assert_allclose(metrics[f"bam_loss/{t}"], want, rtol=1e-4, err_msg=t)
    np.testing.assert_allclose(metrics["objective"], sem + dep + nor, rtol=1e-4)
    for t in TASKS:  # the logged task losses are against the ground truth
        np.testing.assert_allclose(metrics[f"task_loss/{t}"],
                                   losses.dense_task_loss(t, preds[t], batch[t]), rtol=1e-5)

    _, metrics = step(_state(variables, uniform).replace(step=jnp.asarray(num_steps, jnp.int32)),
                      teacher_vars, batch)
    assert float(metrics["bam_lambda"]) == 1.0
    np.testing.assert_allclose(metrics["objective"], metrics["loss"], rtol=1e-6)


def test_eval_sums_ignore_padding_and_add_up(variables):
    """Two batches (the second half padding) give the metrics of the real examples alone."""
    step = jax.jit(dense_steps.make_dense_eval_step(MODEL, TASKS, CLASSES))
    real = _batch(6, 12)
    first = {k: v[:8] for k, v in real.items()}
    second = {k: np.concatenate([v[8:], _batch(7, 4)[k]]) for k, v in real.items()}
    first["mask"] = np.ones(8, np.float32)
    second["mask"] = np.array([1] * 4 + [0] * 4, np.float32)
    stats = jax.tree.map(jnp.add, step(variables["params"], variables["batch_stats"], first),
                         step(variables["params"], variables["batch_stats"], second))
    (preds, _) = MODEL.apply(variables, real["image"])
    for t in TASKS:
        whole = dense_eval.task_stats(t, preds[t], real[t],
                                      num_classes=CLASSES if t == "semantic" else None)
        got, want = dense_eval.finalize(t, stats[t]), dense_eval.finalize(t, whole)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6, err_msg=f"{t} {k}")
