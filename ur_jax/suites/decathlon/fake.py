"""Fake Visual Decathlon trees for tests and smoke runs, in exactly the official on-disk format
(read by :mod:`ur_jax.suites.decathlon.tree`), and the command line that writes one::

    python -m ur_jax.suites.decathlon --fake DIR [--domains a,b] [--test-labels]
"""

from __future__ import annotations

import colorsys
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ur_jax.suites.decathlon.common import DOMAINS, NUM_CLASSES, check_domains

__all__ = ["main", "write_fake_decathlon"]

_ALPHABETICAL = tuple(sorted(DOMAINS))
_FAKE_SIZES = ((72, 72), (72, 96), (96, 72))  # (H, W) cycle of the fake images


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
    domains = check_domains(domains)
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ur_jax.suites.decathlon --fake DIR [--domains a,b] [--test-labels]``:
    writes a fake ``decathlon-1.0/`` tree (for smoke runs of the Decathlon configs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ur_jax.suites.decathlon",
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
