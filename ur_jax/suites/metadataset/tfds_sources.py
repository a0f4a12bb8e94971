"""Meta-Dataset sources read from TFDS's own builders, with the official class order and splits.

Ten of the thirteen sources exist in TFDS (:data:`TFDS_NAMES`). Building them needs TensorFlow
and internet access (ImageNet also a manual download), but once they are prepared as ArrayRecord
they are read here without TensorFlow (``builder.as_data_source`` with the images left encoded,
``tfds.decode.SkipDecoding``). Every rule below is that of the official conversion,
google-research/meta-dataset ``meta_dataset/dataset_conversion/dataset_to_records.py`` (the
converters named in brackets; the newer TFDS port of the same rules is
``meta_dataset/data/tfds/example_generators.py``), and for MNIST / CIFAR of the CNAPs script
``prepare_extra_datasets.py`` that the paper's numbers come from:

==============  ======================  ===========================================================
source          TFDS name (splits)      official classes, split and images
==============  ======================  ===========================================================
omniglot        omniglot                [OmniglotConverter] class ``'<alphabet>-characterNN'``;
                (train, test)           train = background alphabets (TFDS ``train``) sorted,
                                        without the 5 validation alphabets
                                        (:data:`OMNIGLOT_VALID_ALPHABETS`, in that order) which
                                        form valid; test = evaluation alphabets (TFDS ``test``)
                                        sorted; characters sorted within an alphabet; images
                                        inverted (``ImageOps.invert``); alphabets are the
                                        superclasses (25 / 5 / 20, classes 883 / 81 / 659).
cu_birds        caltech_birds2011       [CUBirdsConverter] ``classes.txt`` order (= TFDS label),
                (train, test)           names ``'001.Black_footed_Albatross'`` (taken from the
                                        ``image/filename`` folder); random split 140 / 30 / 30;
                                        all 11,788 images, sorted by file name, not cropped.
dtd             dtd                     [DTDConverter] class folders sorted; random split
                (train, validation,     33 / 7 / 7; all 5,640 images (the union of the three
                test)                   TFDS splits) sorted by file name.
quickdraw       quickdraw_bitmap        [QuickdrawConverter] ``.npy`` names sorted (Python order:
                (train)                 ``'The Eiffel Tower'`` first); split
                                        ``int(0.7 n)`` / ``int(0.85 n) - int(0.7 n)`` / rest =
                                        241 / 52 / 52; 28 x 28 grey images made RGB.
vgg_flower      oxford_flowers102       [VGGFlowerConverter] label ``l`` is ``'%03d.%s' %
                (train, validation,     (l + 1, name)``; random split 71 / 15 / 16; all 8,189
                test)                   images in ``image_NNNNN.jpg`` order.
mscoco          coco/2017 (train)       [MSCOCOConverter] the 80 categories of
                                        ``instances_train2017.json`` in file order; random split
                                        0 / 40 / 40; one image per annotation (crowd ones
                                        included): the box grown 1.2 times about its centre,
                                        clipped, cropped (:func:`coco_crop_box`).
mnist           mnist (test)            [CNAPs] classes ``'class_<digit>'`` sorted, all test;
                                        images made RGB and LANCZOS-resized to 84 x 84.
cifar10 / 100   cifar10 / cifar100      [CNAPs] label names sorted (fine labels), all test;
                (test)                  images LANCZOS-resized to 84 x 84.
ilsvrc_2012     imagenet2012 (train)    [ImageNetConverter] WordNet split 712 / 158 / 130 (needs
                                        the official ``dataset_spec.json``: class order, split and
                                        hierarchy, :func:`load_ilsvrc_2012_spec`); the ILSVRC
                                        train images sorted by file name, without the duplicates
                                        of Caltech-101/256 and CUB (:func:`read_duplicates`).
==============  ======================  ===========================================================

Random splits use :func:`ur_jax.suites.metadataset.raw.gen_rand_split_inds` (``np.random.seed(22)``
then two ``choice(..., replace=False)`` draws); with the real class counts they reproduce the
official ``splits/*_splits.json`` exactly. Every image goes through
:func:`ur_jax.suites.metadataset.raw.process_image`, which keeps a stored JPEG's bytes when the
converter would and otherwise re-encodes as the converter does (``jpeg=False``: uint8 arrays).

Where TFDS does not keep what fixes the official order *within* a class, records keep their
TFDS order: Omniglot (the official order is by drawer, ``0709_01.png``...), QuickDraw (the
``.npy`` row order), MNIST / CIFAR (sorted PNG names) and MS-COCO (the JSON order of the
annotations; here by annotation id). Episodes sample images at random within a class, so only
the class order and split matter for results.

The per-source logic is in pure functions of TFDS-like records (:func:`class_source_from_records`:
``{split: sequence of {'image', 'label', ...}}`` plus the label names), tested with fakes;
:func:`tfds_class_source` only opens the prepared TFDS dataset. Each TFDS split is scanned once
to index the records by class (images are not decoded then); ``images(class_id)`` then reads
that class's records by index.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ur_jax.data import tfds_helper
from ur_jax.suites.metadataset.common import (
    CLASS_SPLITS,
    SPLITS,
    ClassSource,
    MetaDatasetError,
    check_source,
)
from ur_jax.suites.metadataset.raw import (
    MANUAL_SOURCES,
    process_image,
    split_counts,
    split_order,
)

__all__ = [
    "COCO_BOX_SCALE",
    "EXTRA_IMAGE_SIZE",
    "OMNIGLOT_VALID_ALPHABETS",
    "TFDS_NAMES",
    "TFDS_SPLITS",
    "IlsvrcSpec",
    "class_source_from_records",
    "coco_crop_box",
    "load_ilsvrc_2012_spec",
    "read_duplicates",
    "tfds_class_source",
]

logger = logging.getLogger(__name__)

TFDS_NAMES: dict[str, str] = {
    "ilsvrc_2012": "imagenet2012", "omniglot": "omniglot", "cu_birds": "caltech_birds2011",
    "dtd": "dtd", "quickdraw": "quickdraw_bitmap", "vgg_flower": "oxford_flowers102",
    "mscoco": "coco/2017", "mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100",
}
"""Meta-Dataset source -> TFDS dataset name."""

TFDS_SPLITS: dict[str, tuple[str, ...]] = {
    "ilsvrc_2012": ("train",), "omniglot": ("train", "test"), "cu_birds": ("train", "test"),
    "dtd": ("train", "validation", "test"), "quickdraw": ("train",),
    "vgg_flower": ("train", "validation", "test"), "mscoco": ("train",), "mnist": ("test",),
    "cifar10": ("test",), "cifar100": ("test",),
}
"""The TFDS splits whose union is the official source's images."""

OMNIGLOT_VALID_ALPHABETS: tuple[str, ...] = (
    "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)", "Tagalog", "Alphabet_of_the_Magi")
"""The 5 smallest background alphabets, the official validation alphabets, in class-id order."""

COCO_BOX_SCALE = 1.2
"""``MSCOCOConverter(box_scale_ratio=1.2)``: boxes grow 1.2 times about their centre."""

EXTRA_IMAGE_SIZE = 84
"""CNAPs resizes MNIST / CIFAR images to 84 x 84 (LANCZOS) before conversion."""

_BUILD_NOTE = (
    "Build it once where TensorFlow and internet are available, as ArrayRecord: "
    "`tfds build {name} --data_dir={data_dir} --file_format=array_record` (or "
    "tfds.builder('{name}', data_dir=..., file_format='array_record').download_and_prepare()), "
    "then copy the data_dir here.")
_IMAGENET_NOTE = (
    " imagenet2012 also needs ILSVRC2012_img_train.tar (and ILSVRC2012_img_val.tar) downloaded "
    "by hand from https://image-net.org into the TFDS manual_dir (--manual_dir).")
_SPEC_NOTE = (
    "The WordNet class split of ilsvrc_2012 cannot be recomputed without the WordNet files, so "
    "the official ilsvrc_2012 dataset_spec.json is required: take "
    "meta_dataset/dataset_conversion/dataset_specs/ilsvrc_2012_dataset_spec.json from "
    "https://github.com/google-research/meta-dataset, or $RECORDS/ilsvrc_2012/dataset_spec.json "
    "of converted records, and pass its path as dataset_spec.")


# --------------------------------------------------------------------------- #
# Small record helpers.
# --------------------------------------------------------------------------- #

def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    return str(value)


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _scan(records: Sequence[Mapping[str, Any]], chunk: int = 256
          ) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(index, record)`` for every record, read in chunks where the source allows it."""
    n = len(records)
    getitems = getattr(records, "__getitems__", None)
    for start in range(0, n, chunk):
        idx = list(range(start, min(n, start + chunk)))
        batch = getitems(idx) if getitems is not None else [records[i] for i in idx]
        yield from zip(idx, batch)


def _field(source: str, split: str, index: int, record: Mapping[str, Any], key: str) -> Any:
    try:
        return record[key]
    except (KeyError, TypeError):
        keys = sorted(record) if isinstance(record, Mapping) else type(record).__name__
        raise MetaDatasetError(f"{source}: record {index} of TFDS split {split!r} has no "
                               f"{key!r}; found {keys}. Expected the features of "
                               f"TFDS's {TFDS_NAMES[source]}.") from None


def _label(source: str, split: str, index: int, record: Mapping[str, Any],
           num_labels: int, key: str = "label") -> int:
    label = int(np.asarray(_field(source, split, index, record, key)))
    if not 0 <= label < num_labels:
        raise MetaDatasetError(f"{source}: record {index} of TFDS split {split!r} has label "
                               f"{label}, outside the {num_labels} label names given.")
    return label


def _image_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of encoded bytes (header only) or of an array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(image))) as img:
            return img.size
    arr = np.asarray(image)
    return int(arr.shape[1]), int(arr.shape[0])


# --------------------------------------------------------------------------- #
# MS-COCO crops.
# --------------------------------------------------------------------------- #

def coco_crop_box(bbox: Sequence[float], width: int, height: int,
                  box_scale_ratio: float = COCO_BOX_SCALE) -> tuple[int, int, int, int] | None:
    """The official MS-COCO crop of one annotation (``MSCOCOConverter``).

    The COCO box ``(x, y, w, h)`` (pixels, top-left corner) grows ``box_scale_ratio`` times
    about its centre, then its half-integer corners become PIL's integer pixel box:
    ``xmin = max(round(x - 0.5), 0)``, ``xmax = min(round(x + w - 0.5) + 1, width)`` (and the
    same for y), with Python's ``round`` (halves to even), as the converter computes it.

    Args:
      bbox: ``(x, y, w, h)`` in pixels, as in ``instances_train2017.json``.
      width: image width in pixels.
      height: image height in pixels.
      box_scale_ratio: growth factor (>= 1; 1.2 officially).

    Returns:
      ``(xmin, ymin, xmax, ymax)`` for ``PIL.Image.crop``, or ``None`` when the crop is empty
      (the converter skips those annotations).

    Raises:
      MetaDatasetError: when ``box_scale_ratio < 1``.
    """
    if box_scale_ratio < 1.0:
        raise MetaDatasetError(f"box_scale_ratio must be >= 1.0; got {box_scale_ratio}.")
    x, y, w, h = (float(v) for v in bbox)
    x = x - 0.5 * w * (box_scale_ratio - 1.0)
    y = y - 0.5 * h * (box_scale_ratio - 1.0)
    w = w * box_scale_ratio
    h = h * box_scale_ratio
    xmin = max(round(x - 0.5), 0)
    ymin = max(round(y - 0.5), 0)
    xmax = min(round(x + w - 0.5) + 1, int(width))
    ymax = min(round(y + h - 0.5) + 1, int(height))
    if xmax - xmin <= 0 or ymax - ymin <= 0:
        return None
    return (xmin, ymin, xmax, ymax)


def _coco_pixels(bbox: Sequence[float], width: int, height: int) -> tuple[float, ...]:
    """TFDS's normalised ``(ymin, xmin, ymax, xmax)`` (float32) back to the JSON's
    ``(x, y, w, h)``: COCO gives boxes to two decimals, so rounding to two decimals recovers
    the file's numbers exactly (which matters at the ``round`` ties of :func:`coco_crop_box`)."""
    ymin, xmin, ymax, xmax = (float(v) for v in bbox)
    x = round(xmin * width, 2)
    y = round(ymin * height, 2)
    return (x, y, round(xmax * width - x, 2), round(ymax * height - y, 2))


# --------------------------------------------------------------------------- #
# ILSVRC-2012: the official dataset_spec.json and the duplicates lists.
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class IlsvrcSpec:
    """What the official ``ilsvrc_2012`` dataset specification fixes.

    Attributes:
      class_names: WordNet ids by global class id (train classes, then valid, then test).
      classes_per_split: ``(train, valid, test)`` class counts (712 / 158 / 130).
      hierarchy: ``{split: [[leaf class ids spanned by internal node 0], ...]}``, one list per
        internal node of the split's WordNet graph, nodes in WordNet id order.
      images_per_class: ``{class_id: count}`` from the spec (after the duplicates were
        removed), empty if the spec has none.
    """

    class_names: tuple[str, ...]
    classes_per_split: tuple[int, int, int]
    hierarchy: Mapping[str, Sequence[Sequence[int]]]
    images_per_class: Mapping[int, int]


def _spec_path(path: str | os.PathLike) -> Path:
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        for name in ("dataset_spec.json", "ilsvrc_2012_dataset_spec.json"):
            if (p / name).is_file():
                return p / name
        raise MetaDatasetError(f"No dataset_spec.json or ilsvrc_2012_dataset_spec.json in {p}."
                               f"\n{_SPEC_NOTE}")
    if not p.is_file():
        raise MetaDatasetError(f"ilsvrc_2012 dataset spec {p} does not exist.\n{_SPEC_NOTE}")
    return p


def load_ilsvrc_2012_spec(path: str | os.PathLike) -> IlsvrcSpec:
    """Reads the official ``ilsvrc_2012`` ``dataset_spec.json`` (a
    ``HierarchicalDatasetSpecification``): class order, split and WordNet hierarchy.

    The file is parsed and checked by :func:`ur_jax.suites.metadataset.records.read_dataset_spec`
    (the reader of official converted records), so both origins of ImageNet get the same class
    ids and hierarchy: ``class_names`` (``{"0": "n01440764", ...}``), ``split_subgraphs``
    (``{"TRAIN": [{"wn_id", "children_ids", "parents_ids"}, ...], "VALID", "TEST"}``; a split's
    classes are the leaves of its graph) and ``images_per_class``
    (``{"TRAIN": {wn_id: count}, ...}``).

    Args:
      path: the JSON file, or a folder holding ``dataset_spec.json`` /
        ``ilsvrc_2012_dataset_spec.json``.

    Returns:
      The :class:`IlsvrcSpec`.

    Raises:
      MetaDatasetError: when the file is missing or is not such a specification (the class ids
        of each split's leaves must be contiguous: train, then valid, then test).
    """
    from ur_jax.suites.metadataset.records import read_dataset_spec

    p = _spec_path(path)
    try:
        spec = read_dataset_spec(p)
    except MetaDatasetError as e:
        raise MetaDatasetError(f"{e}\n{_SPEC_NOTE}") from None
    if spec.kind != "HierarchicalDatasetSpecification" or spec.hierarchy is None:
        raise MetaDatasetError(f"{p} is a {spec.kind} (of {spec.name!r}), not the "
                               f"HierarchicalDatasetSpecification of ilsvrc_2012.\n{_SPEC_NOTE}")
    return IlsvrcSpec(class_names=tuple(spec.class_names),
                      classes_per_split=tuple(spec.classes_per_split),  # type: ignore[arg-type]
                      hierarchy=spec.hierarchy, images_per_class=dict(spec.images_per_class))


def read_duplicates(paths: Sequence[str | os.PathLike]) -> frozenset[str]:
    """File names to skip in ILSVRC-2012, from the official
    ``ImageNet_{Caltech101,Caltech256,CUBirds}_duplicates.txt`` files.

    Lines look like ``n01531178/n01531178_12730.JPEG  # American_Goldfinch_0062_31921.jpg``;
    lines starting with ``#`` are comments; the part before ``#`` is kept, reduced to its
    base name (``n01531178_12730.JPEG``), as the converter does.

    Args:
      paths: the duplicates files.

    Returns:
      The base names to skip.

    Raises:
      MetaDatasetError: when a file cannot be read.
    """
    names: set[str] = set()
    for path in paths:
        try:
            lines = Path(os.path.expanduser(os.fspath(path))).read_text().splitlines()
        except OSError as e:
            raise MetaDatasetError(f"Cannot read the ImageNet duplicates file {path}: {e}. "
                                   "Take it from meta_dataset/dataset_conversion/ of "
                                   "https://github.com/google-research/meta-dataset.") from None
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name = _basename(line.split("#")[0].strip())
            if name:
                names.add(name)
    return frozenset(names)


# --------------------------------------------------------------------------- #
# The per-source plans (pure functions of the records).
# --------------------------------------------------------------------------- #

Member = tuple[str, int, tuple[int, int, int, int] | None]  # (TFDS split, index, crop box)


@dataclasses.dataclass
class _Plan:
    class_names: list[str]
    counts: tuple[int, int, int]
    members: list[list[Member]]
    invert: bool = False
    resize: int | None = None
    superclasses: dict[str, list[list[int]]] | None = None
    hierarchy: Mapping[str, Sequence[Sequence[int]]] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def _check_nonempty(source: str, names: Sequence[str], members: Sequence[Sequence[Any]]
                    ) -> None:
    empty = [names[i] for i, m in enumerate(members) if not m]
    if empty:
        raise MetaDatasetError(f"{source}: {len(empty)} class(es) have no image in the TFDS "
                               f"splits {list(TFDS_SPLITS[source])}, e.g. {empty[:3]}. Is the "
                               "TFDS dataset complete?")


def _random_split(source: str, names: Sequence[str], members: Sequence[list[Member]],
                  classes_per_split: Sequence[int] | None) -> _Plan:
    """Classes listed in the converter's order (``names``) -> official class-id order."""
    _check_nonempty(source, names, members)
    counts = split_counts(source, len(names), classes_per_split)
    order = split_order(counts)  # (0, 0, n): the identity, as the test-only converters list
    return _Plan([names[i] for i in order], counts, [members[i] for i in order])


def _plan_omniglot(records: Mapping[str, Sequence[Mapping[str, Any]]],
                   label_names: Sequence[str], alphabet_names: Sequence[str] | None,
                   classes_per_split: Sequence[int] | None, **_: Any) -> _Plan:
    info: dict[int, tuple[str, int, str]] = {}
    members: dict[int, list[Member]] = defaultdict(list)
    for split in ("train", "test"):
        for i, r in _scan(records[split]):
            lab = _label("omniglot", split, i, r, len(label_names))
            alpha, _, char = label_names[lab].rpartition("_")
            if alphabet_names is not None and "alphabet" in r:
                alpha = alphabet_names[int(np.asarray(r["alphabet"]))]
            char_id = (int(np.asarray(r["alphabet_char_id"])) if "alphabet_char_id" in r
                       else int(char) if char.isdigit() else -1)
            if not alpha or char_id < 0:
                raise MetaDatasetError(
                    f"omniglot: cannot tell the alphabet and character of label {lab} "
                    f"({label_names[lab]!r}); expected TFDS's names '<alphabet>_<char index>' "
                    "or the 'alphabet' and 'alphabet_char_id' features.")
            key = (alpha, char_id, split)
            if info.setdefault(lab, key) != key:
                raise MetaDatasetError(f"omniglot: label {lab} is both {info[lab]} and {key}.")
            members[lab].append((split, i, None))
    background = sorted({a for a, _, s in info.values() if s == "train"})
    evaluation = sorted({a for a, _, s in info.values() if s == "test"})
    if set(background) & set(evaluation):
        raise MetaDatasetError(f"omniglot: alphabets in both TFDS splits: "
                               f"{sorted(set(background) & set(evaluation))}.")
    alphabets = {
        "train": [a for a in background if a not in OMNIGLOT_VALID_ALPHABETS],
        "valid": [a for a in OMNIGLOT_VALID_ALPHABETS if a in background],
        "test": evaluation,
    }
    by_alpha: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for lab, (alpha, char_id, _) in info.items():
        by_alpha[alpha].append((char_id, lab))
    names: list[str] = []
    ordered: list[list[Member]] = []
    superclasses: dict[str, list[list[int]]] = {}
    counts = []
    for split in SPLITS:
        groups = []
        for alpha in alphabets[split]:
            ids = []
            for char_id, lab in sorted(by_alpha[alpha]):
                ids.append(len(names))
                names.append(f"{alpha}-character{char_id + 1:02d}")
                ordered.append(members[lab])
            groups.append(ids)
        superclasses[split] = groups
        counts.append(sum(len(g) for g in groups))
    split = (counts[0], counts[1], counts[2])
    if classes_per_split is not None and tuple(classes_per_split) != split:
        raise MetaDatasetError(f"omniglot: the class split is fixed by the alphabets "
                               f"({split}); classes_per_split={tuple(classes_per_split)} cannot "
                               "change it.")
    if len(names) == sum(CLASS_SPLITS["omniglot"]) and split != CLASS_SPLITS["omniglot"]:
        logger.warning("omniglot: 1623 classes but split %s, not the official %s.", split,
                       CLASS_SPLITS["omniglot"])
    return _Plan(names, split, ordered, invert=True, superclasses=superclasses,
                 extra={"alphabets": alphabets})


_CUB_FOLDER = re.compile(r"^\d{3}\..+")


def _plan_cu_birds(records: Mapping[str, Sequence[Mapping[str, Any]]],
                   label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                   **_: Any) -> _Plan:
    n = len(label_names)
    names: list[str | None] = [None] * n
    keyed: list[list[tuple[str, Member]]] = [[] for _ in range(n)]
    for split in ("train", "test"):
        for i, r in _scan(records[split]):
            lab = _label("cu_birds", split, i, r, n)
            path = _text(r.get("image/filename", "")).replace("\\", "/")
            parts = path.split("/")
            if names[lab] is None:
                if len(parts) >= 2 and _CUB_FOLDER.match(parts[-2]):
                    names[lab] = parts[-2]
                elif r.get("label_name") is not None:
                    names[lab] = f"{lab + 1:03d}.{_text(r['label_name'])}"
            keyed[lab].append((parts[-1], (split, i, None)))
    full = [nm if nm is not None else f"{i + 1:03d}.{label_names[i]}"
            for i, nm in enumerate(names)]
    members = [[m for _, m in sorted(k, key=lambda t: t[0])] for k in keyed]
    return _random_split("cu_birds", full, members, classes_per_split)


def _sorted_by_file(source: str, records: Mapping[str, Sequence[Mapping[str, Any]]],
                    n: int, key: str = "file_name") -> list[list[Member]]:
    """Members per label sorted by file base name, each file once."""
    keyed: list[dict[str, Member]] = [{} for _ in range(n)]
    for split in TFDS_SPLITS[source]:
        for i, r in _scan(records[split]):
            lab = _label(source, split, i, r, n)
            name = _text(_field(source, split, i, r, key))
            keyed[lab].setdefault(name, (split, i, None))
    return [[m for _, m in sorted(k.items(), key=lambda t: (_basename(t[0]), t[0]))]
            for k in keyed]


def _plan_dtd(records: Mapping[str, Sequence[Mapping[str, Any]]],
              label_names: Sequence[str], classes_per_split: Sequence[int] | None,
              **_: Any) -> _Plan:
    members = _sorted_by_file("dtd", records, len(label_names))
    order = sorted(range(len(label_names)), key=lambda i: label_names[i])
    return _random_split("dtd", [label_names[i] for i in order], [members[i] for i in order],
                         classes_per_split)


def _plan_quickdraw(records: Mapping[str, Sequence[Mapping[str, Any]]],
                    label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                    **_: Any) -> _Plan:
    members: list[list[Member]] = [[] for _ in label_names]
    for i, r in _scan(records["train"]):
        members[_label("quickdraw", "train", i, r, len(label_names))].append(("train", i, None))
    order = sorted(range(len(label_names)), key=lambda i: label_names[i])
    return _random_split("quickdraw", [label_names[i] for i in order],
                         [members[i] for i in order], classes_per_split)


def _plan_vgg_flower(records: Mapping[str, Sequence[Mapping[str, Any]]],
                     label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                     **_: Any) -> _Plan:
    members = _sorted_by_file("vgg_flower", records, len(label_names))
    names = [f"{i + 1:03d}.{name}" for i, name in enumerate(label_names)]
    return _random_split("vgg_flower", names, members, classes_per_split)


def _plan_mscoco(records: Mapping[str, Sequence[Mapping[str, Any]]],
                 label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                 box_scale_ratio: float = COCO_BOX_SCALE, **_: Any) -> _Plan:
    n = len(label_names)
    keyed: list[list[tuple[tuple[int, int, int], Member]]] = [[] for _ in range(n)]
    skipped = 0
    for i, r in _scan(records["train"]):
        objects = _field("mscoco", "train", i, r, "objects")
        try:
            boxes = np.asarray(objects["bbox"], dtype=np.float64).reshape(-1, 4)
            labels = np.asarray(objects["label"]).reshape(-1)
        except (KeyError, TypeError, ValueError):
            raise MetaDatasetError(f"mscoco: record {i} has 'objects' without 'bbox' (n, 4) and "
                                   "'label' (n,); expected TFDS's coco/2017 features.") from None
        if not len(labels):
            continue
        ids = (np.asarray(objects["id"]).reshape(-1) if "id" in objects
               else np.arange(len(labels)))
        width, height = _image_size(_field("mscoco", "train", i, r, "image"))
        for j, (bbox, lab) in enumerate(zip(boxes, labels)):
            lab = int(lab)
            if not 0 <= lab < n:
                raise MetaDatasetError(f"mscoco: record {i} object {j} has label {lab}, outside "
                                       f"the {n} category names given.")
            box = coco_crop_box(_coco_pixels(bbox, width, height), width, height,
                                box_scale_ratio)
            if box is None:
                skipped += 1
                continue
            keyed[lab].append(((int(ids[j]), i, j), ("train", i, box)))
    if skipped:
        logger.info("mscoco: %d annotations give empty crops and are skipped, as officially.",
                    skipped)
    members = [[m for _, m in sorted(k, key=lambda t: t[0])] for k in keyed]
    return _random_split("mscoco", list(label_names), members, classes_per_split)


def _plan_extra(source: str, records: Mapping[str, Sequence[Mapping[str, Any]]],
                label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                **_: Any) -> _Plan:
    members: list[list[Member]] = [[] for _ in label_names]
    for i, r in _scan(records["test"]):
        members[_label(source, "test", i, r, len(label_names))].append(("test", i, None))
    names = ([f"class_{name}" for name in label_names] if source == "mnist"
             else list(label_names))
    order = sorted(range(len(names)), key=lambda i: names[i])
    plan = _random_split(source, [names[i] for i in order], [members[i] for i in order],
                         classes_per_split)
    plan.resize = EXTRA_IMAGE_SIZE
    return plan


def _plan_ilsvrc(records: Mapping[str, Sequence[Mapping[str, Any]]],
                 label_names: Sequence[str], classes_per_split: Sequence[int] | None,
                 ilsvrc_spec: IlsvrcSpec | None = None, skip_files: frozenset[str] = frozenset(),
                 **_: Any) -> _Plan:
    if ilsvrc_spec is None:
        raise MetaDatasetError(f"ilsvrc_2012: no dataset specification given. {_SPEC_NOTE}")
    spec = ilsvrc_spec
    if classes_per_split is not None and tuple(classes_per_split) != spec.classes_per_split:
        raise MetaDatasetError(f"ilsvrc_2012: the class split comes from the dataset spec "
                               f"({spec.classes_per_split}); classes_per_split="
                               f"{tuple(classes_per_split)} cannot change it.")
    class_of = {w: i for i, w in enumerate(spec.class_names)}
    missing = sorted(set(spec.class_names) - set(label_names))
    if missing:
        raise MetaDatasetError(f"ilsvrc_2012: {len(missing)} WordNet ids of the dataset spec are "
                               f"not TFDS labels, e.g. {missing[:5]}; the spec and the TFDS "
                               "dataset do not match.")
    label_to_class = [class_of.get(w, -1) for w in label_names]
    keyed: list[list[tuple[str, Member]]] = [[] for _ in spec.class_names]
    skipped = 0
    for i, r in _scan(records["train"]):
        cls = label_to_class[_label("ilsvrc_2012", "train", i, r, len(label_names))]
        if cls < 0:
            continue
        name = _basename(_text(_field("ilsvrc_2012", "train", i, r, "file_name")))
        if name in skip_files:
            skipped += 1
            continue
        keyed[cls].append((name, ("train", i, None)))
    members = [[m for _, m in sorted(k, key=lambda t: t[0])] for k in keyed]
    _check_nonempty("ilsvrc_2012", spec.class_names, members)
    differ = [i for i, m in enumerate(members)
              if i in spec.images_per_class and spec.images_per_class[i] != len(m)]
    if differ:
        logger.warning("ilsvrc_2012: %d classes have another image count than the dataset spec "
                       "(e.g. class %d: %d vs %d)%s.", len(differ), differ[0],
                       len(members[differ[0]]), spec.images_per_class[differ[0]],
                       "" if skip_files else "; no duplicates list was given")
    return _Plan(list(spec.class_names), spec.classes_per_split, members,
                 hierarchy=spec.hierarchy, extra={"skipped_duplicates": skipped})


_PLANS: dict[str, Callable[..., _Plan]] = {
    "omniglot": _plan_omniglot, "cu_birds": _plan_cu_birds, "dtd": _plan_dtd,
    "quickdraw": _plan_quickdraw, "vgg_flower": _plan_vgg_flower, "mscoco": _plan_mscoco,
    "ilsvrc_2012": _plan_ilsvrc,
    "mnist": lambda **kw: _plan_extra("mnist", **kw),
    "cifar10": lambda **kw: _plan_extra("cifar10", **kw),
    "cifar100": lambda **kw: _plan_extra("cifar100", **kw),
}


def _read_members(records: Mapping[str, Sequence[Mapping[str, Any]]],
                  members: Sequence[Member], chunk: int = 64
                  ) -> Iterator[tuple[Mapping[str, Any], tuple[int, int, int, int] | None]]:
    """The records of ``members`` in order, fetched in chunks of one split."""
    k = 0
    while k < len(members):
        split = members[k][0]
        end = k
        while end < len(members) and end - k < chunk and members[end][0] == split:
            end += 1
        part = members[k:end]
        src = records[split]
        getitems = getattr(src, "__getitems__", None)
        idx = [m[1] for m in part]
        batch = getitems(idx) if getitems is not None else [src[i] for i in idx]
        yield from zip(batch, (m[2] for m in part))
        k = end


def class_source_from_records(
        source: str, records: Mapping[str, Sequence[Mapping[str, Any]]],
        label_names: Sequence[str], *, classes_per_split: Sequence[int] | None = None,
        jpeg: bool = True, alphabet_names: Sequence[str] | None = None,
        ilsvrc_spec: IlsvrcSpec | None = None, skip_files: frozenset[str] = frozenset(),
        box_scale_ratio: float = COCO_BOX_SCALE) -> ClassSource:
    """A :class:`ClassSource` in official order from TFDS-like records (no TFDS needed).

    ``records`` maps each TFDS split of :data:`TFDS_SPLITS` to a random-access sequence of
    records with TFDS's features: ``'image'`` (encoded bytes or a uint8 array) and ``'label'``
    always; ``'file_name'`` (dtd, vgg_flower, ilsvrc_2012), ``'image/filename'`` (cu_birds),
    ``'alphabet'`` / ``'alphabet_char_id'`` (omniglot, optional: TFDS's label names
    ``'<alphabet>_<char>'`` suffice) and ``'objects'`` ``{'bbox': (n, 4) normalised ymin, xmin,
    ymax, xmax; 'label': (n,); 'id': (n,)}`` instead of ``'label'`` (mscoco). Each split is
    scanned once here to index the records by class; the images are read lazily by
    ``images(class_id)``.

    Args:
      source: a source of :data:`TFDS_NAMES`.
      records: ``{tfds split: records}``.
      label_names: TFDS's label names (coco: the object label names).
      classes_per_split: explicit counts for a fake with fewer classes (default: official,
        scaled for fewer classes; fixed for omniglot and ilsvrc_2012).
      jpeg: yield images as the official records hold them (JPEG bytes); False: uint8 arrays.
      alphabet_names: omniglot: names of the ``'alphabet'`` feature's values.
      ilsvrc_spec: ilsvrc_2012: the official specification (:func:`load_ilsvrc_2012_spec`).
      skip_files: ilsvrc_2012: file names to drop (:func:`read_duplicates`).
      box_scale_ratio: mscoco: box growth factor (1.2 officially).

    Returns:
      The :class:`ClassSource` (omniglot with ``superclasses``, ilsvrc_2012 with
      ``hierarchy``), ``images_per_class`` filled in.

    Raises:
      MetaDatasetError: for a source TFDS does not have, a missing split or feature, a label
        outside ``label_names``, a class without images, or an inconsistent specification.
    """
    check_source(source)
    if source not in _PLANS:
        raise MetaDatasetError(f"{source!r} has no TFDS builder here; read it from its raw "
                               "download with raw.manual_class_source"
                               f"{' (one of ' + str(list(MANUAL_SOURCES)) + ')'}.")
    missing = [s for s in TFDS_SPLITS[source] if s not in records]
    if missing:
        raise MetaDatasetError(f"{source}: records of the TFDS splits {list(TFDS_SPLITS[source])}"
                               f" are needed; missing {missing} (got {sorted(records)}).")
    plan = _PLANS[source](records=records, label_names=list(label_names),
                          classes_per_split=classes_per_split, alphabet_names=alphabet_names,
                          ilsvrc_spec=ilsvrc_spec, skip_files=skip_files,
                          box_scale_ratio=box_scale_ratio)
    members = plan.members
    invert, resize = plan.invert, plan.resize

    def images(class_id: int) -> Iterator[bytes | np.ndarray]:
        if not 0 <= class_id < len(members):
            raise MetaDatasetError(f"{source}: class id {class_id} out of range "
                                   f"[0, {len(members)}).")
        for record, box in _read_members(records, members[class_id]):
            yield process_image(record["image"], bbox=box, invert=invert, resize=resize,
                                jpeg=jpeg)

    return ClassSource(
        name=source, class_names=plan.class_names, images=images,
        classes_per_split=None if plan.counts == CLASS_SPLITS[source] else plan.counts,
        superclasses=plan.superclasses, hierarchy=plan.hierarchy,
        images_per_class={i: len(m) for i, m in enumerate(members)},
        extra={"origin": "tfds", "tfds_name": TFDS_NAMES[source],
               "tfds_splits": TFDS_SPLITS[source], **plan.extra})


# --------------------------------------------------------------------------- #
# The thin TFDS-reading wrapper.
# --------------------------------------------------------------------------- #

def _feature_names(builder: Any, source: str) -> tuple[list[str], list[str] | None]:
    features = builder.info.features
    try:
        label = features["objects"]["label"] if source == "mscoco" else features["label"]
        names = list(label.names)
    except (KeyError, AttributeError, TypeError) as e:
        raise MetaDatasetError(f"{source}: cannot read the label names of TFDS's "
                               f"{TFDS_NAMES[source]} ({e!r}).") from None
    alphabets = None
    if source == "omniglot":
        try:
            alphabets = list(features["alphabet"].names)
        except (KeyError, AttributeError, TypeError):
            alphabets = None
    return names, alphabets


def tfds_class_source(source: str, tfds_data_dir: str | os.PathLike, *,
                      dataset_spec: str | os.PathLike | None = None,
                      duplicates: Sequence[str | os.PathLike] | None = None,
                      classes_per_split: Sequence[int] | None = None, jpeg: bool = True,
                      download: bool = False) -> ClassSource:
    """A :class:`ClassSource` in official order read from TFDS's own prepared dataset.

    Opens ``tfds.builder(TFDS_NAMES[source], data_dir=tfds_data_dir)``, reads the splits of
    :data:`TFDS_SPLITS` with ``as_data_source`` (ArrayRecord, images left encoded) and hands
    them to :func:`class_source_from_records`.

    Args:
      source: a source of :data:`TFDS_NAMES`.
      tfds_data_dir: the TFDS data directory holding the prepared dataset.
      dataset_spec: ilsvrc_2012 only: the official ``dataset_spec.json`` or its folder
        (:func:`load_ilsvrc_2012_spec`); default: ``<tfds_data_dir>/ilsvrc_2012_dataset_spec.json``
        or ``<tfds_data_dir>/ilsvrc_2012/dataset_spec.json``, required to exist.
      duplicates: ilsvrc_2012 only: the official ``ImageNet_*_duplicates.txt`` files; default:
        those found next to ``dataset_spec`` (none found: nothing is skipped, with a warning).
      classes_per_split: explicit counts (fakes); default: official.
      jpeg: yield JPEG bytes as in the official records (False: uint8 arrays).
      download: build the dataset when it is not prepared (needs TensorFlow and internet).

    Returns:
      The :class:`ClassSource`.

    Raises:
      MetaDatasetError: when the dataset is not prepared (and cannot be built here), is not
        stored as ArrayRecord, or the ilsvrc_2012 specification is missing.
    """
    check_source(source)
    if source not in TFDS_NAMES:
        raise MetaDatasetError(f"TFDS has no {source!r} builder used here; read it from its raw "
                               "download: ur_jax.suites.metadataset.raw.manual_class_source"
                               f"({source!r}, manual_dir).")
    name = TFDS_NAMES[source]
    data_dir = os.path.expanduser(os.fspath(tfds_data_dir))
    spec, skip = None, frozenset()
    if source == "ilsvrc_2012":
        if dataset_spec is None:
            defaults = [Path(data_dir) / "ilsvrc_2012_dataset_spec.json",
                        Path(data_dir) / "ilsvrc_2012" / "dataset_spec.json"]
            dataset_spec = next((d for d in defaults if d.is_file()), None)
            if dataset_spec is None:
                raise MetaDatasetError(
                    f"ilsvrc_2012 needs dataset_spec (none given, none at "
                    f"{' or '.join(str(d) for d in defaults)}). {_SPEC_NOTE}")
        spec_file = _spec_path(dataset_spec)
        spec = load_ilsvrc_2012_spec(spec_file)
        if duplicates is None:
            duplicates = sorted(spec_file.parent.glob("ImageNet_*_duplicates.txt"))
            if not duplicates:
                logger.warning("ilsvrc_2012: no ImageNet_*_duplicates.txt next to %s; images "
                               "shared with Caltech / CUB are not skipped (the official "
                               "conversion skips them).", spec_file)
        skip = read_duplicates(duplicates)
    note = _BUILD_NOTE.format(name=name, data_dir=data_dir) + (
        _IMAGENET_NOTE if source == "ilsvrc_2012" else "")
    builder, prepared = tfds_helper.open_tfds(name, data_dir)
    if not prepared:
        if not download:
            raise MetaDatasetError(f"TFDS's {name} is not prepared in {data_dir}. {note} Or call "
                                   "tfds_class_source(..., download=True) where TensorFlow is "
                                   "installed.")
        try:
            builder = tfds_helper.build_tfds(name, data_dir)
        except ImportError as e:
            raise MetaDatasetError(f"Building TFDS's {name} needs TensorFlow: {e}. {note}"
                                   ) from e
    records = {}
    for split in TFDS_SPLITS[source]:
        try:
            records[split] = builder.as_data_source(
                split=split, decoders={"image": tfds.decode.SkipDecoding()})
        except (ValueError, NotImplementedError, KeyError) as e:
            raise MetaDatasetError(
                f"TFDS's {name} in {data_dir} cannot be read without TensorFlow (split "
                f"{split!r}): {e}\nIt must be stored as ArrayRecord: convert it with `tfds "
                f"convert_format --root_data_dir={data_dir} --out_file_format=array_record`, "
                f"or rebuild it. {note}") from e
    label_names, alphabet_names = _feature_names(builder, source)
    return class_source_from_records(source, records, label_names,
                                     classes_per_split=classes_per_split, jpeg=jpeg,
                                     alphabet_names=alphabet_names, ilsvrc_spec=spec,
                                     skip_files=skip)
