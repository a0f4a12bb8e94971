"""Episodes per second of Meta-Dataset few-shot evaluation (NCC, PA, TSA), and compilations.

Setting: the Meta-Dataset ResNet-18 (5x5 stride-2 stem, 512-d feature; random weights, which
cost the same as trained ones) at 84x84, frozen; episodes of the standard variable-way
variable-shot protocol (:func:`ur_jax.data.episodes.sample_episodes`) drawn from a synthetic
split shaped like a Meta-Dataset test split (``--classes`` classes with 20 .. ``--max-images``
images each; records generated on the fly, so no dataset is needed).

For each method the first ``--warmup`` episodes compile what they need (and are not timed);
then ``--episodes`` further episodes are timed end to end (reading images, features, the
inner loop, scoring), and the XLA compilations they trigger are counted through
:mod:`jax.monitoring` (:class:`ur_jax.evaluation.metadataset.CompilationCounter`). With
support sizes padded to six buckets, the compilations over 600 episodes stay at the handful
of buckets the warm-up did not meet.

    python benchmarks/fewshot_eval.py --episodes 600 --methods ncc,pa,tsa      # GPU
    python benchmarks/fewshot_eval.py --episodes 20 --width 0.25 --methods ncc,pa,tsa  # CPU
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax import models
from ur_jax.data import episodes as episodes_lib
from ur_jax.evaluation import metadataset as md_eval


class SyntheticSource:
    """A random-access source of ``{'image': uint8 (S, S, 3), 'label'}`` records made on the
    fly from the record index (class-dependent colour plus noise)."""

    def __init__(self, sizes: np.ndarray, image_size: int) -> None:
        self.labels = np.repeat(np.arange(len(sizes)), sizes)
        self.size = image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(int(i))
        c = int(self.labels[i])
        colour = np.random.default_rng(c).integers(0, 256, 3)
        noise = rng.integers(-40, 41, (self.size, self.size, 3))
        return {"image": np.clip(colour + noise, 0, 255).astype(np.uint8), "label": c}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=600, help="timed episodes per method")
    p.add_argument("--warmup", type=int, default=30,
                   help="untimed episodes first (they meet most support buckets)")
    p.add_argument("--methods", default="ncc,pa,tsa")
    p.add_argument("--protocol", default="standard", choices=episodes_lib.PROTOCOLS)
    p.add_argument("--classes", type=int, default=100, help="classes of the synthetic split")
    p.add_argument("--max-images", type=int, default=300, help="largest class")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--width", type=float, default=1.0, help="ResNet width multiplier")
    p.add_argument("--batch", type=int, default=256, help="feature-extraction batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results to this file as well")
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    sizes = rng.integers(20, args.max_images + 1, args.classes)
    source = SyntheticSource(sizes, args.image_size)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    spec = episodes_lib.SplitSpec("synthetic", tuple(np.arange(starts[c], starts[c + 1])
                                                     for c in range(args.classes)))
    total = args.warmup + args.episodes
    eps = episodes_lib.sample_episodes(spec, total, args.protocol, seed=args.seed)
    warm, timed = eps[:args.warmup], eps[args.warmup:]
    shape = episodes_lib.describe(timed)

    net = models.get_backbone("resnet18_metadataset", width=args.width)
    variables = jax.jit(lambda r, x: net.init(r, x, train=False))(
        jax.random.key(0), jnp.zeros((1, args.image_size, args.image_size, 3)))
    evaluator = md_eval.EpisodeEvaluator(net, variables, batch_size=args.batch)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; ResNet-18 width "
          f"{args.width} at {args.image_size}px; {args.protocol} episodes: "
          + ", ".join(f"{k} {v:.1f}" for k, v in shape.items() if k.startswith("mean")), flush=True)

    results = {"settings": vars(args), "episodes": shape, "methods": {}}
    for method in args.methods.split(","):
        if warm:
            evaluator.evaluate(source, warm, method=method)
        with md_eval.CompilationCounter() as counter:
            t0 = time.perf_counter()
            acc = evaluator.evaluate(source, timed, method=method)
            seconds = time.perf_counter() - t0
        row = {"episodes_per_s": len(timed) / seconds, "seconds": seconds,
               "compilations": counter.count, "mean_accuracy": float(np.mean(acc))}
        results["methods"][method] = row
        print(f"{method:>6}: {row['episodes_per_s']:8.2f} episodes/s  ({seconds:.1f} s for "
              f"{len(timed)} episodes), {counter.count} compilations after {len(warm)} "
              f"warm-up episodes", flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
