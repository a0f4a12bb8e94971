"""Throughput of the URL ``distill_step`` against a plain student step, measured in one run.

Setting (URL on Meta-Dataset): Meta-Dataset ResNet-18 (5x5 stem, 512-d feature), 84x84
images, one single-domain teacher per domain (same architecture), a student with one head
and one linear alignment adapter per domain, kernel-CKA feature loss and KD with T = 4.

Timed, each as the median over ``--steps`` interleaved rounds after compilation:

* ``student``: the plain multi-domain student step (:func:`ur_jax.steps.make_train_step`,
  forward + backward + SGD), the baseline;
* ``teachers[MODE]``: the teachers' forward passes alone;
* ``distill[MODE]``: the whole :func:`ur_jax.steps.make_distill_step`;

for each teacher execution MODE in ``--teacher-modes``: ``vmap`` (stacked, one batched
call), ``map`` (stacked, a ``lax.map`` loop over one compiled teacher) and ``unstacked``
(a separate call per teacher). Teachers with different per-domain batch sizes form separate
stacks (:func:`ur_jax.teachers.stack_teachers`' ``image_shapes``).

Every image goes through its own domain's teacher once, so the teachers add one forward
pass to the student's forward + backward (about three forward passes): the ideal ratio
``distill / student`` is about 4/3. Each row also gives the compile time, the FLOPs per step
of XLA's cost analysis, the achieved FLOP/s and the MFU (``common.py``). XLA counts a
``lax.map`` body once, so ``map`` rows take their FLOPs from the ``unstacked`` (or ``vmap``)
row of the same run: the same arithmetic.

    python benchmarks/distill_step.py                       # CPU-sized: 8 domains x 8 images
    # the paper's batch (ImageNet 448 + 7 x 64, the URL recipe), GPU/TPU:
    python benchmarks/distill_step.py --domains meta-dataset --precision bf16 \\
        --batch 448,64,64,64,64,64,64,64 --teacher-modes vmap,map,unstacked --steps 10
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

import common
from ur_jax import models, optim, sharding, steps, teachers as teachers_lib
from ur_jax.adapters import AlignmentAdapters
from ur_jax.models.precision import compute_dtype, with_precision
from ur_jax.suites.metadataset.common import CLASS_SPLITS, TRAIN_SOURCES

TEACHER_MODES = {"vmap": dict(stack=True, mode="vmap"), "map": dict(stack=True, mode="map"),
                 "unstacked": dict(stack=False)}


def domain_sizes(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    """``{domain: (images per step, classes)}`` from ``--domains``, ``--teachers``,
    ``--batch`` and ``--classes``."""
    if args.domains == "meta-dataset":
        names = list(TRAIN_SOURCES)
        classes = [CLASS_SPLITS[s][0] for s in names]  # official training classes
    else:
        names = [f"domain{i}" for i in range(args.teachers)]
        classes = [args.classes] * len(names)
    batch = [int(b) for b in args.batch.split(",")]
    if len(batch) == 1:
        batch *= len(names)
    if len(batch) != len(names):
        raise SystemExit(f"--batch: {len(batch)} sizes for {len(names)} domains {names}; give "
                         f"one size, or one per domain.")
    return {d: (b, c) for d, b, c in zip(names, batch, classes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", choices=["generic", "meta-dataset"], default="generic",
                   help="generic: --teachers domains of --classes classes; meta-dataset: the "
                        "8 training sources with their official training classes")
    p.add_argument("--teachers", type=int, default=8, help="generic domains / teachers")
    p.add_argument("--batch", default="8",
                   help="images per domain per step: one size, or one per domain "
                        "(e.g. 448,64,64,64,64,64,64,64)")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier")
    p.add_argument("--classes", type=int, default=64, help="classes per generic domain")
    p.add_argument("--steps", type=int, default=5, help="timed rounds")
    p.add_argument("--teacher-modes", default="vmap",
                   help="comma-separated teacher executions to time: vmap (stacked, one "
                        "batched call), map (stacked, lax.map loop), unstacked (one call each)")
    common.add_common_args(p)
    args = p.parse_args()
    modes = args.teacher_modes.split(",")
    unknown = sorted(set(modes) - set(TEACHER_MODES))
    if unknown:
        p.error(f"--teacher-modes: unknown {unknown}; expected some of {list(TEACHER_MODES)}")
    deadline = common.Deadline(args.budget)
    report = common.Report("distill_step", args)

    sizes = domain_sizes(args)
    mesh = sharding.make_mesh()
    backbone = models.get_backbone("resnet18_metadataset", width=args.width)
    rng = np.random.default_rng(0)
    s = args.image_size
    batch = {d: {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
                 "label": rng.integers(0, c, b).astype(np.int32)} for d, (b, c) in sizes.items()}
    images = {d: b["image"] for d, b in batch.items()}
    n_images = sum(b for b, _ in sizes.values())
    report.data["images_per_step"] = n_images
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; ResNet-18 (MD) width "
          f"{args.width}, {s}px, {len(sizes)} teachers, images per domain "
          f"{[b for b, _ in sizes.values()]} ({n_images} per step), {args.precision}", flush=True)

    student = with_precision(
        models.MultiHeadClassifier(backbone, tuple((d, c) for d, (_, c) in sizes.items())),
        args.precision)
    sample_images = {d: x[:1] for d, x in images.items()}
    student_vars = jax.jit(functools.partial(student.init, train=False))(jax.random.key(0),
                                                                         sample_images)
    # Teachers: same architecture, computing in --precision, with the student's initial
    # weights (values do not change the cost; one initialisation to compile, not one each).
    teacher_models = {
        d: (with_precision(models.MultiHeadClassifier(backbone, ((d, c),)), args.precision),
            {"params": {"backbone": student_vars["params"]["backbone"],
                        "heads": {d: student_vars["params"]["heads"][d]}},
             "batch_stats": student_vars["batch_stats"]})
        for d, (_, c) in sizes.items()}
    width = backbone.feature_dim
    ads = AlignmentAdapters(tuple((d, width) for d in sizes), dtype=compute_dtype(args.precision))
    cfg = steps.DistillConfig(lambda_f={d: 1.0 for d in sizes},
                              lambda_p={d: 1.0 for d in sizes}, temperature=4.0)
    state0 = steps.init_distill_state(student, ads, jax.random.key(1), sample_images,
                                      optim.sgd(3e-2, 0.9, 7e-4), optim.adam(0.1, 5e-4),
                                      student_variables=student_vars)
    state0 = jax.device_get(state0)  # host copies: every variant gets fresh device buffers
    train_state0 = steps.TrainState.create(state0.params["student"], state0.batch_stats,
                                           optim.sgd(3e-2, 0.9, 7e-4))
    sharded = sharding.shard_batch(batch, mesh)
    sharded_images = {d: b["image"] for d, b in sharded.items()}

    # {name: (jitted, arguments)}; the states are donated by the timed calls, after compiling.
    functions = {"student": (steps.jit_step(steps.make_train_step(student), mesh),
                             (sharding.replicate(train_state0, mesh), sharded))}
    shapes = {d: x.shape for d, x in images.items()}
    for mode in modes:
        bank, tvars = teachers_lib.stack_teachers(teacher_models, shapes, **TEACHER_MODES[mode])
        tvars = sharding.replicate(tvars, mesh)
        functions[f"teachers[{mode}]"] = (jax.jit(bank.apply), (tvars, sharded_images))
        dfn = steps.jit_step(steps.make_distill_step(student, ads, bank, cfg), mesh,
                             with_teachers=True)
        functions[f"distill[{mode}]"] = (dfn, (sharding.replicate(state0, mesh), tvars, sharded))

    compiled = common.compile_all(functions, args.compile_threads, report)
    calls = {name: (lambda fn=fn, a=fn_args: fn(*a)) if name.startswith("teachers") else
             common.stateful(fn, *fn_args) for name, (fn, fn_args) in functions.items()}
    samples, report.data["compilations_while_timing"] = common.measure(calls, args.steps,
                                                                       deadline)

    flops = {}
    for name in samples:  # a lax.map body is counted once: take an unrolled mode's FLOPs
        if name.endswith("[map]"):
            kind = name[:-len("[map]")]
            flops[name] = next((compiled[f"{kind}[{m}]"]["xla_flops"] for m in
                                ("unstacked", "vmap") if f"{kind}[{m}]" in compiled), None)
    rows = common.timed_rows(samples, compiled, {k: n_images for k in samples}, "images",
                             report.peak, flops)
    base = rows["student"]["seconds"]
    for name, row in rows.items():
        row["ratio_to_student"] = row["seconds"] / base
    report.data["results"] = rows
    distill = {k: r["seconds"] for k, r in rows.items() if k.startswith("distill[")}
    report.data["fastest_teacher_mode"] = min(distill, key=distill.get)[len("distill["):-1]
    report.write(complete=True)
    common.print_table(rows, "images")
    print("ratio to student (ideal: teachers ~0.33, distill ~1.33): " + ", ".join(
        f"{k} {r['ratio_to_student']:.2f}" for k, r in rows.items() if k != "student"))
    print(f"fastest teacher mode: {report.data['fastest_teacher_mode']}")


if __name__ == "__main__":
    main()
