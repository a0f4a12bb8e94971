"""Classification heads and the multi-head classifier used for teachers and students.

A teacher is a :class:`MultiHeadClassifier` with one head; a universal student (or the
multi-domain baseline) is one with a head per domain. Both share the parameter layout::

    {'params': {'backbone': {...}, 'heads': {<domain>: {'kernel', 'bias'}}},
     'batch_stats': {'backbone': {...}}}

so a teacher's ``backbone`` subtree initialises a student's, and teachers of one
architecture can be stacked subtree by subtree (:mod:`ur_jax.teachers`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ur_jax import sharding

Array = Any


def _align_corners_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis: source taps ``(i0, i1)`` and the weight of ``i1`` for output pixel
    ``j`` at source position ``j * (n_in - 1) / (n_out - 1)`` (``align_corners=True``)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    pos = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.minimum(np.floor(pos).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def resize_bilinear_align_corners(images: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of NHWC ``images`` to ``size = (H', W')`` with corner pixels aligned.

    Output pixel ``(i, j)`` samples the input at ``(i * (H - 1) / (H' - 1), j * (W - 1) /
    (W' - 1))`` and interpolates its two neighbours along each axis, without antialiasing:
    PyTorch's ``F.interpolate(x, size, mode='bilinear', align_corners=True)``, which is what
    ``kornia.augmentation.Resize(size)`` runs with its defaults (``resample='bilinear'``,
    ``align_corners=True``, ``antialias=False``) and what the authors' Visual Decathlon code
    (VICO-UoE/UniversalRepresentations, ``VisualDecathlon/utils_pytorch.py``) applies to the
    multi-domain student's 64 px crops. jax.image.resize instead samples at half-pixel
    centres (``align_corners=False``) and antialiases when shrinking.

    Args:
      images: ``(N, H, W, C)`` floating-point array (any dtype; computed in it).
      size: output ``(H', W')``, positive.

    Returns:
      ``(N, H', W', C)``, same dtype; ``images`` itself when the size is unchanged.

    Raises:
      ValueError: for a non-NHWC input or a non-positive size.
    """
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear_align_corners expects NHWC images of rank 4; found "
                         f"shape {images.shape}.")
    out_h, out_w = (int(v) for v in size)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_bilinear_align_corners: size must be positive; found {size}.")
    h, w = images.shape[1:3]
    if (h, w) == (out_h, out_w):
        return images
    y0, y1, wy = _align_corners_taps(h, out_h)
    x0, x1, wx = _align_corners_taps(w, out_w)
    dtype = images.dtype
    wy = jnp.asarray(wy, dtype)[None, :, None, None]
    wx = jnp.asarray(wx, dtype)[None, None, :, None]
    rows = images[:, y0] * (1 - wy) + images[:, y1] * wy
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


class Heads(nn.Module):
    """One linear classifier per domain: ``logits[d] = features[d] @ W_d + b_d``.

    Attributes:
      num_classes: ``((domain, classes), ...)`` in a fixed order.
    """

    num_classes: Sequence[tuple[str, int]]

    @nn.compact
    def __call__(self, features: Mapping[str, Array]) -> dict[str, Array]:
        sizes = dict(self.num_classes)
        unknown = sorted(set(features) - set(sizes))
        if unknown:
            raise KeyError(f"No head for domain(s) {unknown}; heads exist for {sorted(sizes)}.")
        return {d: nn.Dense(sizes[d], name=d)(f) for d, f in features.items()}


class MultiHeadClassifier(nn.Module):
    """A shared backbone with one classification head per domain.

    ``__call__(images, train)`` takes a dict ``{domain: (N_d, H, W, C) images}``,
    concatenates the domains (in the order given by ``num_classes``) and runs the
    backbone **once** on the whole batch (BatchNorm statistics are shared across
    domains, as in the paper), then gives each domain's head only its own slice.

    Returns ``(features, logits)``: ``features[d]`` is the backbone's dict of named
    features restricted to domain ``d``'s rows, ``logits[d]`` is ``(N_d, classes_d)``
    (float32). Any subset of the domains may be passed.

    ``num_shards``: the number of devices the batch axis is split over; by default the
    size of the data mesh being traced under (:func:`ur_jax.sharding.data_shards`: the
    steps of :mod:`ur_jax.steps` set it), else 1. The domains are joined shard by
    shard, so that each device's part of the combined batch is its own part of every
    domain and no image moves between devices; results do not depend on it (up to
    float summation order).

    A backbone with per-domain parts (``backbone.domain_specific``, e.g.
    :class:`~ur_jax.models.ResNet26` with ``domains``) instead runs once per domain, as
    ``backbone(images[d], train, domain=d)``; domains may then differ in image size.

    ``input_sizes``: ``((domain, S), ...)``: that domain's images are resized to ``S x S``
    (:func:`resize_bilinear_align_corners`) inside the call, before the backbone; other
    domains pass unchanged. It is part of the model (saved in its spec), so training,
    validation and testing all see the same input: the Visual Decathlon's multi-domain
    students resize the 64 px crops to ImageNet's 72 px as the authors' code does
    (``config.model.student_input_size``), while the teachers keep their native crops.

    Attributes:
      backbone: a module mapping images to a dict of named features.
      num_classes: ``((domain, classes), ...)``.
      feature: the backbone feature the heads read (``'pooled'``).
      input_sizes: ``((domain, side), ...)`` of the domains whose images are resized.
    """

    backbone: nn.Module
    num_classes: Sequence[tuple[str, int]]
    feature: str = "pooled"
    input_sizes: Sequence[tuple[str, int]] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.num_classes)

    @nn.compact
    def __call__(self, images: Mapping[str, Array], train: bool = False,
                 num_shards: int | None = None):
        if not isinstance(images, Mapping):
            raise TypeError("MultiHeadClassifier expects a dict {domain: images}; found "
                            f"{type(images).__name__}. Wrap a single batch as {{'domain': x}}.")
        order = [d for d in self.domains if d in images]
        unknown = sorted(set(images) - set(order))
        if unknown:
            raise KeyError(f"Unknown domain(s) {unknown}; this model has {list(self.domains)}.")
        if self.input_sizes:
            sides = dict(self.input_sizes)
            images = {d: resize_bilinear_align_corners(images[d], (sides[d], sides[d]))
                      if d in sides else images[d] for d in order}
        if getattr(self.backbone, "domain_specific", False):
            # Per-domain BatchNorm / adapters (e.g. ResNet26(domains=...)): one pass per domain,
            # which also lets domains differ in image size.
            per_domain = {d: self.backbone(images[d], train=train, domain=d) for d in order}
            return self._heads(per_domain, order)
        sizes = [images[d].shape[0] for d in order]
        num_shards = sharding.data_shards() if num_shards is None else num_shards
        if num_shards < 1 or any(n % num_shards for n in sizes):
            raise ValueError(f"Per-domain batch sizes {dict(zip(order, sizes))} must be multiples "
                             f"of num_shards={num_shards}.")
        s = num_shards
        # Shard-major concatenation: view each domain as (s, n_d / s, ...) and concatenate on
        # axis 1, so that shard k of the combined batch is shard k of every domain. With the
        # batch split over s devices, joining and splitting the domains moves no data.
        x = jnp.concatenate([images[d].reshape((s, n // s) + images[d].shape[1:])
                             for d, n in zip(order, sizes)], axis=1)
        feats = self.backbone(x.reshape((-1,) + x.shape[2:]), train=train)
        per_domain: dict[str, dict[str, Array]] = {d: {} for d in order}
        for name, f in feats.items():
            f = f.reshape((s, -1) + f.shape[1:])
            start = 0
            for d, n in zip(order, sizes):
                per_domain[d][name] = f[:, start:start + n // s].reshape((n,) + f.shape[2:])
                start += n // s
        return self._heads(per_domain, order)

    def _heads(self, per_domain, order):
        logits = Heads(self.num_classes, name="heads")(
            {d: per_domain[d][self.feature] for d in order})
        return per_domain, {d: l.astype(jnp.float32) for d, l in logits.items()}
