"""The base class of every multi-task method and the input checks they share.

Everything here is public *within* :mod:`ur_jax.mtl` (the other modules of the package import
it; users need only :class:`MTLMethod`, re-exported as ``ur_jax.mtl.MTLMethod``):

* :class:`MTLMethod`, the frozen, hashable dataclass every method subclasses, with the
  protocol ``init_params`` / ``init_state`` / ``update_state`` / ``loss`` / ``combine`` /
  ``combine_features`` (the package docstring describes one training step);
* :data:`SPACES` and the type aliases ``ArrayLike``, ``Params``, ``State``;
* input checks that turn user arrays into float32 arrays of the expected shape or raise a
  ValueError / TypeError saying what was expected (:func:`check_num_tasks`,
  :func:`as_losses`, :func:`as_grads`, :func:`as_gram`, :func:`check_rng`,
  :func:`check_grad_dim`);
* validators of options that several methods share (:func:`check_sum_scale`,
  :func:`check_iterations`) and the weighted combination of task gradients
  (:func:`weighted_sum`, :func:`finish_combination`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SPACES",
    "ArrayLike",
    "MTLMethod",
    "Params",
    "State",
    "as_grads",
    "as_gram",
    "as_losses",
    "check_iterations",
    "check_num_tasks",
    "check_grad_dim",
    "check_rng",
    "check_sum_scale",
    "finish_combination",
    "weighted_sum",
]

#: Where a method takes the per-task gradients: the shared parameters or the shared feature.
SPACES = ("params", "features")

ArrayLike = Union[jax.Array, np.ndarray, Sequence[float]]  # noqa: UP007 (runtime alias)
#: Trainable method parameters: a dict of float32 arrays (``{}`` when the method has none).
Params = dict
#: Non-trainable method state: a dict of arrays (at least ``{"step": int32 scalar}``).
State = dict

_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def check_num_tasks(num_tasks: Any, minimum: int = 2) -> int:
    """Return ``num_tasks`` as an int.

    Raises:
      TypeError: if ``num_tasks`` is not an integer (bools are refused).
      ValueError: if ``num_tasks < minimum``.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)):
        raise TypeError(f"num_tasks must be an int >= {minimum}, got {num_tasks!r} "
                         f"({type(num_tasks).__name__}).")
    if num_tasks < minimum:
        raise ValueError(f"multi-task methods need num_tasks >= {minimum}, got {num_tasks}; "
                         "for a single task use get_method('uniform').")
    return int(num_tasks)


def as_losses(losses: ArrayLike, minimum: int = 2) -> jax.Array:
    """Return the task losses as a float32 ``(T,)`` array.

    Raises:
      ValueError: if ``losses`` is not one-dimensional with ``T >= minimum`` entries.
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1 or losses.shape[0] < minimum:
        raise ValueError(f"losses must have shape (T,) with T >= {minimum} tasks, got shape "
                         f"{tuple(losses.shape)}; stack the per-task scalar losses, e.g. "
                         "jnp.stack([l_seg, l_depth, l_normal]).")
    return losses.astype(jnp.float32)


def as_grads(grads: ArrayLike, num_tasks: int) -> jax.Array:
    """Return the per-task gradients as a float32 ``(T, D)`` array with ``T = num_tasks``.

    Raises:
      ValueError: if ``grads`` is not two-dimensional with ``num_tasks`` rows.
    """
    grads = jnp.asarray(grads)
    if grads.ndim != 2 or grads.shape[0] != num_tasks:
        raise ValueError(f"grads must have shape (T, D) = ({num_tasks}, D) to match the "
                         f"{num_tasks} task losses, got shape {tuple(grads.shape)}; flatten "
                         "each task's gradient tree into one row (e.g. with "
                         "jax.flatten_util.ravel_pytree) and stack the rows.")
    return grads.astype(jnp.float32)


def as_gram(gram: ArrayLike) -> jax.Array:
    """Return a Gram matrix as a float32 square ``(T, T)`` array.

    Raises:
      ValueError: if ``gram`` is not square two-dimensional with ``T >= 2``.
    """
    gram = jnp.asarray(gram, jnp.float32)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 2:
        raise ValueError(f"expected a (T, T) Gram matrix with T >= 2, got shape "
                         f"{tuple(gram.shape)}; compute it with gram_matrix(grads).")
    return gram


def check_grad_dim(grad_dim: Any, name: str) -> int:
    """Return ``grad_dim`` (``D`` of the ``(T, D)`` gradients) for method ``name``'s
    ``init_state``.

    Raises:
      ValueError: if ``grad_dim`` is None or not an int >= 1.
    """
    if isinstance(grad_dim, bool) or not isinstance(grad_dim, (int, np.integer)) or grad_dim < 1:
        raise ValueError(f"method {name!r} keeps (T, D) state that follows the task gradients: "
                         f"call init_state(T, grad_dim=D) with D the length of one task's "
                         f"gradient row (ur_jax.dense_steps.init_mtl_state does), got "
                         f"grad_dim={grad_dim!r}.")
    return int(grad_dim)


def check_rng(rng: Any, name: str) -> jax.Array:
    """Return the PRNG key ``rng`` of the randomised method ``name`` (unchanged).

    Raises:
      ValueError: if ``rng`` is None.
    """
    if rng is None:
        raise ValueError(f"method {name!r} is randomised: pass a PRNG key as rng to combine() / "
                         "loss() (e.g. jax.random.fold_in(key, step)).")
    return rng


# ---------------------------------------------------------------------------------------------
# Shared options and the weighted combination
# ---------------------------------------------------------------------------------------------

def check_sum_scale(method: MTLMethod) -> None:
    """Validate the ``sum_scale`` option of ``method`` (call from ``__post_init__``).

    Raises:
      TypeError: if ``method.sum_scale`` is not a bool.
    """
    if not isinstance(method.sum_scale, (bool, np.bool_)):
        raise TypeError(f"method {method.name!r}: sum_scale must be True or False, got "
                         f"{method.sum_scale!r}.")


def check_iterations(method: MTLMethod) -> None:
    """Validate the ``iterations`` option of ``method`` and store it as a Python int (call
    from ``__post_init__`` of a frozen method).

    Raises:
      ValueError: if ``method.iterations`` is not an int >= 0.
    """
    it = method.iterations
    if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or it < 0:
        raise ValueError(f"method {method.name!r}: iterations must be an int >= 0, got {it!r}.")
    object.__setattr__(method, "iterations", int(it))


def weighted_sum(weights: jax.Array, grads: jax.Array) -> jax.Array:
    """``sum_t weights[t] * grads[t]``: ``(T,)`` x ``(T, D)`` -> ``(D,)`` float32, at
    ``Precision.HIGHEST`` (no bf16/TF32 passes on TPU/GPU)."""
    return jnp.matmul(weights, grads, precision=_HIGHEST)


def finish_combination(weights: jax.Array, grads: jax.Array, sum_scale: bool
                       ) -> tuple[jax.Array, jax.Array]:
    """The last step of the methods whose weights sum to 1: scale ``weights: (T,)`` by ``T``
    if ``sum_scale``; return ``(weighted_sum(weights, grads) (D,), weights (T,))``."""
    if sum_scale:
        weights = weights * grads.shape[0]
    return weighted_sum(weights, grads), weights


# ---------------------------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class MTLMethod:
    """A multi-task optimisation method (base class; build one with
    :func:`ur_jax.mtl.get_method`).

    Subclasses are frozen keyword-only dataclasses that fix ``name`` and ``uses_gradients``
    with ``dataclasses.field(default=..., init=False)``; their other fields are the method's
    options (:func:`ur_jax.mtl.method_options`), validated in ``__post_init__``.

    Attributes:
      name: one of :data:`ur_jax.mtl.METHODS`.
      uses_gradients: True if the step must supply per-task gradients ``(T, D)`` to
        :meth:`combine`; False if it differentiates :meth:`loss`.
      space: where the step should take the per-task gradients: ``"params"`` (the shared
        parameters, flattened) or ``"features"`` (the shared feature, flattened; the step then
        back-propagates the combined feature gradient through the encoder).
    """

    name: str
    uses_gradients: bool
    space: str = "params"

    def __post_init__(self) -> None:
        """Validate the common fields."""
        if self.space not in SPACES:
            raise ValueError(f"method {self.name!r}: space must be one of {SPACES}, got "
                             f"{self.space!r}.")

    @property
    def min_tasks(self) -> int:
        """The fewest tasks the method is defined for (2; uniform weighting takes 1)."""
        return 2

    # -- parameters and state ---------------------------------------------------------------
    def init_params(self, num_tasks: int) -> Params:
        """Trainable method parameters (float32 arrays; ``{}`` if none)."""
        check_num_tasks(num_tasks, self.min_tasks)
        return {}

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Non-trainable state (arrays only): ``{"step": int32 scalar}`` plus method extras.

        ``grad_dim`` is ``D``, the length of the per-task gradient rows the step will pass
        (:func:`ur_jax.dense_steps.init_mtl_state` supplies it); methods whose state follows
        the gradients (``(T, D)`` moving averages) need it for static shapes and raise a
        ValueError without it (:func:`check_grad_dim`); the others ignore it."""
        check_num_tasks(num_tasks, self.min_tasks)
        return {"step": jnp.zeros((), jnp.int32)}

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """State after a step that saw ``losses: (T,)`` (here: ``step + 1``).

        Gradient methods also receive the ``(T, D)`` per-task gradients the step passed to
        :meth:`combine` (for :meth:`combine_features`: the ``(T, B*D)`` flattened feature
        gradients), for state that follows the gradients (moving averages, trackers);
        recomputing a quantity :meth:`combine` also computed costs nothing inside one jitted
        step (XLA merges the two)."""
        as_losses(losses, self.min_tasks)
        return {**state, "step": state["step"] + 1}

    # -- the update ---------------------------------------------------------------------------
    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Scalar total loss (differentiable w.r.t. ``losses`` and ``params``) and ``(T,)``
        stop-gradient task weights. Only for ``uses_gradients=False`` methods. ``rng`` is
        the step's PRNG key (randomised methods such as RLW draw from it; the others ignore
        it)."""
        raise ValueError(f"method {self.name!r} combines per-task gradients: call "
                         "combine(grads, losses, params, state, rng) instead of loss(); "
                         "log sum(losses) as the total.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Combine per-task gradients ``grads: (T, D)`` into one ``(D,)`` gradient.

        Returns ``(combined (D,), gradients for params (same tree), (T,) effective weights)``.
        For loss-weighting methods this is exactly the chain rule applied to :meth:`loss`
        (``combined = sum_t dTotal/dL_t g_t``), so both paths agree.
        """
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        dl, dparams = jax.grad(lambda l, p: self.loss(l, p, state, rng)[0], argnums=(0, 1))(
            losses, params)
        return weighted_sum(dl, grads), dparams, dl

    def combine_features(self, grads: ArrayLike, inputs: ArrayLike, losses: ArrayLike,
                         params: Params, state: State, rng: jax.Array | None = None
                         ) -> tuple[jax.Array, Params, jax.Array]:
        """Combine the per-task gradients of a batch-separated shared activation.

        Args:
          grads: ``(T, B, D)``, task ``t``'s gradient w.r.t. the activation of every example.
          inputs: the activation itself, ``(B, D)``.
          losses, params, state, rng: as for :meth:`combine`.

        Returns ``(combined (B, D), gradients for params, (T,) weights)``. By default the
        gradients are flattened to ``(T, B*D)`` and combined by :meth:`combine` (one
        vector per task, as LibMTL's ``rep_grad`` does for every method but GradDrop);
        :class:`~ur_jax.mtl.gradient.GradDrop` overrides this with the paper's per-feature masks.
        """
        grads = jnp.asarray(grads)
        if grads.ndim != 3 or jnp.shape(inputs) != grads.shape[1:]:
            raise ValueError(f"combine_features: expected grads (T, B, D) and inputs (B, D); "
                             f"got {tuple(grads.shape)} and {tuple(jnp.shape(inputs))}.")
        combined, dparams, weights = self.combine(grads.reshape(grads.shape[0], -1), losses,
                                                  params, state, rng)
        return combined.reshape(grads.shape[1:]), dparams, weights
