"""The paper's Visual Decathlon preprocessing (PAPER.md section 2, as in the authors' code).

Decode (:func:`decode`), resize so that the shorter side is 72 px (:func:`resize`; bilinear;
``daimlerpedcls`` and ``aircraft`` to 72 x 72), then for training a random crop of
:func:`~ur_jax.suites.decathlon.common.crop_size` (64; 72 for ``imagenet12``) and a horizontal
flip with p = 0.5 except for :data:`~ur_jax.suites.decathlon.common.NO_FLIP`
(:func:`train_transform`); for evaluation a centre crop (:func:`eval_transform`). Mean/std
normalisation follows in the pipeline (:func:`ur_jax.suites.decathlon.builder.normalization`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ur_jax.suites.decathlon.common import (
    NO_FLIP,
    RESIZE,
    SQUARE_RESIZE,
    STATS_SAMPLE,
    check_domain,
    crop_size,
)

__all__ = [
    "decode",
    "eval_transform",
    "mean_std",
    "resize",
    "stats_sample",
    "train_transform",
]


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
        decoder :func:`ur_jax.suites.metadataset.builder.to_rgb` also requires).
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
    check_domain(domain)
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
    normalisation: see :func:`ur_jax.suites.decathlon.builder.normalization`). The callable
    pickles (for grain workers).
    """
    check_domain(domain)
    return _TrainTransform(domain)


def eval_transform(domain: str) -> Any:
    """The paper's evaluation preprocessing of ``domain``, as ``fn(record)``.

    Resize (:func:`resize`), then the centre ``S x S`` crop (offsets
    ``round((H - S) / 2)``, ``round((W - S) / 2)`` as torchvision's ``CenterCrop``), no
    flip. Returns ``{'image': uint8 (S, S, 3), 'label': int32, 'image_id': int64}``.
    """
    check_domain(domain)
    return _EvalTransform(domain)


def mean_std(domain: str, paths: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] over all pixels of the image files ``paths`` after
    :func:`resize` (what the builder stores as the ``'estimated'`` normalisation)."""
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


def stats_sample(n: int) -> np.ndarray:
    """Indices of the ``n`` train images used for the statistics: all of them, or a fixed
    sample of :data:`~ur_jax.suites.decathlon.common.STATS_SAMPLE` (sorted, seed 0)."""
    if n <= STATS_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, STATS_SAMPLE, replace=False))
