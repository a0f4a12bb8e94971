"""Episodic few-shot evaluation of a frozen backbone on Meta-Dataset (NCC, PA, TSA, linear).

The protocol of URL and TSA (Li, Liu & Bilen; PAPER.md §3): for each test source, a fixed
set of episodes (600, :func:`ur_jax.data.episodes.sample_episodes`, deterministic for a seed);
for each episode a classifier is built on the support set's features and scored on the query
set; the result is the mean query accuracy with its 95% confidence interval, per source and
averaged over the seen (training) sources, the unseen ones and all of them.

Methods: every method of the registry :mod:`ur_jax.evaluation.methods` (:data:`METHODS`,
read when accessed), with its default steps and its seen / unseen learning rates
(:func:`learning_rates`):

* ``'ncc'``: prototypes = class means of the support features; logits = 10 x cosine.
* ``'pa'``: a linear map initialised to the identity fitted on the support set (Adadelta,
  40 steps, lr 0.1 on seen sources and 1 on unseen ones), then NCC
  (:func:`ur_jax.evaluation.fewshot.pa_fit`).
* ``'tsa'``: residual matrix adapters ``y = conv(x) + conv1x1_alpha(x)`` on every 3x3 conv of
  the backbone's blocks, ``alpha = 1e-4 x I`` at the start of every episode, plus PA
  (``beta``); both fitted together on the support set with Adadelta for 40 steps (alpha lr
  0.05 seen / 0.5 unseen, beta lr 0.1 seen / 1 unseen), backbone frozen; then NCC
  (:mod:`ur_jax.evaluation.tsa`).
* ``'linear'``: a linear probe on the L2-normalised support features
  (:func:`ur_jax.evaluation.fewshot.linear_fit`).

Speed. Methods that adapt features (NCC, PA, the linear probe) work on a pool: every image
used by any episode of a source goes through the backbone once (fixed-size batches, one
compilation), then the episodes index that pool. Episodes vary in ways, support size and
query size, so they are padded to a few *buckets* (:data:`DEFAULT_BUCKETS`): the support to
the smallest bucket that holds it, the query to the bucket of the largest query, the ways to
the largest episode's; padded rows carry label -1 and are ignored, padded classes are never
predicted. Six support buckets mean at most six compilations per method for any number of
episodes. Methods that adapt the backbone (TSA) run it on the images of each episode: the
inner loop (TSA: 40 forward and backward passes) is compiled once per support bucket, the
query pass once; the next episode's images are read on a background thread while the
device works.

Example::

    evaluator = EpisodeEvaluator(model.backbone, backbone_variables)
    acc = evaluator.evaluate(source, episodes, method='tsa', seen=False)   # (600,) in [0, 1]
    mean, ci = fewshot.mean_confidence_interval(100 * acc)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ur_jax import adapters as adapters_lib
from ur_jax import sharding
from ur_jax.data.episodes import Episode
from ur_jax.data.pipeline import Normalization
from ur_jax.evaluation import fewshot, methods

__all__ = [
    "DEFAULT_BUCKETS",
    "METHODS",
    "CompilationCounter",
    "EpisodeEvaluator",
    "bucket_size",
    "format_results",
    "learning_rates",
    "load_images",
    "log_progress",
    "summarize",
    "training_sources",
    "validation_accuracy",
]

#: Support / query sizes episodes are padded to (the smallest that holds them; larger
#: episodes go to the next power of two).
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


def __getattr__(name: str) -> Any:
    # ``METHODS``: every registered few-shot method (this protocol runs them all), read at
    # access time (PEP 562) so that methods registered later are included.
    if name == "METHODS":
        return methods.method_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def learning_rates(method: str, seen: bool) -> dict[str, float]:
    """The default inner-loop learning rates ``{name: lr}`` of the registered ``method`` on
    a seen or unseen source (PAPER.md §3: PA's ``beta`` 0.1 / 1, TSA's ``alpha`` 0.05 / 0.5
    and ``beta`` 0.1 / 1, the linear probe's Adam rate 0.1; ``{}`` for NCC).

    Raises:
      ValueError: ``method`` is not registered (:func:`ur_jax.evaluation.methods.get_method`).
    """
    return methods.get_method(method).learning_rates(seen)


def training_sources(heads: Sequence[tuple[str, int]] | Mapping[str, int],
                     name: str = "model") -> tuple[str, ...]:
    """The Meta-Dataset sources a saved model was trained on, from its classifier heads.

    PA and TSA use their "seen" learning rates (:func:`learning_rates`) only on the sources
    the evaluated model was trained on, so an ImageNet-only model gets the unseen rates on
    aircraft (VICO-UoE/URL's ``test_extractor_pa.py`` / ``test_extractor_tsa.py``, after the
    authors' fix of their seen-source list). A ur_jax model has one head per training
    domain, named after it (a teacher's is renamed to its source when saved;
    ``python -m ur_jax.convert --domains`` names converted heads). A single head with
    another name (a converted teacher's default ``'teacher'``) is the training source whose
    official number of training classes (:data:`~ur_jax.suites.metadataset.CLASS_SPLITS`)
    equals the head's size: those counts are distinct.

    Args:
      heads: ``[(head name, classes), ...]`` (a model spec's ``num_classes``) or a mapping.
      name: the model's name in error messages.

    Returns:
      The training sources, in head order.

    Raises:
      ValueError: a head that names no training source and cannot be identified; the
        message says how to name the sources (``config.fewshot.checkpoint_seen``).
    """
    from ur_jax.suites.metadataset.common import CLASS_SPLITS, TRAIN_SOURCES

    pairs = list(heads.items()) if isinstance(heads, Mapping) else [tuple(h) for h in heads]
    known = tuple(str(d) for d, _ in pairs if d in TRAIN_SOURCES)
    unknown = [(str(d), int(n)) for d, n in pairs if d not in TRAIN_SOURCES]
    if not unknown:
        return known
    if len(pairs) == 1:
        by_count = [s for s in TRAIN_SOURCES if CLASS_SPLITS[s][0] == unknown[0][1]]
        if len(by_count) == 1:
            logging.info("[fewshot] %s: its one head %r has %d classes, the official training "
                         "classes of %s: trained on %s.", name, unknown[0][0], unknown[0][1],
                         by_count[0], by_count[0])
            return tuple(by_count)
    raise ValueError(
        f"Cannot tell which Meta-Dataset sources {name!r} was trained on: its heads "
        f"{[d for d, _ in unknown]} (classes {[n for _, n in unknown]}) name no training "
        f"source of {list(TRAIN_SOURCES)}. Name them with "
        f"--config.fewshot.checkpoint_seen.{name}=omniglot,aircraft (the sources that get the "
        f"'seen' PA / TSA learning rates), or convert the model with --domains.")


def bucket_size(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket ``>= n`` (beyond the last: the next power of two)."""
    if n < 1:
        raise ValueError(f"bucket_size: n must be positive; found {n}.")
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    return int(2 ** int(np.ceil(np.log2(n))))


# ----------------------------------------------------------------------------- compilations


class CompilationCounter:
    """Counts XLA compilations while active (``with CompilationCounter() as c: ...;
    c.count``), through :mod:`jax.monitoring` events."""

    _EVENT = "/jax/core/compile/backend_compile_duration"
    _active: ClassVar[list[CompilationCounter]] = []
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _registered: ClassVar[bool] = False

    def __init__(self) -> None:
        self.count = 0

    @classmethod
    def _listen(cls, event: str, duration: float, **kwargs: Any) -> None:
        del duration, kwargs
        if event == cls._EVENT:
            with cls._lock:
                for counter in cls._active:
                    counter.count += 1

    def __enter__(self) -> Self:
        with self._lock:
            if not CompilationCounter._registered:
                jax.monitoring.register_event_duration_secs_listener(CompilationCounter._listen)
                CompilationCounter._registered = True
            self._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._active.remove(self)


# ----------------------------------------------------------------------------- images


def _read(source: Any, indices: np.ndarray) -> list[Mapping[str, Any]]:
    indices = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def load_images(source: Any, indices: np.ndarray, rows: int | None = None,
                normalize: Normalization | None = None) -> np.ndarray:
    """The images of records ``indices`` as float32 ``(rows, H, W, C)`` (default [-1, 1]),
    zero-padded to ``rows``."""
    records = _read(source, indices)
    images = (normalize or Normalization())(np.stack([np.asarray(r["image"]) for r in records]))
    rows = len(images) if rows is None else rows
    if rows > len(images):
        images = np.concatenate([images, np.zeros((rows - len(images),) + images.shape[1:],
                                                  images.dtype)])
    return images


# ----------------------------------------------------------------------------- evaluator


@dataclasses.dataclass
class _Padded:
    """Episodes of one support bucket as index/label arrays into a feature pool."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    positions: np.ndarray  # the episodes' positions in the caller's list


def _pad(values: np.ndarray, size: int, fill: int) -> np.ndarray:
    out = np.full(size, fill, values.dtype)
    out[:len(values)] = values
    return out


class EpisodeEvaluator:
    """Few-shot evaluation of one frozen backbone (see the module docstring).

    Args:
      backbone: a Flax backbone returning a dict of features (``'pooled'`` is used), e.g.
        ``model.backbone`` of a :class:`~ur_jax.models.heads.MultiHeadClassifier`. Methods
        that adapt the backbone (TSA) need a backbone they can attach adapters to (TSA: a
        ``conv_adapter`` hook, :class:`ur_jax.models.ResNet`).
      variables: the backbone's ``{'params', 'batch_stats'}`` (inference mode).
      batch_size: images per feature-extraction call (a multiple of the device count).
      buckets: support / query padding sizes (:func:`bucket_size`).
      chunk: episodes per compiled call of the feature-based methods.
      feature: which backbone output to use.
      mesh: the data mesh (default: every device).
      normalize: uint8 -> float32 mapping (default: to [-1, 1], as Meta-Dataset).
    """

    def __init__(self, backbone: Any, variables: Mapping[str, Any], *, batch_size: int = 256,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, chunk: int = 8,
                 feature: str = "pooled", mesh: Any = None,
                 normalize: Normalization | None = None) -> None:
        self.mesh = sharding.make_mesh() if mesh is None else mesh
        n = self.mesh.size
        bad = [b for b in (batch_size, *buckets) if int(b) % n]
        if bad:
            raise ValueError(f"EpisodeEvaluator: batch_size and buckets must be multiples of "
                             f"the {n} devices (batches are split over them); found {bad}.")
        self.backbone, self.feature = backbone, feature
        self.normalize = normalize or Normalization()
        self.variables = sharding.replicate(
            {c: v for c, v in variables.items() if c in ("params", "batch_stats")}, self.mesh)
        self.batch_size, self.buckets, self.chunk = int(batch_size), tuple(buckets), int(chunk)
        # {method entry: (adapted backbone, replicated initial adapters)}, built on first use.
        self._adapted: dict[methods.FewShotMethod, tuple[Any, Any]] = {}

    # -- features -------------------------------------------------------------------------

    def features(self, source: Any, indices: np.ndarray) -> np.ndarray:
        """Backbone features of records ``indices`` of ``source`` (inference mode)."""
        fn = functools.partial(_features, self.backbone, self.feature)
        out = []
        for start in range(0, len(indices), self.batch_size):
            idx = indices[start:start + self.batch_size]
            x = load_images(source, idx, self.batch_size, self.normalize)
            out.append((fn(self.variables, sharding.shard_batch(x, self.mesh)), len(idx)))
        if not out:
            return np.zeros((0, 0), np.float32)
        return np.concatenate([np.asarray(sharding.to_host(f))[:k] for f, k in out])

    # -- episodes -------------------------------------------------------------------------

    def evaluate(self, source: Any, episodes: Sequence[Episode], method: str = "ncc",
                 seen: bool = False, steps: int | None = None,
                 lrs: Mapping[str, float] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Per-episode query accuracy in ``[0, 1]`` of ``method`` on ``episodes``.

        Args:
          source: random-access records ``{'image': uint8 (H, W, C), ...}`` the episodes
            index (a split of :func:`ur_jax.suites.metadataset.data_source`).
          episodes: from :func:`ur_jax.data.episodes.sample_episodes`.
          method: a registered method (:data:`METHODS`: ``'ncc'``, ``'pa'``, ``'tsa'``,
            ``'linear'``, ...).
          seen: whether the backbone was trained on this source (picks the learning rates,
            :func:`learning_rates`).
          steps: inner-loop steps (default: the method's, 40 for PA and TSA, 100 for the
            probe).
          lrs: overrides of :func:`learning_rates` (``{'beta': .., 'alpha': ..}``); only
            the method's own rates may be named.
          progress: called as ``progress(done, total)`` after each chunk / episode.

        Returns:
          ``(E,)`` float32 NumPy array.

        Raises:
          ValueError: an unknown method, no episodes, or ``lrs`` naming a rate the method
            does not have.
        """
        entry = methods.get_method(method)
        if not episodes:
            raise ValueError("EpisodeEvaluator.evaluate: no episodes given.")
        rates = entry.learning_rates(seen)
        unknown = sorted(set(lrs or {}) - set(rates))
        if unknown:
            raise ValueError(f"EpisodeEvaluator.evaluate: lrs names {unknown}, which method "
                             f"{method!r} does not have; its learning rates are "
                             f"{list(rates)}.")
        rates.update(lrs or {})
        steps = entry.steps if steps is None else int(steps)
        if entry.adapts == "backbone":
            return self._evaluate_adapted(source, episodes, entry, steps, rates, progress)
        return self._evaluate_features(source, episodes, method, steps, rates, progress)

    def _group(self, episodes: Sequence[Episode], rows: Callable[[np.ndarray], np.ndarray]
               ) -> tuple[dict[int, _Padded], int, int]:
        """Episodes padded and grouped by support bucket; ``rows`` maps record indices to
        pool rows. Returns the groups, the query bucket and the ways."""
        ways = max(e.ways for e in episodes)
        q_size = bucket_size(max(len(e.query) for e in episodes), self.buckets)
        groups: dict[int, list[int]] = {}
        for i, e in enumerate(episodes):
            groups.setdefault(bucket_size(len(e.support), self.buckets), []).append(i)
        out = {}
        for s_size, members in sorted(groups.items()):
            eps = [episodes[i] for i in members]
            out[s_size] = _Padded(
                support=np.stack([_pad(rows(e.support), s_size, 0) for e in eps]).astype(np.int32),
                support_labels=np.stack([_pad(e.support_labels, s_size, -1) for e in eps]
                                        ).astype(np.int32),
                query=np.stack([_pad(rows(e.query), q_size, 0) for e in eps]).astype(np.int32),
                query_labels=np.stack([_pad(e.query_labels, q_size, -1) for e in eps]
                                      ).astype(np.int32),
                positions=np.asarray(members))
        return out, q_size, ways

    def _evaluate_features(self, source, episodes, method, steps, rates, progress):
        used = np.unique(np.concatenate([np.concatenate([e.support, e.query]) for e in episodes]))
        pool = self.features(source, used)
        groups, _, ways = self._group(episodes, lambda idx: np.searchsorted(used, idx))
        result = np.zeros(len(episodes), np.float32)
        done = 0
        for g in groups.values():
            pending = []
            for start in range(0, len(g.positions), self.chunk):
                arrays = [a[start:start + self.chunk] for a in
                          (g.support, g.support_labels, g.query, g.query_labels)]
                k = len(arrays[0])
                if k < self.chunk:  # pad with copies: one shape per bucket
                    arrays = [np.concatenate([a, np.repeat(a[:1], self.chunk - k, 0)])
                              for a in arrays]
                acc = fewshot.episode_accuracy(pool, *arrays, method=method, ways=ways,
                                               steps=steps, learning_rate=rates)
                pending.append((g.positions[start:start + k], acc, k))
            for positions, acc, k in pending:
                result[positions] = np.asarray(acc)[:k]
                done += k
                if progress is not None:
                    progress(done, len(episodes))
        return result

    def _adapted_start(self, method: methods.FewShotMethod, images: np.ndarray
                       ) -> tuple[Any, Any]:
        """``method``'s adapted backbone and its initial adapters (replicated), made once."""
        if method not in self._adapted:
            adapted = method.adapter(self.backbone)
            start = adapters_lib.init_adapters(adapted, jax.random.key(0), images[:1])
            self._adapted[method] = (adapted, sharding.replicate(start, self.mesh))
        return self._adapted[method]

    def _evaluate_adapted(self, source, episodes, method, steps, rates, progress):
        """A method that adapts the backbone: fitted on each episode's support images."""
        ways = max(e.ways for e in episodes)
        lrs = {k: jnp.asarray(v, jnp.float32) for k, v in rates.items()}
        pending = []  # accuracies stay on the device; the host runs one episode ahead

        def load(e: Episode):
            s_size = bucket_size(len(e.support), self.buckets)
            q_size = bucket_size(len(e.query), self.buckets)
            return (load_images(source, e.support, s_size, self.normalize),
                    _pad(e.support_labels, s_size, -1).astype(np.int32),
                    load_images(source, e.query, q_size, self.normalize),
                    _pad(e.query_labels, q_size, -1).astype(np.int32))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(load, episodes[0])
            for i in range(len(episodes)):
                s_img, s_lab, q_img, q_lab = nxt.result()
                if i + 1 < len(episodes):
                    nxt = pool.submit(load, episodes[i + 1])  # overlaps with the device
                adapted, start = self._adapted_start(method, s_img)
                shard = functools.partial(sharding.shard_batch, mesh=self.mesh)
                adapters, state, s_feat = _fit_adapted(
                    method, adapted, self.feature, ways, self.variables, start, shard(s_img),
                    shard(s_lab), jnp.asarray(steps, jnp.int32), lrs)
                q_feat = _adapted_features(adapted, self.feature, self.variables, adapters,
                                           shard(q_img))
                pending.append(_adapted_accuracy(method, s_feat, s_lab, q_feat, q_lab, state,
                                                 ways))
                if len(pending) > 2:  # at most two episodes in flight: bounded device memory
                    pending[-3].block_until_ready()
                if progress is not None:
                    progress(i + 1, len(episodes))
        return np.asarray(sharding.to_host(pending), np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _features(backbone: Any, feature: str, variables, images):
    """The backbone's ``feature`` output for ``images`` (inference mode), float32; compiled
    once per (backbone, feature, shapes) by jit's own cache (modules are hashable)."""
    return backbone.apply(variables, images, train=False)[feature].astype(jnp.float32)


def _embed(adapted, feature, variables, adapters, images):
    """Features of the frozen backbone under ``adapters`` (inference mode), float32."""
    out = adapted.apply({**variables, adapters_lib.ADAPTER_COLLECTION: adapters}, images,
                        train=False)
    return out[feature].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _fit_adapted(method, adapted, feature, ways, variables, start, images, labels, steps, lrs):
    """``method.fit`` on one support set, from the adapters ``start``. Returns ``(adapters,
    state, support features under the fitted adapters)``."""
    embed = functools.partial(_embed, adapted, feature, variables)
    adapters, state = method.fit(embed, start, images, labels, ways, steps, lrs)
    return adapters, state, embed(adapters, images)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _adapted_features(adapted, feature, variables, adapters, images):
    return _embed(adapted, feature, variables, adapters, images)


@functools.partial(jax.jit, static_argnames=("method", "ways"))
def _adapted_accuracy(method, s_feat, s_lab, q_feat, q_lab, state, ways):
    logits = method.logits(state, s_feat, s_lab, q_feat, ways)
    return fewshot.query_accuracy(logits, s_lab, q_lab, ways)


def validation_accuracy(backbone: Any, variables: Mapping[str, Any], sources: Mapping[str, Any],
                        episodes: Mapping[str, Sequence[Episode]], *, batch_size: int = 256,
                        buckets: Sequence[int] = DEFAULT_BUCKETS, mesh: Any = None,
                        normalize: Normalization | None = None) -> dict[str, float]:
    """Mean NCC accuracy (%, float) on validation episodes, per source: the model-selection
    score of VICO-UoE/URL (``train_net.py`` / ``train_net_mdl.py`` / ``train_net_url.py``:
    every ``eval_freq`` steps, prototype (NCC, cosine x 10) accuracy of the backbone on
    ``eval_size`` = 300 episodes of the validation classes of each training source; the model
    with the best average over sources is kept).

    Args:
      backbone, variables: as :class:`EpisodeEvaluator` (inference mode).
      sources: ``{source: random-access records}`` of the validation splits.
      episodes: ``{source: episodes}`` indexing them (fixed by a seed, so that every
        validation of a run, and of a resumed run, sees the same episodes).
      batch_size, buckets, mesh, normalize: as :class:`EpisodeEvaluator`.

    Returns:
      ``{source: mean accuracy in [0, 100]}``, in the order of ``sources``.

    Raises:
      KeyError: a source without episodes.
    """
    evaluator = EpisodeEvaluator(backbone, variables, batch_size=batch_size, buckets=buckets,
                                 mesh=mesh, normalize=normalize)
    return {s: float(100.0 * np.mean(evaluator.evaluate(src, episodes[s], "ncc")))
            for s, src in sources.items()}


# ----------------------------------------------------------------------------- reporting


def summarize(accuracies: Mapping[str, np.ndarray], seen: Sequence[str]) -> dict[str, Any]:
    """Per-source mean accuracy (%) with its 95% CI, and the seen / unseen / all averages
    (of the per-source means) as in PAPER.md §3.

    Args:
      accuracies: ``{source: (E,) accuracies in [0, 1]}``.
      seen: the sources the backbone was trained on.
    """
    out: dict[str, Any] = {}
    for name, acc in accuracies.items():
        mean, ci = fewshot.mean_confidence_interval(100.0 * np.asarray(acc))
        out[name] = {"accuracy": mean, "ci95": ci, "episodes": len(acc)}
    groups = {"seen": [s for s in accuracies if s in seen],
              "unseen": [s for s in accuracies if s not in seen], "all": list(accuracies)}
    out["averages"] = {g: (float(np.mean([out[s]["accuracy"] for s in names])) if names else None)
                       for g, names in groups.items()}
    return out


def format_results(results: Mapping[str, Mapping[str, Any]], sources: Sequence[str],
                   short_names: Mapping[str, str] | None = None) -> str:
    """A table ``{row name: summarize(...)}`` -> text: one row per model/method, one column
    per source (accuracy ± CI), then the seen / unseen / all averages."""
    short = dict(short_names or {})
    cols = [short.get(s, s) for s in sources]
    width = max(12, *(len(c) + 2 for c in cols))
    lines = [f"{'':<14}" + "".join(f"{c:>{width}}" for c in cols)
             + f"{'seen':>8}{'unseen':>8}{'all':>8}"]
    for name, res in results.items():
        cells = "".join(
            f"{res[s]['accuracy']:>{width - 6}.1f} ± {res[s]['ci95']:<3.1f}" if s in res
            else f"{'-':>{width}}" for s in sources)
        avg = res["averages"]
        tail = "".join(f"{avg[g]:>8.1f}" if avg[g] is not None else f"{'-':>8}"
                       for g in ("seen", "unseen", "all"))
        lines.append(f"{name:<14}{cells}{tail}")
    return "\n".join(lines)


def log_progress(name: str, every: int = 100) -> Callable[[int, int], None]:
    """A ``progress`` callback that logs every ``every`` episodes."""

    def report(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            logging.info("[fewshot] %s: %d/%d episodes", name, done, total)

    return report
