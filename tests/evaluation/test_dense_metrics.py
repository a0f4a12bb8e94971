"""Dense task losses (ur_jax.losses) and dense metrics / Delta_MTL (ur_jax.evaluation.dense).

Every number is checked against an independent float64 NumPy reference written from the
formulas (PAPER.md section 1), or against closed-form cases and the paper's Table 1.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ur_jax import losses
from ur_jax.evaluation import dense

C = 5  # classes; labels are drawn from [-1, C] so both -1 and C are out of range (ignored)


def _unit_np(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _make(seed: int, b: int = 2, h: int = 4, w: int = 5) -> dict[str, np.ndarray]:
    """Random dense batch with invalid pixels in every task."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32)
    depth[rng.random((b, h, w, 1)) < 0.3] = 0.0
    normal = _unit_np(rng.normal(size=(b, h, w, 3))).astype(np.float32)
    normal[rng.random((b, h, w)) < 0.3] = 0.0
    return {
        "logits": (2.0 * rng.normal(size=(b, h, w, C))).astype(np.float32),
        "semantic": rng.integers(-1, C + 1, size=(b, h, w)).astype(np.int32),
        "depth_pred": rng.uniform(0.3, 5.5, (b, h, w, 1)).astype(np.float32),
        "depth": depth,
        # Not unit length: the loss and the metrics normalise the prediction themselves.
        "normal_pred": (rng.normal(size=(b, h, w, 3)) * 1.7).astype(np.float32),
        "normal": normal,
    }


def _weights(mask, b):
    return np.ones(b) if mask is None else np.asarray(mask, np.float64)


# ----------------------------------------------------------------- NumPy references


def np_semantic_loss(logits, labels, mask=None):
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    valid = (labels >= 0) & (labels < z.shape[-1])
    picked = np.take_along_axis(z, np.clip(labels, 0, z.shape[-1] - 1)[..., None], -1)[..., 0]
    w = valid * _weights(mask, z.shape[0])[:, None, None]
    return (w * (lse - picked)).sum() / w.sum()


def np_depth_loss(pred, gt, mask=None):
    w = (gt != 0) * _weights(mask, gt.shape[0])[:, None, None, None]
    return (w * np.abs(pred.astype(np.float64) - gt)).sum() / w.sum()


def np_normal_loss(pred, gt, mask=None):
    cos = (_unit_np(pred.astype(np.float64)) * gt).sum(-1)
    w = (gt.sum(-1) != 0) * _weights(mask, gt.shape[0])[:, None, None]
    return 1.0 - (w * cos).sum() / w.sum()


def np_angles(pred, gt):
    """float64 angles (degrees) and validity of every pixel: the L2-normalised prediction
    against the raw target, valid where the target's channels sum to non-zero."""
    cos = np.clip((_unit_np(pred.astype(np.float64)) * gt.astype(np.float64)).sum(-1),
                  -1.0, 1.0)
    return np.degrees(np.arccos(cos)), gt.sum(-1) != 0


def np_metrics(d: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """All finalised metrics of a batch, from the formulas (float64)."""
    labels, pred = d["semantic"], d["logits"].argmax(-1)
    v = (labels >= 0) & (labels < C)
    conf, _, _ = np.histogram2d(labels[v], pred[v], bins=[np.arange(C + 1)] * 2)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    sem = {"miou": 100 * np.mean(tp[union > 0] / union[union > 0]),
           "pixel_acc": 100 * tp.sum() / conf.sum()}
    g = d["depth"].astype(np.float64)
    p = np.maximum(d["depth_pred"].astype(np.float64), 1e-9)
    dv = g != 0
    err = np.abs(p - g)[dv]
    dep = {"abs_err": err.mean(), "rel_err": (err / g[dv]).mean(),
           "rmse": np.sqrt((err**2).mean())}
    ang, nv = np_angles(d["normal_pred"], d["normal"])
    a = ang[nv]
    nor = {"angle_mean": a.mean(), "angle_median": np.median(a),
           "within_11_25": 100 * np.mean(a < 11.25), "within_22_5": 100 * np.mean(a < 22.5),
           "within_30": 100 * np.mean(a < 30), "rmse": np.sqrt(np.mean(a**2))}
    return {"semantic": sem, "depth": dep, "normal": nor}


# ----------------------------------------------------------------- losses


@pytest.mark.parametrize("mask", [None, [1.0, 0.25]])
def test_losses_match_numpy(mask):
    d = _make(0)
    m = None if mask is None else jnp.asarray(mask)
    got = {
        "semantic": losses.semantic_loss(d["logits"], d["semantic"], m),
        "depth": losses.depth_loss(d["depth_pred"], d["depth"], m),
        "normal": losses.normal_loss(d["normal_pred"], d["normal"], m),
    }
    want = {
        "semantic": np_semantic_loss(d["logits"], d["semantic"], mask),
        "depth": np_depth_loss(d["depth_pred"], d["depth"], mask),
        "normal": np_normal_loss(d["normal_pred"], d["normal"], mask),
    }
    for task, value in got.items():
        assert value.dtype == jnp.float32 and value.shape == ()
        np.testing.assert_allclose(float(value), want[task], rtol=1e-5, err_msg=task)
        preds = {"semantic": d["logits"], "depth": d["depth_pred"], "normal": d["normal_pred"]}
        via = losses.dense_task_loss(task, preds[task], d[task], m)
        assert float(via) == float(value)


def test_losses_ignore_invalid_pixels_and_padded_examples():
    d = _make(1)
    rng = np.random.default_rng(7)
    mask = jnp.asarray([1.0, 0.0])
    base = [losses.semantic_loss(d["logits"], d["semantic"], mask),
            losses.depth_loss(d["depth_pred"], d["depth"], mask),
            losses.normal_loss(d["normal_pred"], d["normal"], mask)]
    # Scramble the predictions wherever the target is invalid, and all of example 1.
    logits, dp, npred = d["logits"].copy(), d["depth_pred"].copy(), d["normal_pred"].copy()
    sem_bad = (d["semantic"] < 0) | (d["semantic"] >= C)
    logits[sem_bad] = 50 * rng.normal(size=(sem_bad.sum(), C))
    dp[d["depth"] == 0] = 1e3
    npred[d["normal"].sum(-1) == 0] = rng.normal(size=3) * 9
    logits[1], dp[1], npred[1] = -logits[1] * 3, dp[1] + 7, -npred[1]
    after = [losses.semantic_loss(logits, d["semantic"], mask),
             losses.depth_loss(dp, d["depth"], mask),
             losses.normal_loss(npred, d["normal"], mask)]
    for b, a in zip(base, after):
        assert float(a) == float(b)
    # ...while changing a valid pixel of example 0 does change every loss.
    logits[0][~sem_bad[0]] += 3 * rng.normal(size=((~sem_bad[0]).sum(), C))
    dp[0] += 0.5
    npred[0] = rng.normal(size=npred[0].shape)
    moved = [losses.semantic_loss(logits, d["semantic"], mask),
             losses.depth_loss(dp, d["depth"], mask),
             losses.normal_loss(npred, d["normal"], mask)]
    for b, a in zip(base, moved):
        assert float(a) != float(b)


def test_bam_loss_anneals_from_the_teacher_to_the_ground_truth():
    """BAM's teacher annealing (Clark et al. 2019) with lambda = t / T: at t = 0 the loss is
    towards the teacher's prediction alone, at t = T / 2 towards the half-half mix, at t = T
    towards the ground truth alone (= the task loss). Values written out by hand."""
    from ur_jax import dense_steps

    num_steps = 10
    lams = [float(dense_steps.bam_lambda(s, num_steps)) for s in (0, 5, 10)]
    assert lams == [0.0, 0.5, 1.0]
    assert float(dense_steps.bam_lambda(20, num_steps)) == 1.0
    # Semantic: one labelled pixel (class 0) and one ignored; soft cross-entropy.
    s_logits = np.array([[2.0, 0.0, -1.0], [5.0, 1.0, 0.0]], np.float32).reshape(1, 1, 2, 3)
    t_logits = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 9.0]], np.float32).reshape(1, 1, 2, 3)
    labels = np.array([0, -1], np.int32).reshape(1, 1, 2)
    log_p = np.array([2.0, 0.0, -1.0]) - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0))
    q = np.exp([0.0, 1.0, 0.0]) / np.exp([0.0, 1.0, 0.0]).sum()
    sem = {lam: -(lam * log_p[0] + (1 - lam) * q @ log_p) for lam in lams}
    # Depth: prediction 1, ground truth 2, teacher 0.5 (target 0.5 + 1.5 lam); one invalid.
    d_pred = np.array([1.0, 3.0], np.float32).reshape(1, 1, 2, 1)
    d_gt = np.array([2.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    d_teacher = np.array([0.5, 7.0], np.float32).reshape(1, 1, 2, 1)
    dep = {0.0: 0.5, 0.5: 0.25, 1.0: 1.0}
    # Normals: prediction (2, 0, 0) -> (1, 0, 0); ground truth (0, 1, 0) (cos 0), teacher
    # (0.6, 0.8, 0) (cos 0.6): loss 1 - 0.6 (1 - lam). The second pixel is invalid.
    n_pred = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32).reshape(1, 1, 2, 3)
    n_gt = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32).reshape(1, 1, 2, 3)
    n_teacher = np.array([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]], np.float32).reshape(1, 1, 2, 3)
    nor = {0.0: 0.4, 0.5: 0.7, 1.0: 1.0}
    for lam in lams:
        got = {
            "semantic": losses.dense_bam_loss("semantic", s_logits, labels, t_logits, lam),
            "depth": losses.dense_bam_loss("depth", d_pred, d_gt, d_teacher, lam),
            "normal": losses.dense_bam_loss("normal", n_pred, n_gt, n_teacher, lam),
        }
        want = {"semantic": sem[lam], "depth": dep[lam], "normal": nor[lam]}
        for t in want:
            assert float(got[t]) == pytest.approx(want[t], abs=1e-5), (t, lam)
    # At the end (lambda = 1) it is exactly the task loss.
    for t, (p, g, tp) in {"semantic": (s_logits, labels, t_logits),
                          "depth": (d_pred, d_gt, d_teacher),
                          "normal": (n_pred, n_gt, n_teacher)}.items():
        np.testing.assert_allclose(losses.dense_bam_loss(t, p, g, tp, 1.0),
                                   losses.dense_task_loss(t, p, g), rtol=1e-6)
    with pytest.raises(ValueError, match="teacher prediction must have"):
        losses.dense_bam_loss("depth", d_pred, d_gt, d_teacher[:, :, :1], 0.5)


def test_all_invalid_batch_gives_zero_and_finite_zero_gradient():
    d = _make(2)
    invalid = {"semantic": np.full_like(d["semantic"], -1), "depth": np.zeros_like(d["depth"]),
               "normal": np.zeros_like(d["normal"])}
    # A zero normal prediction also exercises the safe re-normalisation.
    preds = {"semantic": d["logits"], "depth": d["depth_pred"],
             "normal": np.zeros_like(d["normal_pred"])}
    for task in dense.TASKS:
        cases = [(invalid[task], None), (d[task], jnp.zeros(2))]  # no valid pixel / all padded
        for target, mask in cases:
            fn = lambda p, t=target, m=mask, k=task: losses.dense_task_loss(k, p, t, m)
            value, grad = jax.value_and_grad(fn)(jnp.asarray(preds[task]))
            assert float(value) == 0.0, task
            assert np.all(np.isfinite(grad)) and not np.any(grad), task


def test_loss_input_errors():
    d = _make(3)
    with pytest.raises(ValueError, match="integers"):
        losses.semantic_loss(d["logits"], d["semantic"].astype(np.float32))
    with pytest.raises(ValueError, match="logits.shape"):
        losses.semantic_loss(d["logits"], d["semantic"][:, :-1])
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\)"):
        losses.depth_loss(d["normal_pred"], d["normal"])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        losses.normal_loss(d["normal_pred"], d["normal"], mask=jnp.ones((3,)))
    with pytest.raises(ValueError, match="valid tasks"):
        losses.dense_task_loss("edges", d["depth_pred"], d["depth"])


# ----------------------------------------------------------------- semantic metrics


def test_confusion_matches_histogram2d_for_logits_ints_and_both_kernels():
    d = _make(4, b=3)
    labels, pred = d["semantic"], d["logits"].argmax(-1)
    mask = np.array([1, 0, 1])
    keep = ((labels >= 0) & (labels < C)) & (mask[:, None, None] > 0)
    want, _, _ = np.histogram2d(labels[keep], pred[keep], bins=[np.arange(C + 1)] * 2)
    ref_bincount = np.bincount(labels[keep] * C + pred[keep], minlength=C * C).reshape(C, C)
    np.testing.assert_array_equal(want, ref_bincount)
    for x in (d["logits"], pred.astype(np.int32)):
        conf = dense.semantic_stats(x, labels, C, mask=mask)["confusion"]
        assert conf.dtype == jnp.int32 and conf.shape == (C, C)
        np.testing.assert_array_equal(conf, want)
    valid = jnp.asarray(keep)
    for method in ("matmul", "scatter"):
        conf = dense._confusion(jnp.asarray(labels), jnp.asarray(pred, jnp.int32), valid, C,
                                method)
        np.testing.assert_array_equal(conf, want)
    with pytest.raises(ValueError, match="num_classes=4"):
        dense.semantic_stats(d["logits"], labels, 4)
    with pytest.raises(ValueError, match="integer predictions"):
        dense.task_stats("semantic", pred.astype(np.int32), labels)


def test_miou_and_pixel_acc_closed_form_and_vs_numpy():
    # Class 2 never appears (union 0) and is excluded; class 3 has union 1 and IoU 0.
    conf = np.array([[2, 1, 0, 1], [0, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    got = dense.finalize("semantic", {"confusion": conf})
    assert got["miou"] == pytest.approx(100 * (2 / 4 + 3 / 4 + 0) / 3)
    assert got["pixel_acc"] == pytest.approx(100 * 5 / 7)
    d = _make(5, b=4, h=6, w=6)
    got = dense.finalize("semantic", dense.semantic_stats(d["logits"], d["semantic"], C))
    want = np_metrics(d)["semantic"]
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k


# ----------------------------------------------------------------- accumulation (jitted)


def test_jitted_sharded_accumulation_equals_numpy_over_the_whole_set(devices):
    """Three batches of 8 sharded over 8 devices (last one half padding), one compile."""
    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    batches = [_make(10 + i, b=8, h=6, w=8) for i in range(3)]
    masks = [np.ones(8, np.float32), np.ones(8, np.float32),
             np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32)]

    @jax.jit
    def step(stats, batch):
        new = {
            "semantic": dense.task_stats("semantic", batch["logits"], batch["semantic"],
                                         mask=batch["mask"]),
            "depth": dense.task_stats("depth", batch["depth_pred"], batch["depth"],
                                      mask=batch["mask"]),
            "normal": dense.task_stats("normal", batch["normal_pred"], batch["normal"],
                                       mask=batch["mask"]),
        }
        return dense.add_stats(stats, new)

    # Replicated from the start, so the first call's input placement equals the carry's.
    stats = jax.device_put(dense.empty_stats({"semantic": C, "depth": 1, "normal": 3}),
                           NamedSharding(mesh, P()))
    for d, m in zip(batches, masks):
        stats = step(stats, jax.device_put({**d, "mask": m}, sharding))
    if hasattr(step, "_cache_size"):
        assert step._cache_size() == 1

    # The same data as one big set, padded examples removed.
    keep = [m > 0 for m in masks]
    whole = {k: np.concatenate([d[k][s] for d, s in zip(batches, keep)]) for k in batches[0]}
    want = np_metrics(whole)
    got = dense.finalize_all(stats)
    assert set(got) == set(want)
    for task in want:
        assert set(got[task]) == set(want[task])
        for k, v in want[task].items():
            if k == "angle_median":
                continue
            assert got[task][k] == pytest.approx(v, rel=2e-6, abs=1e-9), (task, k)
    # Median from the 0.01-degree histogram: within half a bin of the exact median.
    assert abs(got["normal"]["angle_median"] - want["normal"]["angle_median"]) <= 0.0051

    # Exact integer statistics equal those of one big eager batch.
    sem_one = dense.semantic_stats(whole["logits"], whole["semantic"], C)
    nor_one = dense.normal_stats(whole["normal_pred"], whole["normal"])
    dep_one = dense.depth_stats(whole["depth_pred"], whole["depth"])
    np.testing.assert_array_equal(stats["semantic"]["confusion"], sem_one["confusion"])
    for k in ("count", "n_within_11_25", "n_within_22_5", "n_within_30", "hist"):
        np.testing.assert_array_equal(stats["normal"][k], nor_one[k], err_msg=k)
    assert int(stats["depth"]["count"]) == int(dep_one["count"])
    n_valid = int((whole["normal"].sum(-1) != 0).sum())
    assert int(stats["normal"]["hist"].sum()) == int(stats["normal"]["count"]) == n_valid


def test_mask_excludes_padded_examples():
    d = _make(20, b=3)
    mask = np.array([1, 1, 0], np.float32)
    head = {k: v[:2] for k, v in d.items()}
    for task, pred in (("semantic", "logits"), ("depth", "depth_pred"),
                       ("normal", "normal_pred")):
        masked = dense.task_stats(task, d[pred], d[task], mask=mask)
        plain = dense.task_stats(task, head[pred], head[task])
        for k in plain:
            np.testing.assert_allclose(masked[k], plain[k], rtol=1e-6, err_msg=f"{task}/{k}")


def test_depth_and_normal_metrics_closed_form():
    # Depth: valid pixels g = 2, 4 with p = 1, 5 (|e| = 1, 1); g = 0 is ignored.
    p = np.array([1.0, 5.0, 9.0], np.float32).reshape(1, 1, 3, 1)
    g = np.array([2.0, 4.0, 0.0], np.float32).reshape(1, 1, 3, 1)
    got = dense.finalize("depth", dense.depth_stats(p, g))
    assert got == pytest.approx({"abs_err": 1.0, "rel_err": (1 / 2 + 1 / 4) / 2, "rmse": 1.0})
    # Normals at known angles (one invalid pixel); 1-degree bins: the median of
    # {10.3, 20.7, 45.2, 50.9, 180} is 45.2, read as the centre of bin [45, 46).
    angles = np.array([10.3, 20.7, 45.2, 50.9, 180.0, 0.0])
    rad = np.radians(angles)
    pred = np.stack([np.sin(rad), np.zeros(6), np.cos(rad)], -1).reshape(1, 1, 6, 3)
    tgt = np.tile([0.0, 0.0, 1.0], (1, 1, 6, 1))
    tgt[0, 0, 5] = 0.0
    s = dense.normal_stats(pred.astype(np.float32), tgt.astype(np.float32), bins=180)
    hist = np.asarray(s["hist"])
    assert hist.shape == (180,) and hist.sum() == 5 and hist[179] == 1  # 180 -> last bin
    assert [int(i) for i in np.flatnonzero(hist)] == [10, 20, 45, 50, 179]
    got = dense.finalize("normal", s)
    a = angles[:5]
    assert got["angle_median"] == pytest.approx(45.5)
    assert got["angle_mean"] == pytest.approx(a.mean(), abs=1e-3)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(a**2)), abs=1e-3)
    assert got["within_11_25"] == pytest.approx(20.0)
    assert got["within_22_5"] == got["within_30"] == pytest.approx(40.0)
    # An even count averages the two middle bins' centres, like np.median.
    s4 = dense.normal_stats(pred[:, :, :4].astype(np.float32), tgt[:, :, :4].astype(np.float32),
                            bins=180)
    assert dense.finalize("normal", s4)["angle_median"] == pytest.approx((20.5 + 45.5) / 2)


def test_depth_metrics_clamp_the_prediction_like_the_authors():
    """The authors' DepthMeter (the paper's numbers) clamps predictions to >= 1e-9 before
    the errors: target 2.0, prediction -1.0 has abs error 2.0 (unclamped: 3.0)."""
    p = np.array([-1.0, 0.5, 7.0], np.float32).reshape(1, 1, 3, 1)
    g = np.array([2.0, 1.0, 0.0], np.float32).reshape(1, 1, 3, 1)
    one = dense.finalize("depth", dense.depth_stats(p[:, :, :1], g[:, :, :1]))
    assert one["abs_err"] == pytest.approx(2.0, abs=1e-6)
    assert one["rmse"] == pytest.approx(2.0, abs=1e-6)
    assert one["rel_err"] == pytest.approx(1.0, abs=1e-6)          # |1e-9 - 2| / 2
    both = dense.finalize("depth", dense.task_stats("depth", p, g))   # the eval step's path
    clamped = np.maximum(p.astype(np.float64), 1e-9).ravel()[:2]
    err = np.abs(clamped - [2.0, 1.0])
    assert both == pytest.approx({"abs_err": err.mean(), "rel_err": np.mean(err / [2.0, 1.0]),
                                  "rmse": np.sqrt(np.mean(err ** 2))}, abs=1e-6)
    mtan = dense.finalize("depth", dense.depth_stats(p[:, :, :1], g[:, :, :1], min_pred=None))
    assert mtan["abs_err"] == pytest.approx(3.0)


def test_normal_metrics_and_loss_validity_is_a_non_zero_channel_sum():
    """Authors / MTAN: a pixel is valid when its target channels sum to non-zero, and the
    angle is arccos of the L2-normalised prediction against the raw target: (0.6, -0.6, 0)
    is excluded; (0.8, 0, 0) against a prediction (1, 0, 0) is arccos(0.8) = 36.87 deg."""
    pred = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
    tgt = np.array([[0.6, -0.6, 0.0], [0.8, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    pred, tgt = pred.reshape(1, 1, 3, 3), tgt.reshape(1, 1, 3, 3)
    expected = np.degrees(np.arccos(0.8))
    assert expected == pytest.approx(36.8699, abs=1e-4)
    s = dense.normal_stats(pred, tgt)
    assert int(s["count"]) == 1
    got = dense.finalize("normal", s)
    assert got["angle_mean"] == pytest.approx(expected, abs=1e-3)
    assert got["rmse"] == pytest.approx(expected, abs=1e-3)
    assert got["angle_median"] == pytest.approx(expected, abs=0.006)
    assert (got["within_11_25"], got["within_22_5"], got["within_30"]) == (0.0, 0.0, 0.0)
    # The loss: 1 - mean cosine over the same valid pixels, target not renormalised.
    assert float(losses.normal_loss(pred, tgt)) == pytest.approx(1.0 - 0.8, abs=1e-6)
    assert float(losses.dense_task_loss("normal", pred[:, :, :1], tgt[:, :, :1])) == 0.0


def test_empty_stats_structure_and_nothing_valid_gives_nan():
    tasks = {"semantic": C, "depth": 1, "normal": 3}
    empty = dense.empty_stats(tasks)
    d = _make(30)
    real = {t: dense.task_stats(t, d[p], d[t]) for t, p in
            (("semantic", "logits"), ("depth", "depth_pred"), ("normal", "normal_pred"))}
    assert jax.tree.structure(empty) == jax.tree.structure(real)
    for a, b in zip(jax.tree.leaves(empty), jax.tree.leaves(real)):
        assert a.shape == b.shape and a.dtype == b.dtype
    summed = dense.add_stats(empty, real)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(real)):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dense.finalize_all(empty)
    assert all(math.isnan(v) for m in out.values() for v in m.values())
    assert set(out["normal"]) | set(out["depth"]) | set(out["semantic"]) <= set(
        dense.METRIC_DIRECTIONS)
    with pytest.raises(ValueError, match="structure"):
        dense.add_stats(empty, {"depth": real["depth"]})
    with pytest.raises(ValueError, match="num_classes / bins"):
        dense.add_stats(dense.empty_stats({"semantic": 3}), {"semantic": real["semantic"]})
    with pytest.raises(ValueError, match="valid tasks"):
        dense.empty_stats({"edges": 1})
    with pytest.raises(ValueError, match="lack"):
        dense.finalize("depth", {"count": 1})


def test_metric_directions():
    d = dense.METRIC_DIRECTIONS
    assert {k for k, v in d.items() if v == 1} == {
        "miou", "pixel_acc", "within_11_25", "within_22_5", "within_30"}
    assert {k for k, v in d.items() if v == -1} == {
        "abs_err", "rel_err", "rmse", "angle_mean", "angle_median"}


# ----------------------------------------------------------------- Delta_MTL

ROUNDED_STL = dense.NYUV2_PAPER_TABLE["STL"]


def test_delta_mtl_reference_points():
    assert dense.delta_mtl(dense.NYUV2_STL_REFERENCE, dense.NYUV2_STL_REFERENCE) == 0.0
    assert dense.delta_mtl(ROUNDED_STL, ROUNDED_STL) == 0.0
    url, uniform = dense.NYUV2_PAPER_TABLE["URL"], dense.NYUV2_PAPER_TABLE["Uniform"]
    # Against the rounded printed STL row.
    assert round(dense.delta_mtl(url, ROUNDED_STL), 2) == 10.94
    assert round(dense.delta_mtl(uniform, ROUNDED_STL), 2) == -1.13
    # Against the unrounded STL constants.
    assert round(dense.delta_mtl(url, dense.NYUV2_STL_REFERENCE), 2) == 10.95
    assert round(dense.delta_mtl(uniform, dense.NYUV2_STL_REFERENCE), 2) == -1.12
    # By hand, URL vs the unrounded constants.
    ref = dense.NYUV2_STL_REFERENCE
    by_hand = 100 / 3 * ((45.52 - 40.5355) / 40.5355 - (0.4912 - 0.627602) / 0.627602
                         - (24.57 - 24.284388) / 24.284388)
    assert dense.delta_mtl(url, ref) == pytest.approx(by_hand, rel=1e-12)


def test_delta_mtl_column_of_table_1():
    """Which printed Delta_MTL entries are reproduced to 2 decimals, from which reference."""
    table, column = dense.NYUV2_PAPER_TABLE, dense.NYUV2_PAPER_DELTA_MTL
    assert set(table) == set(column)

    def reproduced(ref):
        return {m for m in table if round(dense.delta_mtl(table[m], ref), 2) == column[m]}

    precise = reproduced(dense.NYUV2_STL_REFERENCE)
    rounded = reproduced(ROUNDED_STL)
    assert precise == {"GradNorm", "MGDA", "PCGrad", "GradDrop", "IMTL-H", "BAM", "URL"}
    assert rounded == {"STL", "Uniform"}
    # Every other entry is within what the rounding of the printed metrics allows:
    # (0.005 / mIoU + 0.00005 / abs + 0.005 / mean) * 100 / 3, plus 0.005 printing.
    ref = dense.NYUV2_STL_REFERENCE
    slack = 100 / 3 * (0.005 / ref["semantic"]["miou"] + 0.00005 / ref["depth"]["abs_err"]
                       + 0.005 / ref["normal"]["angle_mean"]) + 0.005
    for m in table:
        if m != "STL":
            assert abs(dense.delta_mtl(table[m], ref) - column[m]) <= slack, m


def test_delta_mtl_cityscapes_pairs_and_errors():
    ref = {"semantic": {"miou": 40.0}, "depth": {"abs_err": 0.025},
           "normal": {"angle_mean": 20.0}}
    res = {"semantic": {"miou": 50.0, "pixel_acc": 90.0}, "depth": {"abs_err": 0.02}}
    assert dense.delta_mtl(res, ref) == pytest.approx(100 / 2 * (0.25 + 0.2))
    worse = {"depth": {"abs_err": 0.03}}
    assert dense.delta_mtl(worse, ref) == pytest.approx(-20.0)
    with pytest.raises(ValueError, match="reference does not"):
        dense.delta_mtl(res, {"semantic": {"miou": 40.0}})
    with pytest.raises(ValueError, match="none of the pairs"):
        dense.delta_mtl({"normal": {"angle_median": 1.0}}, ref)
    with pytest.raises(ValueError, match="non-zero"):
        dense.delta_mtl(res, {**ref, "semantic": {"miou": 0.0}})
    with pytest.raises(ValueError, match="no known direction"):
        dense.delta_mtl({"depth": {"delta1": 0.8}}, {"depth": {"delta1": 0.7}},
                        metrics=(("depth", "delta1"),))
