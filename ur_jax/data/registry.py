"""Which data a config trains and evaluates on: dataset name -> sources.

``config.dataset`` names a loader registered here. Classification loaders return a
:class:`ClassificationData` of random-access sources (``tfds.data_source``) per domain; add one
with :func:`register`. Dense loaders return a :class:`DenseData`; add one with
:func:`register_dense`.

The loaders themselves live in the benchmark suites (``ur_jax/suites/<suite>/register.py``):
``embedded``, ``decathlon`` and ``metadataset`` (classification), ``scenes``, ``nyuv2``,
``cityscapes7`` and ``cityscapes19`` (dense). The suites named in :data:`SUITES` are imported
on the first lookup (:func:`load_classification`, :func:`load_dense`, :func:`datasets`,
:func:`dense_datasets`), which registers their loaders; adding a suite is its folder plus one
line in :data:`SUITES`. A loader registered directly with :func:`register` (e.g. from a test
or a notebook) works the same way.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

ClassificationLoader = Callable[[Any], "ClassificationData"]
_LOADERS: dict[str, ClassificationLoader] = {}


@dataclasses.dataclass(frozen=True)
class ClassificationData:
    """Per-domain sources of a multi-domain classification problem.

    Attributes:
      train, test: ``{domain: source}`` for the training domains.
      num_classes: ``{domain: classes}``.
      image_shape: ``(H, W, C)`` shared by every domain.
      fewshot: ``{domain: source}`` of held-out data for few-shot episodes.
      fewshot_specs: ``{domain: ur_jax.data.episodes.SplitSpec}``: the class structure of
        each ``fewshot`` source; when given, the ``fewshot`` stage samples Meta-Dataset
        episodes (variable ways and shots) and evaluates on images
        (:mod:`ur_jax.evaluation.metadataset`) instead of fixed-shape feature episodes.
      val: ``{domain: source}`` of validation data (model selection), if any.
      val_fewshot, val_fewshot_specs: ``{domain: source}`` and ``{domain: SplitSpec}`` of the
        validation classes of each training domain, when they are new classes (Meta-Dataset's
        ``valid`` split): model selection then scores NCC on episodes of them
        (:func:`ur_jax.evaluation.metadataset.validation_accuracy`) instead of ``val``.
      train_transform: ``{domain: fn(record, rng) -> {'image': uint8, 'label'}}``, the
        per-domain training augmentation; ``None``: ``config.augment`` for every domain.
      eval_transform: ``{domain: fn(record) -> record}`` applied before evaluation.
      normalization: ``{domain: Normalization}``; ``None``: images to [-1, 1].
      image_shapes: ``{domain: (H, W, C)}`` where domains differ (else ``image_shape``).
      test_labelled: ``{domain: bool}``: whether the test split has labels (a challenge
        test set may not); ``None``: all labelled.
      export_predictions: ``fn({domain: (image_ids, labels)}, path) -> path`` writing test
        predictions in the dataset's submission format, if it has one.
    """

    train: Mapping[str, Any]
    test: Mapping[str, Any]
    num_classes: Mapping[str, int]
    image_shape: tuple[int, int, int]
    fewshot: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fewshot_specs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    val: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    val_fewshot: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    val_fewshot_specs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_transform: Mapping[str, Callable[..., Any]] | None = None
    eval_transform: Mapping[str, Callable[..., Any]] | None = None
    normalization: Mapping[str, Any] | None = None
    image_shapes: Mapping[str, tuple[int, int, int]] | None = None
    test_labelled: Mapping[str, bool] | None = None
    export_predictions: Callable[..., Any] | None = None

    def shape(self, domain: str) -> tuple[int, int, int]:
        """The ``(H, W, C)`` of ``domain``'s (preprocessed) images."""
        if self.image_shapes and domain in self.image_shapes:
            return tuple(self.image_shapes[domain])
        return tuple(self.image_shape)

    def normalize(self, domain: str) -> Any:
        """``domain``'s :class:`~ur_jax.data.pipeline.Normalization`."""
        from ur_jax.data.pipeline import Normalization

        return (self.normalization or {}).get(domain, Normalization())

    def labelled(self, domain: str) -> bool:
        """Whether ``domain``'s test split has labels."""
        return True if self.test_labelled is None else bool(self.test_labelled[domain])

    def inputs(self, names: Mapping[str, str]) -> dict[str, Any]:
        """Per-domain input settings keyed by model domain; ``names``: ``{model domain: data
        domain}`` (a teacher's head is ``'teacher'`` while it trains). Keys: ``'shapes'``
        (``(H, W, C)``), ``'normalize'`` (:class:`~ur_jax.data.pipeline.Normalization`), and
        ``'augment'`` / ``'transform'`` when the data has train / eval transforms."""
        out: dict[str, Any] = {"shapes": {m: self.shape(d) for m, d in names.items()},
                               "normalize": {m: self.normalize(d) for m, d in names.items()}}
        if self.train_transform is not None:
            out["augment"] = {m: self.train_transform[d] for m, d in names.items()}
        if self.eval_transform is not None:
            out["transform"] = {m: self.eval_transform[d] for m, d in names.items()}
        return out


def register(name: str, loader: ClassificationLoader) -> None:
    """Makes ``config.dataset = name`` use ``loader(config)``."""
    if name in _LOADERS:
        raise ValueError(f"A dataset loader named {name!r} is already registered.")
    _LOADERS[name] = loader


def manual_dir(config) -> str | None:
    """``config.manual_dir`` (a key of the suites that read manual downloads) as an absolute
    path; ``None`` if ``''`` (fine once prepared)."""
    path = config.manual_dir
    return os.path.abspath(os.path.expanduser(path)) if path else None


def data_dir(config) -> str:
    """Where prepared TFDS data lives: ``config.data_dir``, else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets``."""
    path = config.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(path))


def load_classification(config) -> ClassificationData:
    """The :class:`ClassificationData` for ``config.dataset``, restricted to
    ``config.domains`` (and ``config.fewshot.domains`` when the ``fewshot`` stage runs)."""
    import_suites()
    try:
        loader = _LOADERS[config.dataset]
    except KeyError:
        raise ValueError(f"Unknown dataset {config.dataset!r}; known: {datasets()}.") from None
    return loader(config)


def datasets() -> list[str]:
    """The names ``config.dataset`` may take in a classification config."""
    import_suites()
    return sorted(_LOADERS)


# ----------------------------------------------------------------------------- dense tasks

DenseLoader = Callable[[Any], "DenseData"]
_DENSE_LOADERS: dict[str, DenseLoader] = {}


@dataclasses.dataclass(frozen=True)
class DenseData:
    """The sources of a multi-task dense-prediction dataset.

    Attributes:
      train, test: random-access sources of dense records (``image``, ``semantic``,
        ``depth``, ``normal``; see :mod:`ur_jax.suites.dense`).
      tasks: the tasks the dataset has, e.g. ``('semantic', 'depth', 'normal')``.
      num_classes: semantic classes.
      image_shape: ``(H, W, 3)``.
      depth_kind: ``'depth'`` (metric depth: divided by the scale-crop factor) or
        ``'inverse_depth'`` (multiplied by it).
      reference: published single-task results ``{task: {metric: value}}`` to compute
        Delta_MTL against, if any.
      make_train_batches, make_eval_batches: the suite's batch pipelines (e.g.
        :func:`ur_jax.suites.dense.transforms.dense_train_batches` / ``dense_eval_batches``),
        used through :meth:`train_batches` / :meth:`eval_batches`.
    """

    train: Any
    test: Any
    tasks: tuple[str, ...]
    num_classes: int
    image_shape: tuple[int, int, int]
    depth_kind: str = "depth"
    reference: Mapping[str, Mapping[str, float]] | None = None
    make_train_batches: Callable[..., Any] | None = None
    make_eval_batches: Callable[..., Any] | None = None

    def train_batches(self, batch_size: int, seed: int, augment: bool, process_index: int = 0,
                      process_count: int = 1) -> Any:
        """Infinite training batches of the train split (``make_train_batches(train,
        batch_size, seed=, augment=, depth_kind=, process_index=, process_count=)``, the
        suite's pipeline; each process gets its part of every batch)."""
        return self.make_train_batches(self.train, batch_size, seed=seed, augment=augment,
                                       depth_kind=self.depth_kind, process_index=process_index,
                                       process_count=process_count)

    def eval_batches(self, batch_size: int, limit: int | None = None, process_index: int = 0,
                     process_count: int = 1) -> Any:
        """The test split once, in padded batches (``make_eval_batches(test, batch_size,
        limit=, process_index=, process_count=)``; each process gets its part of every
        batch)."""
        return self.make_eval_batches(self.test, batch_size, limit=limit,
                                      process_index=process_index, process_count=process_count)


def register_dense(name: str, loader: DenseLoader) -> None:
    """Makes ``config.dataset = name`` (in a dense config) use ``loader(config)``."""
    if name in _DENSE_LOADERS:
        raise ValueError(f"A dense dataset loader named {name!r} is already registered.")
    _DENSE_LOADERS[name] = loader


def dense_datasets() -> list[str]:
    """The names ``config.dataset`` may take in a dense config."""
    import_suites()
    return sorted(_DENSE_LOADERS)


def load_dense(config) -> DenseData:
    """The :class:`DenseData` for ``config.dataset`` (prepared on first use)."""
    import_suites()
    try:
        loader = _DENSE_LOADERS[config.dataset]
    except KeyError:
        raise ValueError(f"Unknown dense dataset {config.dataset!r}; known: "
                         f"{dense_datasets()}.") from None
    return loader(config)


# ----------------------------------------------------------------------------- known suites

SUITES: tuple[str, ...] = (
    "embedded",
    "dense",
    "decathlon",
    "metadataset",
)
"""The benchmark suites whose loaders are registered on first lookup: ``ur_jax.suites.<name>.
register`` is imported for each (adding a suite: its folder plus one line here)."""


def import_suites() -> None:
    """Imports ``ur_jax.suites.<name>.register`` for every name in :data:`SUITES` (each
    registers its loaders when first imported; later calls find them in ``sys.modules``)."""
    for name in SUITES:
        importlib.import_module(f"ur_jax.suites.{name}.register")
