"""Throughput of the URL ``distill_step`` against a plain student step, measured in one run.

Setting (URL on Meta-Dataset): Meta-Dataset ResNet-18 (5x5 stem, 512-d feature), 84x84
images, K single-domain teachers of the same architecture, a student with K heads and K
linear alignment adapters, kernel-CKA feature loss and KD with T = 4.

Timed, each as the median over ``--steps`` calls after ``--warmup`` compiled ones:

* ``student``: the plain multi-domain student step (:func:`ur_jax.steps.make_train_step`,
  forward + backward + SGD), the baseline;
* ``teachers[MODE]``: the teachers' forward passes alone;
* ``distill[MODE]``: the whole :func:`ur_jax.steps.make_distill_step`;

for each teacher execution MODE in ``--teacher-modes``: ``vmap`` (stacked, one batched
call), ``map`` (stacked, a ``lax.map`` loop over one compiled teacher) and ``unstacked``
(a separate call per teacher).

Every image goes through its own domain's teacher once, so the teachers add one forward
pass to the student's forward + backward (about three forward passes): the ideal ratio
``distill / student`` is about 4/3.

    python benchmarks/distill_step.py                       # CPU-sized: batch 8 per domain
    python benchmarks/distill_step.py --batch 64 --steps 20 # the paper's per-domain batch, GPU/TPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax import models, optim, sharding, steps, teachers as teachers_lib
from ur_jax.adapters import AlignmentAdapters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", type=int, default=8, help="number of domains / teachers")
    p.add_argument("--batch", type=int, default=8, help="images per domain per step")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier")
    p.add_argument("--classes", type=int, default=64, help="classes per domain")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--teacher-modes", default="vmap",
                   help="comma-separated teacher executions to time: vmap (stacked, one "
                        "batched call), map (stacked, lax.map loop), unstacked (one call each)")
    p.add_argument("--json", help="write the results to this file as well")
    args = p.parse_args()

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    mesh = sharding.make_mesh()
    domains = [f"domain{i}" for i in range(args.teachers)]
    backbone = models.get_backbone("resnet18_metadataset", width=args.width, dtype=dtype)
    rng = np.random.default_rng(0)
    batch = {d: {"image": rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3))
                 .astype(np.float32),
                 "label": rng.integers(0, args.classes, args.batch).astype(np.int32)}
             for d in domains}
    images = {d: b["image"] for d, b in batch.items()}
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; ResNet-18 (MD) width "
          f"{args.width}, {args.image_size}px, {args.teachers} teachers x {args.batch} images, "
          f"{args.dtype}", flush=True)

    # Teachers: same architecture, different (random) weights.
    teacher_models = {}
    for i, d in enumerate(domains):
        m = models.MultiHeadClassifier(backbone, ((d, args.classes),))
        teacher_models[d] = (m, jax.jit(m.init)(jax.random.key(100 + i), {d: images[d][:1]}))
    student = models.MultiHeadClassifier(backbone, tuple((d, args.classes) for d in domains))
    width = backbone.feature_dim
    ads = AlignmentAdapters(tuple((d, width) for d in domains), dtype=dtype)
    cfg = steps.DistillConfig(lambda_f={d: 1.0 for d in domains},
                              lambda_p={d: 1.0 for d in domains}, temperature=4.0)
    state0 = steps.init_distill_state(student, ads, jax.random.key(0),
                                      {d: x[:1] for d, x in images.items()},
                                      optim.sgd(3e-2, 0.9, 7e-4), optim.adam(0.1, 5e-4))
    state0 = jax.device_get(state0)  # host copies: every variant gets fresh device buffers
    train_state0 = steps.TrainState.create(state0.params["student"], state0.batch_stats,
                                           optim.sgd(3e-2, 0.9, 7e-4))
    sharded = sharding.shard_batch(batch, mesh)
    sharded_images = {d: b["image"] for d, b in sharded.items()}
    n_images = args.teachers * args.batch

    # Every timed function is a closure that carries its own (donated) state forward.
    def stateful(fn, state, *rest):
        box = [sharding.replicate(state, mesh)]

        def call():
            box[0], metrics = fn(box[0], *rest)
            return metrics
        return call

    timed = {"student": stateful(steps.jit_step(steps.make_train_step(student), mesh),
                                 train_state0, sharded)}
    variants = {"vmap": dict(stack=True, mode="vmap"), "map": dict(stack=True, mode="map"),
                "unstacked": dict(stack=False)}
    for variant in args.teacher_modes.split(","):
        bank, tvars = teachers_lib.stack_teachers(teacher_models, **variants[variant])
        tvars = sharding.replicate(tvars, mesh)
        tfn = jax.jit(bank.apply)
        timed[f"teachers[{variant}]"] = lambda tfn=tfn, tvars=tvars: tfn(tvars, sharded_images)
        dfn = steps.jit_step(steps.make_distill_step(student, ads, bank, cfg), mesh,
                             with_teachers=True)
        timed[f"distill[{variant}]"] = stateful(dfn, state0, tvars, sharded)

    for name, call in timed.items():  # compile and warm up
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            jax.block_until_ready(call())
        print(f"compiled + warmed up {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    # Interleaved rounds: slow drifts of a shared machine hit every variant alike.
    samples = {name: [] for name in timed}
    for r in range(args.steps):
        for name, call in timed.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            samples[name].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.steps}: " + ", ".join(
            f"{k} {v[-1] * 1e3:.0f} ms" for k, v in samples.items()), flush=True)
    results = {name: statistics.median(v) for name, v in samples.items()}
    for name, sec in results.items():
        ideal = "" if name == "student" else (
            " (ideal ~0.33)" if name.startswith("teachers") else " (ideal ~1.33)")
        print(f"{name:<22}{sec * 1e3:9.1f} ms  {n_images / sec:8.1f} img/s  ratio to student "
              f"{sec / results['student']:.2f}{ideal}")

    summary = {"args": vars(args), "device_kind": jax.devices()[0].device_kind,
               "device_count": jax.device_count(),
               "seconds": results,
               "images_per_second": {k: n_images / v for k, v in results.items()},
               "ratio_to_student": {k: v / results["student"] for k, v in results.items()}}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
