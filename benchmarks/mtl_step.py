"""Cost of each multi-task method's step relative to the uniform step, measured in one run.

Setting (NYU-v2 style): SegNet with semantic (13 classes), depth and normal heads; one
jitted :func:`ur_jax.dense_steps.make_mtl_step` per method, Adam. Loss-weighting methods
(uniform, uncertainty, DWA, IMTL-L) need one backward pass; gradient methods need the T
per-task gradients, computed from one forward pass by a vmapped pullback: T backward
passes through the whole network in ``params`` space, or through the heads only plus one
backward through the shared network in ``features`` space. So the expected ratios are
about (1 + T·2) / 3 ≈ 2.3 for parameter-space methods (forward = 1, backward = 2 units)
and close to 1 for feature-space ones.

Each time is the median over ``--steps`` calls after one compiled call; the table gives
milliseconds per step and the ratio to ``uniform`` from the same run.

    python benchmarks/mtl_step.py                                # CPU-sized: 1/8 width, 64x96
    python benchmarks/mtl_step.py --width 1 --height 288 --width-px 384 --batch 2   # paper size
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax import dense_steps, mtl, optim
from ur_jax.models import SegNet

TASKS = ("semantic", "depth", "normal")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=float, default=0.125, help="SegNet width multiplier")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width-px", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default=",".join(mtl.METHODS))
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    model = SegNet(tasks=(("semantic", 13), ("depth", 1), ("normal", 3)), width=args.width)
    h, w, b = args.height, args.width_px, args.batch
    variables = jax.jit(lambda r, x: model.init(r, x))(jax.random.key(0), jnp.zeros((1, h, w, 3)))
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(b, h, w, 3)).astype(np.float32)
    batch = {"image": rng.uniform(size=(b, h, w, 3)).astype(np.float32),
             "semantic": rng.integers(-1, 13, (b, h, w)).astype(np.int32),
             "depth": rng.uniform(0.5, 5.0, (b, h, w, 1)).astype(np.float32),
             "normal": normal / np.linalg.norm(normal, axis=-1, keepdims=True)}
    batch = jax.device_put(batch)
    print(f"SegNet width {args.width}, {h}x{w}, batch {b}, {jax.device_count()} "
          f"{jax.default_backend()} device(s)")
    results = {}
    for name in args.methods.split(","):
        method = mtl.get_method(name, **({"steps_per_epoch": 100} if name == "dwa" else {}))
        step = jax.jit(dense_steps.make_mtl_step(model, TASKS, method), donate_argnums=0)
        state = dense_steps.init_mtl_state(jax.device_get(variables), method, len(TASKS),
                                           optim.adam(1e-4))
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        results[name] = {"ms": 1e3 * statistics.median(times), "space": method.space,
                         "gradients": method.uses_gradients}
    base = results.get("uniform", next(iter(results.values())))["ms"]
    print(f"{'method':<12}{'space':>10}{'ms/step':>10}{'x uniform':>11}")
    for name, r in results.items():
        space = r["space"] if r["gradients"] else "loss"
        print(f"{name:<12}{space:>10}{r['ms']:>10.1f}{r['ms'] / base:>11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
