"""Visual Decathlon (Rebuffi, Bilen, Vedaldi 2017): ten image domains, read without TensorFlow.

The Visual Domain Decathlon (https://www.robots.ox.ac.uk/~vgg/decathlon/) is the benchmark of
the paper's multi-domain experiments (ResNet-26, Table 2). Every domain's images are resized so
that their shorter side is 72 px; each domain has a ``train``, a ``val`` and a ``test`` split
(the devkit withholds the test labels; predictions go to the evaluation server as a
``results.json`` file, :func:`export_predictions`, unless the labelled ``<d>_test.json``
files that the authors ship, ``VisualDecathlon/labels_test.zip`` in
VICO-UoE/UniversalRepresentations, are put in ``annotations/``). This module

* turns the official on-disk release into the TFDS builder ``ur_decathlon``
  (:class:`UrDecathlon`, one config per domain, ArrayRecord files readable without TensorFlow):
  :func:`prepare`, :func:`data_source`, :func:`metadata`, :func:`check_tree`;
* reproduces the paper's preprocessing exactly (:func:`train_transform`,
  :func:`eval_transform`, :func:`normalization` with Rebuffi et al.'s published per-domain
  mean/std :data:`MEAN_STD`, or the mean/std measured while preparing);
* gives the train + val union the paper's Table 2 models train on (:data:`TRAIN_VAL`);
* writes fake trees in exactly the official on-disk format for tests and smoke runs
  (:func:`write_fake_decathlon`);
* also reads TFDS's own ``visual_domain_decathlon/<domain>`` (which downloads the data itself
  and needs TensorFlow to build) in the same record format: :func:`tfds_source`.

Domains (:data:`DOMAINS`), classes and split sizes (train / val / test):

==============  =======  =========  ======  ======
domain          classes  train      val     test
==============  =======  =========  ======  ======
imagenet12      1000     1232167    49000   48238
aircraft        100      3334       3333    3333
cifar100        100      40000      10000   10000
daimlerpedcls   2        23520      5880    19600
dtd             47       1880       1880    1880
gtsrb           43       31367      7842    12630
omniglot        1623     17853      6492    8115
svhn            10       47217      26040   26032
ucf101          101      7585       1952    3783
vgg-flowers     102      1020       1020    6149
==============  =======  =========  ======  ======

On-disk format read (``manual_dir``: the folder that contains ``data/`` and ``annotations/``,
i.e. ``decathlon-1.0/`` itself, or the folder that contains ``decathlon-1.0/``)::

    decathlon-1.0/
      data/<d>/train/<class:04d>/<n>.jpg        (classes numbered from 0001)
      data/<d>/val/<class:04d>/<n>.jpg
      data/<d>/test/<n>.jpg
      annotations/<d>_train.json                COCO style: "images" (id, file_name, width,
      annotations/<d>_val.json                  height), "annotations" (image_id, category_id),
      annotations/<d>_test_stripped.json        "categories" (id, name); test: no annotations
      annotations/<d>_test.json                 optional: test labels (labels_test.zip)

An image's ``file_name`` is relative to ``decathlon-1.0/`` (``data/aircraft/train/...``; a
name without the ``data/`` prefix is looked up under ``data/`` too). Category ids are offset
per domain (aircraft ``10000001 ...``); a record's ``label`` is the index of its category id in
the domain's sorted category ids (:func:`metadata` ``['category_ids']``), ``-1`` for a test
image without a label. Where to get the data: the devkit ``decathlon-1.0-devkit.tar.gz``
(annotations) and ``decathlon-1.0-data.tar.gz`` (images of nine domains, one ``<d>.tar`` each),
plus ImageNet's ``decathlon-1.0-data-imagenet.tar`` for ``imagenet12``; see
:data:`DOWNLOAD_NOTE`.

Records (``data_source(...)[i]``) are ``{'image': bytes, 'label': int, 'image_id': int}``:
``image`` holds the JPEG file's bytes unchanged (decode with :func:`decode`). Records are in
increasing ``image_id`` order. The prepared builder's metadata (:func:`metadata`) holds
``category_ids``, ``category_names``, per-channel RGB ``mean`` / ``std`` of the train images (in
[0, 1] units, after the training resize, from all train images or a fixed sample of
:data:`STATS_SAMPLE` of them) and ``test_labels`` (whether the test split has labels).

Preprocessing (PAPER.md section 2, as in the authors' code): resize so that the shorter side is
72 px (bilinear; ``daimlerpedcls`` and ``aircraft`` are resized to 72 x 72, ignoring the aspect
ratio), then for training a random crop of :func:`crop_size` (64; 72 for ``imagenet12``) and a
horizontal flip with p = 0.5 except for :data:`NO_FLIP`; for evaluation a centre crop. Mean/std
normalisation follows (:func:`normalization`: the published :data:`MEAN_STD` by default). The
multi-domain students' resize of the 64 px crops to 72 px happens in the model
(:class:`ur_jax.models.MultiHeadClassifier` ``input_sizes``), not here.

Typical use::

    import numpy as np
    from ur_jax.data import decathlon
    decathlon.prepare("~/data/decathlon-1.0", "~/tensorflow_datasets")      # once
    train = decathlon.data_source("aircraft", "train", "~/tensorflow_datasets")
    fn = decathlon.train_transform("aircraft")
    example = fn(train[0], np.random.default_rng(0))     # {'image': uint8 (64, 64, 3), 'label'}
    norm = decathlon.normalization("aircraft")   # Rebuffi et al.'s published mean/std
    both = decathlon.data_source("aircraft", decathlon.TRAIN_VAL, "~/tensorflow_datasets")
    # ... after predicting label indices on the test split of each domain:
    decathlon.export_predictions({"aircraft": (image_ids, labels)},
                                 "~/tensorflow_datasets", "results.json")
"""

from __future__ import annotations

import colorsys
import dataclasses
import glob
import io
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ur_jax.data import pipeline
from ur_jax.data.embedded import _QuietTfds
from ur_jax.data.files import listing
from ur_jax.data.pipeline import ConcatSource

__all__ = [
    "DOMAINS",
    "DOWNLOAD_NOTE",
    "ConcatSource",
    "NO_FLIP",
    "NUM_CLASSES",
    "RESIZE",
    "SPLITS",
    "SPLIT_SIZES",
    "SQUARE_RESIZE",
    "STATS_SAMPLE",
    "TFDS_NAME",
    "MEAN_STD",
    "NORMALIZATIONS",
    "TRAIN_VAL",
    "DecathlonDataError",
    "UrDecathlon",
    "check_tree",
    "crop_size",
    "data_source",
    "decode",
    "eval_transform",
    "export_predictions",
    "image_shape",
    "metadata",
    "normalization",
    "prepare",
    "resize",
    "tfds_source",
    "train_transform",
    "write_fake_decathlon",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Public constants.
# --------------------------------------------------------------------------- #

DOMAINS: tuple[str, ...] = ("imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd",
                            "gtsrb", "omniglot", "svhn", "ucf101", "vgg-flowers")
"""The ten domains: ImageNet first, then alphabetical (TFDS config names; the paper's tables
list Flowers after GTSRB)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Splits of every domain (``test`` labels are withheld unless ``<d>_test.json`` is given)."""

TRAIN_VAL = "train+val"
"""The name :func:`data_source` and :func:`tfds_source` accept for the union of the train and
val splits (train records first, then val): what the paper's Table 2 models and the released
models are trained on (``--trainval`` in the authors' ``run_train_*_train+val.sh``)."""

NUM_CLASSES: dict[str, int] = {
    "imagenet12": 1000, "aircraft": 100, "cifar100": 100, "daimlerpedcls": 2, "dtd": 47,
    "gtsrb": 43, "omniglot": 1623, "svhn": 10, "ucf101": 101, "vgg-flowers": 102,
}
"""Number of classes of each domain in the real data."""

SPLIT_SIZES: dict[str, tuple[int, int, int]] = {
    "imagenet12": (1232167, 49000, 48238),
    "aircraft": (3334, 3333, 3333),
    "cifar100": (40000, 10000, 10000),
    "daimlerpedcls": (23520, 5880, 19600),
    "dtd": (1880, 1880, 1880),
    "gtsrb": (31367, 7842, 12630),
    "omniglot": (17853, 6492, 8115),
    "svhn": (47217, 26040, 26032),
    "ucf101": (7585, 1952, 3783),
    "vgg-flowers": (1020, 1020, 6149),
}
"""(train, val, test) sizes of each domain in the real data."""

NO_FLIP: tuple[str, ...] = ("gtsrb", "omniglot", "svhn")
"""Domains trained without horizontal flips (traffic signs, characters, digits)."""

SQUARE_RESIZE: tuple[str, ...] = ("daimlerpedcls", "aircraft")
"""Domains resized to RESIZE x RESIZE (aspect ratio not kept) instead of shorter side RESIZE."""

RESIZE = 72
"""Shorter image side after resizing (the size the release ships)."""

STATS_SAMPLE = 5000
"""Most train images used for a domain's mean/std (a fixed sample when there are more)."""

MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet12": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "aircraft": ((0.47983041, 0.51074066, 0.53437998), (0.21070221, 0.20508901, 0.23729657)),
    "cifar100": ((0.50705882, 0.48666667, 0.44078431), (0.26745098, 0.25647059, 0.27607843)),
    "daimlerpedcls": ((0.48203529,) * 3, (0.23612616,) * 3),
    "dtd": ((0.52696497, 0.47025164, 0.42396662), (0.25226877, 0.2409176, 0.2499409)),
    "gtsrb": ((0.33921263, 0.3117836, 0.32047045), (0.27560347, 0.26576119, 0.27089863)),
    "omniglot": ((0.08099839,) * 3, (0.27046935,) * 3),
    "svhn": ((0.4376821, 0.4437697, 0.47280442), (0.19803012, 0.20101562, 0.19703614)),
    "ucf101": ((0.49953101, 0.49880386, 0.49981996), (0.10898684, 0.10810246, 0.10679939)),
    "vgg-flowers": ((0.43414682, 0.38309883, 0.29714763), (0.28509808, 0.23842338, 0.2639633)),
}
"""The published per-domain ``(mean, std)`` (RGB, pixels in [0, 1]) that normalise every
image: Rebuffi et al.'s ``decathlon_mean_std.pickle`` (keys ``'<d>mean'`` / ``'<d>std'``), which
the authors' ``VisualDecathlon/datasets.py`` (VICO-UoE/UniversalRepresentations, after
srebuffi/residual_adapters) loads from ``decathlon-1.0/`` for training and testing;
reference/PAPER.md section 2 lists the same values. :func:`normalization` uses them by default."""

NORMALIZATIONS: tuple[str, ...] = ("published", "estimated")
"""Where :func:`normalization` takes a domain's mean/std from: ``'published'``
(:data:`MEAN_STD`, the authors' protocol) or ``'estimated'`` (from the prepared domain's
train images, :func:`metadata`)."""

TFDS_NAME = "visual_domain_decathlon"
"""TFDS's own builder of the decathlon (downloads the data; needs TensorFlow to build)."""

HOMEPAGE = "https://www.robots.ox.ac.uk/~vgg/decathlon/"
DEVKIT_URL = "http://www.robots.ox.ac.uk/~vgg/share/decathlon-1.0-devkit.tar.gz"
DATA_URL = "http://www.robots.ox.ac.uk/~vgg/share/decathlon-1.0-data.tar.gz"
IMAGENET_URL = "http://www.image-net.org/image/decathlon/decathlon-1.0-data-imagenet.tar"

DOWNLOAD_NOTE = (
    f"Get the data from {HOMEPAGE} (Download): the annotations are in the devkit "
    f"decathlon-1.0-devkit.tar.gz ({DEVKIT_URL}; also distributed as annotations.tar.gz), "
    "which extracts to decathlon-1.0/annotations/; the images of the nine non-ImageNet domains "
    f"are in decathlon-1.0-data.tar.gz ({DATA_URL}): extract it inside decathlon-1.0/data/, "
    "then extract every <d>.tar it contains there (tar -xf aircraft.tar ...); the imagenet12 "
    f"images come from ImageNet as decathlon-1.0-data-imagenet.tar ({IMAGENET_URL}, for "
    "registered ImageNet users), extracted into decathlon-1.0/data/ as well. Pass "
    "decathlon-1.0/ (the folder that contains data/ and annotations/), or its parent, as "
    "manual_dir.")
"""Where the data comes from and how to lay it out."""

_ALPHABETICAL = tuple(sorted(DOMAINS))
_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_FAKE_SIZES = ((72, 72), (72, 96), (96, 72))  # (H, W) cycle of the fake images
_CITATION = """\
@inproceedings{rebuffi2017learning,
  title = {Learning multiple visual domains with residual adapters},
  author = {Rebuffi, Sylvestre-Alvise and Bilen, Hakan and Vedaldi, Andrea},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2017}
}"""


class DecathlonDataError(ValueError):
    """The decathlon's files are missing, laid out differently, or inconsistent.

    The message says what was expected (the ``decathlon-1.0/`` tree), what was found, and
    where the data comes from.
    """


# --------------------------------------------------------------------------- #
# Names, sizes and messages.
# --------------------------------------------------------------------------- #

def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"Unknown Visual Decathlon domain {domain!r}. Expected one of "
                         f"{list(DOMAINS)}.")


def _check_split(split: str, union: bool = False) -> str:
    if split == "validation":
        return "val"
    if union and split == TRAIN_VAL:
        return split
    if split not in SPLITS:
        allowed = list(SPLITS) + ([TRAIN_VAL] if union else [])
        raise ValueError(f"Unknown split {split!r} for the Visual Decathlon. Expected one of "
                         f"{allowed}; slice the returned source for a subset.")
    return split


def _check_domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    if isinstance(domains, str):
        raise TypeError(f"Expected a sequence of domain names, found the string {domains!r}; "
                        f"pass [{domains!r}] instead.")
    out = DOMAINS if domains is None else tuple(domains)
    for d in out:
        _check_domain(d)
    return out


def crop_size(domain: str) -> int:
    """Side of the (square) crop fed to the network: 72 for ``imagenet12``, else 64."""
    _check_domain(domain)
    return 72 if domain == "imagenet12" else 64


def image_shape(domain: str) -> tuple[int, int, int]:
    """``(S, S, 3)`` with ``S = crop_size(domain)``: the shape of a preprocessed image."""
    s = crop_size(domain)
    return (s, s, 3)


def _expected_tree() -> str:
    return (
        "  <manual_dir>/                         (decathlon-1.0/, or a folder containing it)\n"
        "    data/\n"
        "      <d>/train/<class:04d>/<n>.jpg     e.g. data/aircraft/train/0001/0000001.jpg\n"
        "      <d>/val/<class:04d>/<n>.jpg\n"
        "      <d>/test/<n>.jpg\n"
        "    annotations/\n"
        "      <d>_train.json, <d>_val.json      COCO style: images (id, file_name relative to\n"
        "                                        decathlon-1.0/, e.g. data/aircraft/...),\n"
        "                                        annotations (image_id, category_id),\n"
        "                                        categories (id, name)\n"
        "      <d>_test_stripped.json            test images, no annotations\n"
        "      <d>_test.json                     optional: test labels (the authors'\n"
        "                                        VisualDecathlon/labels_test.zip)\n"
        f"  with <d> one of {', '.join(DOMAINS)}.")


def _error(domain: str | None, root: Path | None, problem: str) -> DecathlonDataError:
    what = f"Visual Decathlon domain {domain!r}" if domain else "Visual Decathlon"
    found = ""
    if root is not None and root.is_dir():
        found = f"\nFound in {root}: {listing(root)}"
        for sub in ("data", "annotations"):
            if (root / sub).is_dir():
                found += f"\nFound in {root / sub}: {listing(root / sub)}"
    return DecathlonDataError(f"{what}: {problem}{found}\nExpected layout:\n{_expected_tree()}\n"
                              f"{DOWNLOAD_NOTE}")


def _resolve_root(manual_dir: str | os.PathLike | None, domain: str | None = None) -> Path:
    """The ``decathlon-1.0`` folder: ``manual_dir`` itself or its ``decathlon-1.0/`` child."""
    if manual_dir is None:
        raise _error(domain, None, "no manual_dir given (the folder that contains data/ and "
                     "annotations/).")
    path = Path(os.path.expanduser(os.fspath(manual_dir)))
    if not path.is_dir():
        raise _error(domain, None, f"manual_dir {path} does not exist or is not a folder.")
    if (path / "data").is_dir() or (path / "annotations").is_dir():
        return path
    if (path / "decathlon-1.0").is_dir():
        return path / "decathlon-1.0"
    hint = ""
    if path.name == "data" and (path.parent / "annotations").is_dir():
        hint = f" Hint: pass its parent {path.parent} instead."
    raise _error(domain, path, f"manual_dir {path} holds neither data/ and annotations/ nor a "
                 f"decathlon-1.0/ folder.{hint}")


# --------------------------------------------------------------------------- #
# Reading the annotations.
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class _DomainIndex:
    """Everything needed to build one domain, checked against the files."""

    domain: str
    root: Path
    category_ids: list[int]
    category_names: list[str]
    splits: dict[str, list[tuple[int, str, int]]]  # split -> [(image_id, path, label)]
    test_labels: bool


def _load_json(domain: str, root: Path, path: Path, need: Sequence[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise _error(domain, root, f"{path} is not valid JSON ({e}); re-extract the devkit."
                     ) from None
    except OSError as e:
        raise _error(domain, root, f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise _error(domain, root, f"{path} holds a {type(data).__name__}; expected a COCO "
                     "style JSON object.")
    missing = [k for k in need if not isinstance(data.get(k), list)]
    if missing:
        raise _error(domain, root, f"{path} lacks the list(s) {missing} (found keys "
                     f"{sorted(data)}); expected a COCO style file with {list(need)}.")
    return data


def _categories(domain: str, root: Path, path: Path, data: Mapping[str, Any]
                ) -> dict[int, str]:
    out: dict[int, str] = {}
    for cat in data["categories"]:
        try:
            cid, name = int(cat["id"]), str(cat.get("name", cat["id"]))
        except (KeyError, TypeError, ValueError):
            raise _error(domain, root, f"{path}: bad category entry {cat!r}; expected "
                         "{'id': int, 'name': str}.") from None
        if cid in out:
            raise _error(domain, root, f"{path}: category id {cid} appears twice.")
        out[cid] = name
    if not out:
        raise _error(domain, root, f"{path} lists no categories.")
    return out


def _resolve_image(root: Path, file_name: str) -> Path:
    """``file_name`` relative to ``root`` (decathlon-1.0); without ``data/``, under data/."""
    name = file_name.replace("\\", "/")
    path = root / name
    if not name.startswith("data/") and not path.is_file():
        alt = root / "data" / name
        if alt.is_file():
            return alt
    return path


def _split_items(domain: str, root: Path, path: Path, data: Mapping[str, Any],
                 label_of: Mapping[int, int] | None) -> list[tuple[int, str, int]]:
    """(image_id, file path, label) of every image of one annotation file, by image id.

    ``label_of`` maps category id -> label index; ``None`` means the file has no labels.
    """
    files: dict[int, str] = {}
    for img in data["images"]:
        try:
            iid, name = int(img["id"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise _error(domain, root, f"{path}: bad image entry {img!r}; expected "
                         "{'id': int, 'file_name': str, ...}.") from None
        if iid in files:
            raise _error(domain, root, f"{path}: image id {iid} appears twice.")
        files[iid] = name
    if not files:
        raise _error(domain, root, f"{path} lists no images.")
    labels = dict.fromkeys(files, -1)
    if label_of is not None:
        seen: set[int] = set()
        for ann in data["annotations"]:
            try:
                iid, cid = int(ann["image_id"]), int(ann["category_id"])
            except (KeyError, TypeError, ValueError):
                raise _error(domain, root, f"{path}: bad annotation {ann!r}; expected "
                             "{'image_id': int, 'category_id': int, ...}.") from None
            if iid not in files:
                raise _error(domain, root, f"{path}: an annotation refers to image id {iid}, "
                             "which is not in its 'images' list.")
            if iid in seen:
                raise _error(domain, root, f"{path}: image id {iid} has more than one "
                             "annotation; expected exactly one category per image.")
            if cid not in label_of:
                raise _error(domain, root, f"{path}: image id {iid} has category id {cid}, "
                             f"which is not among the domain's {len(label_of)} categories "
                             f"({min(label_of)} .. {max(label_of)}).")
            seen.add(iid)
            labels[iid] = label_of[cid]
        unlabelled = sorted(set(files) - seen)
        if unlabelled:
            raise _error(domain, root, f"{path}: {len(unlabelled)} image(s) have no annotation "
                         f"(e.g. image ids {unlabelled[:5]}); expected one per image.")
    items, missing = [], []
    for iid in sorted(files):
        image_path = _resolve_image(root, files[iid])
        if not image_path.is_file():
            missing.append(f"{files[iid]} (image id {iid})")
        items.append((iid, os.fspath(image_path), labels[iid]))
    if missing:
        raise _error(domain, root, (
            f"{path} lists {len(missing)} image(s) that are missing under {root} "
            f"(file_name is relative to decathlon-1.0/), e.g. {missing[:3]}. Extract the "
            "image archives into data/ (see below)."))
    return items


def _index_domain(root: Path, domain: str, strict: bool = False) -> _DomainIndex:
    """Reads and checks ``domain``'s annotations and images under ``root`` (decathlon-1.0)."""
    ann_dir, data_dir = root / "annotations", root / "data"
    if not ann_dir.is_dir():
        raise _error(domain, root, f"missing folder {ann_dir} (the devkit's annotations).")
    if not (data_dir / domain).is_dir():
        hint = ""
        if (data_dir / f"{domain}.tar").is_file():
            hint = (f" {data_dir / (domain + '.tar')} exists: extract it there "
                    f"(cd {data_dir} && tar -xf {domain}.tar).")
        elif domain == "imagenet12":
            hint = " The imagenet12 images are a separate download (see below)."
        raise _error(domain, root, f"missing folder {data_dir / domain} (the domain's "
                     f"images).{hint}")
    paths = {s: ann_dir / f"{domain}_{s}.json" for s in ("train", "val")}
    for split, p in paths.items():
        if not p.is_file():
            raise _error(domain, root, f"missing annotation file {p} (the {split} split).")
    labelled_test = ann_dir / f"{domain}_test.json"
    stripped_test = ann_dir / f"{domain}_test_stripped.json"
    test_labels = labelled_test.is_file()
    if not test_labels and not stripped_test.is_file():
        raise _error(domain, root, f"missing annotation file {stripped_test} (the test "
                     "split's images).")
    train = _load_json(domain, root, paths["train"], ("images", "annotations", "categories"))
    cats = _categories(domain, root, paths["train"], train)
    ids = sorted(cats)
    expected = NUM_CLASSES[domain]
    if len(ids) != expected:
        msg = (f"{paths['train']} lists {len(ids)} categories; the real {domain!r} has "
               f"{expected}.")
        if strict or len(ids) > expected:
            raise _error(domain, root, msg + (" Re-extract the devkit." if strict else ""))
        logger.warning("%s Continuing with %d classes (a subset or a fake tree; pass "
                       "strict=True to refuse).", msg, len(ids))
    label_of = {cid: i for i, cid in enumerate(ids)}
    splits = {"train": _split_items(domain, root, paths["train"], train, label_of)}
    del train
    val = _load_json(domain, root, paths["val"], ("images", "annotations"))
    if "categories" in val:
        val_ids = sorted(_categories(domain, root, paths["val"], val))
        if val_ids != ids:
            raise _error(domain, root, f"{paths['val']} lists other categories than "
                         f"{paths['train']} ({len(val_ids)} vs {len(ids)} ids).")
    splits["val"] = _split_items(domain, root, paths["val"], val, label_of)
    del val
    if test_labels:
        test = _load_json(domain, root, labelled_test, ("images", "annotations"))
        splits["test"] = _split_items(domain, root, labelled_test, test, label_of)
    else:
        test = _load_json(domain, root, stripped_test, ("images",))
        splits["test"] = _split_items(domain, root, stripped_test, test, None)
    return _DomainIndex(domain=domain, root=root, category_ids=ids,
                        category_names=[cats[c] for c in ids], splits=splits,
                        test_labels=test_labels)


def check_tree(manual_dir: str | os.PathLike, domains: Sequence[str] | None = None,
               strict: bool = False) -> dict[str, dict[str, int]]:
    """Checks the manual tree of ``domains`` and returns their split sizes.

    Reads every annotation file and checks that every listed image exists (no image is
    decoded). Category counts that differ from :data:`NUM_CLASSES` are refused with
    ``strict=True``; otherwise a smaller count (a subset, a fake tree) only warns.

    Returns:
      ``{domain: {'train': n, 'val': n, 'test': n}}``.

    Raises:
      DecathlonDataError: when anything is missing or inconsistent; the message shows the
        expected tree, what was found, and where to get the data.
    """
    out = {}
    for d in _check_domains(domains):
        index = _index_domain(_resolve_root(manual_dir, d), d, strict)
        out[d] = {s: len(v) for s, v in index.splits.items()}
    return out


# --------------------------------------------------------------------------- #
# Decoding and preprocessing.
# --------------------------------------------------------------------------- #

def decode(image_field: Any) -> np.ndarray:
    """An image record field as ``uint8 (H, W, 3)`` RGB.

    Accepts the encoded file (``bytes``, a 0-d object array holding bytes, or a ``uint8``
    vector of the file's bytes), a decoded ``uint8`` array ((H, W), (H, W, 1), (H, W, 3)
    or (H, W, 4); grey is repeated to RGB, alpha dropped; a boolean array reads as 0 / 255)
    or a PIL image. Grayscale and CMYK JPEGs become RGB, as Pillow's ``convert('RGB')``
    does.

    Raises:
      ValueError: undecodable bytes, an unsupported array shape, or an array of another
        dtype than ``uint8`` (e.g. ``uint16`` or float images, which a cast would silently
        wrap modulo 256 or truncate; convert them to ``uint8`` first, as the Meta-Dataset
        decoder :func:`ur_jax.data.metadataset.builder.to_rgb` also requires).
    """
    if isinstance(image_field, Image.Image):
        return np.asarray(image_field.convert("RGB"), dtype=np.uint8)
    if isinstance(image_field, np.ndarray) and image_field.dtype == object:
        image_field = image_field.item()
    if isinstance(image_field, (bytes, bytearray, memoryview)):
        raw = bytes(image_field)
    else:
        arr = np.asarray(image_field)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * np.uint8(255)
        if arr.dtype != np.uint8:
            raise ValueError(f"Cannot decode an image array of dtype {arr.dtype} (shape "
                             f"{arr.shape}): expected uint8 pixels (or the encoded file's "
                             "bytes). Convert it first, e.g. np.clip(x, 0, 255).astype(np.uint8) "
                             "for 0..255 values; a plain cast would wrap values above 255.")
        if arr.ndim == 1:
            raw = arr.tobytes()
        elif arr.ndim == 2:
            return np.repeat(arr[..., None], 3, axis=-1)
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
            if arr.shape[-1] == 1:
                return np.repeat(arr, 3, axis=-1)
            return np.ascontiguousarray(arr[..., :3])
        else:
            raise ValueError(f"Cannot decode an image field of type {type(image_field)} with "
                             f"shape {arr.shape} and dtype {arr.dtype}; expected encoded bytes "
                             "or a (H, W[, C]) array.")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot decode the image ({len(raw)} bytes, starting "
                         f"{raw[:8]!r}): {e}") from e


def _resize_pil(domain: str, img: Image.Image) -> Image.Image:
    w, h = img.size
    if domain in SQUARE_RESIZE:
        size = (RESIZE, RESIZE)
    elif min(w, h) == RESIZE:
        return img
    elif w <= h:  # torchvision Resize(int): the long side is truncated, int(72 * l / s)
        size = (RESIZE, int(RESIZE * h / w))
    else:
        size = (int(RESIZE * w / h), RESIZE)
    if size == (w, h):
        return img
    return img.resize(size, Image.Resampling.BILINEAR)


def resize(domain: str, image_field: Any) -> np.ndarray:
    """The paper's resize of one image: ``uint8 (H', W', 3)``.

    Shorter side to :data:`RESIZE` (bilinear, the longer side ``int(72 * long / short)`` as
    torchvision's ``Resize(72)``; unchanged when the shorter side is already 72), except for
    :data:`SQUARE_RESIZE` domains, resized to 72 x 72.
    """
    _check_domain(domain)
    img = Image.fromarray(decode(image_field))
    return np.asarray(_resize_pil(domain, img), dtype=np.uint8)


def _checked_resize(domain: str, image_field: Any, s: int) -> np.ndarray:
    image = resize(domain, image_field)
    h, w = image.shape[:2]
    if h < s or w < s:
        raise ValueError(f"{domain!r}: image of {h}x{w} after resizing is smaller than the "
                         f"{s}x{s} crop.")
    return image


def _centre_crop(image: np.ndarray, s: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = round((h - s) / 2.0), round((w - s) / 2.0)  # torchvision CenterCrop
    return np.ascontiguousarray(image[top:top + s, left:left + s])


class _TrainTransform:
    """Picklable training transform (see :func:`train_transform`)."""

    def __init__(self, domain: str):
        self.domain, self.size, self.flip = domain, crop_size(domain), domain not in NO_FLIP

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        s = self.size
        image = _checked_resize(self.domain, record["image"], s)
        h, w = image.shape[:2]
        top = int(rng.integers(0, h - s + 1))
        left = int(rng.integers(0, w - s + 1))
        image = image[top:top + s, left:left + s]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": np.int32(record["label"])}

    def __repr__(self) -> str:
        return f"train_transform({self.domain!r})"


class _EvalTransform:
    """Picklable evaluation transform (see :func:`eval_transform`)."""

    def __init__(self, domain: str):
        self.domain, self.size = domain, crop_size(domain)

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        image = _centre_crop(_checked_resize(self.domain, record["image"], self.size),
                             self.size)
        return {"image": image, "label": np.int32(record["label"]),
                "image_id": np.int64(record.get("image_id", -1))}

    def __repr__(self) -> str:
        return f"eval_transform({self.domain!r})"


def train_transform(domain: str) -> Any:
    """The paper's training preprocessing of ``domain``, as ``fn(record, rng)``.

    ``fn`` decodes ``record['image']``, resizes it (:func:`resize`), takes a random
    ``S x S`` crop (``S = crop_size(domain)``; offsets ``rng.integers(0, H - S + 1)`` then
    ``rng.integers(0, W - S + 1)``) and, unless ``domain`` is in :data:`NO_FLIP`, flips it
    left-right when ``rng.random() < 0.5``. The result depends only on the record and the
    generator's state. Returns ``{'image': uint8 (S, S, 3), 'label': int32}`` (no mean/std
    normalisation: see :func:`normalization`). The callable pickles (for grain workers).
    """
    _check_domain(domain)
    return _TrainTransform(domain)


def eval_transform(domain: str) -> Any:
    """The paper's evaluation preprocessing of ``domain``, as ``fn(record)``.

    Resize (:func:`resize`), then the centre ``S x S`` crop (offsets
    ``round((H - S) / 2)``, ``round((W - S) / 2)`` as torchvision's ``CenterCrop``), no
    flip. Returns ``{'image': uint8 (S, S, 3), 'label': int32, 'image_id': int64}``.
    """
    _check_domain(domain)
    return _EvalTransform(domain)


def _mean_std(domain: str, paths: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] over all pixels of the resized images."""
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    count = 0
    for p in paths:
        with open(p, "rb") as f:
            x = resize(domain, f.read()).reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return [float(v) for v in mean], [float(v) for v in std]


def _stats_sample(n: int) -> np.ndarray:
    """Indices of the train images used for the statistics (all, or a fixed sample)."""
    if n <= STATS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))


# --------------------------------------------------------------------------- #
# The TFDS builder.
# --------------------------------------------------------------------------- #

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


class UrDecathlon(tfds.core.GeneratorBasedBuilder):
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

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"{DOWNLOAD_NOTE}\nExpected layout:\n{_expected_tree()}\n")
    BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
        tfds.core.BuilderConfig(name=d, description=_DESCRIPTIONS[d]) for d in DOMAINS
    ]

    def __init__(self, *, strict: bool = False, **kwargs: Any):
        self._strict = bool(strict)
        self._index: _DomainIndex | None = None  # set by `prepare` to avoid a second read
        super().__init__(**kwargs)
        # For pickling (TFDS re-runs __init__ with these).
        self._original_state = dict(self._original_state, strict=self._strict,
                                    file_format=kwargs.get("file_format"))

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No code directory (see ``UrEmbedded.code_path``: TFDS 4.9.x would otherwise
        import ``importlib_resources``); nothing is downloaded, so nothing to look up."""
        return

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
            try:
                manual = dl_manager.manual_dir
            except AssertionError:  # TFDS: missing or empty manual dir
                path = getattr(dl_manager, "_manual_dir", None)
                raise _error(domain, None, f"manual_dir {path} does not exist or is empty."
                             ) from None
            index = _index_domain(_resolve_root(manual, domain), domain, self._strict)
        train = index.splits["train"]
        mean, std = _mean_std(domain, [train[i][1] for i in _stats_sample(len(train))])
        self.info.metadata.update({
            "category_ids": list(index.category_ids),
            "category_names": list(index.category_names),
            "mean": mean,
            "std": std,
            "test_labels": bool(index.test_labels),
        })
        return {split: self._generate_examples(index.splits[split]) for split in SPLITS}

    def _log_download_bytes(self) -> None:
        """Silenced: TFDS prints a 'Downloading and preparing' line to stdout."""

    def _log_download_done(self) -> None:
        """Silenced: :func:`prepare` logs one line per domain instead."""

    def _generate_examples(self, items: Sequence[tuple[int, str, int]]
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
        for key, (image_id, path, label) in enumerate(items):
            with open(path, "rb") as f:
                data = f.read()
            yield key, {"image": data, "label": label, "image_id": image_id}


def _builder(domain: str, data_dir: str | os.PathLike, strict: bool = False) -> UrDecathlon:
    return UrDecathlon(config=domain, data_dir=os.path.expanduser(os.fspath(data_dir)),
                       file_format="array_record", strict=strict)


def _prepared_builder(domain: str, data_dir: str | os.PathLike) -> UrDecathlon:
    with _QuietTfds():  # TFDS warns about a not-yet-built folder
        builder = _builder(domain, data_dir)
        prepared = builder.is_prepared()
    if not prepared:
        raise _error(domain, None, (
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
    line per built domain (logger ``ur_jax.data.decathlon``).

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
    for d in _check_domains(domains):
        with _QuietTfds():
            builder = _builder(d, data_dir, strict)
            if builder.is_prepared():
                continue
        index = _index_domain(_resolve_root(manual_dir, d), d, strict)
        builder._index = index
        with _QuietTfds():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=os.fspath(index.root),
                compute_stats=tfds.download.ComputeStatsMode.SKIP))
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
        or :data:`TRAIN_VAL` (``'train+val'``): a :class:`~ur_jax.data.pipeline.ConcatSource` of the train
        records followed by the val records (the authors' ``--trainval``).
      data_dir: TFDS data directory.
      manual_dir: optional, see :func:`prepare`.

    Raises:
      ValueError: for an unknown domain or split.
      DecathlonDataError: when the domain is not prepared (and cannot be built).
    """
    _check_domain(domain)
    split = _check_split(split, union=True)
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
    _check_domain(domain)
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
    _check_domain(domain)
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


# --------------------------------------------------------------------------- #
# The challenge's results file.
# --------------------------------------------------------------------------- #

def _integers(name: str, domain: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"export_predictions: {name} of {domain!r} must be a 1-D sequence; "
                         f"found shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"export_predictions: {name} of {domain!r} must be integers; "
                             f"found dtype {arr.dtype}.")
    return arr.astype(np.int64)


def export_predictions(predictions: Mapping[str, tuple[Any, Any]],
                       data_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """Writes the challenge's results file for ``predictions``.

    Args:
      predictions: ``{domain: (image_ids, labels)}``, with ``labels`` label indices (as in
        the records, i.e. indices into the domain's sorted category ids).
      data_dir: TFDS data directory holding the prepared domains (for the category ids).
      path: the JSON file to write (folders are created; written atomically).

    Returns:
      ``path`` as a string. The file is one JSON list of ``{"image_id": int, "category_id":
      int}`` (the domain's offset category id), domain by domain in the given order.

    Raises:
      ValueError: for an empty mapping, an unknown domain, image ids and labels of
        different lengths, non-integer values, repeated image ids or label indices out of
        range.
      DecathlonDataError: when a domain is not prepared in ``data_dir``.
    """
    if not isinstance(predictions, Mapping) or not predictions:
        raise ValueError("export_predictions expects a non-empty mapping {domain: (image_ids, "
                         f"labels)}}; found {type(predictions).__name__}.")
    results: list[dict[str, int]] = []
    for domain, value in predictions.items():
        if domain not in DOMAINS:
            raise ValueError(f"export_predictions: unknown domain {domain!r}; expected names "
                             f"from {list(DOMAINS)}.")
        try:
            image_ids, labels = value
        except (TypeError, ValueError):
            raise ValueError(f"export_predictions: predictions[{domain!r}] must be a pair "
                             "(image_ids, labels).") from None
        ids = _integers("image_ids", domain, image_ids)
        labs = _integers("labels", domain, labels)
        if len(ids) != len(labs):
            raise ValueError(f"export_predictions: {domain!r} has {len(ids)} image ids but "
                             f"{len(labs)} labels; they must pair up.")
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"export_predictions: {domain!r} repeats image id(s) "
                             f"{uniq[counts > 1][:5].tolist()}; give one prediction per image.")
        cats = metadata(domain, data_dir)["category_ids"]
        bad = (labs < 0) | (labs >= len(cats))
        if np.any(bad):
            raise ValueError(f"export_predictions: {domain!r} has label indices "
                             f"{np.unique(labs[bad])[:5].tolist()} outside 0..{len(cats) - 1} "
                             f"(the domain has {len(cats)} categories).")
        results.extend({"image_id": int(i), "category_id": int(cats[k])}
                       for i, k in zip(ids.tolist(), labs.tolist()))
    out = Path(os.path.expanduser(os.fspath(path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return os.fspath(out)


# --------------------------------------------------------------------------- #
# Fake trees.
# --------------------------------------------------------------------------- #

def _id_offset(domain: str) -> int:
    """Offset of ``domain``'s category and image ids: (alphabetical index + 1) * 10**7."""
    return (_ALPHABETICAL.index(domain) + 1) * 10**7


def _fake_image(rng: np.random.Generator, cls: int, num_classes: int, hw: tuple[int, int],
                grey: bool) -> Image.Image:
    """A class-dependent picture: the class sets the colour (or grey level) and the stripe
    period/orientation; the rest (phase, noise, brightness jitter) is random."""
    h, w = hw
    frac = cls / max(num_classes, 1)
    period = 6.0 + 4.0 * (cls % 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coord = xx if cls % 2 == 0 else yy
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * coord / period + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0.0, 6.0, (h, w, 1 if grey else 3))
    if grey:
        level = 40.0 + 170.0 * frac
        x = level + 45.0 * (stripes[..., None] - 0.5) + noise
        return Image.fromarray(np.clip(np.rint(x[..., 0]), 0, 255).astype(np.uint8), "L")
    base = np.array(colorsys.hsv_to_rgb(frac, 0.75, 0.85)) * 255.0
    dark = base * 0.45
    x = dark + (base - dark) * stripes[..., None] + noise + rng.uniform(-8, 8)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "RGB")


def write_fake_decathlon(root: str | os.PathLike, domains: Sequence[str] = DOMAINS,
                         classes: Mapping[str, int] | None = None,
                         per_class: tuple[int, int] = (3, 2), test_per_domain: int = 4,
                         seed: int = 0, test_labels: bool = False) -> str:
    """Writes a small fake ``decathlon-1.0/`` tree in the official on-disk format.

    For each domain: JPEGs whose shorter side is 72 px (sizes cycling through 72x72, 72x96
    and 96x72; grayscale JPEGs for ``omniglot``) at ``data/<d>/{train,val}/<class:04d>/
    <n:07d>.jpg`` (classes numbered from 1) and ``data/<d>/test/<n:07d>.jpg``; and COCO style
    ``annotations/<d>_{train,val}.json`` ("info", "images" with id, file_name starting with
    ``data/``, width and height, "annotations" with id, image_id, category_id and dummy
    segmentation / area / bbox / iscrowd, "categories" with id and name),
    ``<d>_test_stripped.json`` (no "annotations") and, with ``test_labels``, ``<d>_test.json``.
    Category and image ids are offset per domain: ``(i + 1) * 10**7 + 1 ...`` with ``i`` the
    domain's index in alphabetical order (aircraft 10000001 ...). Each image's colour (grey
    level for omniglot) and stripe pattern depend on its class, so a tiny network can learn
    them. Deterministic given ``seed``.

    Args:
      root: folder in which ``decathlon-1.0/`` is created (existing files are overwritten).
      domains: domain names.
      classes: ``{domain: n}`` classes to write; default ``min(NUM_CLASSES[d], 5)``.
      per_class: (train, val) images per class.
      test_per_domain: test images per domain (labels cycle through the classes).
      seed: random seed.
      test_labels: also write ``<d>_test.json`` with the test labels.

    Returns:
      The path of the ``decathlon-1.0`` folder.
    """
    domains = _check_domains(domains)
    classes = dict(classes or {})
    unknown = sorted(set(classes) - set(DOMAINS))
    if unknown:
        raise ValueError(f"write_fake_decathlon: unknown domain(s) {unknown} in classes.")
    n_train, n_val = (int(v) for v in per_class)
    if n_train < 1 or n_val < 1 or int(test_per_domain) < 1:
        raise ValueError(f"write_fake_decathlon needs at least one image per class and split "
                         f"and one test image; found per_class={per_class}, "
                         f"test_per_domain={test_per_domain}.")
    base = Path(os.path.expanduser(os.fspath(root))) / "decathlon-1.0"
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    for d in domains:
        n_cls = int(classes.get(d, min(NUM_CLASSES[d], 5)))
        if not 1 <= n_cls <= NUM_CLASSES[d]:
            raise ValueError(f"write_fake_decathlon: {d!r} can have 1..{NUM_CLASSES[d]} "
                             f"classes; found {n_cls}.")
        _write_fake_domain(base, d, n_cls, n_train, n_val, int(test_per_domain),
                           np.random.default_rng([int(seed), zlib.crc32(d.encode())]),
                           test_labels)
    return os.fspath(base)


class _FakeDomainWriter:
    """Writes one fake domain's images, numbering them 1, 2, ... across its splits."""

    def __init__(self, base: Path, domain: str, num_classes: int, rng: np.random.Generator):
        self.base, self.domain, self.num_classes, self.rng = base, domain, num_classes, rng
        self.offset = _id_offset(domain)
        self.counter = 0

    def image(self, split: str, label: int, images: list[dict[str, Any]],
              anns: list[dict[str, Any]]) -> None:
        """One image of class ``label`` (test images go straight into ``test/``)."""
        self.counter += 1
        n = self.counter
        h, w = _FAKE_SIZES[(n - 1) % len(_FAKE_SIZES)]
        folder = f"data/{self.domain}/{split}"
        if split != "test":
            folder += f"/{label + 1:04d}"
        name = f"{folder}/{n:07d}.jpg"
        (self.base / folder).mkdir(parents=True, exist_ok=True)
        picture = _fake_image(self.rng, label, self.num_classes, (h, w),
                              grey=self.domain == "omniglot")
        picture.save(self.base / name, format="JPEG", quality=90)
        image_id = self.offset + n
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns.append({"id": image_id, "image_id": image_id,
                     "category_id": self.offset + 1 + label,
                     "segmentation": [[0, 0, w, 0, w, h, 0, h]], "area": w * h,
                     "bbox": [0, 0, w, h], "iscrowd": 0})


def _write_fake_domain(base: Path, d: str, n_cls: int, n_train: int, n_val: int, n_test: int,
                       rng: np.random.Generator, test_labels: bool) -> None:
    writer = _FakeDomainWriter(base, d, n_cls, rng)
    categories = [{"id": writer.offset + 1 + c, "name": f"{d}_class_{c + 1:04d}",
                   "supercategory": d} for c in range(n_cls)]
    info = {"description": f"Fake Visual Decathlon annotations ({d}) written by ur_jax for "
            "tests", "version": "1.0", "year": 2017, "contributor": "ur_jax"}
    ann_dir = base / "annotations"
    for split, n in (("train", n_train), ("val", n_val)):
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for c in range(n_cls):
            for _ in range(n):
                writer.image(split, c, images, anns)
        _write_json(ann_dir / f"{d}_{split}.json", {"info": info, "images": images,
                                                    "annotations": anns,
                                                    "categories": categories})
    images, anns = [], []
    for k in range(n_test):
        writer.image("test", k % n_cls, images, anns)
    _write_json(ann_dir / f"{d}_test_stripped.json",
                {"info": info, "images": images, "categories": categories})
    labelled = ann_dir / f"{d}_test.json"
    if test_labels:
        _write_json(labelled, {"info": info, "images": images, "annotations": anns,
                               "categories": categories})
    elif labelled.exists():
        labelled.unlink()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


# --------------------------------------------------------------------------- #
# TFDS's own visual_domain_decathlon.
# --------------------------------------------------------------------------- #

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
        raise _error(domain, ann, f"no {' or '.join(names)} in {ann}.")
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
    _check_domain(domain)
    split = _check_split(split, union=True)
    if split == TRAIN_VAL:
        return ConcatSource(*(tfds_source(domain, s, data_dir, annotations_dir, download)
                              for s in ("train", "val")), name=f"{TFDS_NAME}/{domain} {split}")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    name = f"{TFDS_NAME}/{domain}"
    with _QuietTfds():
        builder = tfds.builder(name, data_dir=data_dir)  # a build keeps its stored format
        prepared = builder.is_prepared()
    if not prepared:
        if not download:
            raise DecathlonDataError(f"{name} is not prepared in {data_dir}; call "
                                     "tfds_source(..., download=True) or use the manual "
                                     "builder (decathlon.prepare).")
        with _QuietTfds():
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
        try:
            builder.download_and_prepare()
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



def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ur_jax.data.decathlon --fake DIR [--domains a,b] [--test-labels]``:
    writes a fake ``decathlon-1.0/`` tree (for smoke runs of the Decathlon configs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ur_jax.data.decathlon",
                                     description=main.__doc__)
    parser.add_argument("--fake", required=True, help="folder to write decathlon-1.0/ into")
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help="comma-separated domains (default: all ten)")
    parser.add_argument("--test-labels", action="store_true",
                        help="also write annotations/<d>_test.json with labels")
    args = parser.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d]
    path = write_fake_decathlon(args.fake, domains=domains, test_labels=args.test_labels)
    print(f"Fake Decathlon tree written to {path}; use --config.manual_dir={args.fake}")


if __name__ == "__main__":
    main()
