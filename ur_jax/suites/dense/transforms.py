"""MTAN's training augmentation and the grain pipelines of dense prediction.

* :func:`augment`: MTAN's ``RandomScaleCrop`` (a random zoom by one of :data:`DEFAULT_SCALES`,
  resized back with PyTorch's ``F.interpolate`` semantics: :func:`resize_bilinear_align_corners`
  for images, :func:`resize_nearest` for labels, depth and normals; metric depth divided by the
  zoom, inverse depth multiplied) then a horizontal flip (:func:`hflip`, normals' x negated);
* :func:`dense_train_batches`: infinite, seeded, resumable training batches;
* :func:`dense_eval_batches`: padded evaluation batches with a ``'mask'``.

They work on any source of dense records (:mod:`ur_jax.suites.dense.mtan`,
:mod:`ur_jax.suites.dense.scenes`); the record format is described in :mod:`ur_jax.suites.dense`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from ur_jax.data import pipeline
from ur_jax.suites.dense.mtan import DEPTH_KINDS, RECORD_DTYPES, RECORD_KEYS

__all__ = [
    "DEFAULT_SCALES",
    "augment",
    "dense_eval_batches",
    "dense_train_batches",
    "hflip",
    "resize_bilinear_align_corners",
    "resize_nearest",
    "scale_crop",
]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)
"""Zoom factors of MTAN's ``RandomScaleCrop``."""


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
    for key in RECORD_KEYS:
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
    """A source record in the dtypes of :data:`RECORD_DTYPES` (uint8 images become
    float32 / 255)."""
    if "image" not in record:
        raise ValueError(f"Dense records need an 'image' entry; found keys {sorted(record)}.")
    image = np.asarray(record["image"])
    out = {"image": _UNIT(image) if image.dtype == np.uint8 else image.astype(np.float32)}
    for key in RECORD_KEYS[1:]:
        if key in record:
            out[key] = np.asarray(record[key]).astype(RECORD_DTYPES[key])
    return out


def _check_source(source: Any, batch_size: int) -> None:
    if len(source) < 1:
        raise ValueError("The dense data source is empty.")
    if int(batch_size) < 1:
        raise ValueError(f"Batch size must be positive; found {batch_size}.")


def dense_train_batches(source: Any, batch_size: int, seed: int, augment: bool = True,
                        depth_kind: str = "depth",
                        scales: Sequence[float] = DEFAULT_SCALES,
                        flip: bool = True, process_index: int = 0,
                        process_count: int = 1) -> grain.MapDataset:
    """Infinite training batches of a dense source; element ``i`` depends only on
    ``(seed, i)``.

    Shuffles with ``seed`` (a new order every epoch), repeats forever, converts records
    (uint8 images to float32 / 255), applies :func:`augment` with per-record random numbers
    that grain derives from the seed and the record's position, and batches (dropping
    nothing: the stream is infinite). So the iterator's state (one index) makes resume
    exact (:func:`ur_jax.data.pipeline.iterate`, :mod:`ur_jax.checkpointing`).

    Args:
      source: random-access source of records (e.g. :func:`ur_jax.suites.dense.mtan.dense_source`).
      batch_size: examples per batch.
      seed: shuffling and augmentation seed.
      augment: apply MTAN's scale-crop + flip.
      depth_kind: ``'depth'`` (NYU-v2) or ``'inverse_depth'`` (Cityscapes); see
        :data:`ur_jax.suites.dense.mtan.DEPTH_KIND`.
      scales, flip: see :func:`augment`.
      process_index, process_count: this process's part of every global batch
        (:func:`ur_jax.data.pipeline.process_part`), ``B = batch_size // process_count``.

    Raises:
      ValueError: an empty source, a bad batch size (or one ``process_count`` does not
        divide), depth kind or scales.

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
    ds = pipeline.process_part(ds, batch_size, process_index, process_count)
    return ds.batch(int(batch_size) // int(process_count), drop_remainder=True)


_augment_example = augment  # `dense_train_batches` has a parameter named `augment`


def _stack_part(records: grain.MapDataset, indices: np.ndarray) -> dict[str, np.ndarray]:
    """``records[indices]`` stacked into a batch; for no index, one record of the split with
    ``'mask'`` 0 (its arrays give the shapes and dtypes of an all-padding part)."""
    chosen = [records[int(i)] for i in indices] or [records[0]]
    out = {k: np.stack([r[k] for r in chosen]) for k in chosen[0]}
    out["mask"] = np.full(len(chosen), 1.0 if len(indices) else 0.0, np.float32)
    return out


def dense_eval_batches(source: Any, batch_size: int, limit: int | None = None,
                       process_index: int = 0, process_count: int = 1
                       ) -> Iterator[dict[str, np.ndarray]]:
    """The split once, in order, in batches of exactly ``batch_size``.

    Each batch holds the source's keys (converted as in :func:`dense_train_batches`) and
    ``'mask'``: float32 (B,), 1 for real examples. The last batch is padded with invalid
    examples (image 0, semantic -1, depth 0, normal 0, mask 0), which every dense loss and
    metric ignores, so the compiled evaluation step is reused.

    Args:
      source: random-access source of records.
      batch_size: examples per batch.
      limit: use only the first ``limit`` examples.
      process_index, process_count: yield only this process's part of each batch
        (:func:`ur_jax.data.pipeline.process_eval_indices`), ``batch_size // process_count``
        examples padded the same way; every process yields the same number of batches.

    Raises:
      ValueError: an empty split, or a batch size that is not positive or that
        ``process_count`` does not divide.
    """
    n = len(source) if limit is None else min(int(limit), len(source))
    if n < 1:
        raise ValueError("Cannot evaluate on an empty split (or limit < 1).")
    _check_source(source, batch_size)
    fill = {"image": 0, "semantic": -1, "depth": 0, "normal": 0}
    records = grain.MapDataset.source(source).slice(slice(0, n)).map(_as_record)
    if process_count == 1:
        batches: Iterator[Any] = iter(records.batch(int(batch_size)))
    else:
        batch_size = pipeline.process_batch_size(batch_size, process_count,
                                                 "evaluation batch size")
        batches = (_stack_part(records, idx) for idx in pipeline.process_eval_indices(
            n, batch_size * process_count, process_index, process_count))
    for batch in batches:
        real = batch.pop("mask", None)  # only a process's part has one
        k = len(batch["image"]) if real is None else int(real.sum())
        out = {}
        for key, value in batch.items():
            if k < batch_size:
                pad = np.full((batch_size - k, *value.shape[1:]), fill[key], value.dtype)
                value = np.concatenate([value[:k], pad])
            out[key] = value
        mask = np.zeros(batch_size, np.float32)
        mask[:k] = 1.0
        out["mask"] = mask
        yield out
