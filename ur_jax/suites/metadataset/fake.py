"""Fake Meta-Dataset data for tests and smoke runs, in exactly the real on-disk formats.

* :func:`write_fake_records`: a small records tree in the official converted format (read by
  :mod:`ur_jax.suites.metadataset.records`), also from the command line (:func:`main`)::

      python -m ur_jax.suites.metadataset --fake /tmp/md_records \\
          [--sources ilsvrc_2012,omniglot,traffic_sign] [--seed 0]

* :func:`write_fake_raw`: a tiny release of a manual source (aircraft, fungi, traffic_sign) in
  its download's layout (read by :mod:`ur_jax.suites.metadataset.raw`).
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ur_jax.suites.metadataset.common import (
    CLASS_SPLITS,
    SPLITS,
    MetaDatasetError,
    check_source,
)
from ur_jax.suites.metadataset.raw import MANUAL_SOURCES, TRAFFIC_SIGN_NAMES
from ur_jax.suites.metadataset.records import FILE_PATTERN, SPEC_FILE, SPLIT_KEYS
from ur_jax.suites.metadataset.tfrecord import encode_example, write_tfrecords

__all__ = ["DEFAULT_FAKE_SOURCES", "main", "write_fake_raw", "write_fake_records"]

DEFAULT_FAKE_SOURCES = ("ilsvrc_2012", "omniglot", "traffic_sign")
"""Sources written by :func:`write_fake_records` by default: one of each spec kind."""


# --------------------------------------------------------------------------- #
# Fake records in the official format.
# --------------------------------------------------------------------------- #

_FAKE_SPLITS = (6, 5, 5)
_FAKE_IMAGENET_SPLITS = (10, 6, 6)
# Omniglot: two alphabets of >= 5 characters in train and test (the sampler, like the
# official one, refuses an alphabet with fewer characters than min_ways = 5).
_FAKE_OMNIGLOT_SPLITS = (11, 5, 10)


def _fake_splits(source: str, classes_per_split: Any) -> tuple[int, int, int]:
    if isinstance(classes_per_split, Mapping):
        value = classes_per_split.get(source)
    else:
        value = classes_per_split
    official = CLASS_SPLITS[source]
    if value is None:
        default = {"ilsvrc_2012": _FAKE_IMAGENET_SPLITS,
                   "omniglot": _FAKE_OMNIGLOT_SPLITS}.get(source, _FAKE_SPLITS)
        return tuple(min(d, o) for d, o in zip(default, official))  # type: ignore[return-value]
    counts = tuple(int(v) for v in value)
    if len(counts) != 3 or any(c < 0 for c in counts) or not sum(counts):
        raise ValueError(f"write_fake_records: classes_per_split for {source} must be three "
                         f"non-negative counts (train, valid, test), not all 0; found {value}.")
    if any(c > o for c, o in zip(counts, official)):
        raise ValueError(f"write_fake_records: {source} has at most {official} classes "
                         f"(train, valid, test); found {counts}.")
    return counts  # type: ignore[return-value]


def _fake_image(rng: np.random.Generator, class_id: int, size: tuple[int, int],
                omniglot: bool) -> bytes:
    """A JPEG whose colour and stripe orientation / frequency depend on the class."""
    h, w = size
    angle = (class_id * 2.39996) % np.pi  # golden angle: well spread orientations
    freq = 2.0 + (class_id % 4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (x * np.cos(angle) + y * np.sin(angle)) / max(h, w)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * t + phase)
    if omniglot:  # dark strokes on white, stored as RGB like the official conversion
        grey = np.where(wave > 0.55, 30.0, 250.0) + rng.normal(0, 6, (h, w))
        pixels = np.repeat(grey[..., None], 3, axis=2)
    else:
        hue = (class_id * 0.618034) % 1.0
        colour = np.asarray(colorsys.hsv_to_rgb(hue, 0.7, 0.9)) * 255.0
        pixels = colour * (0.7 + 0.3 * wave[..., None]) + rng.normal(0, 8, (h, w, 3))
    img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")  # PIL's default quality, as the converter
    return buf.getvalue()


def _write_class_files(folder: Path, source: str, n_images: Sequence[int],
                       image_size: tuple[int, int], rng: np.random.Generator) -> None:
    lo, hi = image_size
    for class_id, n in enumerate(n_images):
        payloads = []
        for _ in range(int(n)):
            size = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
            jpeg = _fake_image(rng, class_id, size, source == "omniglot")
            payloads.append(encode_example({"image": [jpeg], "label": [class_id]}))
        write_tfrecords(folder / FILE_PATTERN.format(class_id), payloads)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _fake_plain(folder: Path, source: str, counts: tuple[int, int, int],
                n_images: Sequence[int]) -> dict[str, Any]:
    total = sum(counts)
    if source == "traffic_sign":  # the official traffic_sign names are JSON integers
        names: dict[str, Any] = {str(c): c for c in range(total)}
    else:
        names = {str(c): f"{source}_class_{c:04d}" for c in range(total)}
    return {"name": source,
            "classes_per_split": dict(zip(SPLIT_KEYS, counts)),
            "images_per_class": {str(c): int(n) for c, n in enumerate(n_images)},
            "class_names": names,
            "path": os.fspath(folder),
            "file_pattern": FILE_PATTERN,
            "__class__": "DatasetSpecification"}


def _alphabet_sizes(n: int) -> list[int]:
    """Splits ``n`` characters into alphabets of 5, 6, 5, 6, ... characters (a remainder of
    fewer than 5 joins the last alphabet), so every alphabet can make a 5-way episode."""
    sizes: list[int] = []
    left = n
    while left > 0:
        s = min(5 if len(sizes) % 2 == 0 else 6, left)
        sizes.append(s)
        left -= s
    if len(sizes) > 1 and sizes[-1] < 5:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def _fake_omniglot(folder: Path, counts: tuple[int, int, int],
                   n_images: Sequence[int]) -> dict[str, Any]:
    supers_per_split, per_super, super_names, class_names = [], {}, {}, {}
    k = c = 0
    for split, n in zip(SPLITS, counts):
        sizes = _alphabet_sizes(n)
        supers_per_split.append(len(sizes))
        for size in sizes:
            alphabet = f"Fake_{split.capitalize()}_Alphabet_{k:02d}"
            per_super[str(k)] = size
            super_names[str(k)] = alphabet
            for j in range(size):
                class_names[str(c)] = f"{alphabet}-character{j + 1:02d}"
                c += 1
            k += 1
    return {"name": "omniglot",
            "superclasses_per_split": dict(zip(SPLIT_KEYS, supers_per_split)),
            "classes_per_superclass": per_super,
            "images_per_class": {str(i): int(n) for i, n in enumerate(n_images)},
            "superclass_names": super_names,
            "class_names": class_names,
            "path": os.fspath(folder),
            "file_pattern": FILE_PATTERN,
            "__class__": "BiLevelDatasetSpecification"}


def _fake_split_graph(leaves: Sequence[str], internal: Iterator[str], split: str
                      ) -> dict[str, tuple[str, list[str]]]:
    """``{wn_id: (words, children)}`` of a small DAG over ``leaves`` (sorted wn_ids).

    With ``n`` leaves ``l0 .. l{n-1}`` and ``a = max(2, (n - 1) // 2)``: the root's children
    are ``A``, ``B`` and ``l{n-1}``; ``A`` spans ``l0 .. l{a-1}`` (through a node ``C`` over
    ``l0, l1`` when ``a >= 3``); ``B`` spans ``l{a-1} .. l{n-2}``, so ``l{a-1}`` has two
    parents. Spans: root n, A a, B n - a, C 2. Fewer than 4 leaves: one root over all.
    """
    n = len(leaves)
    graph: dict[str, tuple[str, list[str]]] = {}
    if n < 2:
        return graph
    root = next(internal)
    if n < 4:
        graph[root] = (f"fake {split} root", list(leaves))
        return graph
    a = max(2, (n - 1) // 2)
    node_a, node_b = next(internal), next(internal)
    graph[root] = (f"fake {split} root", [node_a, node_b, leaves[n - 1]])
    if a >= 3:
        node_c = next(internal)
        graph[node_c] = (f"fake {split} pair", [leaves[0], leaves[1]])
        graph[node_a] = (f"fake {split} group A", [node_c, *leaves[2:a]])
    else:
        graph[node_a] = (f"fake {split} group A", list(leaves[:a]))
    graph[node_b] = (f"fake {split} group B", list(leaves[a - 1:n - 1]))
    return graph


def _fake_imagenet(folder: Path, counts: tuple[int, int, int], n_images: Sequence[int],
                   rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, int]]:
    total = sum(counts)
    numbers = rng.choice(np.arange(1_000_000, 15_000_000), size=total + 8 * 3, replace=False)
    wn = [f"n{int(v):08d}" for v in numbers]
    leaf_pool, internal_pool = wn[:total], iter(wn[total:])
    subgraphs, images, class_names = {}, {}, {}
    leaf_images: dict[str, int] = {}
    start = 0
    for key, split, n in zip(SPLIT_KEYS, SPLITS, counts):
        leaves = sorted(leaf_pool[start:start + n])
        for offset, leaf in enumerate(leaves):  # class ids: sorted wn_ids within the split
            class_names[str(start + offset)] = leaf
            leaf_images[leaf] = int(n_images[start + offset])
        start += n
        dag = _fake_split_graph(leaves, internal_pool, split)
        children = {w: list(ch) for w, (_, ch) in dag.items()}
        words = {w: wd for w, (wd, _) in dag.items()}
        for leaf in leaves:
            children.setdefault(leaf, [])
            words.setdefault(leaf, f"fake synset {leaf}")
        parents: dict[str, list[str]] = {w: [] for w in children}
        for w, ch in children.items():
            for c in ch:
                parents[c].append(w)
        span: dict[str, set[str]] = {}

        def leaves_of(w: str, span: dict[str, set[str]] = span,
                      children: dict[str, list[str]] = children) -> set[str]:
            if w not in span:
                span[w] = ({w} if not children[w] else
                           set().union(*(leaves_of(c) for c in children[w])))
            return span[w]

        subgraphs[key] = [{"wn_id": w, "words": words[w], "children_ids": sorted(children[w]),
                           "parents_ids": sorted(parents[w])} for w in sorted(children)]
        images[key] = {w: sum(leaf_images[x] for x in leaves_of(w)) for w in sorted(children)}
    spec = {"name": "ilsvrc_2012",
            "split_subgraphs": subgraphs,
            "images_per_class": images,
            "class_names": class_names,
            "path": os.fspath(folder),
            "file_pattern": FILE_PATTERN,
            "__class__": "HierarchicalDatasetSpecification"}
    return spec, leaf_images


def write_fake_records(root: str | os.PathLike,
                       sources: Sequence[str] = DEFAULT_FAKE_SOURCES,
                       classes_per_split: Sequence[int] | Mapping[str, Sequence[int]] | None
                       = None,
                       images_per_class: tuple[int, int] = (3, 6),
                       image_size: tuple[int, int] = (20, 28),
                       seed: int = 0) -> str:
    """Writes a small fake Meta-Dataset records tree in exactly the official on-disk format.

    For each source, ``<root>/<source>/`` gets ``dataset_spec.json`` as the official converter
    writes it (``to_dict()`` + ``json.dump(indent=2)``, with ``__class__``, the ``TRAIN`` /
    ``VALID`` / ``TEST`` keys, ``path`` and ``file_pattern``) and one ``<class id>.tfrecords``
    per class of serialized ``tf.train.Example`` {``'image'``: JPEG bytes, ``'label'``: class
    id}. ``ilsvrc_2012`` gets a HierarchicalDatasetSpecification over a small fake WordNet DAG
    per split (internal nodes spanning n, about n/2 and 2 leaves, one leaf with two parents;
    leaves sorted by WordNet id get consecutive class ids, as in the official conversion) and
    its ``num_leaf_images.json``; ``omniglot`` a BiLevelDatasetSpecification with fake
    alphabets of 5-6 characters; the others a DatasetSpecification (traffic_sign's class names
    are integers, as in the official spec). Images are JPEGs (PIL's default quality, like the
    converter) of random height and width in ``image_size``, coloured and striped by class
    (stripe angle and frequency depend on the class; omniglot: dark strokes on white, stored
    as RGB as the official conversion stores Omniglot) plus noise, so that a model can
    separate the classes. Deterministic given ``seed``.

    Args:
      root: the records root to create (existing files are overwritten).
      sources: source names.
      classes_per_split: ``(train, valid, test)`` for every source, or ``{source: (...)}``;
        default: ilsvrc_2012 (10, 6, 6), omniglot (11, 5, 10), others (6, 5, 5), each capped
        at the official counts (so splits without official classes stay empty, e.g.
        traffic_sign (0, 0, 5)).
      images_per_class: inclusive range of images per class.
      image_size: inclusive range of image height and width, in pixels.
      seed: random seed.

    Returns:
      ``root`` (as a string).
    """
    if isinstance(sources, str):
        raise TypeError(f"write_fake_records expects a sequence of sources, found the string "
                        f"{sources!r}; pass [{sources!r}] instead.")
    for s in sources:
        check_source(s)
    lo, hi = (int(v) for v in images_per_class)
    s_lo, s_hi = (int(v) for v in image_size)
    if not 1 <= lo <= hi or not 1 <= s_lo <= s_hi:
        raise ValueError(f"write_fake_records: images_per_class and image_size are inclusive "
                         f"(min, max) ranges >= 1; found {images_per_class}, {image_size}.")
    base = Path(os.path.expanduser(os.fspath(root)))
    for source in sources:
        counts = _fake_splits(source, classes_per_split)
        rng = np.random.default_rng([int(seed), zlib.crc32(source.encode())])
        folder = base / source
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.tfrecords"):
            old.unlink()
        n_images = [int(v) for v in rng.integers(lo, hi + 1, size=sum(counts))]
        if source == "ilsvrc_2012":
            spec, leaf_images = _fake_imagenet(folder, counts, n_images, rng)
            _write_json(folder / "num_leaf_images.json", leaf_images)
        elif source == "omniglot":
            spec = _fake_omniglot(folder, counts, n_images)
        else:
            spec = _fake_plain(folder, source, counts, n_images)
        _write_json(folder / SPEC_FILE, spec)
        _write_class_files(folder, source, n_images, (s_lo, s_hi), rng)
    return os.fspath(base)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ur_jax.suites.metadataset --fake DIR [--sources a,b] [--seed N]``:
    writes a fake records tree in the official format (for smoke runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ur_jax.suites.metadataset",
                                     description=main.__doc__)
    parser.add_argument("--fake", required=True, help="records root to write")
    parser.add_argument("--sources", default=",".join(DEFAULT_FAKE_SOURCES),
                        help="comma-separated sources (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    path = write_fake_records(args.fake, sources=sources, seed=args.seed)
    print(f"Fake Meta-Dataset records written to {path} ({', '.join(sources)}). Build them "
          f"with ur_jax.suites.metadataset.prepare({sources!r}, DATA_DIR, origin='records', "
          f"records_dir={path!r}).")


# --------------------------------------------------------------------------- #
# Fake raw downloads of the manual sources.
# --------------------------------------------------------------------------- #

_FAKE_VARIANTS = ("707-320", "A300B4", "F-16A/B", "Cessna 172", "DHC-8-100", "Tu-154",
                  "BAE 146-200", "MD-80", "Spitfire", "Yak-42")
_FAKE_FUNGI = ("Amanita muscaria", "Boletus edulis", "Amanita muscaria",
               "Clitocybe odora var. odora ", "Russula emetica", "Cantharellus cibarius",
               "Mycena rosea", "Xylaria hypoxylon")
_DEFAULT_CLASSES = {"aircraft": 6, "fungi": 6, "traffic_sign": 4}


def _raw_image(rng: np.random.Generator, height: int, width: int, tint: int) -> np.ndarray:
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img[..., tint % 3] = (img[..., tint % 3] // 2 + 100).astype(np.uint8)
    return img


def _save(img: np.ndarray, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)


def _fake_aircraft(root: Path, n: int, per_class: int, rng: np.random.Generator) -> Path:
    base = root / "fgvc-aircraft-2013b"
    data = base / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    variants = [_FAKE_VARIANTS[i % len(_FAKE_VARIANTS)] + (f"-{i // len(_FAKE_VARIANTS)}"
                if i >= len(_FAKE_VARIANTS) else "") for i in range(n)]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    boxes = []
    names = [f"{v:07d}" for v in rng.choice(np.arange(1, 10**7), n * per_class, replace=False)]
    for k, (name, cls) in enumerate(zip(names, np.repeat(np.arange(n), per_class))):
        h, w = int(rng.integers(40, 56)), int(rng.integers(48, 72))
        img = _raw_image(rng, h, w, int(cls))
        img[-20:] = 0  # the copyright banner of the real images
        x0, y0 = int(rng.integers(0, w // 3)), int(rng.integers(0, (h - 20) // 3))
        x1, y1 = int(rng.integers(w // 2, w)), int(rng.integers((h - 20) // 2, h - 20))
        _save(img, data / "images" / f"{name}.jpg", "JPEG")
        boxes.append(f"{name} {x0} {y0} {x1} {y1}")
        lines[("train", "val", "test")[k % 3]].append(f"{name} {variants[int(cls)]}")
    order = rng.permutation(n).tolist()  # variants.txt is not sorted in the fake
    (data / "variants.txt").write_text("".join(f"{variants[i]}\n" for i in order))
    for split in ("train", "val", "test"):
        (data / f"images_variant_{split}.txt").write_text("".join(f"{x}\n" for x in lines[split]))
    trainval = lines["train"] + lines["val"]
    (data / "images_variant_trainval.txt").write_text("".join(f"{x}\n" for x in trainval))
    (data / "images_box.txt").write_text("".join(f"{x}\n" for x in boxes))
    return base


def _fake_fungi(root: Path, n: int, per_class: int, rng: np.random.Generator) -> Path:
    base = root / "fungi"
    names = [_FAKE_FUNGI[i % len(_FAKE_FUNGI)] for i in range(n)]
    categories = [{"id": i, "name": name, "supercategory": "Fungi"}
                  for i, name in enumerate(names)]
    entries = []
    image_id = 1000
    for cls in range(n):
        folder = f"{10000 + cls}_{names[cls].strip().replace(' ', '_')}"
        for k in range(per_class):
            h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
            fname = f"images/{folder}/FU{image_id:06d}.JPG"
            _save(_raw_image(rng, h, w, cls), base / fname, "JPEG")
            split = "val" if per_class > 1 and k == per_class - 1 else "train"
            entries.append((split, {"id": image_id, "file_name": fname, "width": w,
                                    "height": h, "license": 0},
                            {"id": image_id + 5, "image_id": image_id, "category_id": cls}))
            image_id += 1
    order = rng.permutation(len(entries))  # the files do not group images by class
    for split in ("train", "val"):
        chosen = [entries[i] for i in order if entries[i][0] == split]
        doc = {"info": {"description": "fake FGVCx fungi 2018"}, "licenses": [],
               "images": [e[1] for e in chosen], "annotations": [e[2] for e in chosen],
               "categories": categories}
        (base / f"{split}.json").write_text(json.dumps(doc))
    return base


def _fake_gtsrb(root: Path, n: int, per_class: int, rng: np.random.Generator) -> Path:
    if n > len(TRAFFIC_SIGN_NAMES):
        raise MetaDatasetError(f"GTSRB has {len(TRAFFIC_SIGN_NAMES)} classes; asked for {n}.")
    base = root / "GTSRB"
    for cls in range(n):
        folder = base / "Final_Training" / "Images" / f"{cls:05d}"
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k in range(per_class):
            h, w = int(rng.integers(16, 32)), int(rng.integers(16, 32))
            fname = f"{k // 3:05d}_{k % 3:05d}.ppm"  # track, frame
            _save(_raw_image(rng, h, w, cls), folder / fname, "PPM")
            rows.append(f"{fname};{w};{h};{min(5, w // 4)};{min(5, h // 4)};{w - 5};{h - 5};{cls}")
        (folder / f"GT-{cls:05d}.csv").write_text("\n".join(rows) + "\n")
    return base


_FAKERS: dict[str, Callable[[Path, int, int, np.random.Generator], Path]] = {
    "aircraft": _fake_aircraft, "fungi": _fake_fungi, "traffic_sign": _fake_gtsrb}


def write_fake_raw(root: str | os.PathLike, source: str, num_classes: int | None = None,
                   images_per_class: int = 3, seed: int = 0) -> Path:
    """Writes a tiny fake release of a manual source in exactly its on-disk format.

    Aircraft: ``fgvc-aircraft-2013b/data/`` with an unsorted ``variants.txt``,
    ``images_variant_{train,val,trainval,test}.txt``, ``images_box.txt`` and JPEG images with a
    black 20-pixel bottom banner. Fungi: ``fungi/{train,val}.json`` (COCO style, images of all
    classes interleaved, two categories sharing a name, one name with a trailing space) and
    ``images/<folder>/<name>.JPG``. Traffic sign: ``GTSRB/Final_Training/Images/<k:05d>/``
    with ``<track>_<frame>.ppm`` images and ``GT-<k:05d>.csv``.

    Args:
      root: folder to write into (created if needed).
      source: one of :data:`MANUAL_SOURCES`.
      num_classes: classes to write (default 6, 6 and 4; fewer than the real data).
      images_per_class: images per class (>= 1).
      seed: seed of the random content.

    Returns:
      The dataset folder (``root/fgvc-aircraft-2013b``, ``root/fungi`` or ``root/GTSRB``), which
      :func:`manual_class_source` accepts (as does ``root``).

    Raises:
      MetaDatasetError: for an unknown source or non-positive counts.
    """
    if source not in _FAKERS:
        raise MetaDatasetError(f"No fake raw tree for {source!r}; expected one of "
                               f"{list(MANUAL_SOURCES)}.")
    n = _DEFAULT_CLASSES[source] if num_classes is None else int(num_classes)
    if n < 1 or images_per_class < 1:
        raise MetaDatasetError(f"num_classes and images_per_class must be >= 1; got {n} and "
                               f"{images_per_class}.")
    path = Path(os.path.expanduser(os.fspath(root)))
    path.mkdir(parents=True, exist_ok=True)
    return _FAKERS[source](path, n, int(images_per_class), np.random.default_rng(seed))
