"""Multi-task dense prediction data: NYU-v2 and Cityscapes as preprocessed by MTAN.

The paper's dense-prediction experiments use the preprocessed ``.npy`` trees that MTAN
(Liu, Johns, Davison, CVPR 2019; https://github.com/lorenmt/mtan) distributes. This module

* validates such a tree (:func:`check_mtan_tree`) and turns it into TFDS builders stored as
  ArrayRecord files, readable without TensorFlow: ``ur_nyuv2`` (:class:`UrNyuv2`) and
  ``ur_cityscapes`` (:class:`UrCityscapes`, configs ``label7`` / ``label19``);
* writes fake trees in exactly the same on-disk format for tests and smoke runs
  (:func:`write_fake_mtan`);
* reproduces MTAN's training augmentation exactly (random scale-crop resized back with
  PyTorch's ``F.interpolate`` semantics, then a horizontal flip): :func:`augment`;
* builds grain pipelines: infinite, seeded, resumable training batches
  (:func:`dense_train_batches`) and padded evaluation batches with a ``'mask'``
  (:func:`dense_eval_batches`).

Dataset names (:data:`DATASETS`) and what they hold (real sizes):

* ``nyuv2``: builder ``ur_nyuv2``; semantic (13 classes), depth (metric), normal;
  288 x 384; 795 train / 654 test.
* ``cityscapes7`` / ``cityscapes19``: builder ``ur_cityscapes``, config ``label7`` /
  ``label19``; semantic (7 / 19 classes), inverse depth; 128 x 256; 2975 train / 500 test.

Every record (and every batch, with a leading batch axis) is a dict::

    {'image':    float32 (H, W, 3)  RGB in [0, 1] (no mean/std normalisation),
     'semantic': int32   (H, W)     class id, -1 = ignore,
     'depth':    float32 (H, W, 1)  NYU-v2: metric depth (m); Cityscapes: INVERSE depth
                                    (disparity-like, 1/m); 0 = invalid,
     'normal':   float32 (H, W, 3)  unit surface normal, all-zero = invalid (NYU-v2 only)}

The builders accept whatever (H, W) the files have (the features have dynamic spatial
dimensions), as long as every file of a split agrees, so the small fake trees of the
tests build exactly like the real ones.

On-disk format read (``manual_dir``; ``val/`` is the test split)::

    root/{train,val}/image/<i>.npy    float (H, W, 3), RGB in [0, 1]
    root/{train,val}/label/<i>.npy    float (H, W), class ids, -1 = ignore     (NYU-v2)
    root/{train,val}/label_7/<i>.npy  and label_19/<i>.npy                    (Cityscapes)
    root/{train,val}/depth/<i>.npy    float (H, W, 1), 0 = invalid
    root/{train,val}/normal/<i>.npy   float (H, W, 3), all-zero = invalid      (NYU-v2)

with ``<i>`` = 0 .. N-1 in every folder of a split. Typical use::

    from ur_jax.data import dense
    dense.prepare_dense("nyuv2", "~/data/nyuv2", "~/tensorflow_datasets")   # once
    train = dense.dense_source("nyuv2", "train", "~/tensorflow_datasets")
    batches = dense.dense_train_batches(train, batch_size=2, seed=0,
                                        depth_kind=dense.DEPTH_KIND["nyuv2"])
    it = pipeline.iterate(batches)          # checkpointable iterator (ur_jax.data.pipeline)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grain
import numpy as np
import tensorflow_datasets as tfds

from ur_jax.data import pipeline
from ur_jax.data.embedded import _QuietTfds
from ur_jax.data.files import listing

__all__ = [
    "DATASETS",
    "DEFAULT_SCALES",
    "DEPTH_KIND",
    "DEPTH_KINDS",
    "IMAGE_HW",
    "MTAN_SOURCES",
    "NUM_CLASSES",
    "SPLITS",
    "SPLIT_SIZES",
    "TASKS",
    "DenseDataError",
    "SplitLayout",
    "UrCityscapes",
    "UrNyuv2",
    "augment",
    "check_mtan_tree",
    "dense_eval_batches",
    "dense_source",
    "dense_train_batches",
    "hflip",
    "prepare_dense",
    "resize_bilinear_align_corners",
    "resize_nearest",
    "scale_crop",
    "write_fake_mtan",
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

DEFAULT_SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)
"""Zoom factors of MTAN's ``RandomScaleCrop``."""

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
_DTYPES: dict[str, Any] = {"image": np.float32, "semantic": np.int32, "depth": np.float32,
                           "normal": np.float32}
_KEYS = ("image", "semantic", "depth", "normal")
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
        rec[key] = raw.astype(_DTYPES[key])
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


class _MtanBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared code of the MTAN dense builders (manual download, array_record friendly)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No code directory (see ``UrEmbedded.code_path``: TFDS 4.9.x would otherwise
        import ``importlib_resources``); nothing is downloaded, so nothing to look up."""
        return

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
        try:
            root = Path(dl_manager.manual_dir)
        except AssertionError:  # TFDS: missing or empty manual dir
            path = getattr(dl_manager, "_manual_dir", None)
            raise _error(name, None if path is None else Path(path),
                         f"manual_dir {path} does not exist or is empty.") from None
        layouts = check_mtan_tree(name, root)
        return {split: self._generate_examples(root / _SPLIT_DIRS[split],
                                               layouts[split].num_examples)
                for split in SPLITS}

    def _log_download_bytes(self) -> None:
        """Silenced: TFDS prints a 'Downloading and preparing' line to stdout."""

    def _log_download_done(self) -> None:
        """Silenced: :func:`prepare_dense` logs one line instead."""

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


def _builder(name: str, data_dir: str | os.PathLike) -> _MtanBuilder:
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if name == "nyuv2":
        return UrNyuv2(data_dir=data_dir, file_format="array_record")
    return UrCityscapes(config="label7" if name == "cityscapes7" else "label19",
                        data_dir=data_dir, file_format="array_record")


def prepare_dense(name: str, manual_dir: str | os.PathLike | None,
                  data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Builds dataset ``name`` from MTAN's tree in ``manual_dir`` into ``data_dir`` once.

    An existing build in ``data_dir`` is reused as is (``manual_dir`` is then not read and
    may be ``None``; delete the build folder to rebuild). Otherwise the tree is checked
    (:func:`check_mtan_tree`) before anything is written, and every file is converted to
    the record format of this module (values checked: finite, labels integers in
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
    with _QuietTfds():  # TFDS warns about the not-yet-built folder
        builder = _builder(name, data_dir)
        prepared = builder.is_prepared()
    if prepared:
        return builder
    if manual_dir is None:
        raise _error(name, None, f"not prepared in {data_dir} and no manual_dir given; pass the "
                     f"MTAN folder as --config.manual_dir=PATH (or call "
                     f"prepare_dense({name!r}, manual_dir, data_dir)).")
    manual = Path(os.path.expanduser(os.fspath(manual_dir)))
    layouts = check_mtan_tree(name, manual)  # clear errors before TFDS writes anything
    with _QuietTfds():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual), compute_stats=tfds.download.ComputeStatsMode.SKIP))
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


# --------------------------------------------------------------------------- #
# Fake MTAN trees.
# --------------------------------------------------------------------------- #

# Cityscapes' 19 training classes grouped into its 7 categories (flat, construction,
# object, nature, sky, human, vehicle), as label_7 relates to label_19.
_CITY19_TO_7 = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6])


def write_fake_mtan(root: str | os.PathLike, dataset: str, num_train: int, num_test: int,
                    shape: tuple[int, int] = (16, 24), seed: int = 0,
                    dtype: Any = np.float64) -> Path:
    """Writes a fake MTAN tree in exactly the on-disk format of the real download.

    Scenes are blocky class maps (4x4-pixel cells) with a fixed colour, depth and normal
    per class plus noise, so that a model can learn something in smoke runs. Every file
    contains invalid markers: label -1, zero depth and (NYU-v2) all-zero normals, both at
    fixed pixels and at ~5% random pixels. Images are multiples of 1/255 in [0, 1] like
    MTAN's. For Cityscapes both ``label_7`` and ``label_19`` are written (``label_7`` is the
    category of ``label_19``); depth is inverse depth in (0, 0.5].

    Args:
      root: folder to create (``root/train/...``, ``root/val/...``); existing files with
        the same names are overwritten.
      dataset: ``'nyuv2'`` or ``'cityscapes'`` (``'cityscapes7'`` / ``'cityscapes19'``
        are accepted and write the same tree).
      num_train, num_test: examples in ``train/`` and ``val/`` (``num_test`` may be 0 only
        for error tests: the builders need both).
      shape: (H, W).
      seed: fixes every array.
      dtype: array dtype on disk; MTAN's NYU-v2 images are float64 (values printed with
        float64 precision in lorenmt/mtan issue #50), and float64 is assumed for the
        other arrays too (MTAN's loader casts all of them with ``.float()``).

    Returns:
      ``Path(root)``.
    """
    if dataset not in ("nyuv2", "cityscapes", "cityscapes7", "cityscapes19"):
        raise ValueError(f"write_fake_mtan: unknown dataset {dataset!r}; expected 'nyuv2' or "
                         "'cityscapes'.")
    h, w = (int(v) for v in shape)
    if h < 2 or w < 2 or num_train < 0 or num_test < 0:
        raise ValueError(f"write_fake_mtan: need H, W >= 2 and non-negative counts; found "
                         f"shape {shape}, num_train {num_train}, num_test {num_test}.")
    fam = _family(dataset)
    root_path = Path(root)
    table = np.random.default_rng(zlib.crc32(fam.encode()))  # fixed per family
    n_cls = 13 if fam == "nyuv2" else 19
    palette = table.uniform(0.1, 0.9, (n_cls, 3))
    base_depth = (table.uniform(1.0, 8.0, n_cls) if fam == "nyuv2"
                  else table.uniform(0.02, 0.4, n_cls))
    normals = table.normal(size=(n_cls, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    rng = np.random.default_rng([int(seed), zlib.crc32(fam.encode())])
    folders = (["image", "label", "depth", "normal"] if fam == "nyuv2"
               else ["image", "label_7", "label_19", "depth"])
    for split_dir, n in (("train", num_train), ("val", num_test)):
        for f in folders:
            (root_path / split_dir / f).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cells = rng.integers(0, n_cls, (-(-h // 4), -(-w // 4)))
            cls = np.repeat(np.repeat(cells, 4, 0), 4, 1)[:h, :w]
            img = palette[cls] + rng.normal(0.0, 0.05, (h, w, 3))
            img = np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0
            ramp = np.linspace(0.8, 1.2, h)[:, None]
            depth = (base_depth[cls] * ramp)[..., None]
            normal = normals[cls] + rng.normal(0.0, 0.05, (h, w, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            label = cls.astype(np.float64)
            label[rng.random((h, w)) < 0.05] = -1
            label[0, 0] = -1
            depth[rng.random((h, w)) < (0.05 if fam == "nyuv2" else 0.2)] = 0.0
            depth[h - 1, w - 1] = 0.0
            normal[rng.random((h, w)) < 0.05] = 0.0
            normal[0, w - 1] = 0.0
            arrays = {"image": img, "depth": depth}
            if fam == "nyuv2":
                arrays.update(label=label, normal=normal)
            else:
                label7 = np.where(label < 0, -1, _CITY19_TO_7[np.maximum(label, 0).astype(int)])
                arrays.update(label_19=label, label_7=label7)
            for f in folders:
                np.save(root_path / split_dir / f / f"{i}.npy", arrays[f].astype(dtype))
    return root_path


# --------------------------------------------------------------------------- #
# Augmentation (MTAN's RandomScaleCrop + flip, PyTorch F.interpolate semantics).
# --------------------------------------------------------------------------- #

def _check_out_hw(out_hw: Sequence[int]) -> tuple[int, int]:
    oh, ow = (int(v) for v in out_hw)
    if oh < 1 or ow < 1:
        raise ValueError(f"Output size must be positive; found {tuple(out_hw)}.")
    return oh, ow


def _check_spatial(x: np.ndarray, fn: str) -> None:
    if x.ndim not in (2, 3) or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{fn} expects one (H, W) or (H, W, C) array with H, W >= 1; "
                         f"found shape {x.shape}.")


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source taps (i0, i1) and weight of i1 for align_corners=True along one axis."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0, 0.0, 1.0)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, lam


def resize_bilinear_align_corners(x: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize with ``align_corners=True``, as ``F.interpolate(..., 'bilinear',
    align_corners=True)``.

    Output pixel ``(p, q)`` samples the input at ``(p * (H - 1) / (h_out - 1),
    q * (W - 1) / (w_out - 1))`` (0 when the output axis has length 1), interpolating
    linearly between the two neighbouring input pixels of each axis: first along the
    width, then the height (PyTorch's order). Computed in float64, returned as float32:
    PyTorch interpolates MTAN's float64 arrays in float64 before ``.float()``. Pixels
    next to invalid (all-zero) normals blend with them, exactly as in MTAN.

    Args:
      x: (H, W) or (H, W, C) real array.
      out_hw: (h_out, w_out).

    Returns:
      float32 (h_out, w_out) or (h_out, w_out, C).
    """
    x = np.asarray(x)
    _check_spatial(x, "resize_bilinear_align_corners")
    oh, ow = _check_out_hw(out_hw)
    xf = x.astype(np.float64)
    if (oh, ow) == x.shape[:2]:
        return xf.astype(np.float32)
    r0, r1, lh = _linear_taps(x.shape[0], oh)
    c0, c1, lw = _linear_taps(x.shape[1], ow)
    extra = (None,) * (x.ndim - 2)
    lw = lw[(None, slice(None)) + extra]
    lh = lh[(slice(None), None) + extra]

    def along_width(rows: np.ndarray) -> np.ndarray:
        return rows[:, c0] * (1.0 - lw) + rows[:, c1] * lw

    out = along_width(xf[r0]) * (1.0 - lh) + along_width(xf[r1]) * lh
    return out.astype(np.float32)


def _nearest_taps(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n_in - 1)


def resize_nearest(x: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Nearest resize, as ``F.interpolate(..., mode='nearest')`` (PyTorch's legacy rule).

    Output pixel ``(p, q)`` copies input ``(min(floor(p * s_h), H - 1), min(floor(q * s_w),
    W - 1))`` with ``s = float32(in) / float32(out)`` and the product taken in float32, as
    PyTorch's ``nearest_neighbor_compute_source_index`` does (e.g. 26 -> 44 pixels maps
    output 22 to input 12, not 13). Only copies values, so label -1 and depth 0 stay
    exactly -1 and 0, and the dtype is kept.

    Args:
      x: (H, W) or (H, W, C) array of any dtype.
      out_hw: (h_out, w_out).

    Returns:
      (h_out, w_out[, C]) array of ``x``'s dtype.
    """
    x = np.asarray(x)
    _check_spatial(x, "resize_nearest")
    oh, ow = _check_out_hw(out_hw)
    rows = _nearest_taps(x.shape[0], oh)
    cols = _nearest_taps(x.shape[1], ow)
    return x[rows[:, None], cols[None, :]]


def _check_depth_kind(depth_kind: str) -> None:
    if depth_kind not in DEPTH_KINDS:
        raise ValueError(f"Unknown depth_kind {depth_kind!r}; expected one of {DEPTH_KINDS} "
                         "('depth' for NYU-v2's metric depth, 'inverse_depth' for Cityscapes; "
                         "see DEPTH_KIND).")


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in scales)
    if not out or any(not np.isfinite(s) or s < 1.0 for s in out):
        raise ValueError(f"scales must be a non-empty sequence of zoom factors >= 1 (MTAN: "
                         f"{DEFAULT_SCALES}); found {tuple(scales)}.")
    return out


def scale_crop(example: Mapping[str, Any], rng: np.random.Generator,
               scales: Sequence[float] = DEFAULT_SCALES,
               depth_kind: str = "depth") -> dict[str, Any]:
    """MTAN's ``RandomScaleCrop``: a random zoom-in crop resized back to (H, W).

    Draws, in this order, ``s = scales[rng.integers(len(scales))]``, then with
    ``h, w = int(H / s), int(W / s)`` the corner ``i = rng.integers(0, H - h + 1)`` and
    ``j = rng.integers(0, W - w + 1)`` (both ends inclusive, like ``random.randint``).
    The crop ``[i:i+h, j:j+w]`` is resized back to (H, W): ``image`` and ``normal`` with
    :func:`resize_bilinear_align_corners` (normals are not renormalised, and pixels next
    to invalid all-zero normals blend with them, as in MTAN), ``semantic`` and ``depth``
    with :func:`resize_nearest` (so -1 labels and 0 depths survive exactly). A zoom by
    ``s`` brings the scene closer: metric depth is divided by ``s``, inverse depth
    multiplied by ``s`` (in float64, then float32); invalid 0 stays 0. With ``s = 1`` the
    result equals the input. Other keys pass through unchanged.

    Args:
      example: ``{'image': (H, W, 3), 'semantic': (H, W), 'depth': (H, W, 1),
        'normal': (H, W, 3)}``; all but ``image`` optional.
      rng: the random generator.
      scales: zoom factors, each >= 1.
      depth_kind: ``'depth'`` or ``'inverse_depth'``.

    Returns:
      A new dict with the same keys: image/normal/depth float32, semantic its dtype.
    """
    _check_depth_kind(depth_kind)
    scales = _check_scales(scales)
    if "image" not in example:
        raise ValueError(f"scale_crop needs an 'image' entry; found keys {sorted(example)}.")
    height, width = np.shape(example["image"])[:2]
    s = scales[int(rng.integers(len(scales)))]
    h, w = int(height / s), int(width / s)
    i = int(rng.integers(0, height - h + 1))
    j = int(rng.integers(0, width - w + 1))
    out = dict(example)
    for key in ("image", "normal"):
        if key in example:
            crop = np.asarray(example[key])[i:i + h, j:j + w]
            out[key] = resize_bilinear_align_corners(crop, (height, width))
    if "semantic" in example:
        out["semantic"] = resize_nearest(np.asarray(example["semantic"])[i:i + h, j:j + w],
                                         (height, width))
    if "depth" in example:
        d = resize_nearest(np.asarray(example["depth"])[i:i + h, j:j + w],
                           (height, width)).astype(np.float64)
        d = d / s if depth_kind == "depth" else d * s
        out["depth"] = d.astype(np.float32)
    return out


def hflip(example: Mapping[str, Any]) -> dict[str, Any]:
    """Mirrors one example left-right; the normal's x channel (channel 0) is negated.

    ``image``, ``semantic``, ``depth`` and ``normal`` (each (H, W, ...)) are flipped along
    the width axis; other keys pass through. A flip twice is the identity.
    """
    out = dict(example)
    for key in _KEYS:
        if key in example:
            out[key] = np.ascontiguousarray(np.asarray(example[key])[:, ::-1])
    if "normal" in out:
        normal = out["normal"].copy()
        normal[..., 0] = -normal[..., 0]
        out["normal"] = normal
    return out


def augment(example: Mapping[str, Any], rng: np.random.Generator, depth_kind: str = "depth",
            scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> dict[str, Any]:
    """MTAN's training augmentation: :func:`scale_crop`, then :func:`hflip` with p = 0.5.

    The flip is decided by ``rng.random() < 0.5``, drawn after the crop's numbers; so the
    result is a pure function of the example and the generator's state.
    """
    out = scale_crop(example, rng, scales, depth_kind)
    if flip and rng.random() < 0.5:
        out = hflip(out)
    return out


# --------------------------------------------------------------------------- #
# Pipelines.
# --------------------------------------------------------------------------- #

_UNIT = pipeline.Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # uint8 -> [0, 1]


def _as_record(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A source record in this module's dtypes (uint8 images become float32 / 255)."""
    if "image" not in record:
        raise ValueError(f"Dense records need an 'image' entry; found keys {sorted(record)}.")
    image = np.asarray(record["image"])
    out = {"image": _UNIT(image) if image.dtype == np.uint8 else image.astype(np.float32)}
    for key in _KEYS[1:]:
        if key in record:
            out[key] = np.asarray(record[key]).astype(_DTYPES[key])
    return out


def _check_source(source: Any, batch_size: int) -> None:
    if len(source) < 1:
        raise ValueError("The dense data source is empty.")
    if int(batch_size) < 1:
        raise ValueError(f"Batch size must be positive; found {batch_size}.")


def dense_train_batches(source: Any, batch_size: int, seed: int, augment: bool = True,
                        depth_kind: str = "depth",
                        scales: Sequence[float] = DEFAULT_SCALES,
                        flip: bool = True) -> grain.MapDataset:
    """Infinite training batches of a dense source; element ``i`` depends only on
    ``(seed, i)``.

    Shuffles with ``seed`` (a new order every epoch), repeats forever, converts records
    (uint8 images to float32 / 255), applies :func:`augment` with per-record random numbers
    that grain derives from the seed and the record's position, and batches (dropping
    nothing: the stream is infinite). So the iterator's state (one index) makes resume
    exact (:func:`ur_jax.data.pipeline.iterate`, :mod:`ur_jax.checkpointing`).

    Args:
      source: random-access source of records (e.g. :func:`dense_source`).
      batch_size: examples per batch.
      seed: shuffling and augmentation seed.
      augment: apply MTAN's scale-crop + flip.
      depth_kind: ``'depth'`` (NYU-v2) or ``'inverse_depth'`` (Cityscapes); see
        :data:`DEPTH_KIND`.
      scales, flip: see :func:`augment`.

    Returns:
      A :class:`grain.MapDataset` of ``{'image': float32 (B, H, W, 3), 'semantic': int32
      (B, H, W), 'depth': float32 (B, H, W, 1), 'normal': float32 (B, H, W, 3)}`` (only the
      keys the source has).
    """
    _check_source(source, batch_size)
    _check_depth_kind(depth_kind)
    scales = _check_scales(scales)
    ds = grain.MapDataset.source(source).seed(int(seed)).shuffle().repeat().map(_as_record)
    if augment:
        def transform(record: dict[str, np.ndarray],
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
            return _augment_example(record, rng, depth_kind, scales, flip)

        ds = ds.random_map(transform)
    return ds.batch(int(batch_size), drop_remainder=True)


_augment_example = augment  # `dense_train_batches` has a parameter named `augment`


def dense_eval_batches(source: Any, batch_size: int,
                       limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The split once, in order, in batches of exactly ``batch_size``.

    Each batch holds the source's keys (converted as in :func:`dense_train_batches`) and
    ``'mask'``: float32 (B,), 1 for real examples. The last batch is padded with invalid
    examples (image 0, semantic -1, depth 0, normal 0, mask 0), which every dense loss and
    metric ignores, so the compiled evaluation step is reused.

    Args:
      source: random-access source of records.
      batch_size: examples per batch.
      limit: use only the first ``limit`` examples.
    """
    n = len(source) if limit is None else min(int(limit), len(source))
    if n < 1:
        raise ValueError("Cannot evaluate on an empty split (or limit < 1).")
    _check_source(source, batch_size)
    fill = {"image": 0, "semantic": -1, "depth": 0, "normal": 0}
    ds = grain.MapDataset.source(source).slice(slice(0, n)).map(_as_record).batch(
        int(batch_size))
    for batch in ds:
        k = len(batch["image"])
        out = {}
        for key, value in batch.items():
            if k < batch_size:
                pad = np.full((batch_size - k, *value.shape[1:]), fill[key], value.dtype)
                value = np.concatenate([value, pad])
            out[key] = value
        mask = np.zeros(batch_size, np.float32)
        mask[:k] = 1.0
        out["mask"] = mask
        yield out
