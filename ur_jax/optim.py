"""Optimizers with PyTorch's semantics, and choosing which parameters train.

The paper's recipes are PyTorch recipes: ``torch.optim.SGD(weight_decay=wd)`` and
``torch.optim.Adam(weight_decay=wd)`` add ``wd * param`` to the gradient *before* the
update rule (coupled L2, not AdamW). :func:`sgd` and :func:`adam` reproduce that with
optax; learning rates may be optax schedules (``optax.cosine_decay_schedule``,
``optax.sgdr_schedule`` for warm restarts, ``optax.piecewise_constant_schedule``).

Parameter partitions: :func:`path_labels` labels every leaf of a tree by regular
expressions on its ``'/'``-joined path, and :func:`partitioned` gives each label its
own optimizer (``optax.multi_transform``); the label ``'frozen'`` gets
``optax.set_to_zero()``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import optax

FROZEN = "frozen"


def sgd(learning_rate: float | optax.Schedule, momentum: float = 0.9, weight_decay: float = 0.0,
        nesterov: bool = False) -> optax.GradientTransformation:
    """``torch.optim.SGD``: ``g += wd * p``; ``m = mu * m + g``; ``p -= lr * m``."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))


def adam(learning_rate: float | optax.Schedule, weight_decay: float = 0.0, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """``torch.optim.Adam`` with coupled L2 weight decay (``g += wd * p`` before Adam)."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def adadelta(learning_rate: float | optax.Schedule, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0) -> optax.GradientTransformation:
    """``torch.optim.Adadelta`` (used for PA and TSA in few-shot episodes)."""
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adadelta(learning_rate, rho=rho, eps=eps))


def path_of(key_path: Sequence[Any]) -> str:
    """``'/'``-joined names of a ``jax.tree_util`` key path, e.g. ``'backbone/stem_conv/kernel'``."""
    parts = []
    for k in key_path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def path_labels(tree: Any, rules: Sequence[tuple[str, str]], default: str) -> Any:
    """Labels each leaf by the first rule whose regex matches its path (``re.search``).

    >>> path_labels(params, [(r'^adapters/', 'adapters'), (r'heads/', 'heads')], 'student')
    """
    compiled = [(re.compile(p), label) for p, label in rules]

    def label(key_path, _):
        path = path_of(key_path)
        for pattern, name in compiled:
            if pattern.search(path):
                return name
        return default

    return jax.tree_util.tree_map_with_path(label, tree)


def partitioned(transforms: Mapping[str, optax.GradientTransformation],
                labels: Any | Callable[[Any], Any]) -> optax.GradientTransformation:
    """One optimizer per label (``optax.multi_transform``); ``'frozen'`` leaves never move."""
    transforms = dict(transforms)
    transforms.setdefault(FROZEN, optax.set_to_zero())
    return optax.multi_transform(transforms, labels)


def top_level_labels(params: Mapping[str, Any]) -> dict[str, Any]:
    """Labels every leaf with its top-level key: ``{'student': ..., 'adapters': ...}`` ->
    the same tree of ``'student'`` / ``'adapters'`` (a label function for :func:`partitioned`)."""
    return {key: jax.tree.map(lambda _, key=key: key, value) for key, value in params.items()}


def trainable_mask(tree: Any, pattern: str) -> Any:
    """A boolean tree: ``True`` where the leaf's path matches ``pattern`` (for ``optax.masked``)."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(lambda kp, _: bool(regex.search(path_of(kp))), tree)


def linear_anneal(total_steps: int, every: int = 1) -> optax.Schedule:
    """Distillation-weight multiplier ``max(0, 1 - s / total_steps)``, ``s`` rounded down to a
    multiple of ``every`` (``every = steps per epoch`` gives the per-epoch annealing
    ``1 - epoch / epochs`` of the Decathlon recipe)."""
    if total_steps <= 0 or every <= 0:
        raise ValueError(f"linear_anneal needs total_steps > 0 and every > 0; found "
                         f"{total_steps} and {every}.")

    def schedule(step):
        s = (step // every) * every
        return jax.numpy.clip(1.0 - s / total_steps, 0.0, 1.0)

    return schedule
