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
import jax.numpy as jnp
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


#: The stage schedules of :func:`learning_rate_schedule`.
SCHEDULES = ("cosine", "step", "cosine_restarts")


def learning_rate_schedule(lr: float, steps_: int, warmup: int = 0, kind: str = "cosine",
                           decay_at: tuple[float, ...] = (), decay_factor: float = 0.1,
                           restart_every: int = 0) -> optax.Schedule:
    """A stage's learning-rate schedule: linear warmup over ``warmup`` steps, then

    * ``'cosine'``: cosine decay to 0 at ``steps_``;
    * ``'step'``: ``lr`` multiplied by ``decay_factor`` at each fraction ``decay_at`` of
      the stage (the Decathlon recipe: x0.1 at epochs 80 and 100 of 120 is
      ``decay_at=(80 / 120, 100 / 120)``);
    * ``'cosine_restarts'``: cosine annealing with warm restarts every ``restart_every``
      steps, ``lr * (1 + cos(pi * (t mod T) / T)) / 2`` (PyTorch's
      ``CosineAnnealingWarmRestarts(T_0=T)``, the Meta-Dataset recipe).
    """
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, max(steps_ - 1, 0)),
                                                  max(steps_, 1))
    if kind == "cosine_restarts":
        if int(restart_every) < 1:
            raise ValueError(f"schedule='cosine_restarts' needs restart_every >= 1 (steps per "
                             f"cycle); found {restart_every}.")
        period = int(restart_every)

        def restarts(step):
            phase = jnp.mod(step, period) / period
            value = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * phase))
            return value if warmup <= 0 else value * jnp.minimum(1.0, (step + 1) / warmup)

        return restarts
    if kind != "step":
        raise ValueError(f"Unknown learning-rate schedule {kind!r}; expected one of {SCHEDULES}.")
    bad = [f for f in decay_at if not 0.0 < float(f) <= 1.0]
    if bad:
        raise ValueError(f"decay_at holds fractions of the stage in (0, 1]; found {bad}.")
    steps_at = sorted(round(float(f) * steps_) for f in decay_at)
    piecewise = optax.piecewise_constant_schedule(lr, {b: decay_factor for b in steps_at})
    if warmup <= 0:
        return piecewise
    return lambda step: piecewise(step) * jnp.minimum(1.0, (step + 1) / warmup)
