"""Which data a config trains and evaluates on: dataset name -> sources.

``config.dataset`` names a loader registered here. Classification loaders return a
:class:`ClassificationData` of random-access sources (``tfds.data_source``) per domain;
``'decathlon'`` is the Visual Decathlon, ``'metadataset'`` Meta-Dataset; later datasets register
theirs with :func:`register`.
Dense loaders (``scenes``, ``nyuv2``, ``cityscapes7``, ``cityscapes19``) return a
:class:`DenseData`; add one with :func:`register_dense`.
"""

from __future__ import annotations

import dataclasses
import functools
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


def register(name: str, loader: ClassificationLoader) -> None:
    """Makes ``config.dataset = name`` use ``loader(config)``."""
    if name in _LOADERS:
        raise ValueError(f"A dataset loader named {name!r} is already registered.")
    _LOADERS[name] = loader


def data_dir(config) -> str:
    """Where prepared TFDS data lives: ``config.data_dir``, else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets``."""
    path = config.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(path))


def load_classification(config) -> ClassificationData:
    """The :class:`ClassificationData` for ``config.dataset``, restricted to
    ``config.domains`` (and ``config.fewshot.domains`` when the ``fewshot`` stage runs)."""
    try:
        loader = _LOADERS[config.dataset]
    except KeyError:
        raise ValueError(f"Unknown dataset {config.dataset!r}; known: {sorted(_LOADERS)}.") from None
    return loader(config)


def _embedded(config) -> ClassificationData:
    from ur_jax.data import embedded

    fewshot = tuple(config.fewshot.domains) if "fewshot" in config.stages else ()
    for group, valid in ((tuple(config.domains), embedded.TRAIN_DOMAINS + embedded.FEWSHOT_DOMAINS),
                         (fewshot, embedded.ALL_DOMAINS)):
        unknown = [d for d in group if d not in valid]
        if unknown:
            raise ValueError(f"Unknown embedded domain(s) {unknown}; available: {list(valid)}.")
    root = data_dir(config)
    embedded.prepare(root, tuple(config.domains) + fewshot)
    train = {d: embedded.data_source(d, "train", root) for d in config.domains}
    val = {}
    holdout = int(config.get("holdout_per_class") or 0)
    if holdout:  # a validation split carved from train, for choosing hyperparameters
        from ur_jax.data.pipeline import holdout_split

        for d in config.domains:
            train[d], val[d] = holdout_split(train[d], holdout, seed=0)
    return ClassificationData(
        train=train,
        test={d: embedded.data_source(d, "test", root) for d in config.domains},
        num_classes={d: embedded.NUM_CLASSES[d] for d in config.domains},
        image_shape=tuple(embedded.IMAGE_SHAPE),
        fewshot={d: embedded.data_source(d, "test", root) for d in fewshot},
        val=val)


register("embedded", _embedded)


def _decathlon(config) -> ClassificationData:
    """The Visual Decathlon (:mod:`ur_jax.data.decathlon`): built from the local
    ``decathlon-1.0/`` in ``config.manual_dir`` (``config.decathlon_source='manual'``), or
    TFDS's ``visual_domain_decathlon`` (``'tfds'``, downloads).

    ``config.train_split``: ``'train'`` (default) or ``'train+val'`` (the union the paper's
    Table 2 models train on; the runner then selects no model on validation).
    ``config.decathlon_normalization``: ``'published'`` (default: the fixed per-domain
    constants :data:`ur_jax.data.decathlon.MEAN_STD`, as the authors) or ``'estimated'``
    (measured on the prepared train images; manual source only)."""
    from ur_jax.data import decathlon

    domains = tuple(config.domains)
    unknown = [d for d in domains if d not in decathlon.DOMAINS]
    if unknown:
        raise ValueError(f"Unknown Decathlon domain(s) {unknown}; available: "
                         f"{list(decathlon.DOMAINS)}.")
    train_split = config.get("train_split") or "train"
    if train_split not in ("train", decathlon.TRAIN_VAL):
        raise ValueError(f"config.train_split={train_split!r}; expected 'train' (validation "
                         f"selects the model) or {decathlon.TRAIN_VAL!r} (the paper's Table 2 "
                         "protocol: train on both, keep the last model).")
    stats = config.get("decathlon_normalization") or "published"
    if stats not in decathlon.NORMALIZATIONS:
        raise ValueError(f"config.decathlon_normalization={stats!r}; expected one of "
                         f"{list(decathlon.NORMALIZATIONS)}.")
    root = data_dir(config)
    kind = config.get("decathlon_source") or "manual"
    if kind == "manual":
        decathlon.prepare(_manual_dir(config), root, domains)
        source = functools.partial(decathlon.data_source, data_dir=root)
        meta = {d: decathlon.metadata(d, root) for d in domains}
        num_classes = {d: len(meta[d]["category_ids"]) for d in domains}
        labelled = {d: bool(meta[d]["test_labels"]) for d in domains}
        normalization = {d: decathlon.normalization(d, root, stats) for d in domains}

        def export(predictions, path):
            return decathlon.export_predictions(predictions, root, path)
    elif kind == "tfds":
        if stats != "published":
            raise ValueError("config.decathlon_normalization='estimated' needs the manual "
                             "source (config.decathlon_source='manual'), whose builder measures "
                             "the mean/std; use 'published' with 'tfds'.")
        source = functools.partial(decathlon.tfds_source, data_dir=root)
        num_classes = {d: decathlon.NUM_CLASSES[d] for d in domains}
        labelled = {d: False for d in domains}  # TFDS's test split has no labels
        normalization = {d: decathlon.normalization(d) for d in domains}
        export = None
    else:
        raise ValueError(f"config.decathlon_source={kind!r}; expected 'manual' (a local "
                         f"decathlon-1.0/ in config.manual_dir) or 'tfds'.")
    return ClassificationData(
        train={d: source(d, train_split) for d in domains},
        test={d: source(d, "test") for d in domains},
        val={d: source(d, "val") for d in domains},
        num_classes=num_classes,
        image_shape=decathlon.image_shape(domains[0]),
        image_shapes={d: decathlon.image_shape(d) for d in domains},
        train_transform={d: decathlon.train_transform(d) for d in domains},
        eval_transform={d: decathlon.eval_transform(d) for d in domains},
        normalization=normalization, test_labelled=labelled, export_predictions=export)


register("decathlon", _decathlon)


def _metadataset(config) -> ClassificationData:
    """Meta-Dataset (:mod:`ur_jax.data.metadataset`): the training classes of each training
    source (``config.domains``) for the classifiers, and the ``config.fewshot.split``
    (default ``'test'``) classes of each ``config.fewshot.domains`` source for the episodes.
    Sources are built on first use from ``config.metadataset.origin``: ``'records'`` (the
    official converted records in ``records_dir``), ``'manual'`` (raw downloads in
    ``manual_dir``) or ``'tfds'`` (TFDS's own builders), or a mapping ``{source: origin}``."""
    from ur_jax.data import metadataset as md

    m = config.metadataset
    domains = tuple(config.domains)
    fewshot = tuple(config.fewshot.domains) if "fewshot" in config.stages else ()
    for group, valid, what in ((domains, md.TRAIN_SOURCES, "training"),
                               (fewshot, md.SOURCES, "few-shot")):
        unknown = [d for d in group if d not in valid]
        if unknown:
            raise ValueError(f"Unknown Meta-Dataset {what} source(s) {unknown}; available: "
                             f"{list(valid)}.")
    root = data_dir(config)
    origin = m.origin.to_dict() if hasattr(m.origin, "to_dict") else m.origin

    def path(key):
        value = m.get(key) or ""
        return os.path.abspath(os.path.expanduser(value)) if value else None

    md.prepare(tuple(dict.fromkeys(domains + fewshot)), root, origin=origin,
               records_dir=path("records_dir"), manual_dir=path("manual_dir"),
               tfds_data_dir=path("tfds_data_dir"))
    split = config.fewshot.get("split") or "test"
    shape = (md.IMAGE_SIZE, md.IMAGE_SIZE, 3)
    # the validation classes of the training sources: episodic model selection
    valid = tuple(d for d in domains if md.num_classes(d, "valid", root) > 0)
    return ClassificationData(
        train={d: md.data_source(d, "train", root) for d in domains},
        test={},
        num_classes={d: md.num_classes(d, "train", root) for d in domains},
        image_shape=shape,
        fewshot={d: md.data_source(d, split, root) for d in fewshot},
        fewshot_specs={d: md.split_spec(d, split, root) for d in fewshot},
        val_fewshot={d: md.data_source(d, "valid", root) for d in valid},
        val_fewshot_specs={d: md.split_spec(d, "valid", root) for d in valid})


register("metadataset", _metadataset)


# ----------------------------------------------------------------------------- dense tasks

DenseLoader = Callable[[Any], "DenseData"]
_DENSE_LOADERS: dict[str, DenseLoader] = {}


@dataclasses.dataclass(frozen=True)
class DenseData:
    """The sources of a multi-task dense-prediction dataset.

    Attributes:
      train, test: random-access sources of dense records (``image``, ``semantic``,
        ``depth``, ``normal``; see :mod:`ur_jax.data.dense`).
      tasks: the tasks the dataset has, e.g. ``('semantic', 'depth', 'normal')``.
      num_classes: semantic classes.
      image_shape: ``(H, W, 3)``.
      depth_kind: ``'depth'`` (metric depth: divided by the scale-crop factor) or
        ``'inverse_depth'`` (multiplied by it).
      reference: published single-task results ``{task: {metric: value}}`` to compute
        Delta_MTL against, if any.
    """

    train: Any
    test: Any
    tasks: tuple[str, ...]
    num_classes: int
    image_shape: tuple[int, int, int]
    depth_kind: str = "depth"
    reference: Mapping[str, Mapping[str, float]] | None = None


def register_dense(name: str, loader: DenseLoader) -> None:
    """Makes ``config.dataset = name`` (in a dense config) use ``loader(config)``."""
    if name in _DENSE_LOADERS:
        raise ValueError(f"A dense dataset loader named {name!r} is already registered.")
    _DENSE_LOADERS[name] = loader


def dense_datasets() -> list[str]:
    """The names ``config.dataset`` may take in a dense config."""
    return sorted(_DENSE_LOADERS)


def load_dense(config) -> DenseData:
    """The :class:`DenseData` for ``config.dataset`` (prepared on first use)."""
    try:
        loader = _DENSE_LOADERS[config.dataset]
    except KeyError:
        raise ValueError(f"Unknown dense dataset {config.dataset!r}; known: "
                         f"{dense_datasets()}.") from None
    return loader(config)


def _manual_dir(config) -> str | None:
    """``config.manual_dir`` as an absolute path; ``None`` if unset (fine once prepared)."""
    path = config.get("manual_dir") or ""
    return os.path.abspath(os.path.expanduser(path)) if path else None


def _scenes(config) -> DenseData:
    from ur_jax.data import scenes

    root = data_dir(config)
    variant = config.get("scenes_config") or "default"  # 'tiny': 24 / 8 images, for tests
    scenes.prepare(root, variant)
    return DenseData(train=scenes.data_source("train", root, variant),
                     test=scenes.data_source("test", root, variant),
                     tasks=tuple(scenes.TASKS), num_classes=scenes.NUM_CLASSES,
                     image_shape=tuple(scenes.IMAGE_SHAPE))


def _mtan(name: str, depth_kind: str, reference=None) -> DenseLoader:
    def load(config) -> DenseData:
        from ur_jax.data import dense

        root = data_dir(config)
        dense.prepare_dense(name, _manual_dir(config), root)
        train = dense.dense_source(name, "train", root)
        example = train[0]
        return DenseData(train=train, test=dense.dense_source(name, "test", root),
                         tasks=tuple(dense.TASKS[name]), num_classes=dense.NUM_CLASSES[name],
                         image_shape=tuple(example["image"].shape), depth_kind=depth_kind,
                         reference=reference() if reference else None)

    return load


def _nyuv2_reference():
    from ur_jax.evaluation import dense as dense_eval

    return dense_eval.NYUV2_STL_REFERENCE


register_dense("scenes", _scenes)
register_dense("nyuv2", _mtan("nyuv2", "depth", _nyuv2_reference))
register_dense("cityscapes7", _mtan("cityscapes7", "inverse_depth"))
register_dense("cityscapes19", _mtan("cityscapes19", "inverse_depth"))
