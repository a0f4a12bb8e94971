"""Which data a config trains and evaluates on: dataset name -> per-domain sources.

``config.dataset`` names a loader registered here; each returns a
:class:`ClassificationData` of random-access sources (``tfds.data_source``) per domain.
Later datasets (the Decathlon, Meta-Dataset) register their own loaders with
:func:`register`.
"""

from __future__ import annotations

import dataclasses
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
    """

    train: Mapping[str, Any]
    test: Mapping[str, Any]
    num_classes: Mapping[str, int]
    image_shape: tuple[int, int, int]
    fewshot: Mapping[str, Any] = dataclasses.field(default_factory=dict)


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
    return ClassificationData(
        train={d: embedded.data_source(d, "train", root) for d in config.domains},
        test={d: embedded.data_source(d, "test", root) for d in config.domains},
        num_classes={d: embedded.NUM_CLASSES[d] for d in config.domains},
        image_shape=tuple(embedded.IMAGE_SHAPE),
        fewshot={d: embedded.data_source(d, "test", root) for d in fewshot})


register("embedded", _embedded)
