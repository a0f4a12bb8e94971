"""The TFDS builder ``ur_embedded``: the embedded domains stored as ArrayRecord files.

One config per domain (:data:`~ur_jax.suites.embedded.domains.ALL_DOMAINS`), splits ``train``
and ``test``, features ``{'image': uint8 (32, 32, 3), 'label': int64}``; the records are
exactly :func:`~ur_jax.suites.embedded.domains.render`'s arrays, in the same order.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from ur_jax.data import tfds_helper
from ur_jax.suites.embedded.domains import (
    ALL_DOMAINS,
    CLASS_NAMES,
    IMAGE_SHAPE,
    SPLITS,
    check_domain,
    check_split,
    render,
)

__all__ = ["UrEmbedded", "data_source", "prepare", "tfds_builder"]

logger = logging.getLogger(__name__)

_DESCRIPTIONS = {
    "digits": "Real handwritten digits (UCI optdigits 8x8, via scikit-learn), upsampled "
              "to 32x32 under small affine jitter, random colours. Train and test use "
              "disjoint source images.",
    "shapes": "Ten filled geometric shapes, random size, position, rotation and colours "
              "on a slightly noisy background.",
    "textures": "Ten full-frame periodic textures (stripes at four orientations, "
                "checkers, hexagonal dots, rings, zigzags, sunbursts), random "
                "frequency, phase, colours, contrast and noise.",
    "glyphs": "Letters A..J in Pillow's default font under random affine transforms "
              "and random colours.",
    "glyphs_novel": "Held-out letters K..Z drawn like 'glyphs' (few-shot only).",
    "symbols": "Twenty punctuation and maths symbols, outlined or hollow, on noisy "
               "gradient backgrounds: an unseen domain (few-shot only).",
}


class UrEmbedded(tfds_helper.LocalBuilder):
    """TFDS builder ``ur_embedded``: one config per embedded domain, generated offline.

    No download ever happens (the download manager is unused). Build with
    ``file_format='array_record'`` (what :func:`prepare` does) to read it without
    TensorFlow through :meth:`as_data_source`.
    """

    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=d, description=_DESCRIPTIONS[d]) for d in ALL_DOMAINS
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        domain = self.builder_config.name
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Embedded, offline, deterministic default dataset of ur_jax "
                f"(domain {domain!r}): {_DESCRIPTIONS[domain]}"),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8,
                                              encoding="zlib"),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES[domain])),
            }),
            supervised_keys=("image", "label"),
            # Examples are already shuffled (with a fixed seed) by `render`; keeping
            # their order makes `src[i]` equal `render(...)[i]`.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # nothing is ever downloaded
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        images, labels = render(self.builder_config.name, split)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


def tfds_builder(domain: str, data_dir: str | os.PathLike) -> UrEmbedded:
    """The ``ur_embedded/<domain>`` builder in ``data_dir`` (built or not; nothing is written).

    Raises:
      ValueError: for an unknown domain.
    """
    check_domain(domain)
    return tfds_helper.open_builder(UrEmbedded, data_dir, config=domain)[0]


def prepare(data_dir: str | os.PathLike, domains: Sequence[str] | None = None) -> None:
    """Build the requested embedded domains into ``data_dir`` (idempotent).

    Configs already prepared in ``data_dir`` are left untouched; the others are
    rendered and written as ArrayRecord files (a few seconds for all six). TFDS
    progress bars are suppressed; one log line per built domain goes to the
    ``ur_jax.suites.embedded.builder`` logger.

    Args:
      data_dir: TFDS data directory (created if missing).
      domains: domain names; ``None`` means :data:`ALL_DOMAINS`.

    Raises:
      ValueError: for an unknown domain.
      TypeError: for a bare string instead of a sequence of names.
    """
    if isinstance(domains, str):
        raise TypeError(f"prepare(domains=...) expects a sequence of domain names, found "
                        f"the string {domains!r}; pass [{domains!r}] instead.")
    domains = ALL_DOMAINS if domains is None else tuple(domains)
    for d in domains:
        check_domain(d)
    for d in domains:
        start = time.perf_counter()
        built, prepared = tfds_helper.open_builder(UrEmbedded, data_dir, config=d)
        if prepared:
            continue
        tfds_helper.build(built)
        logger.info("Built embedded domain %r in %.2f s into %s", d,
                    time.perf_counter() - start, built.data_dir)


def data_source(domain: str, split: str, data_dir: str | os.PathLike) -> Any:
    """Random-access source of one split of one embedded domain.

    Prepares the domain in ``data_dir`` first if needed. ``len(src)`` is the split
    size and ``src[i]`` is ``{'image': uint8 (32, 32, 3), 'label': int}``; the
    order matches :func:`render`.

    Args:
      domain: one of :data:`ALL_DOMAINS`.
      split: ``'train'`` or ``'test'``.
      data_dir: TFDS data directory.

    Raises:
      ValueError: for an unknown domain or split.
    """
    check_domain(domain)
    check_split(split)
    prepare(data_dir, [domain])
    return tfds_builder(domain, data_dir).as_data_source(split=split)
