"""Few-shot episodic evaluation on precomputed features: NCC, PA and a linear probe.

The URL few-shot protocol (Li, Liu & Bilen) classifies the query examples of an
episode with a nearest-centroid classifier (NCC) on top of frozen features:

* **NCC**: the prototype of class ``c`` is the mean of the (raw) support features of
  class ``c``; the logit of a query ``q`` for class ``c`` is
  ``scale * cos(q, prototype_c)`` with ``scale = 10``.
* **PA** (pre-classifier alignment): a linear map ``W`` (``d x d``, no bias,
  initialised to the identity) is applied to the features, ``f -> f @ W``. It is
  fitted on the support set alone (the support set is its own query set: the loss is
  the cross-entropy of the NCC logits of ``support @ W`` against prototypes built from
  ``support @ W``) with Adadelta (PyTorch semantics, :func:`ur_jax.optim.adadelta`)
  for 40 steps, learning rate :data:`SEEN_PA_LR` (0.1) on the training sources and
  :data:`UNSEEN_PA_LR` (1.0) on unseen ones. The query is then classified by NCC on
  ``support @ W`` and ``query @ W``.
* **Linear probe** (``method='linear'``): softmax regression on the L2-normalised support
  features (:func:`linear_fit`), a common baseline beside NCC.
* Any other method registered in :mod:`ur_jax.evaluation.methods` that adapts features.
  The three above are registered by this module; :data:`METHODS` (read when accessed)
  names every method this protocol runs. Methods that adapt the backbone (TSA,
  :mod:`ur_jax.evaluation.tsa`) need the episodes' images and are refused here with a
  ValueError: run them with :class:`ur_jax.evaluation.metadataset.EpisodeEvaluator`.
* Results are reported as the mean accuracy over episodes with a 95% confidence
  interval ``1.96 * std / sqrt(E)`` (NumPy's ``std``, ``ddof=0``):
  :func:`mean_confidence_interval`.

Episodes have a fixed shape (``ways``, ``shots``, ``queries`` per class constant), so
one compilation of :func:`episode_accuracy` serves every episode of a run:
:func:`sample_episodes` draws index episodes into a pool of precomputed features and
:func:`evaluate_episodes` (the entry point) evaluates them in fixed-size chunks.

Labels outside ``0 .. ways-1`` (e.g. ``-1``) are *ignored* everywhere: such support
rows contribute to no prototype and not to the PA loss, such query rows are not
counted in the accuracy, and a class with no support row is never predicted. So
variable-way variable-shot episodes (Meta-Dataset) are padded to a few fixed shapes
(:mod:`ur_jax.evaluation.metadataset`) and reuse the same compiled functions.

Example::

    episodes = sample_episodes(labels, num_episodes=600, ways=5, shots=5, queries=15,
                               seed=0)
    acc = evaluate_episodes(features, episodes, method="pa", learning_rate=UNSEEN_PA_LR)
    mean, ci = mean_confidence_interval(100 * acc)   # in %
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ur_jax.evaluation import methods
from ur_jax.losses import cross_entropy, l2_normalize
from ur_jax.optim import adadelta

ArrayLike = jax.Array | np.ndarray

__all__ = [
    "ABSENT_CLASS_LOGIT",
    "LINEAR_LR",
    "LINEAR_STEPS",
    "NCC_SCALE",
    "PA_STEPS",
    "SEEN_PA_LR",
    "UNSEEN_PA_LR",
    "Episodes",
    "episode_accuracy",
    "evaluate_episodes",
    "linear_fit",
    "linear_logits",
    "mean_confidence_interval",
    "ncc_logits",
    "pa_fit",
    "pa_logits",
    "pa_loss",
    "pa_transform",
    "query_accuracy",
    "sample_episodes",
]

#: Temperature of the cosine NCC logits (URL: ``F.cosine_similarity(...) * 10``).
NCC_SCALE = 10.0
#: Adadelta steps of PA.
PA_STEPS = 40
#: PA learning rate on the sources the backbone was trained on.
SEEN_PA_LR = 0.1
#: PA learning rate on unseen domains.
UNSEEN_PA_LR = 1.0
#: Full-batch Adam steps of the linear probe.
LINEAR_STEPS = 100
#: Adam learning rate of the linear probe.
LINEAR_LR = 0.1
#: The logit of a class that has no support example (padding of variable-way episodes).
ABSENT_CLASS_LOGIT = -1e9

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------
# Episode sampling
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Episodes:
    """A batch of ``E`` fixed-shape episodes, as indices into a pool of examples.

    Attributes:
      support: ``(E, ways * shots)`` int32 indices into the pool (class-major order:
        the ``shots`` examples of episode class 0, then of class 1, ...).
      support_labels: ``(E, ways * shots)`` int32 episode labels in ``0 .. ways-1``.
      query: ``(E, ways * queries)`` int32 indices into the pool (class-major).
      query_labels: ``(E, ways * queries)`` int32 episode labels in ``0 .. ways-1``.
      ways: number of classes per episode.
    """

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    ways: int

    def __post_init__(self) -> None:
        arrays = {f: getattr(self, f) for f in ("support", "support_labels", "query",
                                                 "query_labels")}
        for name, a in arrays.items():
            if not isinstance(a, np.ndarray) or a.ndim != 2 or not np.issubdtype(
                    a.dtype, np.integer):
                raise ValueError(
                    f"Episodes.{name} must be a 2-D integer NumPy array (episodes, "
                    f"examples); found {type(a).__name__} with shape "
                    f"{getattr(a, 'shape', None)} and dtype {getattr(a, 'dtype', None)}.")
        s, sl, q, ql = arrays.values()
        if s.shape != sl.shape or q.shape != ql.shape or s.shape[0] != q.shape[0]:
            raise ValueError(
                "Episodes: support/support_labels and query/query_labels must have equal "
                "shapes and the same number of episodes; found support "
                f"{s.shape}, support_labels {sl.shape}, query {q.shape}, query_labels "
                f"{ql.shape}.")
        if int(self.ways) < 1:
            raise ValueError(f"Episodes.ways must be >= 1; found {self.ways}.")

    def __len__(self) -> int:
        """Number of episodes ``E``."""
        return int(self.support.shape[0])

    def __getitem__(self, item: int | slice | np.ndarray) -> Episodes:
        """A sub-batch of episodes (an int gives a batch of one)."""
        if isinstance(item, (int, np.integer)):
            i = range(len(self))[item]  # IndexError when out of range
            item = slice(i, i + 1)
        return Episodes(self.support[item], self.support_labels[item], self.query[item],
                        self.query_labels[item], self.ways)

    @property
    def shots(self) -> int:
        """Support examples per class (``support.shape[1] // ways``)."""
        return int(self.support.shape[1]) // int(self.ways)

    @property
    def queries(self) -> int:
        """Query examples per class (``query.shape[1] // ways``)."""
        return int(self.query.shape[1]) // int(self.ways)


def sample_episodes(labels: ArrayLike, num_episodes: int, ways: int, shots: int,
                    queries: int, seed: int) -> Episodes:
    """Samples ``num_episodes`` fixed-shape ``ways``-way ``shots``-shot episodes.

    Per episode: ``ways`` distinct classes are chosen uniformly among the classes with
    at least ``shots + queries`` examples; for each, ``shots + queries`` distinct
    examples are drawn without replacement, the first ``shots`` go to the support set
    and the rest to the query set (so support and query are disjoint). The ``i``-th
    chosen class (a uniformly random order) gets episode label ``i`` in both sets.
    Only ``np.random.default_rng(seed)`` is used, so the result depends on nothing but
    the arguments.

    Args:
      labels: ``(N,)`` class label of every example in the pool (any hashable dtype
        NumPy can sort: ints, strings).
      num_episodes: ``E >= 1``.
      ways, shots, queries: classes per episode, support and query examples per class
        (``ways >= 1``, ``shots >= 1``, ``queries >= 1``).
      seed: seed of the episode generator.

    Returns:
      :class:`Episodes` of int32 arrays: indices into the pool and episode labels.

    Raises:
      ValueError: bad sizes, or fewer than ``ways`` classes with enough examples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"sample_episodes: labels must be 1-D (one label per pool "
                         f"example); found shape {labels.shape}.")
    for name, value in (("num_episodes", num_episodes), ("ways", ways), ("shots", shots),
                        ("queries", queries)):
        if int(value) != value or value < 1:
            raise ValueError(f"sample_episodes: {name} must be a positive integer; found "
                             f"{value!r}.")
    per_class = shots + queries
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(counts >= per_class)
    if len(eligible) < ways:
        raise ValueError(
            f"sample_episodes: a {ways}-way episode with {shots} shots and {queries} "
            f"queries per class needs {ways} classes with at least {per_class} examples "
            f"each; the pool has {len(classes)} classes, of which only {len(eligible)} "
            f"have >= {per_class} examples (largest class: "
            f"{int(counts.max()) if len(counts) else 0} examples). Lower ways, shots or "
            f"queries, or use a larger pool.")
    # Indices of each class's examples, in pool order.
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    members = [order[starts[c]:starts[c + 1]] for c in range(len(classes))]

    rng = np.random.default_rng(seed)
    support = np.empty((num_episodes, ways, shots), np.int64)
    query = np.empty((num_episodes, ways, queries), np.int64)
    for e in range(num_episodes):
        chosen = rng.choice(eligible, size=ways, replace=False)
        for i, c in enumerate(chosen):
            picked = rng.choice(members[c], size=per_class, replace=False)
            support[e, i] = picked[:shots]
            query[e, i] = picked[shots:]
    episode_labels = np.arange(ways, dtype=np.int32)
    return Episodes(
        support=support.reshape(num_episodes, ways * shots).astype(np.int32),
        support_labels=np.broadcast_to(np.repeat(episode_labels, shots),
                                       (num_episodes, ways * shots)).copy(),
        query=query.reshape(num_episodes, ways * queries).astype(np.int32),
        query_labels=np.broadcast_to(np.repeat(episode_labels, queries),
                                     (num_episodes, ways * queries)).copy(),
        ways=int(ways),
    )


# --------------------------------------------------------------------------
# Classifiers (single episode; pure, jit/vmap/grad-compatible)
# --------------------------------------------------------------------------


def _f32(x: ArrayLike) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _check_episode(name: str, support: jax.Array, support_labels: jax.Array,
                   query: jax.Array | None = None) -> None:
    if support.ndim != 2:
        raise ValueError(f"{name}: support features must be 2-D (S, d); found shape "
                         f"{tuple(support.shape)}.")
    if support_labels.shape != support.shape[:1]:
        raise ValueError(f"{name}: support_labels must have shape (S,) = "
                         f"{tuple(support.shape[:1])}; found {tuple(support_labels.shape)}.")
    if not jnp.issubdtype(support_labels.dtype, jnp.integer):
        raise ValueError(f"{name}: support_labels must be integers; found dtype "
                         f"{support_labels.dtype}.")
    if query is not None and (query.ndim != 2 or query.shape[1] != support.shape[1]):
        raise ValueError(f"{name}: query features must be 2-D (Q, d) with the support's "
                         f"d = {support.shape[1]}; found shape {tuple(query.shape)}.")


def _prototypes(support: jax.Array, support_labels: jax.Array, ways: int
                ) -> tuple[jax.Array, jax.Array]:
    """``(ways, d)`` class means and ``(ways,)`` support counts; labels outside
    ``0..ways-1`` ignored, an empty class has a zero mean."""
    onehot = jax.nn.one_hot(support_labels, ways, dtype=jnp.float32)  # (S, ways)
    sums = jnp.matmul(onehot.T, support, precision=_HIGHEST)
    counts = jnp.sum(onehot, axis=0)
    return sums / jnp.maximum(counts, 1.0)[:, None], counts


def _mask_absent(logits: jax.Array, counts: jax.Array) -> jax.Array:
    """Logits of classes with no support example set to :data:`ABSENT_CLASS_LOGIT`."""
    return jnp.where(counts[None, :] > 0, logits, ABSENT_CLASS_LOGIT)


@functools.partial(jax.jit, static_argnames=("ways",))
def ncc_logits(support: ArrayLike, support_labels: ArrayLike, query: ArrayLike, ways: int,
               scale: float = NCC_SCALE) -> jax.Array:
    """Cosine nearest-centroid logits ``scale * cos(query, class mean of support)``.

    Prototypes are the means of the raw support features of each class; prototypes and
    queries are then L2-normalised (:func:`ur_jax.losses.l2_normalize`) and compared by
    dot product (URL's ``F.cosine_similarity(q, proto) * 10``).

    Args:
      support: ``(S, d)`` support features (computed in float32).
      support_labels: ``(S,)`` int labels in ``0..ways-1``; others are ignored.
      query: ``(Q, d)`` query features.
      ways: number of classes (static). A class with no support example (a padded class
        of a variable-way episode) gets logit :data:`ABSENT_CLASS_LOGIT`: never predicted.
      scale: logit temperature (10 in URL).

    Returns:
      ``(Q, ways)`` float32 logits.
    """
    support, query = _f32(support), _f32(query)
    support_labels = jnp.asarray(support_labels)
    _check_episode("ncc_logits", support, support_labels, query)
    protos, counts = _prototypes(support, support_labels, ways)
    cos = jnp.matmul(l2_normalize(query), l2_normalize(protos).T, precision=_HIGHEST)
    return _mask_absent(scale * cos, counts).astype(jnp.float32)


def pa_transform(features: ArrayLike, w: ArrayLike) -> jax.Array:
    """Applies the PA map: ``features @ w`` (``(n, d) @ (d, d)``), float32."""
    return jnp.matmul(_f32(features), _f32(w), precision=_HIGHEST)


def pa_loss(w: ArrayLike, support: ArrayLike, support_labels: ArrayLike, ways: int,
            scale: float = NCC_SCALE) -> jax.Array:
    """The PA objective: NCC cross-entropy of the transformed support set on itself.

    ``z = support @ w``; loss = mean cross-entropy of ``ncc_logits(z, labels, z)``
    against ``labels`` (rows whose label is outside ``0..ways-1`` are ignored).
    Differentiable in ``w`` (and in the features).

    Returns:
      float32 scalar.
    """
    support_labels = jnp.asarray(support_labels)
    z = pa_transform(support, w)
    logits = ncc_logits(z, support_labels, z, ways, scale)
    valid = (support_labels >= 0) & (support_labels < ways)
    return cross_entropy(logits, jnp.where(valid, support_labels, -1), ignore_index=-1)


@functools.partial(jax.jit, static_argnames=("ways",))
def pa_fit(support: ArrayLike, support_labels: ArrayLike, ways: int,
           steps: int | jax.Array = PA_STEPS, learning_rate: float | jax.Array = SEEN_PA_LR,
           scale: float = NCC_SCALE) -> jax.Array:
    """Fits the PA map ``W`` on one support set (identity init, Adadelta, ``steps`` steps).

    Each step: ``g = grad_W pa_loss(W)``; then ``torch.optim.Adadelta`` (rho 0.9, eps
    1e-6, no weight decay) via :func:`ur_jax.optim.adadelta`. Runs in a
    ``jax.lax.fori_loop``; ``steps`` and ``learning_rate`` may be traced values, so
    changing them does not recompile a caller's jitted function. ``steps = 0`` returns
    the identity.

    Args:
      support: ``(S, d)`` support features.
      support_labels: ``(S,)`` int labels (outside ``0..ways-1``: ignored).
      ways: number of classes (static).
      steps: number of Adadelta steps (40 in URL).
      learning_rate: Adadelta learning rate (URL: 0.1 seen, 1.0 unseen domains).
      scale: NCC logit temperature.

    Returns:
      ``(d, d)`` float32 ``W``; use as ``features @ W`` (:func:`pa_transform`). URL
      stores the transpose (a 1x1 convolution kernel); with identity init and an
      element-wise optimiser the two parameterisations follow the same trajectory.
    """
    support = _f32(support)
    support_labels = jnp.asarray(support_labels)
    _check_episode("pa_fit", support, support_labels)
    d = support.shape[1]
    tx = adadelta(jnp.asarray(learning_rate, jnp.float32))
    w0 = jnp.eye(d, dtype=jnp.float32)
    grad_fn = jax.grad(pa_loss)

    def body(_, carry):
        w, opt_state = carry
        g = grad_fn(w, support, support_labels, ways, scale)
        updates, opt_state = tx.update(g, opt_state, w)
        return optax.apply_updates(w, updates), opt_state

    w, _ = jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), body, (w0, tx.init(w0)))
    return w


def linear_logits(params: tuple[jax.Array, jax.Array], features: ArrayLike) -> jax.Array:
    """Logits ``l2_normalize(features) @ W + b`` of a linear probe ``params = (W, b)``."""
    w, b = params
    return jnp.matmul(l2_normalize(_f32(features)), w, precision=_HIGHEST) + b


def linear_fit(support: ArrayLike, support_labels: ArrayLike, ways: int,
               steps: int | jax.Array = LINEAR_STEPS,
               learning_rate: float | jax.Array = LINEAR_LR) -> tuple[jax.Array, jax.Array]:
    """Fits a linear probe (softmax regression) on one support set.

    ``W`` (``d x ways``) and ``b`` start at zero and take ``steps`` full-batch Adam steps
    on the mean cross-entropy of :func:`linear_logits` of the L2-normalised support
    features (rows whose label is outside ``0..ways-1`` are ignored). ``steps`` and
    ``learning_rate`` may be traced. Classify with :func:`linear_logits`; classes with no
    support example must be masked by the caller (:func:`episode_accuracy` does).

    Returns:
      ``(W, b)``: ``(d, ways)`` and ``(ways,)`` float32.
    """
    support = _f32(support)
    support_labels = jnp.asarray(support_labels)
    _check_episode("linear_fit", support, support_labels)
    valid = (support_labels >= 0) & (support_labels < ways)
    targets = jnp.where(valid, support_labels, -1)
    params = (jnp.zeros((support.shape[1], ways), jnp.float32), jnp.zeros((ways,), jnp.float32))
    tx = optax.adam(jnp.asarray(learning_rate, jnp.float32))

    def loss(p):
        return cross_entropy(linear_logits(p, support), targets, ignore_index=-1)

    def body(_, carry):
        p, opt_state = carry
        updates, opt_state = tx.update(jax.grad(loss)(p), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), body,
                                  (params, tx.init(params)))
    return params


def pa_logits(w: ArrayLike, support: ArrayLike, support_labels: ArrayLike, query: ArrayLike,
              ways: int) -> jax.Array:
    """NCC logits (:func:`ncc_logits`) of ``query @ w`` against prototypes of
    ``support @ w``: how PA (and TSA, on its adapted features) classifies.

    Args:
      w: ``(d, d)`` PA map from :func:`pa_fit`.
      support, support_labels, query, ways: as :func:`ncc_logits`.

    Returns:
      ``(Q, ways)`` float32 logits.
    """
    return ncc_logits(pa_transform(support, w), support_labels, pa_transform(query, w), ways)


def query_accuracy(logits: ArrayLike, support_labels: ArrayLike, query_labels: ArrayLike,
                   ways: int) -> jax.Array:
    """Query accuracy of one episode's ``logits``, as both protocols score every method.

    Classes with no support example (padded classes) get :data:`ABSENT_CLASS_LOGIT`, so
    they are never predicted; queries whose label is outside ``0..ways-1`` (padding) are
    not counted.

    Args:
      logits: ``(Q, ways)`` query logits.
      support_labels: ``(S,)`` int support labels (which classes are present).
      query_labels: ``(Q,)`` int query labels.
      ways: number of classes.

    Returns:
      float32 scalar in ``[0, 1]`` (0 when no query is valid).
    """
    support_labels, query_labels = jnp.asarray(support_labels), jnp.asarray(query_labels)
    counts = jnp.sum(jax.nn.one_hot(support_labels, ways, dtype=jnp.float32), axis=0)
    logits = _mask_absent(jnp.asarray(logits), counts)
    valid = (query_labels >= 0) & (query_labels < ways)
    correct = (jnp.argmax(logits, axis=-1) == query_labels) & valid
    return jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1)


# --------------------------------------------------------------------------
# Registry entries (ur_jax.evaluation.methods): NCC, PA, linear probe
# --------------------------------------------------------------------------


def _ncc_entry_logits(state: None, support: jax.Array, support_labels: jax.Array,
                      query: jax.Array, ways: int) -> jax.Array:
    del state
    return ncc_logits(support, support_labels, query, ways)


def _pa_entry_fit(support: jax.Array, support_labels: jax.Array, ways: int, steps: jax.Array,
                  learning_rates: Mapping[str, jax.Array]) -> jax.Array:
    return pa_fit(support, support_labels, ways, steps, learning_rates["beta"])


def _linear_entry_fit(support: jax.Array, support_labels: jax.Array, ways: int,
                      steps: jax.Array, learning_rates: Mapping[str, jax.Array]
                      ) -> tuple[jax.Array, jax.Array]:
    return linear_fit(support, support_labels, ways, steps, learning_rates["linear"])


def _linear_entry_logits(params: tuple[jax.Array, jax.Array], support: jax.Array,
                         support_labels: jax.Array, query: jax.Array, ways: int) -> jax.Array:
    del support, support_labels, ways
    return linear_logits(params, query)


methods.register_method(methods.FewShotMethod(
    name="ncc", adapts="features", logits=_ncc_entry_logits,
    description="nearest centroid, cosine x 10 (URL)"))
methods.register_method(methods.FewShotMethod(
    name="pa", adapts="features", fit=_pa_entry_fit, logits=pa_logits, steps=PA_STEPS,
    seen_learning_rates={"beta": SEEN_PA_LR}, unseen_learning_rates={"beta": UNSEEN_PA_LR},
    description="pre-classifier alignment (identity init, Adadelta) + NCC (URL)"))
methods.register_method(methods.FewShotMethod(
    name="linear", adapts="features", fit=_linear_entry_fit, logits=_linear_entry_logits,
    steps=LINEAR_STEPS, seen_learning_rates={"linear": LINEAR_LR},
    unseen_learning_rates={"linear": LINEAR_LR},
    description="linear probe on L2-normalised features (Adam)"))


def __getattr__(name: str) -> Any:
    # ``METHODS``: the registered methods this protocol runs (those adapting features),
    # read at access time (PEP 562) so later registrations count.
    if name == "METHODS":
        return methods.method_names("features")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _feature_method(name: str, caller: str) -> methods.FewShotMethod:
    """The registered feature-level method ``name``; a ValueError naming the choices else."""
    names = methods.method_names("features")
    if name in names:
        return methods.get_method(name)
    hint = ""
    if isinstance(name, str) and name in methods.method_names():
        hint = (f" ({name!r} adapts the backbone, so it needs the episodes' images: evaluate "
                f"it with ur_jax.evaluation.metadataset.EpisodeEvaluator)")
    raise ValueError(f"{caller}: method must be one of {names}{hint}; found {name!r}. "
                     f"New methods are registered with "
                     f"ur_jax.evaluation.methods.register_method.")


def _method_learning_rates(method: methods.FewShotMethod,
                           learning_rate: float | Mapping[str, float], caller: str
                           ) -> dict[str, jax.Array]:
    """``{rate name: float32 scalar}``: a float given to every rate of ``method``, or a
    mapping that names exactly its rates."""
    names = method.learning_rate_names
    if not isinstance(learning_rate, Mapping):
        return {k: jnp.asarray(learning_rate, jnp.float32) for k in names}
    if set(learning_rate) != set(names):
        raise ValueError(f"{caller}: method {method.name!r} has the learning rates "
                         f"{list(names)}; found a mapping of {sorted(learning_rate)}.")
    return {k: jnp.asarray(learning_rate[k], jnp.float32) for k in names}


def _single_episode_accuracy(features: jax.Array, support: jax.Array,
                             support_labels: jax.Array, query: jax.Array,
                             query_labels: jax.Array, steps: jax.Array,
                             learning_rates: Mapping[str, jax.Array], *,
                             method: methods.FewShotMethod, ways: int) -> jax.Array:
    s_feat = jnp.take(features, support, axis=0)
    q_feat = jnp.take(features, query, axis=0)
    state = (None if method.fit is None
             else method.fit(s_feat, support_labels, ways, steps, learning_rates))
    logits = method.logits(state, s_feat, support_labels, q_feat, ways)
    return query_accuracy(logits, support_labels, query_labels, ways)


def _episode_accuracy(features: jax.Array, support: jax.Array, support_labels: jax.Array,
                      query: jax.Array, query_labels: jax.Array, steps: jax.Array,
                      learning_rates: Mapping[str, jax.Array], *,
                      method: methods.FewShotMethod, ways: int) -> jax.Array:
    def one(s, sl, q, ql):
        return _single_episode_accuracy(features, s, sl, q, ql, steps, learning_rates,
                                        method=method, ways=ways)

    return jax.vmap(one)(support, support_labels, query, query_labels)


_episode_accuracy_jit = jax.jit(_episode_accuracy, static_argnames=("method", "ways"))


def episode_accuracy(features: ArrayLike, support: ArrayLike, support_labels: ArrayLike,
                     query: ArrayLike, query_labels: ArrayLike, *, method: str = "ncc",
                     ways: int, steps: int = PA_STEPS,
                     learning_rate: float | Mapping[str, float] = SEEN_PA_LR) -> jax.Array:
    """Query accuracy of a batch of episodes (jit-compiled, ``vmap`` over episodes).

    Gathers each episode's support/query rows from the feature pool, fits the method on
    the support set (PA's map, the probe, ...) and scores its query logits with
    :func:`query_accuracy`.

    Compiled once per (shapes, dtypes, ``method``, ``ways``); ``steps`` and
    ``learning_rate`` are traced, so changing them never recompiles. Use
    :func:`evaluate_episodes` to run many episodes in fixed-size chunks.

    Args:
      features: ``(N, d)`` pool of precomputed features (float32).
      support, support_labels: ``(E, S)`` int indices into the pool and episode labels.
      query, query_labels: ``(E, Q)`` int indices and episode labels (queries whose
        label is outside ``0..ways-1`` are not counted).
      method: a registered method that adapts features (:data:`METHODS`): ``'ncc'``,
        ``'pa'`` (PA + NCC), ``'linear'`` (a linear probe, :func:`linear_fit`), ...
      ways: classes per episode (static); a variable-way episode pads its labels with -1
        and its classes beyond its own ways get no support, so they are never predicted.
      steps: the method's inner-loop steps (PA's Adadelta, the probe's Adam; ignored by
        NCC).
      learning_rate: a float used for every learning rate of the method, or a mapping
        naming exactly its rates (:attr:`~ur_jax.evaluation.methods.FewShotMethod.
        learning_rate_names`, e.g. ``{'beta': 1.0}`` for PA); ignored by NCC.

    Returns:
      ``(E,)`` float32 accuracies in ``[0, 1]``.

    Raises:
      ValueError: an unknown method or one that adapts the backbone, a learning-rate
        mapping with other names than the method's, or features that are not 2-D.
    """
    entry = _feature_method(method, "episode_accuracy")
    features = _f32(features)
    if features.ndim != 2:
        raise ValueError(f"episode_accuracy: features must be a 2-D pool (N, d); found "
                         f"shape {tuple(features.shape)}.")
    return _episode_accuracy_jit(
        features, jnp.asarray(support, jnp.int32), jnp.asarray(support_labels, jnp.int32),
        jnp.asarray(query, jnp.int32), jnp.asarray(query_labels, jnp.int32),
        jnp.asarray(steps, jnp.int32),
        _method_learning_rates(entry, learning_rate, "episode_accuracy"),
        method=entry, ways=int(ways))


def evaluate_episodes(features: ArrayLike, episodes: Episodes, method: str = "ncc",
                      learning_rate: float | Mapping[str, float] = SEEN_PA_LR,
                      steps: int = PA_STEPS, chunk: int = 50) -> np.ndarray:
    """Per-episode query accuracies of ``episodes`` on a pool of features (entry point).

    Runs :func:`episode_accuracy` on chunks of ``chunk`` episodes; the last chunk is
    padded (with copies of its first episode) to ``chunk`` episodes so every call has
    the same shape and nothing recompiles; padded results are discarded. At most
    ``chunk`` PA problems are held in memory at a time.

    Args:
      features: ``(N, d)`` float32 NumPy or JAX array; the episodes index its rows.
      episodes: from :func:`sample_episodes` (or built by hand).
      method: a registered method that adapts features (:data:`METHODS`: ``'ncc'``,
        ``'pa'``, ``'linear'``, ...); methods that adapt the backbone (``'tsa'``) are
        refused.
      learning_rate: the method's inner learning rate (PA: :data:`SEEN_PA_LR` = 0.1 on
        training sources, :data:`UNSEEN_PA_LR` = 1.0 on unseen domains), or a mapping
        naming each of its rates (:func:`episode_accuracy`); ignored for NCC. The
        default is PA's seen rate whatever the method.
      steps: the method's inner-loop steps (default: PA's 40, whatever the method);
        ignored for NCC.
      chunk: episodes per compiled call.

    Returns:
      ``(E,)`` float32 NumPy array of accuracies in ``[0, 1]``.

    Raises:
      TypeError: ``episodes`` is not an :class:`Episodes`.
      ValueError: an unknown ``method`` or one that adapts the backbone, a learning-rate
        mapping that does not name the method's rates, bad ``chunk``, or indices outside
        the pool.
    """
    if not isinstance(episodes, Episodes):
        raise TypeError(f"evaluate_episodes: episodes must be an Episodes batch (see "
                         f"sample_episodes); found {type(episodes).__name__}.")
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"evaluate_episodes: chunk must be a positive integer; found "
                         f"{chunk!r}.")
    entry = _feature_method(method, "evaluate_episodes")
    _method_learning_rates(entry, learning_rate, "evaluate_episodes")  # refused before any work
    features = _f32(features)  # one host->device transfer for all chunks
    if features.ndim != 2:
        raise ValueError(f"evaluate_episodes: features must be a 2-D pool (N, d); found "
                         f"shape {tuple(features.shape)}.")
    n = features.shape[0]
    for name in ("support", "query"):
        idx = getattr(episodes, name)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(
                f"evaluate_episodes: episode {name} indices must lie in [0, {n}) (the "
                f"feature pool has {n} rows); found range [{idx.min()}, {idx.max()}]. "
                f"Were the episodes sampled from the labels of this pool?")
    total = len(episodes)
    results = []
    for start in range(0, total, chunk):
        part = episodes[start:start + chunk]
        arrays = [part.support, part.support_labels, part.query, part.query_labels]
        pad = chunk - len(part)
        if pad:
            arrays = [np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in arrays]
        acc = episode_accuracy(features, *arrays, method=method, ways=episodes.ways,
                               steps=steps, learning_rate=learning_rate)
        results.append((acc, len(part)))  # kept on device: no host sync between chunks
    if not results:
        return np.zeros((0,), np.float32)
    return np.concatenate([np.asarray(a)[:k] for a, k in results]).astype(np.float32)


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def mean_confidence_interval(accuracies: ArrayLike) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(E)`` over episodes.

    ``std`` is NumPy's default (population, ``ddof=0``), as in the URL reference code.
    The results are in the units of the input (pass ``100 * acc`` for percentages).

    Raises:
      ValueError: if ``accuracies`` is empty or not 1-D.
    """
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"mean_confidence_interval: expected a non-empty 1-D array of "
                         f"per-episode accuracies; found shape {acc.shape}.")
    return float(acc.mean()), float(1.96 * acc.std() / np.sqrt(acc.size))
