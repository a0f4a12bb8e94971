"""TFDS's own ``visual_domain_decathlon/<domain>`` read in the records format of
``ur_decathlon`` (:func:`tfds_source`).

TFDS's builder downloads the data itself (internet; building needs TensorFlow); prepared as
ArrayRecord it reads without TensorFlow. Image ids and the label order come from the devkit's
annotation files.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ur_jax.data import tfds_helper
from ur_jax.data.pipeline import ConcatSource
from ur_jax.suites.decathlon.common import (
    DOWNLOAD_NOTE,
    TFDS_NAME,
    TRAIN_VAL,
    DecathlonDataError,
    check_domain,
    check_split,
    data_error,
)
from ur_jax.suites.decathlon.transforms import decode

__all__ = ["tfds_source"]

logger = logging.getLogger(__name__)

_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _find_tfds_annotations(data_dir: str | os.PathLike) -> str | None:
    """The devkit's annotations folder that TFDS extracted under ``data_dir/downloads``."""
    pattern = os.path.join(os.path.expanduser(os.fspath(data_dir)), "downloads", "extracted",
                           "*", "decathlon-1.0", "annotations")
    hits = sorted(glob.glob(pattern))
    return hits[0] if hits else None


def _tfds_maps(annotations_dir: str | os.PathLike, domain: str, split: str
               ) -> tuple[dict[str, int], dict[int, int]]:
    """(name -> image id, TFDS label -> this module's label) from the devkit's files.

    TFDS names an image by its ``file_name`` without the leading ``data/`` and numbers the
    labels in the order of the file's ``categories`` list; this module uses the sorted ids.
    """
    ann = Path(os.path.expanduser(os.fspath(annotations_dir)))
    names = ([f"{domain}_test_stripped.json", f"{domain}_test.json"] if split == "test"
             else [f"{domain}_{split}.json"])
    path = next((ann / n for n in names if (ann / n).is_file()), None)
    if path is None:
        raise data_error(domain, ann, f"no {' or '.join(names)} in {ann}.")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    ids = {}
    for img in data.get("images", []):
        name = str(img["file_name"]).replace("\\", "/")
        ids[name.removeprefix("data/")] = int(img["id"])
    labels: dict[int, int] = {}
    train_file = ann / f"{domain}_train.json"
    cats = data.get("categories")
    if not cats and train_file.is_file():
        with open(train_file, encoding="utf-8") as f:
            cats = json.load(f).get("categories")
    if cats:
        file_order = [int(c["id"]) for c in cats]
        sorted_ids = sorted(file_order)
        labels = {i: sorted_ids.index(cid) for i, cid in enumerate(file_order)}
    return ids, labels


def _from_tfds_record(record: Mapping[str, Any], image_ids: Mapping[str, int] | None = None,
                      label_map: Mapping[int, int] | None = None) -> dict[str, Any]:
    """A ``visual_domain_decathlon`` record (``{'name', 'image', 'label'}``) in this module's
    format ``{'image': uint8 (H, W, 3), 'label': int, 'image_id': int}``.

    ``image_id`` comes from ``image_ids`` (keyed by TFDS's ``name``, the file name without
    ``data/``), else -1. ``label_map`` turns TFDS's label (the position in the annotation
    file's category list) into the index in the sorted category ids; without it the two
    are taken as equal (they are when the file lists its categories by id). -1 stays -1.
    """
    name = record.get("name", "")
    if isinstance(name, np.ndarray):
        name = name.item()
    if isinstance(name, bytes):
        name = name.decode("utf-8")
    name = str(name).replace("\\", "/")
    name = name.removeprefix("data/")
    label = int(record["label"])
    if label >= 0 and label_map:
        label = int(label_map[label])
    image_id = int(image_ids.get(name, -1)) if image_ids else -1
    return {"image": decode(record["image"]), "label": label, "image_id": image_id}


class _TfdsSource:
    """Random-access view of a ``visual_domain_decathlon`` split in this module's format."""

    def __init__(self, source: Any, image_ids: Mapping[str, int] | None,
                 label_map: Mapping[int, int] | None, name: str):
        self._source, self._ids, self._labels, self._name = source, image_ids, label_map, name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _from_tfds_record(self._source[index], self._ids, self._labels)

    def __repr__(self) -> str:
        return f"tfds_source({self._name}, {len(self)} records)"


def tfds_source(domain: str, split: str, data_dir: str | os.PathLike,
                annotations_dir: str | os.PathLike | None = None,
                download: bool = True) -> Any:
    """One split of TFDS's ``visual_domain_decathlon/<domain>``, in this module's format.

    TFDS's builder downloads the devkit and the images itself (internet; building needs
    TensorFlow, and for ``imagenet12`` access to image-net.org) and stores ``{'name': file
    name without 'data/', 'image': decoded uint8, 'label': position of the category in the
    annotation file (-1 on test)}``; its splits are ``train``, ``validation`` and ``test``
    (this function's ``'val'`` is TFDS's ``'validation'``). It is built here as ArrayRecord
    so that it reads without TensorFlow. Records become ``{'image': uint8 (H, W, 3),
    'label': int, 'image_id': int}`` (:func:`decode` and the transforms accept decoded
    arrays): ``image_id`` and the label order (sorted category ids) come from the devkit's
    annotation files, looked up in ``annotations_dir`` or in the devkit that TFDS extracted
    under ``data_dir/downloads/extracted``; without them ``image_id`` is -1 and labels are
    TFDS's.

    Args:
      domain: one of :data:`DOMAINS`.
      split: ``'train'``, ``'val'`` (or ``'validation'``) or ``'test'``, or
        :data:`TRAIN_VAL` (a :class:`~ur_jax.data.pipeline.ConcatSource` of train then val).
      data_dir: TFDS data directory.
      annotations_dir: the devkit's ``decathlon-1.0/annotations`` folder (optional).
      download: build the dataset when it is not prepared yet.

    Raises:
      DecathlonDataError: when it is not prepared and cannot be built here, or is stored in
        another file format than ArrayRecord.
    """
    check_domain(domain)
    split = check_split(split, union=True)
    if split == TRAIN_VAL:
        return ConcatSource(*(tfds_source(domain, s, data_dir, annotations_dir, download)
                              for s in ("train", "val")), name=f"{TFDS_NAME}/{domain} {split}")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    name = f"{TFDS_NAME}/{domain}"
    builder, prepared = tfds_helper.open_tfds(name, data_dir)
    if not prepared:
        if not download:
            raise DecathlonDataError(f"{name} is not prepared in {data_dir}; call "
                                     "tfds_source(..., download=True) or use the manual "
                                     "builder (decathlon.prepare).")
        try:
            builder = tfds_helper.build_tfds(name, data_dir)
        except ImportError as e:
            raise DecathlonDataError(
                f"Building {name} needs TensorFlow (and internet access): {e}. Install "
                "tensorflow, or lay out the data by hand and use decathlon.prepare / "
                f"decathlon.data_source instead.\n{DOWNLOAD_NOTE}") from e
    try:
        source = builder.as_data_source(split=_TFDS_SPLITS[split])
    except (ValueError, NotImplementedError) as e:
        raise DecathlonDataError(
            f"{name} in {data_dir} cannot be read without TensorFlow: {e}\nIt must be stored "
            "as ArrayRecord: convert it (tfds convert_format "
            f"--root_data_dir={data_dir} --out_file_format=array_record) or delete it and let "
            "tfds_source build it again.") from e
    ann = annotations_dir if annotations_dir is not None else _find_tfds_annotations(data_dir)
    image_ids, label_map = _tfds_maps(ann, domain, split) if ann is not None else (None, None)
    if ann is None:
        logger.warning("No decathlon annotations found for %s: image_id will be -1. Pass "
                       "annotations_dir=<decathlon-1.0/annotations>.", name)
    return _TfdsSource(source, image_ids, label_map, f"{name}, {split}")
