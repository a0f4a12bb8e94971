"""Train / distill / eval steps: the URL objective, frozen teachers, optimizers, data parallelism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ur_jax import losses, models, optim, sharding, steps, teachers as teachers_lib
from ur_jax.adapters import AlignmentAdapters

DOMAINS = ("a", "b", "c")
CLASSES = {"a": 5, "b": 7, "c": 3}
N = 8  # per-domain batch: divisible by the 8 fake devices
HW = 16
STUDENT = functools.partial(models.ResNet, stage_sizes=(1, 1), stage_widths=(4, 8),
                            stem="metadataset")
TEACHER = functools.partial(models.ResNet, stage_sizes=(1, 1), stage_widths=(4, 16),
                            stem="metadataset")
LR_STUDENT, WD_STUDENT, MOMENTUM = 0.05, 5e-4, 0.9
LR_ADAPTER, WD_ADAPTER = 1e-2, 5e-4
CONFIG = steps.DistillConfig(
    lambda_f={"a": 4.0, "b": 1.0, "c": 0.5}, lambda_p={"a": 4.0, "b": 1.0, "c": 0.0},
    temperature=4.0, feature_loss="kernel_cka",
    anneal={"a": optim.linear_anneal(10), "b": optim.linear_anneal(4, every=2)})


def make_batch(seed, n=N, domains=DOMAINS):
    rng = np.random.default_rng(seed)
    return {d: {"image": rng.normal(size=(n, HW, HW, 3)).astype(np.float32),
                "label": rng.integers(0, CLASSES[d], n).astype(np.int32)} for d in domains}


def make_teachers(arch=TEACHER, domains=DOMAINS):
    """Teachers with random weights and non-trivial BatchNorm statistics."""
    out = {}
    for i, d in enumerate(domains):
        model = models.MultiHeadClassifier(arch(), ((d, CLASSES[d]),))
        imgs = {d: jnp.asarray(make_batch(100 + i)[d]["image"]) * (1 + i)}
        v = jax.jit(model.init)(jax.random.key(10 + i), imgs)
        _, upd = jax.jit(lambda v, m=model: m.apply(v, imgs, train=True,
                                                    mutable=["batch_stats"]))(v)
        out[d] = (model, {"params": v["params"], "batch_stats": upd["batch_stats"]})
    return out


@pytest.fixture(scope="module")
def setup():
    teachers = make_teachers()
    bank, tvars = teachers_lib.stack_teachers(teachers)
    student = models.MultiHeadClassifier(STUDENT(), tuple(CLASSES.items()))
    ads = AlignmentAdapters(tuple((d, 16) for d in DOMAINS))
    batch = make_batch(0)
    state = steps.init_distill_state(
        student, ads, jax.random.key(0), {d: b["image"] for d, b in batch.items()},
        optim.sgd(LR_STUDENT, MOMENTUM, WD_STUDENT), optim.adam(LR_ADAPTER, WD_ADAPTER))
    step = steps.make_distill_step(student, ads, bank, CONFIG)
    return dict(teachers=teachers, bank=bank, tvars=tvars, student=student, adapters=ads,
                batch=batch, state=jax.device_get(state), step=step)


@pytest.fixture(scope="module")
def run_on(setup):
    """Runs one distill step on the first ``n`` devices; cached per ``n``."""
    cache = {}

    def run(n, state=None):
        if n not in cache:
            mesh = sharding.make_mesh(jax.devices()[:n])
            cache[n] = (mesh, steps.jit_step(setup["step"], mesh, with_teachers=True))
        mesh, fn = cache[n]
        s = sharding.replicate(state if state is not None else setup["state"], mesh)
        t = sharding.replicate(setup["tvars"], mesh)
        new, metrics = fn(s, t, sharding.shard_batch(setup["batch"], mesh))
        return jax.device_get(new), jax.device_get(metrics), jax.device_get(t)

    return run


def _leaves_equal(a, b):
    return [np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]


def test_distill_step_updates_only_student_and_adapters(setup, run_on):
    before_teachers = jax.device_get(setup["tvars"])
    new, metrics, teachers_after = run_on(8)
    assert all(_leaves_equal(teachers_after, before_teachers))  # bitwise
    old = setup["state"]
    assert int(new.step) == 1
    assert not any(_leaves_equal(new.params["adapters"], old.params["adapters"]))
    changed = _leaves_equal(new.params["student"], old.params["student"])
    assert not any(changed), "every student parameter gets a gradient and weight decay"
    assert not any(_leaves_equal(new.batch_stats, old.batch_stats))
    assert np.isfinite(metrics["loss"])


def _reference_loss(setup, params, batch_stats, step):
    """The URL objective written out from its definition, sharing no code with steps.py."""
    student, cfg = setup["student"], CONFIG
    batch = setup["batch"]
    images = {d: jnp.asarray(b["image"]) for d, b in batch.items()}
    total = 0.0
    (feats, logits), upd = student.apply({"params": params["student"], "batch_stats": batch_stats},
                                         images, train=True, mutable=["batch_stats"])
    for d in DOMAINS:
        tmodel, tv = setup["teachers"][d]
        tfeats, tlogits = tmodel.apply(tv, {d: images[d]})
        adapted = setup["adapters"].apply({"params": params["adapters"]},
                                          {d: feats[d]["pooled"]})[d]
        s = losses.l2_normalize(adapted)
        t = losses.l2_normalize(tfeats[d]["pooled"])
        anneal = {"a": max(0.0, 1 - step / 10), "b": max(0.0, 1 - (step // 2 * 2) / 4), "c": 1.0}[d]
        total += losses.cross_entropy(logits[d], jnp.asarray(batch[d]["label"]))
        total += anneal * cfg.lambda_f[d] * (1 - losses.kernel_cka(s, t))
        total += anneal * cfg.lambda_p[d] * losses.kd_kl(logits[d], tlogits[d], cfg.temperature)
    return total, upd["batch_stats"]


@pytest.mark.parametrize("step", [0, 3])
def test_distill_objective_and_both_optimizers_match_a_hand_written_update(setup, run_on, step):
    """Loss = sum_d CE + w lambda_f (1 - CKA) + w lambda_p KD (w annealed by step); the student
    moves by PyTorch SGD and the adapters by PyTorch Adam (coupled weight decay), by hand."""
    old = setup["state"].replace(step=jnp.asarray(step, jnp.int32))
    new, metrics, _ = run_on(1, old)
    (ref_loss, ref_stats), grads = jax.jit(jax.value_and_grad(
        lambda p: _reference_loss(setup, p, old.batch_stats, step), has_aux=True))(old.params)
    np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(ref_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # SGD, first step: buffer = g + wd p; p' = p - lr * buffer.
    exp_student = jax.tree.map(lambda p, g: p - LR_STUDENT * (g + WD_STUDENT * p),
                               old.params["student"], grads["student"])
    # Adam, first step: m = (1-b1) g', v = (1-b2) g'^2, bias-corrected -> p' = p - lr g'/(|g'|+eps).
    def adam_first(p, g):
        g = g + WD_ADAPTER * p
        return p - LR_ADAPTER * g / (np.abs(g) + 1e-8)
    exp_adapters = jax.tree.map(adam_first, old.params["adapters"], grads["adapters"])
    for got, exp in ((new.params["student"], exp_student), (new.params["adapters"], exp_adapters)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exp)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_annealing_weights_follow_the_schedules(setup, run_on):
    state = setup["state"].replace(step=jnp.asarray(3, jnp.int32))
    _, metrics, _ = run_on(1, state)
    assert metrics["weight/a"] == pytest.approx(0.7)
    assert metrics["weight/b"] == pytest.approx(0.5)  # step 3 counts as 2 when every=2
    assert metrics["weight/c"] == 1.0
    assert "kd_loss/c" not in metrics  # lambda_p = 0 switches the term off


def test_one_and_eight_devices_agree(setup, run_on):
    one, m1, _ = run_on(1)
    eight, m8, _ = run_on(8)
    np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
    for key in m1:
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves((one.params, one.batch_stats)),
                    jax.tree.leaves((eight.params, eight.batch_stats))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_eight_device_step_moves_no_images_between_devices(setup):
    """Domains are joined shard by shard: the compiled step has reductions and small
    gathers (BatchNorm statistics, gradients, the CKA kernels), never an all-to-all or a
    permutation of the batch."""
    mesh = sharding.make_mesh()
    fn = steps.jit_step(setup["step"], mesh, with_teachers=True)
    hlo = fn.lower(setup["state"], setup["tvars"], setup["batch"]).compile().as_text()
    assert "all-reduce" in hlo
    assert "all-to-all" not in hlo and "collective-permute" not in hlo


def test_stacked_teachers_match_teachers_run_one_by_one(setup):
    images = {d: jnp.asarray(b["image"]) for d, b in setup["batch"].items()}
    bank, tvars = teachers_lib.stack_teachers(setup["teachers"], mode="vmap")
    assert len(bank.groups) == 1 and bank.groups[0].stacked and bank.groups[0].mode == "vmap"
    assert jax.tree.leaves(tvars["backbones"]["group_0"])[0].shape[0] == 3
    feats, logits = jax.jit(bank.apply)(tvars, images)
    solo_bank, solo_vars = teachers_lib.stack_teachers(setup["teachers"], stack=False)
    assert len(solo_bank.groups) == 3
    solo_feats, solo_logits = jax.jit(solo_bank.apply)(solo_vars, images)
    map_bank, map_vars = teachers_lib.stack_teachers(setup["teachers"], mode="map")
    assert setup["bank"].groups[0].mode == "map"  # 'auto' on CPU
    map_feats, map_logits = jax.jit(map_bank.apply)(map_vars, images)
    for d, (model, v) in setup["teachers"].items():
        direct_feats, direct_logits = jax.jit(model.apply)(v, {d: images[d]})
        for got_feats, got_logits in ((feats, logits), (solo_feats, solo_logits),
                                      (map_feats, map_logits)):
            np.testing.assert_allclose(got_feats[d]["pooled"], direct_feats[d]["pooled"],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got_feats[d]["layer2"], direct_feats[d]["layer2"],
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got_logits[d], direct_logits[d], rtol=1e-5, atol=1e-5)
    # A subset of a stacked group's domains runs each teacher from its slice of the stack.
    sub_feats, sub_logits = jax.jit(bank.apply)(tvars, {"c": images["c"]})
    np.testing.assert_allclose(sub_logits["c"], logits["c"], rtol=1e-5, atol=1e-5)


def test_teachers_group_by_architecture_and_batch_shape(setup):
    teachers = dict(setup["teachers"])
    shapes = {"a": (16, HW, HW, 3), "b": (8, HW, HW, 3), "c": (8, HW, HW, 3)}
    bank, tvars = teachers_lib.stack_teachers(teachers, image_shapes=shapes)
    assert [g.domains for g in bank.groups] == [("a",), ("b", "c")]
    assert [g.stacked for g in bank.groups] == [False, True]
    other = make_teachers(STUDENT, domains=("c",))  # a different architecture
    teachers["c"] = other["c"]
    bank, _ = teachers_lib.stack_teachers(teachers)
    assert [g.domains for g in bank.groups] == [("a", "b"), ("c",)]


def test_train_step_fits_a_batch(setup):
    """The single-teacher step: one network, one domain, task loss only."""
    model = models.MultiHeadClassifier(STUDENT(), (("a", CLASSES["a"]),))
    batch = make_batch(7, domains=("a",))
    v = jax.jit(model.init)(jax.random.key(0), {"a": batch["a"]["image"]})
    state = steps.TrainState.create(v["params"], v["batch_stats"], optim.adam(1e-2))
    mesh = sharding.make_mesh()
    fn = steps.jit_step(steps.make_train_step(model), mesh)
    state = sharding.replicate(state, mesh)
    sharded = sharding.shard_batch(batch, mesh)
    first = None
    for _ in range(40):
        state, metrics = fn(state, sharded)
        first = first if first is not None else float(metrics["loss"])
    assert float(metrics["loss"]) < 0.25 * first
    ev = jax.jit(steps.make_eval_step(model))(state.params, state.batch_stats,
                                              {"a": {**batch["a"], "mask": np.r_[np.ones(6), np.zeros(2)]}})
    assert float(ev["count/a"]) == 6.0
    assert 0 <= float(ev["correct/a"]) <= 6


def test_bfloat16_student_keeps_float32_parameters(setup):
    student = models.MultiHeadClassifier(STUDENT(dtype=jnp.bfloat16), tuple(CLASSES.items()))
    ads = AlignmentAdapters(tuple((d, 16) for d in DOMAINS), dtype=jnp.bfloat16)
    step = steps.make_distill_step(student, ads, setup["bank"], CONFIG)
    new, metrics = jax.jit(step)(setup["state"], setup["tvars"], setup["batch"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
    ref = float(_reference_loss(setup, setup["state"].params, setup["state"].batch_stats, 0)[0])
    assert np.isfinite(metrics["loss"])
    assert abs(float(metrics["loss"]) - ref) < 0.05 * abs(ref)


def test_clear_errors(setup):
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        sharding.shard_batch(make_batch(0, n=6), mesh)
    with pytest.raises(ValueError, match="lambda_p has no weight"):
        steps.make_distill_step(setup["student"], setup["adapters"], setup["bank"],
                                steps.DistillConfig(lambda_f=CONFIG.lambda_f, lambda_p={"a": 1.0}))
    partial_bank, _ = teachers_lib.stack_teachers({"a": setup["teachers"]["a"]})
    with pytest.raises(ValueError, match="No teacher"):
        steps.make_distill_step(setup["student"], setup["adapters"], partial_bank, CONFIG)
    with pytest.raises(KeyError, match="'image' and 'label'"):
        setup["step"](setup["state"], setup["tvars"], {"a": {"image": np.zeros((8, HW, HW, 3))}})
    with pytest.raises(ValueError, match="single head"):
        teachers_lib.stack_teachers({"b": setup["teachers"]["a"]})
    with pytest.raises(ValueError, match="group mode"):
        teachers_lib.stack_teachers(setup["teachers"], mode="pmap")
