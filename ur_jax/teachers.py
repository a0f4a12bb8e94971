"""Frozen teachers: grouped by architecture, stacked, and run together in one call.

A teacher is a single-domain :class:`~ur_jax.models.MultiHeadClassifier` (one head)
with its trained variables. :func:`stack_teachers` turns ``{domain: (model,
variables)}`` into

* a :class:`TeacherBank`: the static description (which domains share an
  architecture and a batch shape and therefore run together, as one ``vmap`` or one
  ``lax.map`` over the stack; see :data:`GROUP_MODES`), and
* the teachers' variables as one pytree, with the backbones of each group stacked on a
  leading axis::

      {'backbones': {'group_0': {'params': ..., 'batch_stats': ...}},  # leaves (K, ...)
       'heads': {domain: {'kernel', 'bias'}}}

The variables are plain arrays passed to the jitted steps as an argument: never
differentiated, never given to an optimizer, never written into a student's
checkpoint. Heads stay separate because their class counts differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.models import MultiHeadClassifier

Array = Any


#: How a stacked group runs: ``'vmap'`` (one batched call: every convolution becomes one
#: grouped convolution over the teachers), ``'map'`` (``jax.lax.map``: one compiled teacher
#: body looped over the stack; plain convolutions, lower peak memory) or ``'auto'``:
#: ``'map'`` on CPU, where XLA's grouped convolutions are about 5x slower than the same
#: work as plain ones (``benchmarks/README.md``), ``'vmap'`` on GPU and TPU.
GROUP_MODES = ("auto", "vmap", "map")


def resolve_mode(mode: str) -> str:
    """The concrete execution of a stacked group for ``mode`` on the default backend."""
    if mode not in GROUP_MODES:
        raise ValueError(f"Unknown teacher group mode {mode!r}; expected one of {GROUP_MODES}.")
    if mode == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return mode


@dataclasses.dataclass(frozen=True)
class TeacherGroup:
    """Teachers that share ``backbone``; ``stacked`` (more than one) ones run together."""

    name: str
    backbone: nn.Module
    domains: tuple[str, ...]
    stacked: bool
    mode: str = "vmap"


@dataclasses.dataclass(frozen=True)
class TeacherBank:
    """Static description of a set of frozen teachers (see :func:`stack_teachers`)."""

    groups: tuple[TeacherGroup, ...]
    num_classes: tuple[tuple[str, int], ...]
    feature: str = "pooled"

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.num_classes)

    def apply(self, variables: Mapping[str, Any], images: Mapping[str, Array]):
        """Runs every teacher on its own domain's images (inference mode, no gradient).

        Returns ``(features, logits)``: ``features[d]`` the teacher's dict of named
        features, ``logits[d]`` its float32 logits, for each domain in ``images``.
        """
        variables = jax.lax.stop_gradient(variables)
        missing = sorted(set(images) - set(self.domains))
        if missing:
            raise KeyError(f"No teacher for domain(s) {missing}; teachers: {list(self.domains)}.")
        features: dict[str, dict[str, Array]] = {}
        for group in self.groups:
            domains = [d for d in group.domains if d in images]
            if not domains:
                continue
            gvars = variables["backbones"][group.name]

            def run(v, x, backbone=group.backbone):
                return backbone.apply(v, x, train=False)

            if group.stacked and len(domains) == len(group.domains):
                stacked_images = jnp.stack([images[d] for d in domains])
                if group.mode == "vmap":
                    out = jax.vmap(run)(gvars, stacked_images)
                else:
                    out = jax.lax.map(lambda args, run=run: run(*args), (gvars, stacked_images))
                for i, d in enumerate(domains):
                    features[d] = jax.tree.map(lambda a, i=i: a[i], out)
            else:
                for d in domains:  # a group of one, or a subset of a stacked group
                    i = group.domains.index(d)
                    v = jax.tree.map(lambda a, i=i: a[i], gvars) if group.stacked else gvars
                    features[d] = run(v, images[d])
        sizes = dict(self.num_classes)
        heads = {d: sizes[d] for d in images}
        logits = {d: nn.Dense(heads[d]).apply({"params": variables["heads"][d]},
                                               features[d][self.feature]).astype(jnp.float32)
                  for d in images}
        return features, logits


def _signature(variables: Any) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    return treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves)


def stack_teachers(teachers: Mapping[str, tuple[MultiHeadClassifier, Mapping[str, Any]]],
                   image_shapes: Mapping[str, Sequence[int]] | None = None,
                   stack: bool = True, mode: str = "auto") -> tuple[TeacherBank, dict]:
    """Groups teachers by architecture (and per-domain image-batch shape) and stacks them.

    Args:
      teachers: ``{domain: (model, variables)}``; each model a one-head
        :class:`MultiHeadClassifier` whose head is named ``domain``; ``variables``
        hold ``'params'`` and (for BatchNorm models) ``'batch_stats'``.
      image_shapes: ``{domain: batch image shape}``. Teachers whose batches differ in
        shape cannot share a ``vmap`` and go to separate groups. ``None``: all equal.
      stack: ``False`` runs every teacher on its own (for benchmarks and debugging).
      mode: how stacked groups run, one of :data:`GROUP_MODES` (``'auto'``: ``'vmap'`` on
        accelerators, ``'map'`` on CPU).

    Returns:
      ``(bank, variables)``: see the module docstring.
    """
    if not teachers:
        raise ValueError("stack_teachers needs at least one teacher.")
    mode = resolve_mode(mode)
    num_classes = []
    heads = {}
    keyed: dict[Any, list[str]] = {}
    for domain, (model, variables) in teachers.items():
        if not isinstance(model, MultiHeadClassifier) or model.domains != (domain,):
            raise ValueError(f"Teacher {domain!r} must be a MultiHeadClassifier with the single "
                             f"head {domain!r}; found {type(model).__name__} with heads "
                             f"{getattr(model, 'domains', None)}.")
        if "params" not in variables:
            raise ValueError(f"Teacher {domain!r}: variables need a 'params' collection; found "
                             f"{sorted(variables)}.")
        num_classes.append((domain, dict(model.num_classes)[domain]))
        heads[domain] = variables["params"]["heads"][domain]
        backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
        shape = tuple(image_shapes[domain]) if image_shapes is not None else None
        key = (model.backbone, model.feature, shape, _signature(backbone_vars)) if stack else domain
        keyed.setdefault(key, []).append(domain)
    features = {teachers[d][0].feature for d in teachers}
    if len(features) != 1:
        raise ValueError(f"All teachers must expose the same feature; found {sorted(features)}.")
    groups, backbones = [], {}
    for i, domains in enumerate(keyed.values()):
        name = f"group_{i}"
        per_domain = [{c: v["backbone"] for c, v in teachers[d][1].items() if "backbone" in v}
                      for d in domains]
        stacked = len(domains) > 1
        backbones[name] = (jax.tree.map(lambda *xs: jnp.stack(xs), *per_domain) if stacked
                           else jax.tree.map(jnp.asarray, per_domain[0]))
        groups.append(TeacherGroup(name, teachers[domains[0]][0].backbone, tuple(domains), stacked,
                                   mode))
    bank = TeacherBank(tuple(groups), tuple(num_classes), features.pop())
    return bank, {"backbones": backbones, "heads": heads}
