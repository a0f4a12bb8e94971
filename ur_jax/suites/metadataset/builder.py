"""The ``ur_metadataset`` TFDS builder: Meta-Dataset's 13 sources, class-split, resized to
84 x 84 and stored as ArrayRecord, read without TensorFlow.

One :class:`UrMetaDataset` config per source (:data:`~ur_jax.suites.metadataset.common.SOURCES`);
splits ``train``, ``valid`` and ``test`` (only those with classes: ``traffic_sign`` has only
``test``, ``mscoco`` ``valid`` and ``test``). Each record is ``{'image': uint8 (84, 84, 3),
'label': int64}`` with ``label`` the class index WITHIN the split (0 .. C-1; global class id
minus the split's first id). Records are written class by class in class order and never
shuffled, so the records of class ``c`` are one contiguous range (:func:`split_spec` gives the
ranges without reading any image).

Preprocessing (as Meta-Dataset's ``meta_dataset/data/decoder.py``, which decodes with
``tf.image.decode_image(channels=3)`` and resizes with TF1 ``tf.image.resize_images(...,
BILINEAR, align_corners=True)``): images are decoded with Pillow, converted to RGB (grayscale
replicated to 3 channels, alpha dropped), resized to 84 x 84 with align-corners bilinear
interpolation computed in float32 (:func:`resize_bilinear`) and rounded to uint8 for storage
(:func:`preprocess_image`); the model maps them to [-1, 1] with ``2 * (x / 255 - 0.5)``.

The data reach the builder as a :class:`~ur_jax.suites.metadataset.common.ClassSource` from one
of three origins (:func:`prepare`'s ``origin``):

* ``'records'``: the official converted records (:func:`ur_jax.suites.metadataset.records.
  class_source`, ``records_dir`` = the records root);
* ``'manual'``: raw downloads of aircraft / fungi / traffic_sign
  (``ur_jax.suites.metadataset.raw.manual_class_source``, ``manual_dir``);
* ``'tfds'``: TFDS's own builders (``ur_jax.suites.metadataset.tfds_sources.tfds_class_source``,
  ``tfds_data_dir``).

The build's metadata (``info.metadata``, saved as ``metadata.json`` next to the records;
:func:`metadata`) holds per split the class names, global class ids and images per class (as
written), Omniglot's alphabets and ImageNet's WordNet nodes as class indices within the split,
plus the origin and whether the class split is the official one.

Typical use::

    from ur_jax.suites import metadataset as md
    md.prepare(["omniglot", "traffic_sign"], "~/tensorflow_datasets",
               records_dir="~/records")                       # once
    src = md.data_source("omniglot", "train", "~/tensorflow_datasets")
    spec = md.split_spec("omniglot", "train", "~/tensorflow_datasets")
    src[int(spec.members[3][0])]      # {'image': uint8 (84, 84, 3), 'label': 3}
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib
import io
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ur_jax.data import tfds_helper
from ur_jax.suites.metadataset.common import (
    CLASS_SPLITS,
    IMAGE_SIZE,
    SOURCES,
    SPLITS,
    ClassSource,
    MetaDatasetError,
    check_source,
    check_split,
    split_class_range,
)

__all__ = [
    "IMAGE_SHAPE",
    "ORIGINS",
    "TFDS_NAME",
    "UrMetaDataset",
    "data_source",
    "metadata",
    "num_classes",
    "prepare",
    "preprocess_image",
    "resize_bilinear",
    "split_spec",
    "to_rgb",
]

if TYPE_CHECKING:  # episodes is imported lazily: it may import this package itself
    from ur_jax.data.episodes import SplitSpec

logger = logging.getLogger(__name__)

TFDS_NAME = "ur_metadataset"
"""The builder's TFDS name."""

ORIGINS = ("records", "manual", "tfds")
"""Where a source's data can come from (see :func:`prepare`)."""

IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
"""Shape of every stored image (uint8 RGB)."""

_HOMEPAGE = "https://github.com/google-research/meta-dataset"
_CITATION = """\
@inproceedings{triantafillou2020metadataset,
  title = {Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples},
  author = {Triantafillou, Eleni and Zhu, Tyler and Dumoulin, Vincent and Lamblin, Pascal and
            Evci, Utku and Xu, Kelvin and Goroshin, Ross and Gelada, Carles and
            Swersky, Kevin and Manzagol, Pierre-Antoine and Larochelle, Hugo},
  booktitle = {International Conference on Learning Representations},
  year = {2020}
}"""
_META_KEYS = ("source", "origin", "official", "classes_per_split", "image_size", "splits")


# --------------------------------------------------------------------------- #
# Decoding and resizing, as meta_dataset/data/decoder.py.
# --------------------------------------------------------------------------- #

def to_rgb(image: np.ndarray | bytes | Image.Image) -> np.ndarray:
    """An image as uint8 ``(H, W, 3)`` RGB, like ``tf.image.decode_image(channels=3)``.

    Args:
      image: encoded bytes (JPEG, PNG, ...: anything Pillow opens), a PIL image, or a uint8
        array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` (boolean arrays are
        read as 0 / 255). Grayscale is replicated to three channels; alpha is dropped.

    Raises:
      MetaDatasetError: undecodable bytes or an unsupported array shape / dtype.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            with Image.open(io.BytesIO(bytes(image))) as img:
                img.load()
                return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise MetaDatasetError(f"Cannot decode an image ({len(image)} bytes): {e}") from None
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise MetaDatasetError(f"Expected a uint8 image array, found dtype {arr.dtype}; convert "
                               "it (e.g. np.clip(x, 0, 255).astype(np.uint8)) first.")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise MetaDatasetError(f"Expected an image array (H, W), (H, W, 1), (H, W, 3) or "
                               f"(H, W, 4); found shape {arr.shape}.")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr[..., :3]


def _axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF1 align-corners bilinear: ``x = i * (in - 1) / (out - 1)`` (float32), lower =
    floor(x), upper = min(ceil(x), in - 1), lerp = x - floor(x)."""
    if out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    x = np.arange(out_size, dtype=np.float32) * np.float32(scale)
    floor = np.floor(x)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(x).astype(np.int64), in_size - 1)
    return lower, upper, (x - floor).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int] = IMAGE_SIZE
                    ) -> np.ndarray:
    """Bilinear resize with aligned corners, as TF1 ``tf.image.resize_images(image, size,
    BILINEAR, align_corners=True)`` (Meta-Dataset's decoder).

    Output pixel ``(i, j)`` samples the input at ``(i * (H - 1) / (h - 1), j * (W - 1) /
    (w - 1))``: the corner pixels map to the corner pixels. Computed in float32 like TF:
    ``top = tl + (tr - tl) * dx``, ``bottom = bl + (br - bl) * dx``, ``out = top + (bottom -
    top) * dy``.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` array.
      size: output side, or ``(h, w)``.

    Returns:
      float32 ``(h, w)`` / ``(h, w, C)`` array (not rounded).
    """
    arr = np.asarray(image)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"resize_bilinear expects an (H, W) or (H, W, C) array; found shape "
                         f"{arr.shape}.")
    out_h, out_w = (size, size) if isinstance(size, int | np.integer) else size
    arr = arr.astype(np.float32)
    y0, y1, dy = _axis_weights(arr.shape[0], int(out_h))
    x0, x1, dx = _axis_weights(arr.shape[1], int(out_w))
    top_rows, bottom_rows = arr[y0], arr[y1]
    dx = dx[None, :, None]
    top = top_rows[:, x0] + (top_rows[:, x1] - top_rows[:, x0]) * dx
    bottom = bottom_rows[:, x0] + (bottom_rows[:, x1] - bottom_rows[:, x0]) * dx
    out = top + (bottom - top) * dy[:, None, None]
    return out[..., 0] if squeeze else out


def preprocess_image(image: np.ndarray | bytes | Image.Image) -> np.ndarray:
    """An image as stored by the builder: :func:`to_rgb`, :func:`resize_bilinear` to
    ``IMAGE_SIZE`` x ``IMAGE_SIZE``, rounded to uint8 ``(84, 84, 3)``."""
    out = resize_bilinear(to_rgb(image), IMAGE_SIZE)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# The TFDS builder.
# --------------------------------------------------------------------------- #

_DESCRIPTIONS = {
    "ilsvrc_2012": "ILSVRC-2012 (ImageNet), 1000 classes split by the WordNet graph.",
    "omniglot": "Omniglot, 1623 handwritten characters of 50 alphabets (split by alphabet).",
    "aircraft": "FGVC-Aircraft, 100 aircraft variants (images cropped to their boxes).",
    "cu_birds": "CUB-200-2011, 200 bird species.",
    "dtd": "Describable Textures, 47 texture categories.",
    "quickdraw": "Quick, Draw!, 345 categories of 28x28 drawings.",
    "fungi": "FGVCx Fungi, 1394 fungi species.",
    "vgg_flower": "VGG Flowers 102 flower species.",
    "traffic_sign": "German Traffic Sign Recognition Benchmark, 43 sign classes (test only).",
    "mscoco": "MS-COCO 2017 object crops (boxes enlarged 1.2x), 80 categories.",
    "mnist": "MNIST digits (test only).",
    "cifar10": "CIFAR-10 (test only).",
    "cifar100": "CIFAR-100 (test only).",
}


def _ordered_map(fn: Any, items: Iterable[Any], pool: concurrent.futures.Executor,
                 window: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``pool`` with at most ``window`` items in flight, in order."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class UrMetaDataset(tfds_helper.LocalBuilder):
    """TFDS builder ``ur_metadataset``: one config per Meta-Dataset source.

    Splits ``train`` / ``valid`` / ``test`` (those with classes); features ``image`` (uint8
    ``(84, 84, 3)``, stored zlib-compressed) and ``label`` (int64 class index within the
    split); records class by class, in class order, unshuffled. ``info.metadata`` is
    described in :func:`metadata`. Build it with :func:`prepare` (which hands the builder the
    source's :class:`ClassSource`); ``file_format='array_record'`` makes it readable without
    TensorFlow.
    """

    name = TFDS_NAME  # not the default 'ur_meta_dataset'
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=s, description=_DESCRIPTIONS[s]) for s in SOURCES
    ]

    def __init__(self, **kwargs: Any):
        self._class_source: ClassSource | None = None  # set by `prepare`
        self._origin = "unknown"
        self._num_workers: int | None = None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        source = self.builder_config.name
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Meta-Dataset source {source!r}: {_DESCRIPTIONS[source]} Images decoded, "
                "converted to RGB and resized to 84x84 (align-corners bilinear, as Meta-"
                "Dataset's decoder), rounded to uint8; 'label' is the class index within the "
                "split; records are grouped by class in class order."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8,
                                              encoding="zlib"),
                "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            }),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
            homepage=_HOMEPAGE,
            citation=_CITATION,
            disable_shuffling=True,  # class-contiguous record ranges
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # nothing is downloaded
        cs = self._class_source
        source = self.builder_config.name
        if cs is None:
            raise MetaDatasetError(
                f"{TFDS_NAME}/{source} is built by ur_jax.suites.metadataset.prepare([{source!r}]"
                ", data_dir, origin=..., records_dir=... | manual_dir=... | tfds_data_dir=...),"
                " not by tfds.load / download_and_prepare directly.")
        if cs.name != source:
            raise MetaDatasetError(f"The ClassSource is for {cs.name!r}, not {source!r}.")
        counts = cs.splits
        splits_meta: dict[str, Any] = {}
        for split, n in zip(SPLITS, counts):
            ids = list(split_class_range(source, split, counts))
            start = ids[0] if ids else 0
            splits_meta[split] = {
                "class_ids": ids,
                "class_names": [str(cs.class_names[c]) for c in ids],
                "images_per_class": [0] * n,
                "superclasses": _within(cs.superclasses, split, start, n, "superclasses"),
                "hierarchy": _within(cs.hierarchy, split, start, n, "hierarchy"),
            }
        self.info.metadata.update({
            "source": source,
            "origin": self._origin,
            "official": bool(cs.official),
            "classes_per_split": list(counts),
            "image_size": IMAGE_SIZE,
            "splits": splits_meta,
        })
        return {split: self._generate_examples(cs, split, splits_meta[split])
                for split, n in zip(SPLITS, counts) if n > 0}

    def _generate_examples(self, cs: ClassSource, split: str, meta: dict[str, Any]
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
        ids = meta["class_ids"]
        counts = meta["images_per_class"]

        def items() -> Iterator[tuple[int, int, Any]]:
            for local, global_id in enumerate(ids):
                for i, image in enumerate(cs.images(global_id)):
                    yield local, i, image

        def work(item: tuple[int, int, Any]) -> tuple[int, np.ndarray]:
            local, i, image = item
            try:
                return local, preprocess_image(image)
            except MetaDatasetError as e:
                raise MetaDatasetError(
                    f"{cs.name}: image {i} of class {ids[local]} ({meta['class_names'][local]!r},"
                    f" {split} split) cannot be used: {e}") from None

        expected = cs.images_per_class or {}
        # TFDS keeps unshuffled examples in key order, spilling them to 1000 on-disk buckets
        # by key range once past 1 GB; spreading the keys over TFDS's 128-bit key space keeps
        # each bucket small (small consecutive keys would all land in bucket 0, which is
        # then sorted in memory: tens of GB for ImageNet or QuickDraw).
        # capacity = 4x the announced count: about 250 of the buckets are used (open files).
        known = all(g in expected for g in ids)
        capacity = max(4 * sum(int(expected[g]) for g in ids), 1024) if known else 1 << 27
        stride = (1 << 128) // capacity
        workers = self._num_workers or min(32, os.cpu_count() or 1)
        index = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for local, image in _ordered_map(work, items(), pool, window=4 * workers):
                if index >= capacity:
                    raise MetaDatasetError(
                        f"{cs.name}: the {split} split yields more than {capacity} images, "
                        "over 4 times what its source announced (images_per_class); the "
                        "source is inconsistent.")
                counts[local] += 1
                yield index * stride, {"image": image, "label": local}
                index += 1
        for local, global_id in enumerate(ids):
            if counts[local] == 0:
                logger.warning("%s: class %d (%r) of the %s split has no images.", cs.name,
                               global_id, meta["class_names"][local], split)
            elif global_id in expected and int(expected[global_id]) != counts[local]:
                logger.warning("%s: class %d (%r) has %d images; its source announced %d.",
                               cs.name, global_id, meta["class_names"][local], counts[local],
                               int(expected[global_id]))


def _within(groups: Mapping[str, Sequence[Sequence[int]]] | None, split: str, start: int,
            n: int, what: str) -> list[list[int]] | None:
    """Global class-id groups of ``split`` as indices within the split (checked)."""
    if groups is None:
        return None
    out = []
    for group in groups.get(split, []) if n else []:
        local = sorted(int(c) - start for c in group)
        if local and (local[0] < 0 or local[-1] >= n):
            raise MetaDatasetError(f"A {what} group of the {split} split holds class ids "
                                   f"{sorted(group)[:6]} outside the split's range "
                                   f"{start}..{start + n - 1}.")
        out.append(local)
    return out


# --------------------------------------------------------------------------- #
# Public helpers.
# --------------------------------------------------------------------------- #

def _data_dir(data_dir: str | os.PathLike) -> str:
    return os.path.expanduser(os.fspath(data_dir))


def _open_builder(source: str, data_dir: str | os.PathLike) -> tuple[UrMetaDataset, bool]:
    return tfds_helper.open_builder(UrMetaDataset, data_dir, config=source)


def _origin_module(origin: str, module: str, function: str) -> Any:
    name = f"ur_jax.suites.metadataset.{module}"
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        raise MetaDatasetError(f"origin {origin!r} needs {name}.{function}, but {name} is not "
                               "available in this installation; use origin='records'.") from None
    return getattr(mod, function)


def _class_source(source: str, origin: str, records_dir: Any, manual_dir: Any,
                  tfds_data_dir: Any, verify_crc: bool) -> ClassSource:
    if origin == "records":
        if records_dir is None:
            raise MetaDatasetError(
                f"{source}: origin 'records' needs records_dir, the root of the official "
                "converted records (containing <source>/dataset_spec.json and "
                "<class id>.tfrecords files).")
        from ur_jax.suites.metadataset import records
        return records.class_source(records_dir, source, verify_crc=verify_crc)
    if origin == "manual":
        fn = _origin_module(origin, "raw", "manual_class_source")
        return fn(source, manual_dir)
    if origin == "tfds":
        fn = _origin_module(origin, "tfds_sources", "tfds_class_source")
        return fn(source, tfds_data_dir)
    raise MetaDatasetError(f"{source}: unknown origin {origin!r}; expected one of "
                           f"{list(ORIGINS)} (or a mapping {{source: origin}}).")


def prepare(sources: Sequence[str] | None, data_dir: str | os.PathLike, *,
            origin: str | Mapping[str, str] = "records",
            records_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None,
            tfds_data_dir: str | os.PathLike | None = None,
            num_workers: int | None = None,
            verify_crc: bool = True) -> None:
    """Builds the requested sources into ``data_dir`` (idempotent).

    A source already prepared in ``data_dir`` is left untouched (its origin is then not read).
    For the others the :class:`ClassSource` is obtained from ``origin``, every image decoded,
    converted to RGB and resized to 84x84 on a thread pool, and written class by class as
    ArrayRecord. A warning is logged when a source's classes per split differ from the
    official ones (e.g. a fake). Quiet: no TFDS progress bars; one log line per built source.

    Args:
      sources: names from :data:`SOURCES`; ``None`` means all 13.
      data_dir: TFDS data directory (created if missing).
      origin: ``'records'``, ``'manual'`` or ``'tfds'``, or ``{source: origin}`` (sources
        missing from the mapping use ``'records'``).
      records_dir: origin ``'records'``: the official records root.
      manual_dir: origin ``'manual'``: the raw downloads.
      tfds_data_dir: origin ``'tfds'``: the data directory of TFDS's own builders.
      num_workers: decoding threads (default: the number of CPUs, at most 32).
      verify_crc: origin ``'records'``: check every record's CRC-32C.

    Raises:
      MetaDatasetError: unknown source or origin, or the origin's data are missing or
        inconsistent (the message shows the expected layout).
      TypeError: a bare string instead of a sequence of names.
    """
    if isinstance(sources, str):
        raise TypeError(f"prepare(sources=...) expects a sequence of source names, found the "
                        f"string {sources!r}; pass [{sources!r}] instead.")
    sources = SOURCES if sources is None else tuple(sources)
    for s in sources:
        check_source(s)
    if isinstance(origin, Mapping):
        for s in origin:
            check_source(s)
    for source in sources:
        start = time.perf_counter()
        builder, prepared = _open_builder(source, data_dir)
        if prepared:
            continue
        o = origin.get(source, "records") if isinstance(origin, Mapping) else origin
        cs = _class_source(source, o, records_dir, manual_dir, tfds_data_dir, verify_crc)
        if not isinstance(cs, ClassSource) or cs.name != source:
            raise MetaDatasetError(f"origin {o!r} returned {cs!r:.100} for {source!r}; expected "
                                   f"a ClassSource named {source!r}.")
        if not cs.official:
            logger.warning("%s: building %s classes (train, valid, test) from origin %r; the "
                           "official Meta-Dataset split has %s. Results are not comparable to "
                           "published numbers.", source, cs.splits, o, CLASS_SPLITS[source])
        builder._class_source, builder._origin = cs, str(o)
        builder._num_workers = num_workers
        try:
            tfds_helper.build(builder)
        finally:
            builder._class_source = None
        sizes = ", ".join(f"{s} {info.num_examples}" for s, info in builder.info.splits.items())
        logger.info("Built %s/%s (%s) from %r in %.1f s into %s", TFDS_NAME, source, sizes, o,
                    time.perf_counter() - start, builder.data_dir)


def _prepared_builder(source: str, data_dir: str | os.PathLike) -> UrMetaDataset:
    check_source(source)
    builder, prepared = _open_builder(source, data_dir)
    if not prepared:
        raise MetaDatasetError(
            f"{TFDS_NAME}/{source} is not prepared in {_data_dir(data_dir)}; build it first: "
            f"ur_jax.suites.metadataset.prepare([{source!r}], {os.fspath(data_dir)!r}, "
            "origin='records', records_dir=<official records root>) (or origin='manual' / "
            "'tfds').")
    return builder


def metadata(source: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The prepared source's metadata.

    Returns:
      ``{'source', 'origin' ('records' | 'manual' | 'tfds'), 'official' (bool: the class
      counts are the official split's), 'classes_per_split' [train, valid, test],
      'image_size' (84), 'splits': {split: {'class_ids': [global ids], 'class_names': [...],
      'images_per_class': [records per class, in record order], 'superclasses': Omniglot's
      alphabets as lists of class indices within the split, else None, 'hierarchy':
      ImageNet's internal WordNet nodes as lists of the leaf class indices within the split
      they span, else None}}}``.

    Raises:
      MetaDatasetError: unknown source, or not prepared in ``data_dir``.
    """
    builder = _prepared_builder(source, data_dir)
    meta = builder.info.metadata
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise MetaDatasetError(f"The build of {TFDS_NAME}/{source} in {_data_dir(data_dir)} "
                               f"lacks metadata {missing}; delete its folder "
                               f"({builder.data_dir}) and prepare it again.")
    out = {k: meta[k] for k in _META_KEYS}
    for split, info in builder.info.splits.items():
        n = sum(out["splits"][split]["images_per_class"])
        if n != info.num_examples:
            raise MetaDatasetError(f"{TFDS_NAME}/{source}: the {split} split holds "
                                   f"{info.num_examples} records but its metadata counts {n}; "
                                   f"delete {builder.data_dir} and prepare it again.")
    return out


def _split_meta(source: str, split: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    split = check_split(split)
    meta = metadata(source, data_dir)
    info = meta["splits"][split]
    if not info["class_ids"]:
        have = [s for s in SPLITS if meta["splits"][s]["class_ids"]]
        raise MetaDatasetError(f"{source} has no {split} classes (classes per split "
                               f"{tuple(meta['classes_per_split'])}); its splits are {have}.")
    return info


def num_classes(source: str, split: str, data_dir: str | os.PathLike) -> int:
    """Number of classes of ``split`` of the prepared ``source`` (0 for a split without
    classes)."""
    split = check_split(split)
    return len(metadata(source, data_dir)["splits"][split]["class_ids"])


def data_source(source: str, split: str, data_dir: str | os.PathLike) -> Any:
    """Random-access source of one split: ``len(src)`` records, ``src[i]`` is ``{'image':
    uint8 (84, 84, 3), 'label': int64 class index within the split}``, grouped by class in
    class order (:func:`split_spec` gives each class's range).

    Raises:
      MetaDatasetError: unknown source or split, a split without classes, or not prepared.
    """
    split = check_split(split)
    _split_meta(source, split, data_dir)
    return _prepared_builder(source, data_dir).as_data_source(split=split)


def split_spec(source: str, split: str, data_dir: str | os.PathLike) -> SplitSpec:
    """The episode sampler's view of one split, from the metadata alone (no image is read).

    Returns:
      ``SplitSpec(name=source, members=(int64 record indices of class 0, ...), superclasses=
      Omniglot's alphabets as int64 arrays of class indices within the split (else None),
      hierarchy=ImageNet's internal WordNet nodes as int64 arrays of the leaf class indices
      within the split they span (else None))``.

    Raises:
      MetaDatasetError: unknown source or split, a split without classes, or not prepared.
    """
    from ur_jax.data.episodes import SplitSpec

    info = _split_meta(source, split, data_dir)
    counts = np.asarray(info["images_per_class"], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    members = tuple(np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, counts))

    def arrays(groups: Sequence[Sequence[int]] | None) -> tuple[np.ndarray, ...] | None:
        if groups is None:
            return None
        return tuple(np.asarray(g, dtype=np.int64) for g in groups)

    return SplitSpec(name=source, members=members, superclasses=arrays(info["superclasses"]),
                     hierarchy=arrays(info["hierarchy"]))
