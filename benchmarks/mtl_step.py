"""Cost of each multi-task method's step relative to the uniform step, measured in one run.

Setting (NYU-v2 style): SegNet with semantic (13 classes), depth and normal heads; one
jitted :func:`ur_jax.dense_steps.make_mtl_step` per method, Adam. Loss-weighting methods
(uniform, uncertainty, DWA, IMTL-L) need one backward pass; gradient methods need the T
per-task gradients, computed from one forward pass by a vmapped pullback: T backward
passes through the whole network in ``params`` space, or through the heads only plus one
backward through the shared network in ``features`` space. So the expected ratios are
about (1 + T·2) / 3 ≈ 2.3 for parameter-space methods (forward = 1, backward = 2 units)
and close to 1 for feature-space ones.

Each time is the median over ``--steps`` interleaved rounds after compilation; the table
gives milliseconds per step, images/s, compile time, FLOPs per step (XLA's cost analysis),
achieved FLOP/s and MFU (``common.py``), and the ratio to ``uniform`` from the same run.

    python benchmarks/mtl_step.py                                # CPU-sized: 1/8 width, 64x96
    # the paper's size (NYU-v2 at 288x384, batch 2), GPU/TPU:
    python benchmarks/mtl_step.py --width 1 --height 288 --width-px 384 --batch 2 --precision bf16
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import common
from ur_jax import dense_steps, mtl, optim
from ur_jax.models import SegNet
from ur_jax.models.precision import with_precision

TASKS = ("semantic", "depth", "normal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.125, help="SegNet width multiplier")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width-px", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed rounds")
    p.add_argument("--methods", default=",".join(mtl.METHODS))
    common.add_common_args(p)
    args = p.parse_args()
    deadline = common.Deadline(args.budget)
    report = common.Report("mtl_step", args)

    model = with_precision(SegNet(tasks=(("semantic", 13), ("depth", 1), ("normal", 3)),
                                  width=args.width), args.precision)
    h, w, b = args.height, args.width_px, args.batch
    variables = jax.jit(lambda r, x: model.init(r, x))(jax.random.key(0), jnp.zeros((1, h, w, 3)))
    variables = jax.device_get(variables)  # host copies: every method gets fresh device buffers
    batch = jax.device_put(common.dense_batch(b, h, w))
    print(f"SegNet width {args.width}, {h}x{w}, batch {b}, {args.precision}, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}", flush=True)

    functions, spaces = {}, {}
    for name in args.methods.split(","):
        method = mtl.get_method(name, **({"steps_per_epoch": 100}
                                         if "steps_per_epoch" in mtl.method_options(name) else {}))
        step = jax.jit(dense_steps.make_mtl_step(model, TASKS, method), donate_argnums=0)
        state = dense_steps.init_mtl_state(variables, method, len(TASKS), optim.adam(1e-4))
        functions[name] = (step, (state, batch))
        spaces[name] = method.space if method.uses_gradients else "loss"

    compiled = common.compile_all(functions, args.compile_threads, report)
    calls = {name: common.stateful(fn, *fn_args) for name, (fn, fn_args) in functions.items()}
    samples, report.data["compilations_while_timing"] = common.measure(calls, args.steps,
                                                                       deadline)
    rows = common.timed_rows(samples, compiled, {k: b for k in samples}, "images", report.peak)
    base = rows.get("uniform", next(iter(rows.values())))["seconds"]
    for name, row in rows.items():
        row.update(space=spaces[name], ratio_to_uniform=row["seconds"] / base)
    report.data["results"] = rows
    report.write(complete=True)
    common.print_table(rows, "images")
    print("x uniform: " + ", ".join(f"{k} ({r['space']}) {r['ratio_to_uniform']:.2f}"
                                    for k, r in rows.items()))


if __name__ == "__main__":
    main()
