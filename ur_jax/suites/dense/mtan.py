"""MTAN's preprocessed NYU-v2 and Cityscapes: the ``.npy`` tree checked and turned into TFDS
builders stored as ArrayRecord, readable without TensorFlow.

The paper's dense-prediction experiments use the preprocessed ``.npy`` trees that MTAN
(Liu, Johns, Davison, CVPR 2019; https://github.com/lorenmt/mtan) distributes. This module
validates such a tree (:func:`check_mtan_tree`) and builds ``ur_nyuv2`` (:class:`UrNyuv2`)
and ``ur_cityscapes`` (:class:`UrCityscapes`, configs ``label7`` / ``label19``) from it
(:func:`prepare_dense`, :func:`dense_source`). The datasets, the record format and the
on-disk layout are described in :mod:`ur_jax.suites.dense`; fake trees in the same format are
written by :func:`ur_jax.suites.dense.fake.write_fake_mtan`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from ur_jax.data import tfds_helper
from ur_jax.data.files import listing

__all__ = [
    "DATASETS",
    "DEPTH_KIND",
    "DEPTH_KINDS",
    "IMAGE_HW",
    "MTAN_SOURCES",
    "NUM_CLASSES",
    "RECORD_DTYPES",
    "RECORD_KEYS",
    "SPLITS",
    "SPLIT_SIZES",
    "TASKS",
    "DenseDataError",
    "SplitLayout",
    "UrCityscapes",
    "UrNyuv2",
    "check_mtan_tree",
    "dense_source",
    "prepare_dense",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Public constants.
# --------------------------------------------------------------------------- #

DATASETS: tuple[str, ...] = ("nyuv2", "cityscapes7", "cityscapes19")
"""Dense dataset names: NYU-v2 (13 classes) and Cityscapes with its 7- or 19-class labels."""

SPLITS: tuple[str, ...] = ("train", "test")
"""Splits of every dense dataset (``test`` is read from MTAN's ``val/`` folder)."""

TASKS: dict[str, tuple[str, ...]] = {
    "nyuv2": ("semantic", "depth", "normal"),
    "cityscapes7": ("semantic", "depth"),
    "cityscapes19": ("semantic", "depth"),
}
"""Task names (record keys besides ``'image'``) present in each dataset."""

NUM_CLASSES: dict[str, int] = {"nyuv2": 13, "cityscapes7": 7, "cityscapes19": 19}
"""Number of semantic classes (labels ``0 .. C-1``; ``-1`` = ignore)."""

DEPTH_KINDS: tuple[str, ...] = ("depth", "inverse_depth")
"""What the ``'depth'`` entry holds: metric depth, or inverse depth (disparity-like)."""

DEPTH_KIND: dict[str, str] = {"nyuv2": "depth", "cityscapes7": "inverse_depth",
                              "cityscapes19": "inverse_depth"}
"""The depth kind of each dataset (decides whether a zoom divides or multiplies it)."""

IMAGE_HW: dict[str, tuple[int, int]] = {"nyuv2": (288, 384), "cityscapes7": (128, 256),
                                        "cityscapes19": (128, 256)}
"""(H, W) of the real MTAN files (the builders accept any size; fake trees are smaller)."""

SPLIT_SIZES: dict[str, dict[str, int]] = {
    "nyuv2": {"train": 795, "test": 654},
    "cityscapes7": {"train": 2975, "test": 500},
    "cityscapes19": {"train": 2975, "test": 500},
}
"""Examples per split of the real MTAN data."""

MTAN_SOURCES: dict[str, str] = {
    "nyuv2": "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=0",
    "cityscapes": "https://www.dropbox.com/s/lg2ktu7o8hzwf99/cityscapes2.zip?dl=0",
}
"""Download links of MTAN's preprocessed data, from the README of
https://github.com/lorenmt/mtan (NYU-v2, 288x384; Cityscapes, the 128x256 version)."""

_SPLIT_DIRS = {"train": "train", "test": "val"}
# Record key -> sub-folder, per dataset (folder order = the order of checks and messages).
_SUBDIRS: dict[str, dict[str, str]] = {
    "nyuv2": {"image": "image", "semantic": "label", "depth": "depth", "normal": "normal"},
    "cityscapes7": {"image": "image", "semantic": "label_7", "depth": "depth"},
    "cityscapes19": {"image": "image", "semantic": "label_19", "depth": "depth"},
}
# Record key -> trailing dims after (H, W), as MTAN stores them.
_TRAILING: dict[str, tuple[int, ...]] = {"image": (3,), "semantic": (), "depth": (1,),
                                         "normal": (3,)}
RECORD_DTYPES: dict[str, Any] = {"image": np.float32, "semantic": np.int32,
                                 "depth": np.float32, "normal": np.float32}
"""The dtype of each record entry (MTAN's files are converted to these)."""
RECORD_KEYS: tuple[str, ...] = ("image", "semantic", "depth", "normal")
"""Every key a dense record may have, ``'image'`` first."""
_IMAGE_TOL = 1e-3  # MTAN images lie in [0, 1]; allow rounding noise, refuse 0..255 data


class DenseDataError(ValueError):
    """A dense dataset's files are missing, laid out differently, or hold bad values.

    The message says what was expected (the MTAN tree), what was found, and where the
    data comes from.
    """


@dataclasses.dataclass(frozen=True)
class SplitLayout:
    """What :func:`check_mtan_tree` found for one split.

    Attributes:
      num_examples: files per folder (numbered ``0 .. num_examples - 1``).
      image_hw: the (H, W) shared by every file of the split.
    """

    num_examples: int
    image_hw: tuple[int, int]


# --------------------------------------------------------------------------- #
# Names and messages.
# --------------------------------------------------------------------------- #

def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"Unknown dense dataset {name!r}. Expected one of {list(DATASETS)} "
                         "('cityscapes7' / 'cityscapes19' choose the 7- or 19-class labels).")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for a dense dataset. Expected one of "
                         f"{list(SPLITS)} ('test' is MTAN's val/ folder); slice the returned "
                         "source for a subset.")


def _family(name: str) -> str:
    return "nyuv2" if name == "nyuv2" else "cityscapes"


def _expected_tree(name: str) -> str:
    """The on-disk layout that ``name`` reads, as an indented text block."""
    if _family(name) == "nyuv2":
        h, w = IMAGE_HW["nyuv2"]
        return (
            "  <manual_dir>/\n"
            "    train/                 795 examples (the test split is val/, 654)\n"
            f"      image/0.npy ...      float (H, W, 3) RGB in [0, 1]   (H, W = {h}, {w})\n"
            "      label/0.npy ...      float (H, W) class ids 0..12, -1 = ignore\n"
            "      depth/0.npy ...      float (H, W, 1) metric depth, 0 = invalid\n"
            "      normal/0.npy ...     float (H, W, 3) unit normals, all-zero = invalid\n"
            "    val/                   same four folders\n"
            "  Files are numbered 0..N-1 with no gaps, N equal in every folder of a split.")
    h, w = IMAGE_HW["cityscapes7"]
    return (
        "  <manual_dir>/\n"
        "    train/                 2975 examples (the test split is val/, 500)\n"
        f"      image/0.npy ...      float (H, W, 3) RGB in [0, 1]   (H, W = {h}, {w})\n"
        "      label_7/0.npy ...    float (H, W) class ids 0..6, -1 = ignore\n"
        "      label_19/0.npy ...   float (H, W) class ids 0..18, -1 = ignore\n"
        "      depth/0.npy ...      float (H, W, 1) INVERSE depth, 0 = invalid\n"
        "    val/                   same folders\n"
        f"  ('{name}' reads {_SUBDIRS[name]['semantic']}/.) Files are numbered 0..N-1 with "
        "no gaps, N equal in every folder of a split.")


def _source_note(name: str) -> str:
    fam = _family(name)
    what = "NYUv2 (nyuv2.zip)" if fam == "nyuv2" else "CityScapes 128x256 (cityscapes2.zip)"
    return (f"The data is MTAN's preprocessed {what}: {MTAN_SOURCES[fam]} (links in the README "
            "of https://github.com/lorenmt/mtan). Unzip it and pass the folder that contains "
            "train/ and val/ as manual_dir.")


def _error(name: str, root: Path | None, problem: str) -> DenseDataError:
    found = ""
    if root is not None and root.is_dir():
        found = f"\nFound in {root}: {listing(root)}"
        inner = [p for p in root.iterdir() if p.is_dir() and (p / "train").is_dir()]
        if inner and not (root / "train").is_dir():
            found += (f"\nHint: {inner[0]} contains train/; pass that folder as manual_dir.")
    return DenseDataError(
        f"Dense dataset {name!r}: {problem}{found}\nExpected layout:\n{_expected_tree(name)}\n"
        f"{_source_note(name)}")


# --------------------------------------------------------------------------- #
# Layout check.
# --------------------------------------------------------------------------- #

def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype


def _indices(folder: Path) -> list[int]:
    """Sorted example indices of the ``<i>.npy`` files in ``folder`` (others ignored)."""
    out = []
    for p in folder.iterdir():
        if p.suffix != ".npy" or p.name.startswith("."):
            continue
        stem = p.stem
        if not stem.isdigit() or str(int(stem)) != stem:
            raise ValueError(f"unexpected file name {p} (expected <i>.npy with i = 0, 1, ...)")
        out.append(int(stem))
    return sorted(out)


def check_mtan_tree(name: str, root: str | os.PathLike) -> dict[str, SplitLayout]:
    """Checks that ``root`` holds MTAN's preprocessed tree for dataset ``name``.

    Only ``.npy`` headers are read (fast): every needed folder exists, files are numbered
    ``0 .. N-1`` without gaps, ``N`` is the same in every folder of a split, and every
    file has the expected shape (image (H, W, 3), label (H, W), depth (H, W, 1), normal
    (H, W, 3)) with one (H, W) per split and a real (float or integer) dtype. Values are
    checked while building (:class:`UrNyuv2`, :class:`UrCityscapes`).

    Args:
      name: one of :data:`DATASETS`.
      root: the folder that contains ``train/`` and ``val/``.

    Returns:
      ``{'train': SplitLayout, 'test': SplitLayout}``.

    Raises:
      ValueError: for an unknown ``name``.
      DenseDataError: when anything differs from the expected layout; the message shows
        the expected tree, what was found and where the data comes from.
    """
    _check_name(name)
    root_path = Path(os.path.expanduser(os.fspath(root)))
    if not root_path.is_dir():
        raise _error(name, None, f"manual_dir {root_path} does not exist or is not a folder.")
    if not any(root_path.iterdir()):
        raise _error(name, root_path, f"manual_dir {root_path} is empty.")
    layouts = {}
    for split in SPLITS:
        split_dir = root_path / _SPLIT_DIRS[split]
        if not split_dir.is_dir():
            raise _error(name, root_path, f"missing folder {split_dir} (the {split} split).")
        counts: dict[str, int] = {}
        for key, sub in _SUBDIRS[name].items():
            folder = split_dir / sub
            if not folder.is_dir():
                raise _error(name, root_path, f"missing folder {folder}; {split_dir} holds: "
                             f"{listing(split_dir)}.")
            try:
                idx = _indices(folder)
            except ValueError as e:
                raise _error(name, root_path, str(e)) from None
            if not idx:
                raise _error(name, root_path, f"no <i>.npy files in {folder}.")
            if idx != list(range(len(idx))):
                missing = sorted(set(range(idx[-1] + 1)) - set(idx))
                raise _error(name, root_path, (
                    f"gap in the numbering of {folder}: {len(idx)} files, highest index "
                    f"{idx[-1]}, missing {missing[:10]}{' ...' if len(missing) > 10 else ''}."))
            counts[sub] = len(idx)
        if len(set(counts.values())) != 1:
            raise _error(name, root_path, f"the folders of {split_dir} hold different numbers "
                         f"of files: {counts}.")
        n = next(iter(counts.values()))
        hw = None
        for i in range(n):
            for key, sub in _SUBDIRS[name].items():
                path = split_dir / sub / f"{i}.npy"
                try:
                    shape, dtype = _npy_header(path)
                except (OSError, ValueError) as e:
                    raise _error(name, root_path, f"cannot read {path}: {e}") from None
                if hw is None:
                    hw = tuple(shape[:2])
                want = (*hw, *_TRAILING[key])
                if shape != want:
                    raise _error(name, root_path, (
                        f"{path} has shape {shape}; expected {want} ({sub}/ is "
                        f"(H, W{''.join(', ' + str(t) for t in _TRAILING[key])}) and the first "
                        f"file of {split_dir} set (H, W) = {hw})."))
                if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
                    raise _error(name, root_path, f"{path} has dtype {dtype}; expected a float "
                                 "(or integer) array.")
        assert hw is not None
        layouts[split] = SplitLayout(num_examples=n, image_hw=(int(hw[0]), int(hw[1])))
    return layouts


def _load_record(name: str, split_dir: Path, i: int) -> dict[str, np.ndarray]:
    """Example ``i`` of a checked split folder as a record of the module's format."""
    rec = {}
    for key, sub in _SUBDIRS[name].items():
        path = split_dir / sub / f"{i}.npy"
        raw = np.load(path, allow_pickle=False)
        if not np.all(np.isfinite(raw)):
            raise DenseDataError(f"{path} holds NaN or infinite values; MTAN's files hold "
                                 "finite values only (re-extract the download).")
        if key == "semantic":
            c = NUM_CLASSES[name]
            if np.any(raw != np.round(raw)) or raw.min() < -1 or raw.max() > c - 1:
                bad = np.unique(raw[(raw != np.round(raw)) | (raw < -1) | (raw > c - 1)])
                raise DenseDataError(
                    f"{path}: labels must be integers in -1..{c - 1} for {name!r} ({c} classes, "
                    f"-1 = ignore); found {bad[:8].tolist()}. Check that the right label "
                    "folder is used (label_7 for 'cityscapes7', label_19 for 'cityscapes19').")
        elif key == "image" and (raw.min() < -_IMAGE_TOL or raw.max() > 1 + _IMAGE_TOL):
            raise DenseDataError(f"{path}: image values must lie in [0, 1] (MTAN's format); "
                                 f"found [{raw.min()}, {raw.max()}].")
        elif key == "depth" and raw.min() < 0:
            raise DenseDataError(f"{path}: depth must be >= 0 (0 = invalid); found {raw.min()}.")
        rec[key] = raw.astype(RECORD_DTYPES[key])
    return rec


# --------------------------------------------------------------------------- #
# TFDS builders.
# --------------------------------------------------------------------------- #

def _features(name: str) -> tfds.features.FeaturesDict:
    spec = {
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.float32,
                                      encoding="zlib"),
        "semantic": tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding="zlib"),
        "depth": tfds.features.Tensor(shape=(None, None, 1), dtype=np.float32,
                                      encoding="zlib"),
    }
    if "normal" in TASKS[name]:
        spec["normal"] = tfds.features.Tensor(shape=(None, None, 3), dtype=np.float32,
                                              encoding="zlib")
    return tfds.features.FeaturesDict(spec)


class _MtanBuilder(tfds_helper.LocalBuilder, skip_registration=True):
    """Shared code of the MTAN dense builders (manual download, array_record friendly)."""

    def _dense_name(self) -> str:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        name = self._dense_name()
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"MTAN's preprocessed {'NYU-v2' if name == 'nyuv2' else 'Cityscapes'} for "
                f"multi-task dense prediction (tasks {', '.join(TASKS[name])}; "
                f"{NUM_CLASSES[name]} classes, -1 = ignore; depth kind {DEPTH_KIND[name]}, "
                "0 = invalid). Record i of a split is file i of MTAN's folder."),
            features=_features(name),
            homepage="https://github.com/lorenmt/mtan",
            # Keep the file order: src[i] is <split>/<folder>/<i>.npy.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        name = self._dense_name()
        root = tfds_helper.manual_dir(dl_manager, lambda path: _error(
            name, None if path is None else Path(path),
            f"manual_dir {path} does not exist or is empty."))
        layouts = check_mtan_tree(name, root)
        return {split: self._generate_examples(root / _SPLIT_DIRS[split],
                                               layouts[split].num_examples)
                for split in SPLITS}

    def _generate_examples(self, split_dir: Path,
                           num_examples: int) -> Iterator[tuple[int, dict[str, Any]]]:
        name = self._dense_name()
        for i in range(num_examples):
            yield i, _load_record(name, split_dir, i)


def _instructions(name: str) -> str:
    return (f"Download MTAN's preprocessed data and unzip it:\n{_source_note(name)}\n"
            f"Expected layout:\n{_expected_tree(name)}\n")


class UrNyuv2(_MtanBuilder):
    """TFDS builder ``ur_nyuv2``: MTAN's NYU-v2 (semantic 13 classes, depth, normal).

    Manual download (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``); splits ``train`` (795) and
    ``test`` (654, MTAN's ``val/``). Build with ``file_format='array_record'``
    (:func:`prepare_dense` does) to read it without TensorFlow.
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("nyuv2")

    def _dense_name(self) -> str:
        return "nyuv2"


class UrCityscapes(_MtanBuilder):
    """TFDS builder ``ur_cityscapes``: MTAN's Cityscapes (semantic, inverse depth).

    Configs ``label7`` and ``label19`` choose which label folder becomes ``'semantic'``.
    Manual download; splits ``train`` (2975) and ``test`` (500, MTAN's ``val/``).
    """

    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("cityscapes7")
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name="label7", description="7-class labels (label_7/)."),
        tfds.core.BuilderConfig(name="label19", description="19-class labels (label_19/)."),
    ]

    def _dense_name(self) -> str:
        return {"label7": "cityscapes7", "label19": "cityscapes19"}[self.builder_config.name]


def _open_builder(name: str, data_dir: str | os.PathLike) -> tuple[_MtanBuilder, bool]:
    if name == "nyuv2":
        return tfds_helper.open_builder(UrNyuv2, data_dir)
    return tfds_helper.open_builder(
        UrCityscapes, data_dir, config="label7" if name == "cityscapes7" else "label19")


def prepare_dense(name: str, manual_dir: str | os.PathLike | None,
                  data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Builds dataset ``name`` from MTAN's tree in ``manual_dir`` into ``data_dir`` once.

    An existing build in ``data_dir`` is reused as is (``manual_dir`` is then not read and
    may be ``None``; delete the build folder to rebuild). Otherwise the tree is checked
    (:func:`check_mtan_tree`) before anything is written, and every file is converted to
    the record format of this package (values checked: finite, labels integers in
    ``-1 .. C-1``, images in [0, 1], depth >= 0) and stored as zlib-compressed ArrayRecord.

    Args:
      name: one of :data:`DATASETS`.
      manual_dir: the folder holding MTAN's ``train/`` and ``val/``.
      data_dir: TFDS data directory (created if missing).

    Returns:
      The prepared builder (``builder.info.splits['train'].num_examples`` etc.).

    Raises:
      ValueError: for an unknown name.
      DenseDataError: when the build is missing and ``manual_dir`` is ``None``, missing or
        laid out differently, or a file holds bad values.
    """
    _check_name(name)
    builder, prepared = _open_builder(name, data_dir)
    if prepared:
        return builder
    if manual_dir is None:
        raise _error(name, None, f"not prepared in {data_dir} and no manual_dir given; pass the "
                     f"MTAN folder as --config.manual_dir=PATH (or call "
                     f"prepare_dense({name!r}, manual_dir, data_dir)).")
    manual = Path(os.path.expanduser(os.fspath(manual_dir)))
    layouts = check_mtan_tree(name, manual)  # clear errors before TFDS writes anything
    tfds_helper.build(builder, manual_dir=manual)
    logger.info("Built dense dataset %r (%s) into %s", name,
                ", ".join(f"{s} {v.num_examples} x {v.image_hw}" for s, v in layouts.items()),
                builder.data_dir)
    return builder


def dense_source(name: str, split: str, data_dir: str | os.PathLike,
                 manual_dir: str | os.PathLike | None = None) -> Any:
    """Random-access source of one split of a dense dataset.

    ``len(src)`` is the split size and ``src[i]`` the record of file ``i`` (keys
    ``image``, ``semantic``, ``depth`` and, for NYU-v2, ``normal``; see the module
    docstring). Builds first (:func:`prepare_dense`) when ``manual_dir`` is given and the
    build is missing.

    Raises:
      ValueError: for an unknown name or split.
      DenseDataError: when the dataset is not prepared and cannot be built.
    """
    _check_name(name)
    _check_split(split)
    builder = prepare_dense(name, manual_dir, data_dir)
    return builder.as_data_source(split=split)
