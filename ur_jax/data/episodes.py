"""Meta-Dataset episodes: the variable-way variable-shot sampler and its fixed variants.

A pure-NumPy re-statement of the rules of the official sampler
(google-research/meta-dataset, ``meta_dataset/data/sampling.py``,
``EpisodeDescriptionSampler``), drawing episodes as record indices into one split of one
source (a :class:`SplitSpec`). Every random draw comes from a ``np.random.Generator`` the
caller passes in, so a seed fixes every episode (:func:`sample_episodes`).

One episode, in the order of its random draws:

1. **Classes.**

   * Flat sources: ``N ~ U{min_ways .. min(max_ways, C)}`` (``C`` classes in the split), then
     ``N`` distinct classes uniformly (in random order).
   * ImageNet (``spec.hierarchy``, the internal nodes of the split's WordNet DAG): the
     *eligible* nodes are those spanning between ``min_ways`` and ``max_spanning_leaves``
     (392) leaves, bounds included. One eligible node is picked uniformly; its leaves are the
     classes, in the node's order, and if there are more than ``max_ways`` of them,
     ``max_ways`` are sub-sampled uniformly without replacement (random order). ``N`` is
     therefore ``min(#leaves, max_ways)``, not a uniform draw.
   * Omniglot (``spec.superclasses``, the alphabets): one alphabet uniformly (not in
     proportion to its size), then ``N ~ U{min_ways .. min(max_ways, A)}`` (``A`` characters
     in the alphabet), then ``N`` distinct characters of that alphabet uniformly. Every
     alphabet must have at least ``min_ways`` characters.

2. **Query size per class** (equal for all classes): ``queries`` when fixed; else, with
   variable shots, ``q = min(max_query, min_c floor(n_c / 2))`` (every chosen class needs
   ``n_c >= 2``); with fixed ``shots``, ``q = min(max_query, min_c n_c - shots)`` (every
   chosen class needs ``n_c >= shots + 1``).

3. **Support sizes.** Fixed ``shots``: ``shots`` per class (``shots + q <= n_c`` needed).
   Variable: ``beta ~ U[0, 1)``, then the support budget (:func:`support_set_size`)::

       S = min(max_support, sum_c floor(beta * min(max_support_per_class, n_c - q) + 1))

   (the ``+ 1`` is per class, inside the sum, so ``S >= N``; ``max_support < N`` is an
   error), then ``N`` log-weights ``w_c ~ U[min_log_weight, max_log_weight)`` and
   (:func:`support_sizes`)::

       p_c = n_c exp(w_c) / sum_j n_j exp(w_j)
       k_c = min(floor(p_c * (S - N)) + 1, n_c - q)

4. **Examples.** For each chosen class, in episode-label order, a uniformly random
   permutation of its members: the first ``k_c`` go to the support set, the next ``q`` to the
   query set (so the two are disjoint).

Protocols (:func:`protocol_config`), as the URL/TSA code (VICO-UoE/URL,
``data/meta_dataset_reader.py``) configures the official sampler:

* ``'standard'``: the defaults above (variable ways and shots).
* ``'five_way_one_shot'``: ``min_ways = max_ways = 5``, ``max_support_per_class = 1``, the
  rest variable: the hierarchies are still used, every class gets exactly one support image
  and ``q = min(10, min_c floor(n_c / 2))`` queries (10 for classes of >= 20 images).
* ``'varying_way_five_shot'``: ``shots = 5``, ways and queries variable (so
  ``q = min(10, min_c n_c - 5)``).

Deviations from the official code, all without effect on valid inputs: class-size
requirements are checked for every class of the split up front (the official code checks
the chosen classes of each episode); the official ``min_examples_in_class`` filter
(drop small classes; off in URL's setup) and ``ignore_hierarchy_probability`` (0.0 in URL's
setup) are not offered; with ``ways`` fixed only ``C >= ways`` is required (the official code
also requires ``C >= min_ways``). As in the official code, a fixed ``ways`` is refused on a
split with a hierarchy unless ``ignore_hierarchy=True`` (the official ``ignore_dag_ontology`` /
``ignore_bilevel_ontology``), which samples such a split as a flat one.

Example::

    spec = SplitSpec("aircraft", members=tuple(indices_of_class))
    episodes = sample_episodes(spec, 600, "standard", seed=0)   # same 600 on every run
    describe(episodes)          # {'mean_ways': ..., 'mean_support': ..., ...}
    episode_shapes(episodes)    # maxima, for bucketing / padding
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import numpy as np


class EpisodeError(ValueError):
    """An episode cannot be sampled as asked (a split with too few classes or images, bad
    protocol values): says what was expected, what was found and how to fix it.
    Meta-Dataset's :class:`ur_jax.suites.metadataset.common.MetaDatasetError` derives from it."""


__all__ = [
    "MAX_SPANNING_LEAVES",
    "PROTOCOLS",
    "Episode",
    "EpisodeConfig",
    "SplitSpec",
    "describe",
    "episode_shapes",
    "num_query",
    "protocol_config",
    "sample_episode",
    "sample_episodes",
    "support_set_size",
    "support_sizes",
]

#: Most leaves an ImageNet DAG node may span and still be picked (official
#: ``MAX_SPANNING_LEAVES_ELIGIBLE``: the smallest value that makes every leaf reachable).
MAX_SPANNING_LEAVES = 392
#: Evaluation protocols understood by :func:`protocol_config` / :func:`sample_episodes`.
PROTOCOLS = ("standard", "five_way_one_shot", "varying_way_five_shot")


def _as_index_array(value, what: str) -> np.ndarray:
    """``value`` as a 1-D int64 array of non-negative integers, or a EpisodeError."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise EpisodeError(f"{what} must be a 1-D array of integer indices; found shape "
                               f"{arr.shape}. Pass one flat index array per group.")
    if arr.size == 0:
        return np.zeros((0,), np.int64)
    if arr.dtype.kind not in "iu":
        raise EpisodeError(f"{what} must hold integer indices; found dtype {arr.dtype}. "
                               f"Convert it with np.asarray(..., np.int64).")
    if arr.min() < 0:
        raise EpisodeError(f"{what} must hold non-negative indices; found {arr.min()}.")
    return arr.astype(np.int64, copy=False)


def _class_groups(groups, num_classes: int, what: str) -> tuple[np.ndarray, ...]:
    """Validates the class-index groups of a hierarchy (``what``) of a split of
    ``num_classes`` classes: indices in range, no index twice in one group."""
    if isinstance(groups, np.ndarray) and groups.dtype != object:
        groups = list(groups)
    out = []
    for i, group in enumerate(groups):
        arr = _as_index_array(group, f"SplitSpec.{what}[{i}]")
        if arr.size and arr.max() >= num_classes:
            raise EpisodeError(
                f"SplitSpec.{what}[{i}] holds class index {int(arr.max())}, but the split has "
                f"only {num_classes} classes (valid indices 0 .. {num_classes - 1}). "
                f"{what} must index classes within the split (position in `members`), not "
                f"global class ids.")
        if len(np.unique(arr)) != len(arr):
            raise EpisodeError(f"SplitSpec.{what}[{i}] lists a class more than once; "
                                   f"each class may appear once per group.")
        out.append(arr)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """The classes of one split of one source, as the sampler sees them.

    Attributes:
      name: the source, e.g. ``'ilsvrc_2012'``.
      members: ``members[c]``: int64 indices (into the split's data source) of the records of
        class ``c``; ``c`` is the class index within the split (0 .. C-1).
      superclasses: Omniglot: the class indices (within the split) of each alphabet.
      hierarchy: ImageNet: for every internal node of the split's WordNet subgraph, the class
        indices (within the split) of the leaves it spans.

    On construction the index arrays are converted to 1-D int64 arrays (lists are accepted)
    and checked: non-negative, class indices inside ``0 .. C-1``, no class twice in a group,
    not both ``superclasses`` and ``hierarchy``. Bad input raises
    :class:`~ur_jax.suites.metadataset.common.EpisodeError`.
    """

    name: str
    members: tuple[np.ndarray, ...]
    superclasses: tuple[np.ndarray, ...] | None = None
    hierarchy: tuple[np.ndarray, ...] | None = None

    def __post_init__(self):
        if isinstance(self.members, np.ndarray) and self.members.dtype != object:
            raise EpisodeError(
                f"SplitSpec({self.name!r}).members must be a sequence with one index array "
                f"per class; found a single array of shape {self.members.shape}.")
        members = tuple(_as_index_array(m, f"SplitSpec({self.name!r}).members[{c}]")
                        for c, m in enumerate(self.members))
        object.__setattr__(self, "members", members)
        if self.superclasses is not None and self.hierarchy is not None:
            raise EpisodeError(
                f"SplitSpec({self.name!r}) has both superclasses (Omniglot's alphabets) and a "
                f"hierarchy (ImageNet's DAG); the sampler uses one ontology at a time (as "
                f"the official one does). Keep one of them.")
        for what in ("superclasses", "hierarchy"):
            groups = getattr(self, what)
            if groups is not None:
                object.__setattr__(self, what, _class_groups(groups, len(members), what))

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` of the split."""
        return len(self.members)

    @property
    def images_per_class(self) -> np.ndarray:
        """``(C,)`` int64: the number of records of each class."""
        return np.array([len(m) for m in self.members], np.int64)


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode as record indices into the split's data source.

    Attributes:
      support, query: int64 record indices, class-major (all of episode class 0 first).
      support_labels, query_labels: int32 episode labels in ``0 .. ways-1``.
      classes: ``(ways,)`` class indices within the split; episode label ``i`` is
        ``classes[i]``.
    """

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray

    def __post_init__(self):
        for part in ("support", "query"):
            idx, lab = getattr(self, part), getattr(self, f"{part}_labels")
            if len(idx) != len(lab):
                raise ValueError(f"Episode: {part} has {len(idx)} indices but "
                                 f"{part}_labels has {len(lab)} labels; they must pair up.")

    @property
    def ways(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def support_per_class(self) -> np.ndarray:
        """``(ways,)`` int64: support examples of each episode class (the shots ``k_c``)."""
        return np.bincount(np.asarray(self.support_labels), minlength=self.ways)

    @property
    def query_per_class(self) -> np.ndarray:
        """``(ways,)`` int64: query examples of each episode class."""
        return np.bincount(np.asarray(self.query_labels), minlength=self.ways)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """Parameters of the episode sampler; the defaults are the official Meta-Dataset ones
    (``learn/gin/setups/data_config.gin``), i.e. the ``'standard'`` protocol.

    Attributes:
      min_ways, max_ways: bounds of the number of ways (official ``min_ways``,
        ``max_ways_upper_bound``); the split's class count is another upper bound.
      max_query: most query examples per class (``max_num_query``).
      max_support: most support examples in an episode (``max_support_set_size``).
      max_support_per_class: most a class contributes to the support *budget*
        (``max_support_size_contrib_per_class``); not a cap on its shots.
      min_log_weight, max_log_weight: range of the uniform per-class log-weights that
        perturb the support proportions (``log 0.5``, ``log 2``).
      max_spanning_leaves: ImageNet: most leaves an eligible DAG node may span (392).
      ways: fixed number of ways (``num_ways``); ``None``: variable.
      shots: fixed support examples per class (``num_support``); ``None``: variable.
      queries: fixed query examples per class (``num_query``); ``None``: variable.
      ignore_hierarchy: sample a split with a hierarchy (ImageNet DAG, Omniglot alphabets)
        as a flat one (official ``ignore_dag_ontology`` / ``ignore_bilevel_ontology``).

    Raises:
      ValueError: a non-integer or non-positive count, ``min_ways > max_ways``,
        ``min_log_weight > max_log_weight`` or a non-finite log-weight.
      TypeError: a non-bool ``ignore_hierarchy``.
    """

    min_ways: int = 5
    max_ways: int = 50
    max_query: int = 10
    max_support: int = 500
    max_support_per_class: int = 100
    min_log_weight: float = math.log(0.5)
    max_log_weight: float = math.log(2.0)
    max_spanning_leaves: int = MAX_SPANNING_LEAVES
    ways: int | None = None
    shots: int | None = None
    queries: int | None = None
    ignore_hierarchy: bool = False

    def __post_init__(self):
        for name in ("min_ways", "max_ways", "max_query", "max_support",
                     "max_support_per_class", "max_spanning_leaves"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"EpisodeConfig.{name} must be a positive integer; found "
                                 f"{value!r}.")
        for name in ("ways", "shots", "queries"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"EpisodeConfig.{name} must be None (variable) or a positive "
                                 f"integer; found {value!r}.")
        if self.min_ways > self.max_ways:
            raise ValueError(f"EpisodeConfig: min_ways ({self.min_ways}) must not exceed "
                             f"max_ways ({self.max_ways}).")
        lo, hi = self.min_log_weight, self.max_log_weight
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"EpisodeConfig: need finite min_log_weight <= max_log_weight; "
                             f"found {lo!r} and {hi!r}.")
        if not isinstance(self.ignore_hierarchy, bool):
            raise TypeError(f"EpisodeConfig.ignore_hierarchy must be a bool; found "
                             f"{self.ignore_hierarchy!r}.")


def protocol_config(name: str) -> EpisodeConfig:
    """The :class:`EpisodeConfig` of an evaluation protocol (see the module docstring).

    Args:
      name: one of :data:`PROTOCOLS`: ``'standard'`` (variable ways and shots),
        ``'five_way_one_shot'`` (5 ways, 1 shot, up to 10 queries per class),
        ``'varying_way_five_shot'`` (variable ways, 5 shots, up to 10 queries per class).

    Returns:
      The config, with the official defaults for everything the protocol does not set.

    Raises:
      ValueError: an unknown protocol.
    """
    if name == "standard":
        return EpisodeConfig()
    if name == "five_way_one_shot":
        # URL: EpisodeDescriptionConfig(None, None, None, min_ways=5, max_ways_upper_bound=5,
        # max_num_query=10, max_support_size_contrib_per_class=1).
        return EpisodeConfig(min_ways=5, max_ways=5, max_query=10, max_support_per_class=1)
    if name == "varying_way_five_shot":
        # URL: EpisodeDescriptionConfig(None, 5, None).
        return EpisodeConfig(shots=5)
    raise ValueError(f"Unknown episode protocol {name!r}; expected one of {list(PROTOCOLS)} "
                     f"or an EpisodeConfig.")


def num_query(n_per_class: Sequence[int] | np.ndarray, config: EpisodeConfig) -> int:
    """Query examples per class of an episode with classes of ``n_per_class`` images.

    Fixed ``config.queries`` wins; else ``min(max_query, min_c floor(n_c / 2))`` with
    variable shots, ``min(max_query, min_c n_c - shots)`` with fixed shots (official
    ``compute_num_query``).

    Args:
      n_per_class: images of each chosen class.
      config: the sampler's parameters.

    Returns:
      ``q``, the same for every class.

    Raises:
      EpisodeError: a class with fewer than 2 images (variable shots) or with at most
        ``shots`` images (fixed shots).
    """
    n = np.asarray(n_per_class, np.int64)
    if config.queries is not None:
        return int(config.queries)
    if config.shots is None:
        if n.min() < 2:
            raise EpisodeError(
                f"A class with {int(n.min())} image(s) cannot give a query and a support "
                f"example: variable queries need at least 2 images per class. Drop the "
                f"class from the SplitSpec or fix `queries` and `shots`.")
        return int(min(config.max_query, int((n // 2).min())))
    if (n - config.shots).min() < 1:
        raise EpisodeError(
            f"A class with {int(n.min())} image(s) cannot give {config.shots} shots and a "
            f"query: fixed shots need at least shots + 1 = {config.shots + 1} images per "
            f"class. Lower `shots` or drop the class from the SplitSpec.")
    return int(min(config.max_query, int(n.min()) - config.shots))


def support_set_size(n_per_class: Sequence[int] | np.ndarray, q: int, beta: float,
                     config: EpisodeConfig) -> int:
    """The support budget ``S`` of a variable-shot episode (official
    ``sample_support_set_size``)::

        S = min(max_support, sum_c floor(beta * min(max_support_per_class, n_c - q) + 1))

    Args:
      n_per_class: ``(N,)`` images of each chosen class.
      q: query examples per class.
      beta: the episode's ``U[0, 1)`` draw.
      config: the sampler's parameters.

    Returns:
      ``S``, at least ``N`` (every class contributes at least one).

    Raises:
      EpisodeError: ``max_support < N`` (no room for one support example per class).
    """
    remaining = np.asarray(n_per_class, np.int64) - int(q)
    if config.max_support < len(remaining):
        raise EpisodeError(
            f"max_support ({config.max_support}) is smaller than the number of ways "
            f"({len(remaining)}): no room for one support example per class. Raise "
            f"max_support or lower max_ways.")
    contrib = np.minimum(config.max_support_per_class, remaining)
    total = np.floor(beta * contrib + 1.0).sum()
    return int(min(total, config.max_support))


def support_sizes(n_per_class: Sequence[int] | np.ndarray, q: int, beta: float,
                  log_weights: Sequence[float] | np.ndarray,
                  config: EpisodeConfig) -> np.ndarray:
    """Support examples of each class of a variable-shot episode (official
    ``sample_num_support_per_class`` after ``sample_support_set_size``)::

        S   = support_set_size(n_per_class, q, beta, config)
        p_c = n_c exp(w_c) / sum_j n_j exp(w_j)
        k_c = min(floor(p_c * (S - N)) + 1, n_c - q)

    Args:
      n_per_class: ``(N,)`` images of each chosen class.
      q: query examples per class.
      beta: the episode's ``U[0, 1)`` draw for the budget.
      log_weights: ``(N,)`` the episode's ``U[min_log_weight, max_log_weight)`` draws ``w_c``.
      config: the sampler's parameters.

    Returns:
      ``(N,)`` int64 ``k_c``, each in ``1 .. n_c - q``, summing to at most ``S``.

    Raises:
      EpisodeError: a class with no image left after the queries, ``max_support < N``,
        or ``log_weights`` of the wrong length.
    """
    n = np.asarray(n_per_class, np.int64)
    w = np.asarray(log_weights, np.float64)
    if w.shape != n.shape:
        raise EpisodeError(f"support_sizes: need one log-weight per class ({n.shape}); "
                               f"found shape {w.shape}.")
    remaining = n - int(q)
    if remaining.min() < 1:
        raise EpisodeError(
            f"A class with {int(n.min())} image(s) has none left for the support set after "
            f"{q} queries. Lower `queries` or drop the class from the SplitSpec.")
    budget = support_set_size(n, q, beta, config)
    weights = n * np.exp(w)
    proportions = weights / weights.sum()
    desired = np.floor(proportions * (budget - len(n))).astype(np.int64) + 1
    return np.minimum(desired, remaining)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What the sampler needs from a (spec, config) pair, checked once."""

    spec: SplitSpec
    config: EpisodeConfig
    sizes: np.ndarray  # (C,) images per class
    mode: str  # 'flat' | 'dag' | 'bilevel'
    groups: tuple[np.ndarray, ...]  # eligible DAG nodes, or the alphabets


def _prepare(spec: SplitSpec, config: EpisodeConfig) -> _Prepared:
    """Checks that ``spec`` can give episodes under ``config``; returns the sampler's view."""
    if not isinstance(spec, SplitSpec):
        raise TypeError(f"Expected a SplitSpec; found {type(spec).__name__}.")
    if not isinstance(config, EpisodeConfig):
        raise TypeError(f"Expected an EpisodeConfig; found {type(config).__name__}.")
    sizes = spec.images_per_class
    num_classes = len(sizes)
    need = config.ways if config.ways is not None else config.min_ways
    if num_classes < need:
        what = (f"ways = {config.ways}" if config.ways is not None
                else f"min_ways = {config.min_ways}")
        raise EpisodeError(
            f"Split {spec.name!r} has {num_classes} classes, fewer than {what}: no episode "
            f"can be drawn from it. Lower {what.split(' ')[0]} or use a larger split.")
    # Class sizes, checked for every class (the official sampler checks chosen ones).
    if num_classes:
        smallest = int(sizes.min())
        small_class = int(sizes.argmin())
        if config.queries is not None:
            need_n = config.queries + (config.shots if config.shots is not None else 1)
            fix = "Lower `queries`/`shots`"
        elif config.shots is not None:
            need_n = config.shots + 1
            fix = "Lower `shots`"
        else:
            need_n = 2
            fix = "Fix `queries` and `shots`"
        if smallest < need_n:
            raise EpisodeError(
                f"Class {small_class} of split {spec.name!r} has {smallest} image(s); with "
                f"shots={config.shots} and queries={config.queries} (None = variable) every "
                f"class needs at least {need_n}. {fix}, or drop the class from the "
                f"SplitSpec.")
    use_hierarchy = not config.ignore_hierarchy
    has_hierarchy = spec.hierarchy is not None or spec.superclasses is not None
    if use_hierarchy and has_hierarchy and config.ways is not None:
        raise EpisodeError(
            f"Split {spec.name!r} has a class hierarchy, which picks the ways itself: a "
            f"fixed `ways` ({config.ways}) is incompatible with it (as in the official "
            f"sampler). Leave `ways` None, or set ignore_hierarchy=True to sample the split "
            f"as a flat one.")
    if use_hierarchy and spec.hierarchy is not None:
        eligible = tuple(g for g in spec.hierarchy
                         if config.min_ways <= len(g) <= config.max_spanning_leaves)
        if not eligible:
            raise EpisodeError(
                f"No node of the hierarchy of split {spec.name!r} spans between min_ways "
                f"({config.min_ways}) and max_spanning_leaves ({config.max_spanning_leaves}) "
                f"leaves; node sizes: {sorted({len(g) for g in spec.hierarchy})}. Change "
                f"those bounds or set ignore_hierarchy=True.")
        return _Prepared(spec, config, sizes, "dag", eligible)
    if use_hierarchy and spec.superclasses is not None:
        if not spec.superclasses:
            raise EpisodeError(f"Split {spec.name!r} has an empty list of superclasses.")
        for i, group in enumerate(spec.superclasses):
            if len(group) < config.min_ways:
                raise EpisodeError(
                    f"Superclass {i} of split {spec.name!r} has {len(group)} classes < "
                    f"min_ways = {config.min_ways} (the official sampler refuses this too). "
                    f"Lower min_ways, merge the superclass, or set ignore_hierarchy=True.")
        return _Prepared(spec, config, sizes, "bilevel", spec.superclasses)
    return _Prepared(spec, config, sizes, "flat", ())


def _sample_classes(prep: _Prepared, rng: np.random.Generator) -> np.ndarray:
    """Step 1 of the module docstring: the episode's classes, in episode-label order."""
    cfg = prep.config
    if prep.mode == "dag":
        leaves = prep.groups[int(rng.integers(len(prep.groups)))]
        if len(leaves) > cfg.max_ways:
            leaves = rng.choice(leaves, size=cfg.max_ways, replace=False)
        return np.asarray(leaves, np.int64)
    if prep.mode == "bilevel":
        alphabet = prep.groups[int(rng.integers(len(prep.groups)))]
        ways = int(rng.integers(cfg.min_ways, min(cfg.max_ways, len(alphabet)) + 1))
        return alphabet[rng.choice(len(alphabet), size=ways, replace=False)]
    num_classes = len(prep.sizes)
    if cfg.ways is not None:
        ways = cfg.ways
    else:
        ways = int(rng.integers(cfg.min_ways, min(cfg.max_ways, num_classes) + 1))
    return rng.choice(num_classes, size=ways, replace=False).astype(np.int64)


def _sample(prep: _Prepared, rng: np.random.Generator) -> Episode:
    cfg = prep.config
    classes = _sample_classes(prep, rng)
    n = prep.sizes[classes]
    q = num_query(n, cfg)
    if cfg.shots is not None:
        if np.any(cfg.shots + q > n):
            raise EpisodeError(f"Some classes of split {prep.spec.name!r} have fewer than "
                                   f"shots + queries = {cfg.shots + q} images.")
        shots = np.full(len(classes), cfg.shots, np.int64)
    else:
        beta = float(rng.uniform())
        log_weights = rng.uniform(cfg.min_log_weight, cfg.max_log_weight, size=len(classes))
        shots = support_sizes(n, q, beta, log_weights, cfg)
    support, query = [], []
    for c, k in zip(classes, shots, strict=True):
        members = prep.spec.members[c]
        order = rng.permutation(len(members))
        support.append(members[order[:k]])
        query.append(members[order[k:k + q]])
    labels = np.arange(len(classes), dtype=np.int32)
    return Episode(
        support=np.concatenate(support).astype(np.int64, copy=False),
        support_labels=np.repeat(labels, shots),
        query=np.concatenate(query).astype(np.int64, copy=False),
        query_labels=np.repeat(labels, q),
        classes=np.asarray(classes, np.int64))


def _config(protocol: str | EpisodeConfig | None) -> EpisodeConfig:
    if protocol is None:
        return EpisodeConfig()
    if isinstance(protocol, EpisodeConfig):
        return protocol
    if isinstance(protocol, str):
        return protocol_config(protocol)
    raise TypeError(f"Expected a protocol name ({list(PROTOCOLS)}) or an EpisodeConfig; "
                    f"found {type(protocol).__name__}.")


def sample_episode(spec: SplitSpec, rng: np.random.Generator,
                   config: EpisodeConfig | str | None = None) -> Episode:
    """Draws one episode of ``spec`` with the official sampler's rules (module docstring).

    Args:
      spec: the split's classes (and hierarchy, if any).
      rng: the only source of randomness; advanced by the call.
      config: an :class:`EpisodeConfig`, a protocol name, or ``None`` (``'standard'``).

    Returns:
      An :class:`Episode`: class-major int64 indices, int32 labels, the chosen classes.

    Raises:
      EpisodeError: a split the config cannot sample (too few classes, too small a
        class, no eligible hierarchy node, a fixed ``ways`` on a hierarchy, ...).
    """
    return _sample(_prepare(spec, _config(config)), rng)


def sample_episodes(spec: SplitSpec, num_episodes: int,
                    protocol: str | EpisodeConfig = "standard", seed: int = 0) -> list[Episode]:
    """Draws ``num_episodes`` episodes from one generator ``np.random.default_rng(seed)``.

    Episode ``i`` is the ``i``-th call of :func:`sample_episode` on that generator, so the
    list depends only on the arguments (and NumPy's ``PCG64`` streams): the same 600 test
    episodes on every run and machine.

    Args:
      spec: the split's classes.
      num_episodes: ``>= 1``.
      protocol: a name from :data:`PROTOCOLS` or an :class:`EpisodeConfig`.
      seed: the generator's seed.

    Returns:
      The episodes, in order.

    Raises:
      ValueError: ``num_episodes < 1``; EpisodeError as :func:`sample_episode`.
    """
    if not _is_int(num_episodes) or num_episodes < 1:
        raise ValueError(f"sample_episodes: num_episodes must be a positive integer; found "
                         f"{num_episodes!r}.")
    prep = _prepare(spec, _config(protocol))
    rng = np.random.default_rng(seed)
    return [_sample(prep, rng) for _ in range(num_episodes)]


def _check_episodes(episodes: Sequence[Episode], who: str) -> None:
    if len(episodes) == 0:
        raise ValueError(f"{who}: need at least one episode; found none.")


def episode_shapes(episodes: Sequence[Episode]) -> dict[str, int]:
    """The largest sizes over ``episodes``, e.g. to pad them to one shape.

    Args:
      episodes: a non-empty sequence of episodes.

    Returns:
      ``{'ways', 'support', 'query', 'support_per_class', 'query_per_class'}``: the maximum
      number of ways, of support and query examples, and of either per class.

    Raises:
      ValueError: no episodes.
    """
    _check_episodes(episodes, "episode_shapes")
    return {
        "ways": max(e.ways for e in episodes),
        "support": max(len(e.support) for e in episodes),
        "query": max(len(e.query) for e in episodes),
        "support_per_class": max(int(e.support_per_class.max()) for e in episodes),
        "query_per_class": max(int(e.query_per_class.max()) for e in episodes),
    }


def describe(episodes: Sequence[Episode]) -> dict[str, float]:
    """Summary statistics of ``episodes`` for logs.

    Args:
      episodes: a non-empty sequence of episodes.

    Returns:
      ``episodes`` (count); ``mean_ways``, ``min_ways``, ``max_ways``; ``mean_support``,
      ``max_support`` (support set sizes); ``mean_query``, ``max_query`` (query set sizes);
      ``mean_shots``, ``min_shots``, ``max_shots`` (support examples per class, over every
      class of every episode); ``mean_query_per_class``.

    Raises:
      ValueError: no episodes.
    """
    _check_episodes(episodes, "describe")
    ways = np.array([e.ways for e in episodes], np.float64)
    support = np.array([len(e.support) for e in episodes], np.float64)
    query = np.array([len(e.query) for e in episodes], np.float64)
    shots = np.concatenate([e.support_per_class for e in episodes]).astype(np.float64)
    query_pc = np.concatenate([e.query_per_class for e in episodes]).astype(np.float64)
    return {
        "episodes": float(len(episodes)),
        "mean_ways": float(ways.mean()),
        "min_ways": float(ways.min()),
        "max_ways": float(ways.max()),
        "mean_support": float(support.mean()),
        "max_support": float(support.max()),
        "mean_query": float(query.mean()),
        "max_query": float(query.max()),
        "mean_shots": float(shots.mean()),
        "min_shots": float(shots.min()),
        "max_shots": float(shots.max()),
        "mean_query_per_class": float(query_pc.mean()),
    }
