"""Meta-Dataset sources read from the raw manual downloads, with the official class order.

Three sources have no TFDS builder and are read here from their original releases, exactly as
the official converter reads them (google-research/meta-dataset,
``meta_dataset/dataset_conversion/dataset_to_records.py``, classes ``AircraftConverter``,
``FungiConverter``, ``TrafficSignConverter``; the newer TFDS port of the same rules is
``meta_dataset/data/tfds/example_generators.py``):

* ``aircraft`` (FGVC-Aircraft 2013b): classes are the lines of ``data/variants.txt``, **sorted**
  (Python string order). The images are those listed in ``data/images_variant_trainval.txt`` and
  ``data/images_variant_test.txt`` (all 10,000; ``images_variant_{train,val}.txt`` are not
  used), each line ``<name> <variant>``; a class's images are its names sorted, read from
  ``data/images/<name>.jpg`` and **cropped to the box** of ``data/images_box.txt``
  (``<name> xmin ymin xmax ymax``, passed unchanged to ``PIL.Image.crop``; this also removes the
  20-pixel copyright banner at the bottom of every image).
* ``fungi`` (FGVCx Fungi 2018): classes are the ``categories`` of ``train.json`` (identical to
  those of ``val.json``) sorted by ``id`` (ids must be ``0 .. N-1``), named
  ``'{id:04d}.{name}'`` (names are kept verbatim, trailing spaces included: some names repeat).
  A class's images are all images of ``train.json`` then of ``val.json`` annotated with that
  category, in the files' order, read from ``<root>/<file_name>`` and not cropped.
* ``traffic_sign`` (GTSRB final training set): 43 classes, all test; class ``k`` is named
  ``'{k:02d}.{sign name}'`` (names of ``TrafficSign_labels.txt``, :data:`TRAFFIC_SIGN_NAMES`) and
  its images are the whole ``Final_Training/Images/{k:05d}/*.ppm`` files (the ``GT-{k:05d}.csv``
  region of interest is **not** used: no crop). The files are sorted, then shuffled with
  ``np.random.RandomState(23).shuffle`` (a fresh generator per class), because GTSRB stores each
  physical sign as a track of 30 consecutive frames (meta-dataset issue #54; the older
  converter kept the sorted order: ``shuffle_traffic_sign=False``).

Class splits (:func:`gen_rand_split_inds`): ``DatasetConverter.get_splits`` calls
``np.random.seed(22)`` and then the source's ``create_splits``, which draws
``trainval = np.random.choice(n, n_train + n_valid, replace=False)``,
``test = setdiff1d(arange(n), trainval)``, ``train = np.random.choice(trainval, n_train,
replace=False)``, ``valid = setdiff1d(trainval, train)``; class ids are the train classes in
drawn order, then valid and test (both sorted). The same rule (seed 22) splits cu_birds, dtd,
quickdraw, vgg_flower and mscoco (:mod:`ur_jax.suites.metadataset.tfds_sources`). With the real
class counts the result is bit-identical to the official ``splits/*_splits.json`` files.

Images (:func:`process_image`) are produced as the converter writes them: a file that is a JPEG
in RGB and needs no crop is passed through byte for byte; anything else is converted to RGB,
cropped / inverted as the source requires, and encoded as JPEG with PIL's defaults
(``jpeg=False`` gives the uint8 array instead, before any JPEG encoding).

Fakes (:func:`write_fake_raw`) are tiny trees in exactly the on-disk format of each release;
with fewer classes than the real data the class split is scaled (:func:`split_counts`).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ur_jax.data.files import listing
from ur_jax.suites.metadataset.common import (
    CLASS_SPLITS,
    ClassSource,
    MetaDatasetError,
    check_source,
)

__all__ = [
    "DOWNLOADS",
    "MANUAL_SOURCES",
    "SPLIT_SEED",
    "TRAFFIC_SIGN_NAMES",
    "TRAFFIC_SIGN_SHUFFLE_SEED",
    "gen_rand_split_inds",
    "manual_class_source",
    "process_image",
    "resolve_manual_dir",
    "split_counts",
    "split_order",
]

# --------------------------------------------------------------------------- #
# Constants (facts of the official converter and of the releases).
# --------------------------------------------------------------------------- #

MANUAL_SOURCES: tuple[str, ...] = ("aircraft", "fungi", "traffic_sign")
"""Sources read from raw manual downloads by :func:`manual_class_source`."""

SPLIT_SEED = 22
"""``DatasetConverter(random_seed=22)``: ``np.random.seed`` before every random class split."""

TRAFFIC_SIGN_SHUFFLE_SEED = 23
"""Seed of the per-class ``RandomState(23).shuffle`` of the sorted GTSRB files."""

TRAFFIC_SIGN_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution",
    "Dangerous curve to the left", "Dangerous curve to the right", "Double curve",
    "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing",
    "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right",
    "Go straight or left", "Keep right", "Keep left", "Roundabout mandatory",
    "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
)
"""GTSRB sign names in class order (meta-dataset ``dataset_conversion/TrafficSign_labels.txt``);
class ``k`` is named ``'%02d.%s' % (k, TRAFFIC_SIGN_NAMES[k])``."""

DOWNLOADS: dict[str, str] = {
    "aircraft": (
        "Download fgvc-aircraft-2013b.tar.gz from "
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz "
        "and extract it (tar -xzf): it creates fgvc-aircraft-2013b/. Pass that folder, or the "
        "folder that contains it, as manual_dir."),
    "fungi": (
        "Download fungi_train_val.tgz (images, 13 GB) and train_val_annotations.tgz "
        "(train.json, val.json) from https://github.com/visipedia/fgvcx_fungi_comp "
        "(https://labs.gbif.org/fgvcx/2018/fungi_train_val.tgz and "
        "https://labs.gbif.org/fgvcx/2018/train_val_annotations.tgz) and extract both into the "
        "same folder, e.g. fungi/ (it then holds images/, train.json and val.json). Pass that "
        "folder, or the folder that contains fungi/, as manual_dir."),
    "traffic_sign": (
        "Download GTSRB_Final_Training_Images.zip from "
        "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
        "GTSRB_Final_Training_Images.zip (see https://benchmark.ini.rub.de) and unzip it: it "
        "creates GTSRB/Final_Training/Images/. Pass GTSRB/, or the folder that contains it, as "
        "manual_dir."),
}
"""Where each manual source comes from and how to lay it out."""

_FOLDERS = {"aircraft": "fgvc-aircraft-2013b", "fungi": "fungi", "traffic_sign": "GTSRB"}
_TREES = {
    "aircraft": (
        "  fgvc-aircraft-2013b/                 (manual_dir, or a folder containing it)\n"
        "    data/variants.txt                  one variant (class) per line\n"
        "    data/images_variant_trainval.txt   '<image name> <variant>' per line\n"
        "    data/images_variant_test.txt       idem\n"
        "    data/images_box.txt                '<image name> xmin ymin xmax ymax' per line\n"
        "    data/images/<image name>.jpg       e.g. data/images/1025794.jpg"),
    "fungi": (
        "  fungi/                               (manual_dir, or a folder containing it)\n"
        "    train.json, val.json               COCO style: images (id, file_name),\n"
        "                                       annotations (image_id, category_id),\n"
        "                                       categories (id 0..N-1, name)\n"
        "    images/<class folder>/<name>.JPG   file_name is relative to fungi/"),
    "traffic_sign": (
        "  GTSRB/                               (manual_dir, or a folder containing it)\n"
        "    Final_Training/Images/00000/       one folder per class, 00000 .. 00042\n"
        "      <track:05d>_<frame:05d>.ppm      the images\n"
        "      GT-00000.csv                     annotations (not used: no ROI crop)"),
}


# --------------------------------------------------------------------------- #
# The official class-split rule.
# --------------------------------------------------------------------------- #

def gen_rand_split_inds(num_train: int, num_valid: int, num_test: int,
                        seed: int | None = SPLIT_SEED
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The official random class split (``dataset_to_records.gen_rand_split_inds``).

    Reproduces ``np.random.seed(seed)`` followed by the converter's two
    ``np.random.choice(..., replace=False)`` draws with a ``RandomState`` of the same seed, so
    the result is bit-identical to the official split files.

    Args:
      num_train: number of training classes.
      num_valid: number of validation classes.
      num_test: number of test classes.
      seed: the converter's seed (22); ``None`` draws from the global NumPy generator.

    Returns:
      ``(train, valid, test)`` index arrays into ``range(num_train + num_valid + num_test)``:
      ``train`` in drawn order, ``valid`` and ``test`` sorted.

    Raises:
      MetaDatasetError: on a negative count.
    """
    counts = (int(num_train), int(num_valid), int(num_test))
    if min(counts) < 0:
        raise MetaDatasetError(f"Class split counts must be >= 0; found {counts}.")
    rng = np.random if seed is None else np.random.RandomState(seed)
    n_trainval = counts[0] + counts[1]
    n = n_trainval + counts[2]
    trainval = rng.choice(n, n_trainval, replace=False)
    test = np.setdiff1d(np.arange(n), trainval)
    train = rng.choice(trainval, counts[0], replace=False)
    valid = np.setdiff1d(trainval, train)
    return train, valid, test


def split_order(counts: Sequence[int], seed: int | None = SPLIT_SEED) -> list[int]:
    """Class indices (into the source's sorted / listed classes) in official class-id order.

    Args:
      counts: ``(train, valid, test)`` class counts.
      seed: the converter's seed.

    Returns:
      ``train + valid + test`` indices of :func:`gen_rand_split_inds`; position ``i`` holds the
      original index of the class with global class id ``i``.
    """
    train, valid, test = gen_rand_split_inds(*counts, seed=seed)
    return [int(i) for i in np.concatenate([train, valid, test])]


def _scaled(official: tuple[int, int, int], n: int) -> tuple[int, int, int]:
    """``official`` scaled to ``n`` classes (largest remainder), keeping every non-empty split
    non-empty when ``n`` allows it."""
    total = sum(official)
    raw = [n * c / total for c in official]
    out = [int(np.floor(r)) for r in raw]
    order = sorted(range(3), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:n - sum(out)]:
        out[i] += 1
    for i in range(3):  # a split that exists officially should exist in the fake too
        if official[i] and not out[i]:
            donor = max(range(3), key=lambda j: out[j])
            if out[donor] > 1:
                out[donor] -= 1
                out[i] += 1
    return (out[0], out[1], out[2])


def split_counts(source: str, num_classes: int,
                 classes_per_split: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(train, valid, test)`` class counts of ``source`` with ``num_classes`` classes.

    With the real class count this is the official split (:data:`CLASS_SPLITS`). With fewer
    classes (a fake) it degrades gracefully: quickdraw applies its official formula
    (``trainval = int(0.85 n)``, ``train = int(0.7 n)``), test-only sources stay test-only, and
    the others scale the official counts (largest remainder, every official split kept
    non-empty when possible). ``classes_per_split`` overrides all of this.

    Args:
      source: a Meta-Dataset source name.
      num_classes: how many classes the data has.
      classes_per_split: explicit ``(train, valid, test)`` counts (must sum to
        ``num_classes``).

    Returns:
      ``(train, valid, test)``.

    Raises:
      MetaDatasetError: when ``classes_per_split`` does not sum to ``num_classes``.
    """
    official = CLASS_SPLITS[check_source(source)]
    n = int(num_classes)
    if classes_per_split is not None:
        counts = tuple(int(c) for c in classes_per_split)
        if len(counts) != 3 or min(counts) < 0 or sum(counts) != n:
            raise MetaDatasetError(
                f"{source}: classes_per_split must be three counts (train, valid, test) summing "
                f"to the {n} classes found; got {tuple(classes_per_split)}.")
        return counts  # type: ignore[return-value]
    if n == sum(official):
        return official
    if source == "quickdraw":
        n_trainval, n_train = int(0.85 * n), int(0.7 * n)
        return (n_train, n_trainval - n_train, n - n_trainval)
    return _scaled(official, n)


# --------------------------------------------------------------------------- #
# Image processing as the official converter writes images.
# --------------------------------------------------------------------------- #

def process_image(image: bytes | np.ndarray, *, bbox: Sequence[int] | None = None,
                  invert: bool = False, resize: int | None = None,
                  jpeg: bool = True) -> bytes | np.ndarray:
    """One image as the official converter stores it.

    The converter (``write_tfrecord_from_image_files.load_and_process_image``) keeps the file's
    bytes when the file is a JPEG in RGB that needs no crop or inversion; otherwise it converts
    to RGB, crops to ``bbox`` (``PIL.Image.crop``), inverts (Omniglot) and re-encodes as JPEG
    with PIL's defaults. ``resize`` (a LANCZOS resize to ``resize x resize`` after the RGB
    conversion) is the CNAPs preparation of MNIST / CIFAR.

    Args:
      image: encoded image bytes, or a uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` array.
      bbox: ``(xmin, ymin, xmax, ymax)`` crop box in PIL's convention (``xmax`` excluded).
      invert: invert the RGB values (``ImageOps.invert``).
      resize: side of a square LANCZOS resize, or ``None``.
      jpeg: return JPEG bytes (True) or the processed uint8 ``(H, W, 3)`` array (False).

    Returns:
      JPEG bytes (``jpeg=True``) or a uint8 RGB array.

    Raises:
      MetaDatasetError: when the bytes are not an image PIL can open, or the array is not
        uint8.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise MetaDatasetError(f"Cannot decode an image ({len(data)} bytes, starting "
                                   f"{data[:8]!r}): {e}. Re-extract the download.") from None
        if (jpeg and bbox is None and not invert and resize is None and img.format == "JPEG"
                and img.mode == "RGB"):
            return data
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise MetaDatasetError(f"Expected a uint8 image array; found dtype {arr.dtype} and "
                                   f"shape {arr.shape}.")
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise MetaDatasetError(f"Expected an (H, W) or (H, W, C) image array; found shape "
                                   f"{arr.shape}.")
        img = Image.fromarray(arr)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if bbox is not None:
        img = img.crop(tuple(int(v) for v in bbox))
    if resize is not None:
        img = img.resize((int(resize), int(resize)), resample=Image.LANCZOS)
    if invert:
        img = ImageOps.invert(img)
    if not jpeg:
        return np.asarray(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Locating the download and reporting problems.
# --------------------------------------------------------------------------- #

def _error(source: str, problem: str, *folders: Path) -> MetaDatasetError:
    found = ""
    for folder in folders:
        if folder is not None and folder.is_dir():
            found += f"\nFound in {folder}: {listing(folder)}"
    return MetaDatasetError(f"Meta-Dataset source {source!r} (raw download): {problem}{found}\n"
                            f"Expected layout:\n{_TREES[source]}\n{DOWNLOADS[source]}")


def _is_root(source: str, path: Path) -> bool:
    if source == "aircraft":
        return (path / "data" / "variants.txt").is_file()
    if source == "fungi":
        return (path / "train.json").is_file() or (path / "val.json").is_file()
    return (path / "Final_Training" / "Images").is_dir()


def resolve_manual_dir(source: str, manual_dir: str | os.PathLike) -> Path:
    """The extracted dataset folder of a manual source: ``manual_dir`` itself or its
    ``fgvc-aircraft-2013b/`` / ``fungi/`` / ``GTSRB/`` child.

    Args:
      source: one of :data:`MANUAL_SOURCES`.
      manual_dir: the extracted folder or its parent.

    Returns:
      The folder holding the release's files.

    Raises:
      MetaDatasetError: when neither ``manual_dir`` nor its expected child holds the release;
        the message shows the expected tree, what was found and where to download the data.
    """
    if source not in MANUAL_SOURCES:
        check_source(source)
        raise MetaDatasetError(f"{source!r} is not read from a raw manual download here; raw "
                               f"sources are {list(MANUAL_SOURCES)}. Read {source!r} from TFDS "
                               "(tfds_sources.tfds_class_source) or from the official records.")
    path = Path(os.path.expanduser(os.fspath(manual_dir)))
    if not path.is_dir():
        raise _error(source, f"manual_dir {path} does not exist or is not a folder.",
                     path.parent)
    for candidate in (path, path / _FOLDERS[source]):
        if candidate.is_dir() and _is_root(source, candidate):
            return candidate
    hint = ""
    if source == "aircraft" and path.name == "data" and (path / "variants.txt").is_file():
        hint = f" Hint: pass its parent {path.parent} instead."
    if source == "traffic_sign" and path.name in ("Final_Training", "Images"):
        up = path.parent if path.name == "Final_Training" else path.parent.parent
        hint = f" Hint: pass {up} (the GTSRB/ folder) instead."
    child = path / _FOLDERS[source]
    raise _error(source, f"{path} is not the extracted dataset folder and has no "
                 f"{_FOLDERS[source]}/ child holding it.{hint}", path, child)


# --------------------------------------------------------------------------- #
# Readers.
# --------------------------------------------------------------------------- #

def _read_lines(source: str, root: Path, path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except FileNotFoundError:
        raise _error(source, f"missing file {path}.", root, path.parent) from None
    except (OSError, UnicodeDecodeError) as e:
        raise _error(source, f"cannot read {path}: {e}", root) from None


def _check_files(source: str, root: Path, paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise _error(source, f"{len(missing)} listed image(s) are missing: {shown}{more}.",
                     root, missing[0].parent)


def _file_images(paths: Sequence[Path], bboxes: Sequence[Sequence[int]] | None,
                 jpeg: bool) -> Iterator[bytes | np.ndarray]:
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            data = f.read()
        yield process_image(data, bbox=None if bboxes is None else bboxes[i], jpeg=jpeg)


def _ordered(source: str, names: Sequence[str],
             classes_per_split: Sequence[int] | None) -> tuple[list[int], tuple[int, int, int]]:
    counts = split_counts(source, len(names), classes_per_split)
    return split_order(counts), counts


def _make_source(source: str, root: Path, names: Sequence[str], order: Sequence[int],
                 counts: tuple[int, int, int], files: Mapping[str, Sequence[Path]],
                 boxes: Mapping[str, Sequence[Sequence[int]]] | None, jpeg: bool,
                 extra: Mapping[str, Any] | None = None) -> ClassSource:
    class_names = [names[i] for i in order]
    per_class = [list(files[n]) for n in class_names]
    per_box = [list(boxes[n]) for n in class_names] if boxes is not None else None

    def images(class_id: int) -> Iterator[bytes | np.ndarray]:
        if not 0 <= class_id < len(per_class):
            raise MetaDatasetError(f"{source}: class id {class_id} out of range "
                                   f"[0, {len(per_class)}).")
        return _file_images(per_class[class_id],
                            None if per_box is None else per_box[class_id], jpeg)

    return ClassSource(
        name=source, class_names=class_names, images=images,
        classes_per_split=None if counts == CLASS_SPLITS[source] else counts,
        images_per_class={i: len(p) for i, p in enumerate(per_class)},
        extra={"origin": "raw", "root": str(root), **(extra or {})})


def _aircraft(root: Path, classes_per_split: Sequence[int] | None, jpeg: bool) -> ClassSource:
    data = root / "data"
    variants = sorted(v.strip() for v in _read_lines("aircraft", root, data / "variants.txt")
                      if v.strip())
    if len(set(variants)) != len(variants):
        raise _error("aircraft", f"{data / 'variants.txt'} lists a variant twice.", data)
    names_to_variant: dict[str, str] = {}
    for fname in ("images_variant_trainval.txt", "images_variant_test.txt"):
        for k, line in enumerate(_read_lines("aircraft", root, data / fname)):
            if not line.strip():
                continue
            parts = line.split(" ", 1)
            if len(parts) != 2 or not parts[1]:
                raise _error("aircraft", f"{data / fname} line {k + 1} is {line!r}; expected "
                             "'<image name> <variant>'.", data)
            names_to_variant[parts[0]] = parts[1]
    boxes: dict[str, tuple[int, int, int, int]] = {}
    for k, line in enumerate(_read_lines("aircraft", root, data / "images_box.txt")):
        if not line.strip():
            continue
        parts = line.split()
        try:
            boxes[parts[0]] = tuple(int(v) for v in parts[1:5])  # type: ignore[assignment]
            if len(parts) != 5:
                raise ValueError
        except (ValueError, IndexError):
            raise _error("aircraft", f"{data / 'images_box.txt'} line {k + 1} is {line!r}; "
                         "expected '<image name> xmin ymin xmax ymax' (integers).",
                         data) from None
    by_variant: dict[str, list[str]] = defaultdict(list)
    for name, variant in names_to_variant.items():
        by_variant[variant].append(name)
    if set(by_variant) != set(variants):
        extra = sorted(set(by_variant) - set(variants))[:5]
        empty = sorted(set(variants) - set(by_variant))[:5]
        raise _error("aircraft", "the variants of images_variant_{trainval,test}.txt do not "
                     f"match variants.txt (listed but not in variants.txt: {extra}; variants "
                     f"without images: {empty}).", data)
    no_box = sorted(n for n in names_to_variant if n not in boxes)
    if no_box:
        raise _error("aircraft", f"{len(no_box)} image(s) have no box in images_box.txt, e.g. "
                     f"{no_box[:5]}.", data)
    files = {v: [data / "images" / f"{n}.jpg" for n in sorted(ns)] for v, ns in
             by_variant.items()}
    box_lists = {v: [boxes[n] for n in sorted(ns)] for v, ns in by_variant.items()}
    if not (data / "images").is_dir():
        raise _error("aircraft", f"missing folder {data / 'images'}.", data)
    _check_files("aircraft", root, [p for ps in files.values() for p in ps])
    order, counts = _ordered("aircraft", variants, classes_per_split)
    return _make_source("aircraft", root, variants, order, counts, files, box_lists, jpeg)


def _load_json(source: str, root: Path, path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise _error(source, f"missing file {path}.", root) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _error(source, f"cannot read {path} as JSON: {e}", root) from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations",
                                                                  "categories")):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise _error(source, f"{path} should be a COCO-style object with 'images', "
                     f"'annotations' and 'categories'; found {keys}.", root)
    return data


def _fungi(root: Path, classes_per_split: Sequence[int] | None, jpeg: bool) -> ClassSource:
    train = _load_json("fungi", root, root / "train.json")
    val = _load_json("fungi", root, root / "val.json")
    if train["categories"] != val["categories"]:
        raise _error("fungi", "train.json and val.json list different categories; both come "
                     "from train_val_annotations.tgz, re-extract it.", root)
    try:
        categories = sorted(train["categories"], key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in categories]
        labels = [f"{int(c['id']):04d}.{c['name']}" for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise _error("fungi", f"a category of train.json lacks an integer 'id' or a 'name' "
                     f"({e!r}).", root) from None
    if ids != list(range(len(ids))):
        raise _error("fungi", f"category ids must be 0 .. {len(ids) - 1} (the official "
                     f"converter's assumption); found {ids[:10]}{' ...' if len(ids) > 10 else ''}.",
                     root)
    images = list(train["images"]) + list(val["images"])
    by_id: dict[int, dict[str, Any]] = {}
    try:
        for image in images:
            if image["id"] in by_id:
                raise _error("fungi", f"image id {image['id']} appears twice in train.json + "
                             "val.json.", root)
            by_id[image["id"]] = {"file_name": image["file_name"]}
        for ann in list(train["annotations"]) + list(val["annotations"]):
            entry = by_id.get(ann["image_id"])
            if entry is None:
                raise _error("fungi", f"an annotation refers to image id {ann['image_id']}, "
                             "which no image has.", root)
            if "class" in entry:
                raise _error("fungi", f"image id {ann['image_id']} is annotated twice.", root)
            entry["class"] = int(ann["category_id"])
    except (KeyError, TypeError, ValueError) as e:
        raise _error("fungi", f"an image lacks 'id' / 'file_name' or an annotation lacks "
                     f"'image_id' / 'category_id' ({e!r}).", root) from None
    by_class: dict[int, list[Path]] = defaultdict(list)
    for image in images:
        entry = by_id[image["id"]]
        if "class" not in entry:
            raise _error("fungi", f"image {image['file_name']!r} (id {image['id']}) has no "
                         "annotation.", root)
        by_class[entry["class"]].append(root / entry["file_name"])
    empty = [labels[i] for i in ids if not by_class.get(i)]
    if empty:
        raise _error("fungi", f"{len(empty)} categories have no image, e.g. {empty[:3]}.", root)
    _check_files("fungi", root, [p for ps in by_class.values() for p in ps])
    files = {labels[i]: by_class[i] for i in ids}
    order, counts = _ordered("fungi", labels, classes_per_split)
    return _make_source("fungi", root, labels, order, counts, files, None, jpeg)


_CLASS_DIR = re.compile(r"^\d{5}$")


def _traffic_sign(root: Path, classes_per_split: Sequence[int] | None, jpeg: bool,
                  shuffle: bool) -> ClassSource:
    images_dir = root / "Final_Training" / "Images"
    dirs = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and _CLASS_DIR.match(p.name))
    n = len(dirs)
    if n == 0 or dirs != [f"{k:05d}" for k in range(n)]:
        raise _error("traffic_sign", f"{images_dir} should hold class folders 00000, 00001, ... "
                     f"without gaps; found {dirs[:8]}.", images_dir)
    if n > len(TRAFFIC_SIGN_NAMES):
        raise _error("traffic_sign", f"found {n} class folders; GTSRB has "
                     f"{len(TRAFFIC_SIGN_NAMES)}.", images_dir)
    names = [f"{k:02d}.{TRAFFIC_SIGN_NAMES[k]}" for k in range(n)]
    files: dict[str, list[Path]] = {}
    for k, name in enumerate(names):
        paths = sorted((images_dir / f"{k:05d}").glob("*.ppm"))
        if not paths:
            raise _error("traffic_sign", f"class folder {images_dir / f'{k:05d}'} holds no "
                         ".ppm image.", images_dir / f"{k:05d}")
        if shuffle:
            np.random.RandomState(TRAFFIC_SIGN_SHUFFLE_SEED).shuffle(paths)
        files[name] = paths
    counts = split_counts("traffic_sign", n, classes_per_split)
    order = split_order(counts)  # (0, 0, n): the identity, the official numeric order
    return _make_source("traffic_sign", root, names, order, counts, files, None, jpeg,
                        extra={"shuffled": shuffle})


def manual_class_source(source: str, manual_dir: str | os.PathLike, *,
                        classes_per_split: Sequence[int] | None = None, jpeg: bool = True,
                        shuffle_traffic_sign: bool = True) -> ClassSource:
    """A :class:`ClassSource` with the official class order, read from a raw manual download.

    Args:
      source: ``'aircraft'``, ``'fungi'`` or ``'traffic_sign'`` (:data:`MANUAL_SOURCES`).
      manual_dir: the extracted dataset folder (``fgvc-aircraft-2013b/``, ``fungi/``,
        ``GTSRB/``) or the folder that contains it.
      classes_per_split: explicit ``(train, valid, test)`` counts; default: the official split,
        scaled for a tree with fewer classes (:func:`split_counts`).
      jpeg: yield images as the official records store them (JPEG bytes, see
        :func:`process_image`); False: processed uint8 RGB arrays.
      shuffle_traffic_sign: shuffle each GTSRB class's sorted files with
        ``RandomState(23)`` as the current official conversion does (False: sorted order, as
        the converter did before meta-dataset issue #54).

    Returns:
      The source's classes in official class-id order; ``images(class_id)`` reads that class's
      files lazily.

    Raises:
      MetaDatasetError: when the tree is missing, incomplete or inconsistent (the message shows
        the expected layout, what was found and where to download the data).
    """
    root = resolve_manual_dir(source, manual_dir)
    if source == "aircraft":
        return _aircraft(root, classes_per_split, jpeg)
    if source == "fungi":
        return _fungi(root, classes_per_split, jpeg)
    return _traffic_sign(root, classes_per_split, jpeg, shuffle_traffic_sign)
