"""Episodes per second of Meta-Dataset few-shot evaluation (NCC, PA, TSA), and compilations.

Setting: the Meta-Dataset ResNet-18 (5x5 stride-2 stem, 512-d feature; random weights, which
cost the same as trained ones) at 84x84, frozen; episodes of the standard variable-way
variable-shot protocol (:func:`ur_jax.data.episodes.sample_episodes`) drawn from a synthetic
split shaped like a Meta-Dataset test split (``--classes`` classes with 20 .. ``--max-images``
images each; records generated on the fly, so no dataset is needed).

For each method the first ``--warmup`` episodes compile what they need (and are not timed);
then ``--episodes`` further episodes are timed end to end (reading images, features, the
inner loop, scoring). The XLA compilations of both phases are counted and timed through
:mod:`jax.monitoring` (``common.CompileClock``); the episodes/s exclude the compilations the
timed episodes still trigger (support buckets the warm-up did not meet, a new feature-pool
size). With support sizes padded to six buckets, those stay at a handful for any number of
episodes. Methods that adapt the backbone (TSA: 40 forward and backward passes per episode)
run in chunks of ``--chunk`` episodes and stop at ``--budget``: the row says how many
episodes were timed.

FLOPs per episode are those of the padded work the evaluator runs, from XLA's cost analysis
of loop-free pieces (:class:`EpisodeFlops`): the backbone's forward over the feature pool
(NCC, PA), PA's 40 steps on the support features, TSA's 40 forward + backward passes of the
adapted backbone on the support set and its final support and query passes; NCC scoring is
not counted (negligible).

    python benchmarks/fewshot_eval.py --episodes 600 --methods ncc,pa,tsa --precision bf16  # GPU
    python benchmarks/fewshot_eval.py --episodes 20 --width 0.25 --methods ncc,pa,tsa  # CPU
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import common
from ur_jax import adapters as adapters_lib
from ur_jax import models
from ur_jax.data import episodes as episodes_lib
from ur_jax.evaluation import fewshot, methods
from ur_jax.evaluation import metadataset as md_eval
from ur_jax.models.precision import with_precision


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


class EpisodeFlops:
    """FLOPs of what :class:`~ur_jax.evaluation.metadataset.EpisodeEvaluator` computes for a
    list of episodes, from XLA's cost analysis of loop-free pieces, lowered (not compiled) at
    two images and scaled by the padded sizes the evaluator runs (inference-mode BatchNorm:
    the cost is linear in the batch)."""

    def __init__(self, net, variables, image_size: int, batch_size: int,
                 buckets: Sequence[int] = md_eval.DEFAULT_BUCKETS) -> None:
        self.net, self.variables = net, variables
        self.batch_size, self.buckets = batch_size, buckets
        self.images = jnp.zeros((2, image_size, image_size, 3))

    def _per_image(self, fn, *args) -> float:
        return common.xla_flops(jax.jit(fn).lower(*args, self.images)) / len(self.images)

    @functools.cached_property
    def forward(self) -> float:
        """The frozen backbone's forward pass, per image."""
        return self._per_image(lambda v, x: self.net.apply(v, x, train=False)["pooled"],
                               self.variables)

    @functools.cached_property
    def tsa(self) -> tuple[float, float]:
        """TSA's adapted backbone per image: (forward, forward + backward to the adapters)."""
        adapted = methods.get_method("tsa").adapter(self.net)
        start = adapters_lib.init_adapters(adapted, jax.random.key(0), self.images[:1])

        def embed(a, x):
            return adapted.apply({**self.variables, adapters_lib.ADAPTER_COLLECTION: a}, x,
                                 train=False)["pooled"]
        return (self._per_image(embed, start),
                self._per_image(jax.grad(lambda a, x: jnp.sum(embed(a, x))), start))

    @functools.lru_cache(maxsize=None)
    def pa_step(self, support: int, ways: int) -> float:
        """One PA step (loss and gradient) on ``support`` padded support features."""
        dim = self.net.feature_dim
        step = jax.jit(jax.value_and_grad(fewshot.pa_loss), static_argnums=3)
        return common.xla_flops(step.lower(jnp.eye(dim), jnp.zeros((support, dim)),
                                           jnp.zeros(support, jnp.int32), ways))

    def __call__(self, method: str, episodes: Sequence[episodes_lib.Episode]) -> float | None:
        """FLOPs of ``method`` on ``episodes`` (one evaluator call); ``None`` for a method
        not modelled here."""
        steps = methods.get_method(method).steps

        def bucket(n):
            return md_eval.bucket_size(n, self.buckets)
        if method == "tsa":
            forward, train = self.tsa
            return sum(steps * train * bucket(len(e.support))
                       + forward * (bucket(len(e.support)) + bucket(len(e.query)))
                       for e in episodes)
        if method not in ("ncc", "pa"):
            return None
        used = len(np.unique(np.concatenate([np.concatenate([e.support, e.query])
                                             for e in episodes])))
        total = -(-used // self.batch_size) * self.batch_size * self.forward
        if method == "pa":
            ways = max(e.ways for e in episodes)
            total += sum(steps * self.pa_step(bucket(len(e.support)), ways) for e in episodes)
        return total


def time_method(evaluator, source, method: str, warm, timed, chunk: int,
                deadline: common.Deadline):
    """Warm-up then timed episodes of ``method``; yields ``(row, episodes timed)`` after
    each call (the row without FLOPs). Methods that adapt the backbone run one episode, then
    ``chunk`` episodes per call (a first row soon), and stop at ``deadline`` (warm-up
    included, after one timed call); the others run all warm-up episodes in one call, then
    all timed ones in another (one feature pool each)."""
    if methods.get_method(method).adapts == "backbone":
        warm_starts, starts = range(0, len(warm), chunk), [0, *range(1, len(timed), chunk)]
    else:
        warm_starts, starts = [0] if warm else [], [0]
    warmed = 0
    with common.CompileClock() as warm_clock:
        for start, stop in zip(warm_starts, [*warm_starts[1:], len(warm)]):
            if deadline.left() <= 0:
                break
            warmed += len(evaluator.evaluate(source, warm[start:stop], method=method))
    accuracies, done = [], []
    wall = compile_s = compilations = 0
    with common.CompileClock() as clock:  # counted around the calls (not while yielding)
        for start, stop in zip(starts, [*starts[1:], len(timed)]):
            if done and deadline.left() <= 0:
                print(f"{method}: time budget reached after {len(done)} episodes", flush=True)
                break
            part = timed[start:stop]
            t0, c0, n0 = time.perf_counter(), clock.seconds, clock.count
            accuracies.append(evaluator.evaluate(source, part, method=method))
            wall += time.perf_counter() - t0
            compile_s += clock.seconds - c0
            compilations += clock.count - n0
            done += part
            yield {"episodes": len(done), "warmup_episodes": warmed, "wall_s": wall,
                   "compile_s": warm_clock.seconds + compile_s,
                   "compilations": warm_clock.count + compilations,
                   "compilations_timed": compilations, "compile_s_timed": compile_s,
                   "mean_accuracy": float(np.mean(np.concatenate(accuracies)))}, done


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
    p.add_argument("--chunk", type=int, default=10,
                   help="episodes per call for methods that adapt the backbone (TSA); the "
                        "budget is checked between calls")
    p.add_argument("--seed", type=int, default=0)
    common.add_common_args(p)
    args = p.parse_args()
    deadline = common.Deadline(args.budget)
    report = common.Report("fewshot_eval", args)

    rng = np.random.default_rng(args.seed)
    sizes = rng.integers(20, args.max_images + 1, args.classes)
    source = SyntheticSource(sizes, args.image_size)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    spec = episodes_lib.SplitSpec("synthetic", tuple(np.arange(starts[c], starts[c + 1])
                                                     for c in range(args.classes)))
    total = args.warmup + args.episodes
    eps = episodes_lib.sample_episodes(spec, total, args.protocol, seed=args.seed)
    warm, timed = eps[:args.warmup], eps[args.warmup:]
    report.data["episodes"] = episodes_lib.describe(timed)

    net = with_precision(models.get_backbone("resnet18_metadataset", width=args.width),
                         args.precision)
    variables = jax.jit(lambda r, x: net.init(r, x, train=False))(
        jax.random.key(0), jnp.zeros((1, args.image_size, args.image_size, 3)))
    evaluator = md_eval.EpisodeEvaluator(net, variables, batch_size=args.batch)
    flops = EpisodeFlops(net, variables, args.image_size, args.batch)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; ResNet-18 width "
          f"{args.width} at {args.image_size}px, {args.precision}; {args.protocol} episodes: "
          + ", ".join(f"{k} {v:.1f}" for k, v in report.data["episodes"].items()
                      if k.startswith("mean")), flush=True)

    for method in args.methods.split(","):
        for row, done in time_method(evaluator, source, method, warm, timed, args.chunk,
                                     deadline):
            f, n = flops(method, done), row["episodes"]
            row = {**common.throughput((row["wall_s"] - row["compile_s_timed"]) / n, 1,
                                       "episodes", f / n if f else None, report.peak), **row}
            report.data["results"][method] = row
            report.write()
        print(f"{method:>6}: {row['episodes_per_s']:8.2f} episodes/s over {n} episodes "
              f"({row['wall_s']:.1f} s, of which {row['compile_s_timed']:.1f} s compiling), "
              f"{row['compilations']} compilations ({row['compile_s']:.1f} s), "
              f"{row['compilations_timed']} of them after {row['warmup_episodes']} warm-up "
              f"episodes", flush=True)
    report.write(complete=True)
    common.print_table(report.data["results"], "episodes")


if __name__ == "__main__":
    main()
