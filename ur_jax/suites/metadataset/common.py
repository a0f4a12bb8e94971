"""Meta-Dataset facts shared by every reader: sources, official class splits, the image size,
and :class:`ClassSource`, the one shape in which every origin of a source (official converted
records, TFDS's own builders, raw manual downloads) reaches the ``ur_metadataset`` builder.

Facts from PAPER.md §3 and the Meta-Dataset paper (Triantafillou et al., ICLR 2020).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ur_jax.data.episodes import EpisodeError

#: Every Meta-Dataset source, in the paper's table order (official names).
SOURCES = ("ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi",
           "vgg_flower", "traffic_sign", "mscoco", "mnist", "cifar10", "cifar100")
#: The eight sources with training classes (the "seen" domains of URL).
TRAIN_SOURCES = SOURCES[:8]
#: Sources evaluated only (no training classes): the "unseen" domains.
UNSEEN_SOURCES = SOURCES[8:]
#: ``{source: (train, valid, test)}`` class counts of the official splits.
CLASS_SPLITS: dict[str, tuple[int, int, int]] = {
    "ilsvrc_2012": (712, 158, 130),
    "omniglot": (883, 81, 659),
    "aircraft": (70, 15, 15),
    "cu_birds": (140, 30, 30),
    "dtd": (33, 7, 7),
    "quickdraw": (241, 52, 52),
    "fungi": (994, 200, 200),
    "vgg_flower": (71, 15, 16),
    "traffic_sign": (0, 0, 43),
    "mscoco": (0, 40, 40),
    "mnist": (0, 0, 10),
    "cifar10": (0, 0, 10),
    "cifar100": (0, 0, 100),
}
#: Omniglot's alphabets per split (train, valid, test).
OMNIGLOT_ALPHABETS = (25, 5, 20)
#: The splits, in class-id order (a source's class ids are its train classes, then its valid
#: classes, then its test classes).
SPLITS = ("train", "valid", "test")
#: Images are resized (bilinear) to ``IMAGE_SIZE x IMAGE_SIZE`` RGB and fed in [-1, 1].
IMAGE_SIZE = 84
#: Short names of the paper's tables.
SHORT_NAMES = {"ilsvrc_2012": "ImNet", "omniglot": "Omni", "aircraft": "Airc",
               "cu_birds": "Birds", "dtd": "Text", "quickdraw": "QDraw", "fungi": "Fungi",
               "vgg_flower": "Flwr", "traffic_sign": "Traffic", "mscoco": "COCO",
               "mnist": "MNIST", "cifar10": "C10", "cifar100": "C100"}


class MetaDatasetError(EpisodeError):
    """A Meta-Dataset source cannot be read: says what was expected, what was found and how
    to fix it."""


def check_source(source: str) -> str:
    """Returns ``source`` if it is one of :data:`SOURCES`, else raises MetaDatasetError."""
    if source not in SOURCES:
        raise MetaDatasetError(f"Unknown Meta-Dataset source {source!r}; expected one of "
                               f"{list(SOURCES)}.")
    return source


def check_split(split: str) -> str:
    """Returns ``split`` if it is one of :data:`SPLITS` (``'val'`` means ``'valid'``)."""
    split = {"val": "valid", "validation": "valid"}.get(split, split)
    if split not in SPLITS:
        raise MetaDatasetError(f"Unknown split {split!r}; expected one of {list(SPLITS)}.")
    return split


def split_class_range(source: str, split: str,
                      classes_per_split: Sequence[int] | None = None) -> range:
    """The global class ids of ``split`` of ``source``: under the official split, or under
    ``classes_per_split`` ``(train, valid, test)`` when given (e.g. a small fake source)."""
    n = tuple(classes_per_split or CLASS_SPLITS[check_source(source)])
    i = SPLITS.index(check_split(split))
    start = sum(n[:i])
    return range(start, start + n[i])


@dataclasses.dataclass(frozen=True)
class ClassSource:
    """One Meta-Dataset source as classes in official order, each with a way to read its
    images. Every origin of the data (the official converted records, TFDS's builders, raw
    manual downloads) produces one of these; the ``ur_metadataset`` TFDS builder consumes it.

    Attributes:
      name: the source, one of :data:`SOURCES`.
      class_names: every class, indexed by global class id: the split's train classes first,
        then valid, then test (:func:`split_class_range`).
      classes_per_split: ``(train, valid, test)`` class counts; ``None``: the official ones
        (:data:`CLASS_SPLITS`). Fakes may have fewer classes; real data has the official counts.
      images: ``images(class_id)`` yields that class's images in a fixed order, each a uint8
        ``(H, W)`` / ``(H, W, C)`` array or encoded image bytes that PIL can open.
      superclasses: Omniglot only: ``{split: [[class ids of alphabet 0], ...]}`` (global ids).
      hierarchy: ImageNet only: ``{split: [[leaf class ids spanned by internal node 0], ...]}``
        (global ids), every internal node of the split's WordNet subgraph.
      images_per_class: ``{class_id: count}`` when known without reading the images.
    """

    name: str
    class_names: Sequence[str]
    images: Callable[[int], Iterable[np.ndarray | bytes]]
    classes_per_split: tuple[int, int, int] | None = None
    superclasses: Mapping[str, Sequence[Sequence[int]]] | None = None
    hierarchy: Mapping[str, Sequence[Sequence[int]]] | None = None
    images_per_class: Mapping[int, int] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_source(self.name)
        split = self.splits
        if len(split) != 3 or any(int(n) < 0 for n in split):
            raise MetaDatasetError(f"{self.name}: classes_per_split must be three counts "
                                   f"(train, valid, test); found {split}.")
        if len(self.class_names) != sum(split):
            raise MetaDatasetError(
                f"{self.name}: classes_per_split {split} (train, valid, test) sums to "
                f"{sum(split)} classes, but {len(self.class_names)} class names were given.")

    @property
    def splits(self) -> tuple[int, int, int]:
        """``(train, valid, test)`` class counts."""
        return tuple(int(n) for n in (self.classes_per_split or CLASS_SPLITS[self.name]))

    @property
    def official(self) -> bool:
        """Whether the class counts are the official split's."""
        return self.splits == CLASS_SPLITS[self.name]
