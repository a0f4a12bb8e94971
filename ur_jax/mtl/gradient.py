"""Gradient-combination methods (``uses_gradients=True``): the step supplies the per-task
gradients ``(T, D)`` of the shared parameters (or, with ``space="features"``, of the shared
feature) and :meth:`~ur_jax.mtl.base.MTLMethod.combine` returns the gradient to use in their
place.

:class:`GradNorm` (learnt loss weights trained on the gradient norms), :class:`MGDA`,
:class:`PCGrad`, :class:`GradDrop`, :class:`IMTLG`, :class:`IMTLH` and :class:`CAGrad`.
Their numerical cores are the solvers of :mod:`ur_jax.mtl.solvers`; each class here
validates its options and wires its solver to the method protocol.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import (ArrayLike, MTLMethod, Params, State, as_grads, as_losses,
                             check_iterations, check_num_tasks, check_rng, check_sum_scale,
                             finish_combination, weighted_sum)
from ur_jax.mtl.solvers import (GRADDROP_EPS, cagrad_weights, graddrop_combine, gram_matrix,
                                imtl_g_weights, min_norm_weights, pcgrad_orders,
                                pcgrad_weights)
from ur_jax.mtl.weighting import IMTLL

__all__ = ["MGDA_NORMALIZATIONS", "CAGrad", "GradDrop", "GradNorm", "IMTLG", "IMTLH", "MGDA",
           "PCGrad"]

#: MGDA's ``normalization`` option: divide ``g_t`` by 1, ``|g_t|``, ``L_t`` or ``L_t |g_t|``.
MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradNorm(MTLMethod):
    """GradNorm (Chen et al., ICML 2018) with softmax-parametrised weights.

    Params ``{"logits": (T,)}`` (init 0), weights ``w = T softmax(logits)`` (always sum to T).
    Combined gradient ``sum_t stop_grad(w_t) g_t``. The logits receive the gradient of
    ``sum_t | w_t |g_t| - stop_grad(mean_t(w_t |g_t|) r_t^alpha) |`` with
    ``r_t = (L_t / L_t(0)) / mean_t(L_t / L_t(0))``; ``L(0)`` are the losses of the first step
    (stored in the state by :meth:`update_state`; the current losses are used while unset).
    The paper takes ``g_t`` at the last shared layer; here ``g_t`` is whatever the step
    supplies (all shared parameters by default). Options: ``alpha`` (1.5), ``space``.
    """

    name: str = dataclasses.field(default="gradnorm", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    alpha: float = 1.5

    def __post_init__(self) -> None:
        """Validate ``alpha``."""
        super().__post_init__()
        if not float(self.alpha) >= 0:
            raise ValueError(f"gradnorm alpha must be >= 0, got {self.alpha!r}.")
        object.__setattr__(self, "alpha", float(self.alpha))

    def init_params(self, num_tasks: int) -> Params:
        """``{"logits": zeros(T)}``."""
        return {"logits": jnp.zeros((check_num_tasks(num_tasks),), jnp.float32)}

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter and the first step's losses ``initial_losses: (T,)``."""
        t = check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32),
                "initial_losses": jnp.zeros((t,), jnp.float32)}

    def initial_losses(self, state: State, losses: jax.Array) -> jax.Array:
        """``L(0)``: the stored first-step losses, or ``losses`` before the first update."""
        return jnp.where(state["step"] == 0, losses, state["initial_losses"])

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Increment the step; store ``losses`` as ``L(0)`` at the first step."""
        losses = jax.lax.stop_gradient(as_losses(losses))
        return {"step": state["step"] + 1, "initial_losses": self.initial_losses(state, losses)}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_t w_t g_t``, the GradNorm gradient of the logits, and ``w``."""
        losses = jax.lax.stop_gradient(as_losses(losses))
        t = losses.shape[0]
        grads = as_grads(grads, t)
        norms = jnp.sqrt(jnp.sum(grads * grads, axis=1))
        l0 = self.initial_losses(state, losses)
        ratio = jnp.where(l0 > 0, losses / jnp.where(l0 > 0, l0, 1.0), 1.0)
        mean_ratio = jnp.mean(ratio)
        r = jnp.where(mean_ratio > 0, ratio / jnp.where(mean_ratio > 0, mean_ratio, 1.0), 1.0)
        target_factor = r ** self.alpha

        def gradnorm_loss(logits):
            wn = t * jax.nn.softmax(logits) * norms
            target = jax.lax.stop_gradient(jnp.mean(wn) * target_factor)
            return jnp.sum(jnp.abs(wn - target))

        logits = jnp.asarray(params["logits"], jnp.float32)
        g_logits = jax.grad(gradnorm_loss)(logits)
        w = jax.lax.stop_gradient(t * jax.nn.softmax(logits))
        return weighted_sum(w, grads), {"logits": g_logits}, w


@dataclasses.dataclass(frozen=True, kw_only=True)
class MGDA(MTLMethod):
    """MGDA (Sener & Koltun, "Multi-task learning as multi-objective optimization",
    NeurIPS 2018): ``alpha`` = min-norm point of the convex hull of the (optionally normalised)
    task gradients (:func:`min_norm_weights`), combined gradient ``sum_t alpha_t g_t`` on the
    ORIGINAL gradients, as in the authors' code (they rescale the original losses by alpha).

    Options: ``iterations`` (at most 100 active-set solves for more than
    :data:`~ur_jax.mtl.solvers.MIN_NORM_EXACT_MAX_TASKS` tasks; up to that the min-norm
    problem is solved exactly and ``iterations`` is not used), ``normalization`` in
    :data:`MGDA_NORMALIZATIONS` (divide ``g_t`` by 1, ``|g_t|``, ``L_t`` or ``L_t |g_t|`` before
    solving; default ``"none"``), ``sum_scale`` (False), ``space`` (``"params"``; MGDA-UB uses
    ``"features"``).
    """

    name: str = dataclasses.field(default="mgda", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    iterations: int = 100
    normalization: str = "none"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        check_iterations(self)
        check_sum_scale(self)
        if self.normalization not in MGDA_NORMALIZATIONS:
            raise ValueError(f"mgda normalization must be one of {MGDA_NORMALIZATIONS}, got "
                             f"{self.normalization!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Min-norm weights (on normalised gradients) applied to the original gradients."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        gram = gram_matrix(grads)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses,
                 "loss+": losses * norms}[self.normalization]
        scale = jnp.where(scale > 0, scale, 1.0)
        alpha = min_norm_weights(gram / (scale[:, None] * scale[None, :]), self.iterations)
        combined, weights = finish_combination(alpha, grads, self.sum_scale)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class PCGrad(MTLMethod):
    """PCGrad / gradient surgery (Yu et al., NeurIPS 2020); see :func:`pcgrad_weights`.

    Each task's order of the other tasks is drawn from ``rng`` every step
    (:func:`pcgrad_orders`). Combined gradient ``sum_i g_i'`` (sum scale). Option: ``space``.
    """

    name: str = dataclasses.field(default="pcgrad", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Projected-conflict sum of the task gradients, and its weights on the originals."""
        losses = as_losses(losses)
        t = losses.shape[0]
        grads = as_grads(grads, t)
        orders = pcgrad_orders(check_rng(rng, self.name), t)
        weights = pcgrad_weights(gram_matrix(grads), orders)
        return weighted_sum(weights, grads), {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradDrop(MTLMethod):
    """GradDrop (Chen et al., "Just pick a sign", NeurIPS 2020); see :func:`graddrop_combine`.

    In ``space="features"`` (the default, the paper's and LibMTL's setting) the step calls
    :meth:`combine_features` with the per-example gradients of the shared activation and the
    activation: each task's gradient is sign-corrected by the activation and summed over the
    batch, giving one keep probability and one mask per feature that is applied to every
    example. :meth:`combine` takes ``(T, D)`` gradients as they are (``space="params"``:
    flattened parameter gradients, no sign correction; this is what the authors' DensePred
    baseline ``--weight gd`` does, averaging instead of summing the masked gradients). The
    uniform sample is ``jax.random.uniform(rng, (D,))``, one per feature. Combined gradient =
    sum of the masked task gradients. Options: ``leak`` (scalar or ``T`` values in [0, 1],
    default 0), ``eps`` (the purity guard, default :data:`GRADDROP_EPS` = 1e-7 as LibMTL;
    the authors' DensePred ``utils/graddrop.py`` uses 1e-8, which matters on parameter
    gradients of that size), ``space``.
    """

    name: str = dataclasses.field(default="graddrop", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "features"
    leak: float | tuple[float, ...] = 0.0
    eps: float = GRADDROP_EPS

    def __post_init__(self) -> None:
        """Validate ``leak`` (stored as a float or a tuple of floats, hashable)."""
        super().__post_init__()
        values = np.asarray(self.leak, dtype=np.float64)
        if values.ndim > 1 or not np.all((values >= 0) & (values <= 1)):
            raise ValueError(f"graddrop leak must be a scalar or a (T,) sequence of values in "
                             f"[0, 1], got {self.leak!r}.")
        leak = float(values) if values.ndim == 0 else tuple(float(v) for v in values)
        object.__setattr__(self, "leak", leak)
        if not float(self.eps) >= 0.0:
            raise ValueError(f"graddrop eps must be >= 0; got {self.eps!r}.")
        object.__setattr__(self, "eps", float(self.eps))

    def _check_leak(self, num_tasks: int) -> None:
        if isinstance(self.leak, tuple) and len(self.leak) != num_tasks:
            raise ValueError(f"graddrop leak has {len(self.leak)} values but there are "
                             f"{num_tasks} tasks; give one value per task or a scalar.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Sign-consistent masked sum of ``(T, D)`` task gradients, and the kept fractions."""
        losses = as_losses(losses)
        t = losses.shape[0]
        grads = as_grads(grads, t)
        self._check_leak(t)
        uniform = jax.random.uniform(check_rng(rng, self.name), grads.shape[1:])
        combined, weights = graddrop_combine(grads, uniform, self.leak, eps=self.eps)
        return combined, {}, weights

    def combine_features(self, grads: ArrayLike, inputs: ArrayLike, losses: ArrayLike,
                         params: Params, state: State, rng: jax.Array | None = None
                         ) -> tuple[jax.Array, Params, jax.Array]:
        """The paper's GradDrop on per-example activation gradients ``(T, B, D)`` and the
        activation ``(B, D)``: one mask per feature from the batch-summed, sign-corrected
        gradients, applied to every example. Returns ``(combined (B, D), {}, (T,) kept
        fractions)``."""
        losses = as_losses(losses)
        t = losses.shape[0]
        grads = jnp.asarray(grads, jnp.float32)
        if grads.ndim != 3 or grads.shape[0] != t:
            raise ValueError(f"graddrop combine_features: expected grads (T, B, D) with T = {t} "
                             f"tasks; got shape {tuple(grads.shape)}.")
        self._check_leak(t)
        uniform = jax.random.uniform(check_rng(rng, self.name), grads.shape[2:])
        combined, weights = graddrop_combine(grads, uniform, self.leak, inputs=inputs,
                                             eps=self.eps)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class IMTLG(MTLMethod):
    """IMTL-G, gradient balance (Liu et al., ICLR 2021), closed form :func:`imtl_g_weights`;
    combined gradient ``sum_t alpha_t g_t`` with ``sum alpha = 1``.
    Options: ``sum_scale`` (False), ``space``."""

    name: str = dataclasses.field(default="imtl_g", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate ``sum_scale``."""
        super().__post_init__()
        check_sum_scale(self)

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Gradient-balanced combination of the task gradients."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        combined, weights = finish_combination(imtl_g_weights(gram_matrix(grads)), grads,
                                               self.sum_scale)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class IMTLH(MTLMethod):
    """IMTL-H, hybrid balance (Liu et al., ICLR 2021), as in LibMTL.

    The step supplies the gradients ``g_t`` of the UNSCALED losses; they are scaled to
    ``exp(s_t) g_t`` (the gradients of IMTL-L's scaled losses) and combined with IMTL-G:
    ``combined = sum_t alpha_t exp(s_t) g_t`` (effective weights ``alpha exp(s)``). The
    scales ``s`` (params ``{"log_scales": (T,)}``, init 0) get the gradient of IMTL-L's total
    ``sum_t exp(s_t) L_t - s_t``, i.e. ``exp(s) L - 1``. Options: ``sum_scale``, ``space``.
    """

    name: str = dataclasses.field(default="imtl_h", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate ``sum_scale``."""
        super().__post_init__()
        check_sum_scale(self)

    def init_params(self, num_tasks: int) -> Params:
        """``{"log_scales": zeros(T)}``."""
        return IMTLL().init_params(num_tasks)

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """IMTL-G on the loss-scaled gradients; IMTL-L gradient for the scales."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        s = jnp.asarray(params["log_scales"], jnp.float32)
        d_s = jax.grad(lambda s_: IMTLL().loss(losses, {"log_scales": s_}, state)[0])(s)
        scale = jnp.exp(jax.lax.stop_gradient(s))
        alpha = imtl_g_weights(gram_matrix(grads) * (scale[:, None] * scale[None, :]))
        combined, weights = finish_combination(alpha * scale, grads, self.sum_scale)
        return combined, {"log_scales": d_s}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class CAGrad(MTLMethod):
    """CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021); see
    :func:`~ur_jax.mtl.solvers.cagrad_solve` and :func:`cagrad_weights`.

    Options: ``c`` (0.4, the paper's NYU-v2 value; 0 gives the mean gradient), ``rescale``
    (1: divide by ``1 + c^2`` as in the authors' code; 2: by ``1 + c``; 0: none),
    ``iterations`` (100 projected-gradient steps), ``sum_scale`` (False; True multiplies by
    ``T`` like the authors' NYU-v2 trainer), ``space``.
    """

    name: str = dataclasses.field(default="cagrad", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    c: float = 0.4
    rescale: int = 1
    iterations: int = 100
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        check_iterations(self)
        check_sum_scale(self)
        if not float(self.c) >= 0:
            raise ValueError(f"cagrad c must be >= 0, got {self.c!r}.")
        object.__setattr__(self, "c", float(self.c))
        if self.rescale not in (0, 1, 2) or isinstance(self.rescale, bool):
            raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {self.rescale!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Conflict-averse combination of the task gradients."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        weights = cagrad_weights(gram_matrix(grads), self.c, self.rescale, self.iterations)
        combined, weights = finish_combination(weights, grads, self.sum_scale)
        return combined, {}, weights
