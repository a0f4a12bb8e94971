"""The TFDS builder ``ur_decathlon`` (one config per Visual Decathlon domain) and its readers.

:func:`prepare` builds domains from the official ``decathlon-1.0/`` tree
(:mod:`~ur_jax.suites.decathlon.tree`) into ArrayRecord files, storing every JPEG unchanged;
:func:`data_source` reads a split (or :data:`~ur_jax.suites.decathlon.common.TRAIN_VAL`),
:func:`metadata` the build's category ids, names, measured mean/std and whether the test split
has labels, and :func:`normalization` the mean/std a domain is normalised with.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from ur_jax.data import pipeline, tfds_helper
from ur_jax.data.pipeline import ConcatSource
from ur_jax.suites.decathlon.common import (
    DOMAINS,
    DOWNLOAD_NOTE,
    HOMEPAGE,
    MEAN_STD,
    NORMALIZATIONS,
    SPLITS,
    TRAIN_VAL,
    DecathlonDataError,
    check_domain,
    check_domains,
    check_split,
    data_error,
    expected_tree,
)
from ur_jax.suites.decathlon.transforms import mean_std, stats_sample
from ur_jax.suites.decathlon.tree import DomainIndex, index_domain, resolve_root

__all__ = [
    "ConcatSource",
    "UrDecathlon",
    "data_source",
    "metadata",
    "normalization",
    "prepare",
]

logger = logging.getLogger(__name__)

_CITATION = """\
@inproceedings{rebuffi2017learning,
  title = {Learning multiple visual domains with residual adapters},
  author = {Rebuffi, Sylvestre-Alvise and Bilen, Hakan and Vedaldi, Andrea},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2017}
}"""

_DESCRIPTIONS = {
    "imagenet12": "ImageNet (ILSVRC 2012), 1000 classes.",
    "aircraft": "FGVC-Aircraft, 100 aircraft model variants.",
    "cifar100": "CIFAR-100, 100 object classes (upsampled from 32x32).",
    "daimlerpedcls": "Daimler Mono Pedestrian Classification, pedestrian vs. background.",
    "dtd": "Describable Textures, 47 texture attributes.",
    "gtsrb": "German Traffic Sign Recognition Benchmark, 43 sign classes.",
    "omniglot": "Omniglot, 1623 handwritten characters from 50 alphabets.",
    "svhn": "Street View House Numbers, 10 digits.",
    "ucf101": "UCF101 dynamic images, 101 action classes.",
    "vgg-flowers": "Oxford VGG Flowers, 102 flower species.",
}


class UrDecathlon(tfds_helper.LocalBuilder):
    """TFDS builder ``ur_decathlon``: one config per Visual Decathlon domain.

    Manual download (``MANUAL_DOWNLOAD_INSTRUCTIONS``); ``manual_dir`` is ``decathlon-1.0/``
    (or its parent). Splits ``train``, ``val`` and ``test``; features ``image`` (the JPEG
    file's bytes), ``label`` (int64, index in the sorted category ids, -1 for unlabelled
    test images) and ``image_id`` (int64, the COCO image id). Records are in image id order.
    ``info.metadata`` holds ``category_ids``, ``category_names``, ``mean``, ``std`` and
    ``test_labels``. Build with ``file_format='array_record'`` (:func:`prepare` does) to
    read it without TensorFlow.

    Args:
      strict: refuse category counts that differ from :data:`NUM_CLASSES` (by default a
        smaller count, e.g. a fake tree, only warns).
      **kwargs: passed to the TFDS builder (``config``, ``data_dir``, ``file_format``).
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"{DOWNLOAD_NOTE}\nExpected layout:\n{expected_tree()}\n")
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=d, description=_DESCRIPTIONS[d]) for d in DOMAINS
    ]

    def __init__(self, *, strict: bool = False, **kwargs: Any):
        self._strict = bool(strict)
        self._index: DomainIndex | None = None  # set by `prepare` to avoid a second read
        super().__init__(**kwargs)
        # For pickling (TFDS re-runs __init__ with these).
        self._original_state = dict(self._original_state, strict=self._strict,
                                    file_format=kwargs.get("file_format"))

    def _info(self) -> tfds.core.DatasetInfo:
        domain = self.builder_config.name
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Visual Domain Decathlon, domain {domain!r}: {_DESCRIPTIONS[domain]} Images "
                "resized to a shorter side of 72 px by the organisers; 'image' holds the JPEG "
                "file's bytes, 'label' the index of the category in the sorted category ids "
                "(-1 = unknown), 'image_id' the COCO image id."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                "image_id": tfds.features.Tensor(shape=(), dtype=np.int64),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage=HOMEPAGE,
            citation=_CITATION,
            # Keep the image id order (the generator sorts by image id).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        domain = self.builder_config.name
        index = self._index
        if index is None:
            manual = tfds_helper.manual_dir(dl_manager, lambda path: data_error(
                domain, None, f"manual_dir {path} does not exist or is empty."))
            index = index_domain(resolve_root(manual, domain), domain, self._strict)
        train = index.splits["train"]
        mean, std = mean_std(domain, [train[i][1] for i in stats_sample(len(train))])
        self.info.metadata.update({
            "category_ids": list(index.category_ids),
            "category_names": list(index.category_names),
            "mean": mean,
            "std": std,
            "test_labels": bool(index.test_labels),
        })
        return {split: self._generate_examples(index.splits[split]) for split in SPLITS}

    def _generate_examples(self, items: Sequence[tuple[int, str, int]]
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
        for key, (image_id, path, label) in enumerate(items):
            with open(path, "rb") as f:
                data = f.read()
            yield key, {"image": data, "label": label, "image_id": image_id}


def _prepared_builder(domain: str, data_dir: str | os.PathLike) -> UrDecathlon:
    builder, prepared = tfds_helper.open_builder(UrDecathlon, data_dir, config=domain)
    if not prepared:
        raise data_error(domain, None, (
            f"not prepared in {data_dir}; build it first with decathlon.prepare(manual_dir, "
            f"{os.fspath(data_dir)!r}, [{domain!r}]) (or pass manual_dir)."))
    return builder


def prepare(manual_dir: str | os.PathLike | None, data_dir: str | os.PathLike,
            domains: Sequence[str] | None = None, strict: bool = False) -> None:
    """Builds the requested domains from ``manual_dir`` into ``data_dir`` (idempotent).

    Domains already prepared in ``data_dir`` are left untouched (``manual_dir`` is then not
    read and may be ``None``). For the others the tree is checked (annotations read, every
    listed image present) before anything is written, the train images' mean/std computed,
    and every JPEG stored unchanged as ArrayRecord. Quiet: no TFDS progress bars; one log
    line per built domain (logger ``ur_jax.suites.decathlon.builder``).

    Args:
      manual_dir: ``decathlon-1.0/`` (containing ``data/`` and ``annotations/``) or its
        parent.
      data_dir: TFDS data directory (created if missing).
      domains: names from :data:`DOMAINS`; ``None`` means all ten.
      strict: refuse category counts that differ from :data:`NUM_CLASSES`.

    Raises:
      ValueError: for an unknown domain.
      DecathlonDataError: when a domain must be built and its files are missing or
        inconsistent.
    """
    for d in check_domains(domains):
        builder, prepared = tfds_helper.open_builder(UrDecathlon, data_dir, config=d,
                                                     strict=strict)
        if prepared:
            continue
        index = index_domain(resolve_root(manual_dir, d), d, strict)
        builder._index = index
        tfds_helper.build(builder, manual_dir=index.root)
        builder._index = None
        logger.info("Built decathlon domain %r (%s) into %s", d,
                    ", ".join(f"{s} {len(v)}" for s, v in index.splits.items()),
                    builder.data_dir)


def data_source(domain: str, split: str, data_dir: str | os.PathLike,
                manual_dir: str | os.PathLike | None = None) -> Any:
    """Random-access source of one split of one domain.

    ``len(src)`` is the split size; ``src[i]`` is ``{'image': bytes (the JPEG file),
    'label': int, 'image_id': int}``, in increasing image id order. Builds the domain first
    when ``manual_dir`` is given and it is not prepared yet.

    Args:
      domain: one of :data:`DOMAINS`.
      split: ``'train'``, ``'val'`` or ``'test'`` (``'validation'`` is read as ``'val'``),
        or :data:`TRAIN_VAL` (``'train+val'``): a
        :class:`~ur_jax.data.pipeline.ConcatSource` of the train records followed by the val
        records (the authors' ``--trainval``).
      data_dir: TFDS data directory.
      manual_dir: optional, see :func:`prepare`.

    Raises:
      ValueError: for an unknown domain or split.
      DecathlonDataError: when the domain is not prepared (and cannot be built).
    """
    check_domain(domain)
    split = check_split(split, union=True)
    if manual_dir is not None:
        prepare(manual_dir, data_dir, [domain])
    builder = _prepared_builder(domain, data_dir)
    if split == TRAIN_VAL:
        return ConcatSource(builder.as_data_source(split="train"),
                            builder.as_data_source(split="val"), name=f"{domain} {TRAIN_VAL}")
    return builder.as_data_source(split=split)


def metadata(domain: str, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The prepared domain's metadata.

    Returns:
      ``{'category_ids': [int] (sorted; label i is category_ids[i]), 'category_names':
      [str], 'mean': [r, g, b], 'std': [r, g, b] (train images in [0, 1], after the resize),
      'test_labels': bool}``.

    Raises:
      DecathlonDataError: when the domain is not prepared in ``data_dir``.
    """
    check_domain(domain)
    meta = _prepared_builder(domain, data_dir).info.metadata
    keys = ("category_ids", "category_names", "mean", "std", "test_labels")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise DecathlonDataError(f"The build of {domain!r} in {data_dir} lacks metadata "
                                 f"{missing}; delete its folder and prepare it again.")
    return {k: (list(meta[k]) if isinstance(meta[k], list) else meta[k]) for k in keys}


def normalization(domain: str, data_dir: str | os.PathLike | None = None,
                  stats: str = "published") -> pipeline.Normalization:
    """The domain's mean/std normalisation, ``(uint8 / 255 - mean) / std`` per RGB channel.

    Args:
      domain: one of :data:`DOMAINS`.
      data_dir: TFDS data directory of the prepared domain; only read with
        ``stats='estimated'``.
      stats: ``'published'`` (default): the fixed constants :data:`MEAN_STD` (Rebuffi et
        al.'s ``decathlon_mean_std.pickle``, as the authors' code uses); ``'estimated'``: the
        mean/std :func:`prepare` measured on the domain's train images (after the training
        resize; all of them or :data:`STATS_SAMPLE`), e.g. for a subset or altered data.

    Returns:
      A :class:`ur_jax.data.pipeline.Normalization` (float tuples of 3).

    Raises:
      ValueError: for an unknown domain or ``stats``, or ``stats='estimated'`` without
        ``data_dir``.
      DecathlonDataError: with ``stats='estimated'`` when the domain is not prepared.
    """
    check_domain(domain)
    if stats == "published":
        mean, std = MEAN_STD[domain]
    elif stats == "estimated":
        if data_dir is None:
            raise ValueError(f"normalization({domain!r}, stats='estimated') reads the mean/std "
                             "measured while preparing the domain: pass data_dir (the TFDS data "
                             "directory), or use stats='published'.")
        meta = metadata(domain, data_dir)
        mean, std = meta["mean"], meta["std"]
    else:
        raise ValueError(f"Unknown normalization stats {stats!r}; expected one of "
                         f"{list(NORMALIZATIONS)}.")
    return pipeline.Normalization(mean=tuple(float(v) for v in mean),
                                  std=tuple(float(v) for v in std))
