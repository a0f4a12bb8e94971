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

from ur_jax import sharding

Array = Any


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

    Attributes:
      backbone: a module mapping images to a dict of named features.
      num_classes: ``((domain, classes), ...)``.
      feature: the backbone feature the heads read (``'pooled'``).
    """

    backbone: nn.Module
    num_classes: Sequence[tuple[str, int]]
    feature: str = "pooled"

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
