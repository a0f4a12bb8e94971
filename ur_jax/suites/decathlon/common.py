"""Visual Decathlon facts shared by its reader, builder, transforms and fake writer: domains,
splits, class counts, preprocessing constants, the published mean/std, and the checks and error
messages of the on-disk tree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ur_jax.data.files import listing

__all__ = [
    "DOMAINS",
    "DOWNLOAD_NOTE",
    "HOMEPAGE",
    "MEAN_STD",
    "NORMALIZATIONS",
    "NO_FLIP",
    "NUM_CLASSES",
    "RESIZE",
    "SPLITS",
    "SPLIT_SIZES",
    "SQUARE_RESIZE",
    "STATS_SAMPLE",
    "TFDS_NAME",
    "TRAIN_VAL",
    "DecathlonDataError",
    "check_domain",
    "check_domains",
    "check_split",
    "crop_size",
    "data_error",
    "expected_tree",
    "image_shape",
]

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
"""The name :func:`~ur_jax.suites.decathlon.builder.data_source` and
:func:`~ur_jax.suites.decathlon.from_tfds.tfds_source` accept for the union of the train and
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
reference/PAPER.md section 2 lists the same values.
:func:`~ur_jax.suites.decathlon.builder.normalization` uses them by default."""

NORMALIZATIONS: tuple[str, ...] = ("published", "estimated")
"""Where :func:`~ur_jax.suites.decathlon.builder.normalization` takes a domain's mean/std
from: ``'published'`` (:data:`MEAN_STD`, the authors' protocol) or ``'estimated'`` (from the
prepared domain's train images, :func:`~ur_jax.suites.decathlon.builder.metadata`)."""

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

class DecathlonDataError(ValueError):
    """The decathlon's files are missing, laid out differently, or inconsistent.

    The message says what was expected (the ``decathlon-1.0/`` tree), what was found, and
    where the data comes from.
    """


# --------------------------------------------------------------------------- #
# Names, sizes and messages.
# --------------------------------------------------------------------------- #

def check_domain(domain: str) -> None:
    """Raises ValueError unless ``domain`` is one of :data:`DOMAINS`."""
    if domain not in DOMAINS:
        raise ValueError(f"Unknown Visual Decathlon domain {domain!r}. Expected one of "
                         f"{list(DOMAINS)}.")


def check_split(split: str, union: bool = False) -> str:
    """``split`` checked: one of :data:`SPLITS` (``'validation'`` is read as ``'val'``) or, with
    ``union``, :data:`TRAIN_VAL`; else ValueError."""
    if split == "validation":
        return "val"
    if union and split == TRAIN_VAL:
        return split
    if split not in SPLITS:
        allowed = list(SPLITS) + ([TRAIN_VAL] if union else [])
        raise ValueError(f"Unknown split {split!r} for the Visual Decathlon. Expected one of "
                         f"{allowed}; slice the returned source for a subset.")
    return split


def check_domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    """``domains`` as a checked tuple (``None``: all of :data:`DOMAINS`); TypeError for a bare
    string, ValueError for an unknown name."""
    if isinstance(domains, str):
        raise TypeError(f"Expected a sequence of domain names, found the string {domains!r}; "
                        f"pass [{domains!r}] instead.")
    out = DOMAINS if domains is None else tuple(domains)
    for d in out:
        check_domain(d)
    return out


def crop_size(domain: str) -> int:
    """Side of the (square) crop fed to the network: 72 for ``imagenet12``, else 64."""
    check_domain(domain)
    return 72 if domain == "imagenet12" else 64


def image_shape(domain: str) -> tuple[int, int, int]:
    """``(S, S, 3)`` with ``S = crop_size(domain)``: the shape of a preprocessed image."""
    s = crop_size(domain)
    return (s, s, 3)


def expected_tree() -> str:
    """The on-disk layout the builder reads, as an indented text block (for messages)."""
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


def data_error(domain: str | None, root: Path | None, problem: str) -> DecathlonDataError:
    """A :class:`DecathlonDataError` saying ``problem``, what ``root`` holds (if given), the
    expected layout and where the data comes from."""
    what = f"Visual Decathlon domain {domain!r}" if domain else "Visual Decathlon"
    found = ""
    if root is not None and root.is_dir():
        found = f"\nFound in {root}: {listing(root)}"
        for sub in ("data", "annotations"):
            if (root / sub).is_dir():
                found += f"\nFound in {root / sub}: {listing(root / sub)}"
    return DecathlonDataError(f"{what}: {problem}{found}\nExpected layout:\n{expected_tree()}\n"
                              f"{DOWNLOAD_NOTE}")
