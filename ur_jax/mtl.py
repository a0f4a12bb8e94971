"""Multi-task optimisation baselines as pure, jit-compatible JAX functions.

These are the multi-task learning (MTL) baselines the URL paper (Li, Liu & Bilen, IJCV 2023,
Table 1) compares with on NYU-v2 / Cityscapes. Each baseline is an :class:`MTLMethod` obtained
with :func:`get_method`. Given the ``T`` per-task losses of a step (``losses: (T,) float32``)
a method produces one update, in one of two ways:

* **loss weighting** (``uses_gradients=False``: uniform, uncertainty, dwa, imtl_l):
  :meth:`MTLMethod.loss` returns a scalar total loss that the step differentiates with respect
  to the model parameters *and* the method's own trainable parameters.
* **gradient manipulation** (``uses_gradients=True``: gradnorm, mgda, pcgrad, graddrop,
  imtl_g, imtl_h, cagrad): the step computes the per-task gradients of the shared parameters
  flattened into ``grads: (T, D)``; :meth:`MTLMethod.combine` returns the combined gradient
  ``(D,)`` to use in their place, the gradients of the method's own parameters, and ``(T,)``
  effective task weights for logging. With ``method.space == "features"`` the step passes
  the per-example gradients of the shared feature ``(T, B, D)`` and the feature ``(B, D)``
  to :meth:`MTLMethod.combine_features` instead (GradDrop masks per feature, for the whole
  batch; the other methods flatten to ``(T, B*D)``). Task-specific parameters (heads) keep
  their ordinary gradients of ``sum_t L_t``.

Protocol of one training step (``mparams``/``mstate`` are the method's params and state)::

    method = get_method("pcgrad")
    mparams, mstate = method.init_params(T), method.init_state(T)   # once
    if method.uses_gradients:
        combined, mparam_grads, weights = method.combine(grads, losses, mparams, mstate, rng)
    else:
        total, weights = method.loss(losses, mparams, mstate)         # inside jax.grad
    mstate = method.update_state(mstate, losses)                      # after the update

``loss``/``combine`` read the state *before* the step; ``update_state`` then records the step.
Method parameters are trained by the model's optimiser with the gradients returned here.
Every function is pure and jit-compatible (static shapes, bounded loops, no Python control flow
on traced values) and works for any ``T >= 2``. Method objects are frozen, hashable dataclasses,
so they can be closed over or passed as static arguments to ``jax.jit``.

Scale conventions (with Adam the global scale of the update hardly matters, but it is stated):
uniform, pcgrad, graddrop, gradnorm and dwa act on the *sum* of the task losses (weights sum to
``T`` for gradnorm/dwa); uncertainty and imtl_l use their own learnt scales (``1/(2 e^s)`` and
``e^s``, both starting at 1/2 and 1); mgda, imtl_g, imtl_h and cagrad return combinations whose
weights sum to 1 (cagrad: ``1/(1+c^2)`` of that by default), i.e. the scale of one task or of
the *mean* gradient. Their option ``sum_scale=True`` multiplies by ``T``, as the CAGrad authors'
NYU-v2/Cityscapes trainer does "to match the sum loss".

Numerics: every Gram matrix and weighted sum over ``D`` uses ``Precision.HIGHEST`` (TPU/GPU
would otherwise use bf16/TF32 passes for float32 matmuls); the small ``T x T`` solvers work on
the Gram matrix normalised by its diagonal, so their results do not depend on the gradients'
scale. Zero gradients and zero losses give finite results and finite method-parameter
gradients.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "GRADDROP_EPS",
    "METHODS",
    "MGDA_NORMALIZATIONS",
    "MIN_NORM_EXACT_MAX_TASKS",
    "SPACES",
    "MTLMethod",
    "cagrad_solve",
    "cagrad_weights",
    "get_method",
    "graddrop_combine",
    "gram_matrix",
    "imtl_g_weights",
    "method_options",
    "min_norm_weights",
    "pcgrad_orders",
    "pcgrad_weights",
    "project_to_simplex",
]

METHODS = ("uniform", "uncertainty", "dwa", "gradnorm", "mgda", "pcgrad", "graddrop",
           "imtl_l", "imtl_g", "imtl_h", "cagrad")
SPACES = ("params", "features")
MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")

ArrayLike = Union[jax.Array, np.ndarray, Sequence[float]]  # noqa: UP007 (runtime alias)
Params = dict
State = dict

_HIGHEST = jax.lax.Precision.HIGHEST
# Squared norms (in units of the largest squared norm) below this are treated as zero.
_REL_TINY = 1e-20


# ---------------------------------------------------------------------------------------------
# Input checks and small helpers
# ---------------------------------------------------------------------------------------------

def _check_num_tasks(num_tasks: Any, minimum: int = 2) -> int:
    """Return ``num_tasks`` as an int, refusing anything that is not an integer >= minimum."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)):
        raise TypeError(f"num_tasks must be an int >= {minimum}, got {num_tasks!r} "
                         f"({type(num_tasks).__name__}).")
    if num_tasks < minimum:
        raise ValueError(f"multi-task methods need num_tasks >= {minimum}, got {num_tasks}; "
                         "for a single task use get_method('uniform').")
    return int(num_tasks)


def _as_losses(losses: ArrayLike, minimum: int = 2) -> jax.Array:
    """Return the task losses as a float32 ``(T,)`` array with ``T >= minimum`` (checked)."""
    losses = jnp.asarray(losses)
    if losses.ndim != 1 or losses.shape[0] < minimum:
        raise ValueError(f"losses must have shape (T,) with T >= {minimum} tasks, got shape "
                         f"{tuple(losses.shape)}; stack the per-task scalar losses, e.g. "
                         "jnp.stack([l_seg, l_depth, l_normal]).")
    return losses.astype(jnp.float32)


def _as_grads(grads: ArrayLike, num_tasks: int) -> jax.Array:
    """Return the per-task gradients as a float32 ``(T, D)`` array (shape checked)."""
    grads = jnp.asarray(grads)
    if grads.ndim != 2 or grads.shape[0] != num_tasks:
        raise ValueError(f"grads must have shape (T, D) = ({num_tasks}, D) to match the "
                         f"{num_tasks} task losses, got shape {tuple(grads.shape)}; flatten "
                         "each task's gradient tree into one row (e.g. with "
                         "jax.flatten_util.ravel_pytree) and stack the rows.")
    return grads.astype(jnp.float32)


def _as_gram(gram: ArrayLike) -> jax.Array:
    """Return a float32 square ``(T, T)`` Gram matrix with ``T >= 2`` (shape checked)."""
    gram = jnp.asarray(gram, jnp.float32)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 2:
        raise ValueError(f"expected a (T, T) Gram matrix with T >= 2, got shape "
                         f"{tuple(gram.shape)}; compute it with gram_matrix(grads).")
    return gram


def _mv(a: jax.Array, x: jax.Array) -> jax.Array:
    """Matrix-vector product ``a @ x`` for tiny matrices, exact float32 (no MXU passes)."""
    return jnp.sum(a * x[None, :], axis=-1)


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """Inner product of two small vectors, exact float32."""
    return jnp.sum(x * y)


def _weighted_sum(weights: jax.Array, grads: jax.Array) -> jax.Array:
    """``sum_t weights[t] * grads[t]``: ``(T,)`` x ``(T, D)`` -> ``(D,)`` at full precision."""
    return jnp.matmul(weights, grads, precision=_HIGHEST)


def _normalise_gram(gram: jax.Array, how: str = "max") -> jax.Array:
    """Divide a Gram matrix by its largest (``how='max'``) or mean diagonal entry (0 stays 0)."""
    diag = jnp.diagonal(gram)
    scale = jnp.max(diag) if how == "max" else jnp.mean(diag)
    return gram / jnp.where(scale > 0, scale, 1.0)


def _check_rng(rng: Any, name: str) -> jax.Array:
    """Refuse a missing PRNG key for the randomised methods."""
    if rng is None:
        raise ValueError(f"method {name!r} is randomised: pass a PRNG key as rng to combine() "
                         "(e.g. jax.random.fold_in(key, step)).")
    return rng


# ---------------------------------------------------------------------------------------------
# Functional building blocks (usable on their own)
# ---------------------------------------------------------------------------------------------

def gram_matrix(grads: ArrayLike) -> jax.Array:
    """Gram matrix ``G G^T`` of per-task gradients ``grads: (T, D)``, ``(T, T)`` float32.

    Computed at ``Precision.HIGHEST`` and symmetrised.
    """
    grads = jnp.asarray(grads, jnp.float32)
    if grads.ndim != 2:
        raise ValueError(f"grads must have shape (T, D), got shape {tuple(grads.shape)}.")
    gram = jnp.matmul(grads, grads.T, precision=_HIGHEST)
    return 0.5 * (gram + gram.T)


def project_to_simplex(v: ArrayLike) -> jax.Array:
    """Euclidean projection of ``v: (T,)`` onto the probability simplex (sort-based, exact)."""
    v = jnp.asarray(v, jnp.float32)
    t = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(t)
    positive = u - css / (idx + 1).astype(v.dtype) > 0  # always true at index 0
    rho = jnp.max(jnp.where(positive, idx, 0))
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _min_norm_2(v11: jax.Array, v12: jax.Array, v22: jax.Array) -> jax.Array:
    """Coefficient ``gamma`` in [0, 1] minimising ``|gamma x1 + (1 - gamma) x2|^2``.

    Inputs are the inner products ``<x1,x1>``, ``<x1,x2>``, ``<x2,x2>`` (broadcastable);
    ``gamma = clip((v22 - v12) / (v11 + v22 - 2 v12), 0, 1)``, and 1 when ``x1 == x2``.
    """
    den = v11 + v22 - 2.0 * v12
    ok = den > 1e-12
    gamma = (v22 - v12) / jnp.where(ok, den, 1.0)
    return jnp.where(ok, jnp.clip(gamma, 0.0, 1.0), 1.0)


#: Up to this many tasks :func:`min_norm_weights` solves exactly by enumerating the faces
#: of the simplex (2**T - 1 small linear systems); above it, by an active-set iteration.
MIN_NORM_EXACT_MAX_TASKS = 4


def _face_masks(num_tasks: int) -> np.ndarray:
    """Every non-empty subset of ``range(T)`` as a bool ``(2**T - 1, T)`` array (host)."""
    codes = np.arange(1, 2 ** num_tasks)
    return ((codes[:, None] >> np.arange(num_tasks)[None, :]) & 1).astype(bool)


def _face_solve(a: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Minimiser ``x`` of ``x^T a x`` on the affine hull ``{x : sum x = 1, x_i = 0 off
    mask}`` and the minimum ``x^T a x``.

    Solves the KKT system ``[a_S 1; 1^T 0] [x; -f] = [0; 1]`` (at the minimiser
    ``a_S x = f 1``, so the multiplier is the minimum itself, free of the cancellation that
    evaluating the tiny ``x^T a x`` of nearly opposite gradients in float32 suffers) after a
    symmetric Jacobi scaling (unit diagonal, which keeps gradients whose norms differ by
    orders of magnitude well conditioned), with one step of iterative refinement.
    Coordinates off the face are pinned to 0 by identity rows, so every face is one
    ``(T+1, T+1)`` system (static shapes, vmappable). ``x`` sums to 1 but may have negative
    entries; a singular system (``a_S`` has a null direction summing to zero, and then a
    smaller face reaches the same minimum) gives non-finite values.
    """
    t = a.shape[0]
    d = jnp.diagonal(a)
    s = jnp.where(d > _REL_TINY, jax.lax.rsqrt(jnp.where(d > _REL_TINY, d, 1.0)), 1.0)
    both = mask[:, None] & mask[None, :]
    top = jnp.where(both, a * s[:, None] * s[None, :], jnp.eye(t, dtype=a.dtype))
    border = jnp.where(mask, s, 0.0)
    kkt = jnp.zeros((t + 1, t + 1), a.dtype)
    kkt = kkt.at[:t, :t].set(top).at[:t, t].set(border).at[t, :t].set(border)
    rhs = jnp.zeros((t + 1,), a.dtype).at[t].set(1.0)
    y = jnp.linalg.solve(kkt, rhs)
    y = y + jnp.linalg.solve(kkt, rhs - _mv(kkt, y))          # iterative refinement
    return jnp.where(mask, s * y[:t], 0.0), -y[t]


def _min_norm_exact(a: jax.Array) -> jax.Array:
    """Exact min-norm point by enumeration of the simplex's faces (small ``T``): of the
    face minimisers inside the simplex (finite, ``>= 0`` up to round-off), the one with the
    smallest minimum."""
    xs, values = jax.vmap(lambda m: _face_solve(a, m))(jnp.asarray(_face_masks(a.shape[0])))
    ok = (jnp.all(jnp.isfinite(xs), axis=1) & jnp.isfinite(values)
          & jnp.all(xs >= -1e-6, axis=1))
    xs = jnp.where(ok[:, None], jnp.maximum(xs, 0.0), 0.0)
    total = jnp.sum(xs, axis=1, keepdims=True)
    ok = ok & (total[:, 0] > 0)
    xs = xs / jnp.where(total > 0, total, 1.0)
    return xs[jnp.argmin(jnp.where(ok, values, jnp.inf))]


def _min_norm_active_set(a: jax.Array, max_iterations: int, tol: float) -> jax.Array:
    """Primal active-set method (as for non-negative least squares) on the simplex.

    From the vertex of the smallest gradient, alternately: solve on the current support
    (:func:`_face_solve`); if that leaves the simplex, step towards it as far as feasible
    and drop the coordinate that reaches 0 first; otherwise move there and add the
    coordinate whose KKT condition is most violated (``(a x)_j < x^T a x - tol``), or stop
    when none is. Also stops when a coordinate just added is dropped again at once (round-off
    cycling), when a solve is singular (keeping the last feasible point), or after
    ``max_iterations`` solves.
    """
    t = a.shape[0]
    idx = jnp.arange(t)
    x0 = jax.nn.one_hot(jnp.argmin(jnp.diagonal(a)), t, dtype=a.dtype)

    def cond(carry):
        count, _, _, _, done = carry
        return (count < max_iterations) & ~done

    def body(carry):
        count, x, support, added, _ = carry
        z, value = _face_solve(a, support)
        finite = jnp.all(jnp.isfinite(z)) & jnp.isfinite(value)
        neg = support & (z < 0)
        blocked = jnp.any(neg)
        # Blocked: step from x towards z until the first coordinate reaches 0; drop it.
        ratios = jnp.where(neg, x / jnp.where(neg, x - z, 1.0), jnp.inf)
        first = jnp.argmin(ratios)
        x_blocked = x + jnp.clip(ratios[first], 0.0, 1.0) * (z - x)
        support_blocked = support & (x_blocked > 0) & (idx != first)
        x_blocked = jnp.where(support_blocked, jnp.maximum(x_blocked, 0.0), 0.0)
        x_blocked = x_blocked / jnp.maximum(jnp.sum(x_blocked), _REL_TINY)
        # Unblocked: move to z and add the most violated coordinate, if any.
        violation = jnp.where(support, jnp.inf, _mv(a, z) - value)
        j = jnp.argmin(violation)
        optimal = violation[j] >= -tol
        cycling = blocked & (first == added)
        done = ~finite | cycling | (~blocked & optimal)
        keep = ~finite | cycling
        new_x = jnp.where(keep, x, jnp.where(blocked, x_blocked, z))
        new_support = jnp.where(keep, support,
                                jnp.where(blocked, support_blocked, support | (idx == j)))
        new_added = jnp.where(blocked, -1, j)
        return count + 1, new_x, new_support, new_added, done

    carry = (jnp.zeros((), jnp.int32), x0, x0 > 0, jnp.asarray(-1), jnp.bool_(False))
    return jax.lax.while_loop(cond, body, carry)[1]


def min_norm_weights(gram: ArrayLike, iterations: int = 100, tol: float = 0.0) -> jax.Array:
    """MGDA weights: the point of the simplex whose gradient combination has minimum norm.

    Solves ``min_{alpha in simplex} |sum_t alpha_t g_t|^2 = alpha^T gram alpha`` from the
    Gram matrix ``gram: (T, T)`` (float32; normalised by its largest diagonal entry first),
    the subproblem of MGDA (Sener & Koltun, NeurIPS 2018).

    * ``T <= MIN_NORM_EXACT_MAX_TASKS`` (4): **exactly**, by enumerating the ``2**T - 1``
      faces of the simplex: the optimum lies in the relative interior of some face, where it
      is the minimiser over the face's affine hull (a small KKT system); the feasible face
      minimiser with the smallest objective is the optimum.
    * larger ``T``: a primal active-set iteration (:func:`_min_norm_active_set`, at most
      ``iterations`` small solves) that stops when no KKT condition is violated by more
      than ``tol`` (in units of the largest squared gradient norm); it reaches the exact
      optimum in a few solves (typically about ``T``).

    Both are exact up to float32 round-off of the Gram matrix, also on ill-conditioned
    inputs (norms spread 1000x, two nearly opposite tasks), where the 250 Frank-Wolfe steps
    this function took before ended 1.3-2.4x above the minimum norm (Sener & Koltun's
    ``MinNormSolver``, which the authors' DensePred code calls, is also an iteration capped
    at 250 steps). Jit-compatible (``T`` static). Returns ``alpha: (T,)`` float32, non-negative, summing to 1; zero
    gradients give a vertex of a zero gradient (norm 0).

    Raises:
      ValueError: if ``gram`` is not a square ``(T, T)`` matrix with ``T >= 2``.
    """
    a = _normalise_gram(_as_gram(gram))
    if a.shape[0] <= MIN_NORM_EXACT_MAX_TASKS:
        return _min_norm_exact(a)
    return _min_norm_active_set(a, int(iterations), float(tol))


def pcgrad_orders(rng: jax.Array, num_tasks: int) -> jax.Array:
    """Random projection orders for PCGrad: ``(T, T-1)`` int32, row ``i`` a permutation of
    ``[0..T-1] \\ {i}`` (task ``i``'s order of the other tasks), from ``rng``."""
    t = _check_num_tasks(num_tasks)
    keys = jax.random.split(rng, t)
    perms = jax.vmap(lambda k: jax.random.permutation(k, t - 1))(keys)
    return (perms + (perms >= jnp.arange(t)[:, None])).astype(jnp.int32)


def pcgrad_weights(gram: ArrayLike, orders: ArrayLike) -> jax.Array:
    """PCGrad (Yu et al., NeurIPS 2020) expressed as task weights on the original gradients.

    For every task ``i``, start from ``g_i' = g_i`` and for ``j`` in ``orders[i]`` (the other
    tasks) replace ``g_i' <- g_i' - min(0, g_i'.g_j) / |g_j|^2 g_j`` (projection away from the
    ORIGINAL ``g_j`` when they conflict). Each ``g_i'`` stays a linear combination of the
    original gradients, so everything is computed from ``gram: (T, T)``; the combined gradient
    ``sum_i g_i'`` equals ``sum_k w_k g_k`` with the returned ``w: (T,)``.
    """
    gram = _as_gram(gram)
    t = gram.shape[0]
    orders = jnp.asarray(orders, jnp.int32)
    if orders.shape != (t, t - 1):
        raise ValueError(f"orders must have shape (T, T-1) = ({t}, {t - 1}), got "
                         f"{tuple(orders.shape)}; use pcgrad_orders(rng, T).")
    sq = jnp.diagonal(gram)
    safe_sq = jnp.where(sq > 0, sq, 1.0)

    def per_task(i, order):
        def body(r, coef):
            j = order[r]
            dot = _dot(coef, gram[:, j])                    # g_i' . g_j
            shrink = jnp.where((dot < 0) & (sq[j] > 0), dot / safe_sq[j], 0.0)
            return coef - shrink * jax.nn.one_hot(j, t)
        return jax.lax.fori_loop(0, t - 1, body, jax.nn.one_hot(i, t))

    coefs = jax.vmap(per_task)(jnp.arange(t), orders)        # row i: g_i' in the g basis
    return jnp.sum(coefs, axis=0)


#: GradDrop's guard in the sign purity ``sum_t G_t / (sum_t |G_t| + eps)`` (LibMTL's value).
GRADDROP_EPS = 1e-7


def graddrop_combine(grads: ArrayLike, uniform: ArrayLike, leak: float | ArrayLike = 0.0,
                     inputs: ArrayLike | None = None, eps: float = GRADDROP_EPS
                     ) -> tuple[jax.Array, jax.Array]:
    """GradDrop (Chen et al., "Just Pick a Sign", NeurIPS 2020, Algorithm 1) with a given
    uniform sample.

    With ``G_t`` the sign statistic of task ``t`` (below), per element
    ``P = 0.5 (1 + sum_t G_t / (sum_t |G_t| + eps))`` (the positive sign purity), and task
    ``t``'s mask ``M_t = [P > U] [G_t > 0] + [P < U] [G_t < 0]``: where ``U < P`` the
    tasks whose ``G_t`` is positive keep their gradient, elsewhere those whose ``G_t`` is
    negative (``G_t = 0`` is dropped). A dropped gradient keeps the fraction ``leak``:
    ``new_t = (leak_t + (1 - leak_t) M_t) grad_t``, and the result is ``sum_t new_t``.
    This follows LibMTL's ``GradDrop`` (its ``eps = 1e-7``).

    * ``grads: (T, D)`` (e.g. flattened parameter gradients), ``inputs=None``:
      ``G_t = grads_t``.
    * ``grads: (T, B, D)``, the per-example gradients of a *batch-separated* activation
      ``inputs: (B, D)`` (the paper's setting, LibMTL's ``rep_grad``): the gradients are
      sign-corrected by the activation and summed over the batch,
      ``G_t = sum_b sign(inputs_b) * grads_{t,b}`` ``(T, D)``, so there is one keep
      probability and one mask per feature, applied to every example's gradient.

    Args:
      grads: float ``(T, D)`` or ``(T, B, D)``.
      uniform: ``(D,)`` in ``[0, 1)``, one draw per feature.
      leak: scalar or ``(T,)`` in ``[0, 1]``.
      inputs: ``None`` or the activation ``(B, D)`` for 3-D ``grads`` (required then; a
        ``(D,)`` activation may be given with 2-D ``grads``).
      eps: the purity guard.

    Returns:
      ``(combined, weights)``: ``combined`` of ``grads``' shape without ``T`` (``(D,)`` or
      ``(B, D)``), and ``(T,)`` weights ``<new_t, grad_t> / |grad_t|^2`` (the kept fraction
      of each task's gradient, 1 for a zero gradient), for logging.

    Raises:
      ValueError: for inconsistent shapes.
    """
    grads = jnp.asarray(grads, jnp.float32)
    uniform = jnp.asarray(uniform, jnp.float32)
    if grads.ndim not in (2, 3) or uniform.shape != grads.shape[-1:]:
        raise ValueError(f"graddrop: expected grads (T, D) or (T, B, D) and uniform (D,), got "
                         f"{tuple(grads.shape)} and {tuple(uniform.shape)}.")
    if grads.ndim == 3 and inputs is None:
        raise ValueError("graddrop: per-example gradients (T, B, D) need the activation "
                         "inputs (B, D) whose sign corrects them (paper, Algorithm 1).")
    t = grads.shape[0]
    if inputs is not None:
        inputs = jnp.asarray(inputs)
        if inputs.shape != grads.shape[1:]:
            raise ValueError(f"graddrop: inputs must have the shape {tuple(grads.shape[1:])} "
                             f"of one task's gradient; got {tuple(inputs.shape)}.")
        signed = grads * jnp.sign(inputs).astype(jnp.float32)[None]
    else:
        signed = grads
    g = jnp.sum(signed, axis=1) if grads.ndim == 3 else signed          # (T, D)
    purity = 0.5 * (1.0 + jnp.sum(g, axis=0) / (jnp.sum(jnp.abs(g), axis=0) + eps))
    mask = ((purity > uniform)[None] & (g > 0)) | ((purity < uniform)[None] & (g < 0))
    leak = jnp.broadcast_to(jnp.asarray(leak, jnp.float32), (t,))[:, None]
    factor = leak + (1.0 - leak) * mask.astype(jnp.float32)              # (T, D)
    if grads.ndim == 3:
        factor = factor[:, None, :]
    masked = grads * factor
    combined = jnp.sum(masked, axis=0)
    flat, flat_masked = grads.reshape(t, -1), masked.reshape(t, -1)
    sq = jnp.sum(flat * flat, axis=1)
    weights = jnp.where(sq > 0, jnp.sum(flat_masked * flat, axis=1) / jnp.where(sq > 0, sq, 1.0),
                        1.0)
    return combined, weights


def imtl_g_weights(gram: ArrayLike) -> jax.Array:
    """IMTL-G weights (Liu et al., ICLR 2021): the combination with equal projections on every
    unit task gradient.

    With ``u_t = g_t / |g_t|``, ``D = g_1 - g_{2..T}``, ``U = u_1 - u_{2..T}`` (rows),
    ``alpha_{2..T} = g_1 U^T (D U^T)^+`` and ``alpha_1 = 1 - sum(alpha_{2..T})``, so that
    ``g = sum_t alpha_t g_t`` satisfies ``g.u_1 = ... = g.u_T``. Everything is computed from
    ``gram: (T, T)`` (normalised by its largest diagonal entry). Guard: ``(D U^T)^+`` is the
    Moore-Penrose pseudo-inverse (singular values below ``10 (T-1) eps`` of the largest are
    dropped), so singular cases (zero or parallel gradients) give finite, least-squares weights
    instead of NaN; zero gradients get ``u_t = 0``. Returns ``alpha: (T,)`` summing to 1
    (entries may be negative).
    """
    a = _normalise_gram(_as_gram(gram))
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
    inv = jnp.where(norms > math.sqrt(_REL_TINY), 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    p = a * inv[None, :]                                       # p[a, b] = g_a . u_b
    rhs = p[0, 0] - p[0, 1:]                                   # g_1 U^T
    mat = p[0, 0] - p[0, 1:][None, :] - p[1:, 0][:, None] + p[1:, 1:]   # D U^T
    rest = jnp.sum(rhs[:, None] * jnp.linalg.pinv(mat), axis=0)
    return jnp.concatenate([1.0 - jnp.sum(rest, keepdims=True), rest])


def cagrad_solve(gram: ArrayLike, c: float = 0.4, iterations: int = 100,
                 num_step_sizes: int = 32) -> jax.Array:
    """Solve CAGrad's inner problem (Liu et al., NeurIPS 2021) on the simplex.

    ``min_{w in simplex} w^T G g0 + c |g0| |G^T w|`` with ``g0 = mean_t g_t``, written with the
    Gram matrix only (``G g0 = GG 1/T``), on ``GG`` normalised by its mean diagonal (the
    minimiser does not depend on that scale) and with the authors' ``+1e-8`` under the square
    root. Method: ``iterations`` projected-gradient steps from the uniform point; each step tries
    ``num_step_sizes`` step sizes ``2, 1, 0.5, ...`` (and 0) and keeps the projected point that
    decreases the objective most (compared through cancellation-free differences, so progress
    continues to near float32 precision in ``w``); the objective never increases and no step
    size needs tuning. Returns ``w: (T,)``.
    """
    a = _normalise_gram(_as_gram(gram), how="mean")
    t = a.shape[0]
    b = jnp.full((t,), 1.0 / t, a.dtype)
    ab = _mv(a, b)
    cg0 = c * jnp.sqrt(jnp.maximum(_dot(b, ab), 0.0))
    steps = jnp.concatenate([jnp.zeros((1,)), 2.0 * 0.5 ** jnp.arange(num_step_sizes)])

    def root(w):
        return jnp.sqrt(jnp.maximum(_dot(w, _mv(a, w)), 0.0) + 1e-8)

    def change(w, root_w, v):
        # objective(v) - objective(w), written as differences so that float32 cancellation
        # does not hide small improvements near the optimum.
        d = v - w
        d_quad = _dot(d, _mv(a, v + w))                      # v'Av - w'Aw
        return _dot(d, ab) + cg0 * d_quad / (root(v) + root_w)

    def step(_, w):
        aw = _mv(a, w)
        root_w = root(w)
        grad = ab + cg0 * aw / root_w
        candidates = jax.vmap(lambda eta: project_to_simplex(w - eta * grad))(steps)
        changes = jax.vmap(lambda v: change(w, root_w, v))(candidates)
        return candidates[jnp.argmin(changes)]

    return jax.lax.fori_loop(0, int(iterations), step, b)


def cagrad_weights(gram: ArrayLike, c: float = 0.4, rescale: int = 1,
                   iterations: int = 100) -> jax.Array:
    """CAGrad's combined gradient as task weights: ``g = sum_t weights_t g_t``.

    ``g = g0 + c |g0| / |G^T w| G^T w`` with ``w = cagrad_solve(gram, c, iterations)``, i.e.
    ``weights = 1/T + c |g0| / |G^T w| * w``; divided by ``1 + c^2`` when ``rescale == 1``
    (the authors' default), by ``1 + c`` when ``rescale == 2``, unchanged when 0. When
    ``G^T w = 0`` (the origin is in the convex hull) the correction is dropped (``g = g0``).
    """
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale!r}.")
    gram = _as_gram(gram)
    a = _normalise_gram(gram, how="mean")
    t = a.shape[0]
    b = jnp.full((t,), 1.0 / t, a.dtype)
    w = cagrad_solve(gram, c, iterations)
    g0_sq = _dot(b, _mv(a, b))
    gw_sq = _dot(w, _mv(a, w))
    ok = gw_sq > _REL_TINY
    lam = jnp.where(ok, c * jnp.sqrt(jnp.maximum(g0_sq, 0.0)
                                     / jnp.where(ok, gw_sq, 1.0)), 0.0)
    weights = b + lam * w
    divisor = {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[int(rescale)]
    return weights / divisor


# ---------------------------------------------------------------------------------------------
# Method objects
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class MTLMethod:
    """A multi-task optimisation method (base class; build one with :func:`get_method`).

    Attributes:
      name: one of :data:`METHODS`.
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
        _check_num_tasks(num_tasks, self.min_tasks)
        return {}

    def init_state(self, num_tasks: int) -> State:
        """Non-trainable state (arrays only): ``{"step": int32 scalar}`` plus method extras."""
        _check_num_tasks(num_tasks, self.min_tasks)
        return {"step": jnp.zeros((), jnp.int32)}

    def update_state(self, state: State, losses: ArrayLike) -> State:
        """State after a step that saw ``losses: (T,)`` (here: ``step + 1``)."""
        _as_losses(losses, self.min_tasks)
        return {**state, "step": state["step"] + 1}

    # -- the update ---------------------------------------------------------------------------
    def loss(self, losses: ArrayLike, params: Params, state: State
             ) -> tuple[jax.Array, jax.Array]:
        """Scalar total loss (differentiable w.r.t. ``losses`` and ``params``) and ``(T,)``
        stop-gradient task weights. Only for ``uses_gradients=False`` methods."""
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
        losses = _as_losses(losses)
        grads = _as_grads(grads, losses.shape[0])
        dl, dparams = jax.grad(lambda l, p: self.loss(l, p, state)[0], argnums=(0, 1))(
            losses, params)
        return _weighted_sum(dl, grads), dparams, dl

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
        :class:`GradDrop` overrides this with the paper's per-feature masks.
        """
        grads = jnp.asarray(grads)
        if grads.ndim != 3 or jnp.shape(inputs) != grads.shape[1:]:
            raise ValueError(f"combine_features: expected grads (T, B, D) and inputs (B, D); "
                             f"got {tuple(grads.shape)} and {tuple(jnp.shape(inputs))}.")
        combined, dparams, weights = self.combine(grads.reshape(grads.shape[0], -1), losses,
                                                  params, state, rng)
        return combined.reshape(grads.shape[1:]), dparams, weights


# --- loss weighting ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class Uniform(MTLMethod):
    """Equal weighting: ``total = sum_t L_t`` (weights 1). Also takes a single task (T = 1),
    which is how single-task teachers train."""

    name: str = dataclasses.field(default="uniform", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)

    @property
    def min_tasks(self) -> int:
        """Uniform weighting is defined for any number of tasks."""
        return 1

    def loss(self, losses: ArrayLike, params: Params, state: State
             ) -> tuple[jax.Array, jax.Array]:
        """``sum_t L_t`` and weights ``ones(T)``."""
        losses = _as_losses(losses, minimum=1)
        return jnp.sum(losses), jnp.ones_like(losses)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Uncertainty(MTLMethod):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), in the form
    commonly implemented (MTAN/CAGrad code) for every task type:
    ``total = sum_t L_t / (2 exp(s_t)) + s_t / 2`` with learnt log-variances ``s`` (init 0,
    so the initial weights are 1/2). Params: ``{"log_vars": (T,)}``."""

    name: str = dataclasses.field(default="uncertainty", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)

    def init_params(self, num_tasks: int) -> Params:
        """``{"log_vars": zeros(T)}``."""
        return {"log_vars": jnp.zeros((_check_num_tasks(num_tasks),), jnp.float32)}

    def loss(self, losses: ArrayLike, params: Params, state: State
             ) -> tuple[jax.Array, jax.Array]:
        """Uncertainty-weighted total and weights ``1 / (2 exp(s))``."""
        losses = _as_losses(losses)
        s = jnp.asarray(params["log_vars"], jnp.float32)
        total = jnp.sum(0.5 * jnp.exp(-s) * losses + 0.5 * s)
        return total, jax.lax.stop_gradient(0.5 * jnp.exp(-s))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DWA(MTLMethod):
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-end multi-task learning with
    attention", CVPR 2019).

    ``w_t = T softmax_t(r / temperature)`` with ``r_t = Lbar_t(e-1) / Lbar_t(e-2)``, the mean
    training losses of the two previous epochs; ``w = 1`` during epochs 0 and 1. Weights sum to
    ``T``; ``total = sum_t w_t L_t`` (``w`` constant). The state accumulates the epoch's loss
    sums and rolls every ``steps_per_epoch`` calls of :meth:`update_state`.

    Options: ``steps_per_epoch`` (required int >= 1), ``temperature`` (default 2.0).
    """

    name: str = dataclasses.field(default="dwa", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)
    steps_per_epoch: int | None = None
    temperature: float = 2.0

    def __post_init__(self) -> None:
        """Validate ``steps_per_epoch`` and ``temperature``."""
        super().__post_init__()
        spe = self.steps_per_epoch
        if isinstance(spe, bool) or not isinstance(spe, (int, np.integer)) or spe < 1:
            raise ValueError("dwa needs steps_per_epoch, an int >= 1 (the number of training "
                             f"steps per epoch, e.g. ceil(795 / batch_size)); got {spe!r}.")
        object.__setattr__(self, "steps_per_epoch", int(spe))
        if not float(self.temperature) > 0:
            raise ValueError(f"dwa temperature must be > 0, got {self.temperature!r}.")
        object.__setattr__(self, "temperature", float(self.temperature))

    def init_state(self, num_tasks: int) -> State:
        """Step counter, completed-epoch count, current epoch's loss sums and the two previous
        epochs' mean losses (``last``: e-1, ``before_last``: e-2)."""
        t = _check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32), "epoch": jnp.zeros((), jnp.int32),
                "epoch_loss_sum": jnp.zeros((t,), jnp.float32),
                "last_epoch_mean": jnp.zeros((t,), jnp.float32),
                "before_last_epoch_mean": jnp.zeros((t,), jnp.float32)}

    def weights(self, state: State) -> jax.Array:
        """The ``(T,)`` DWA weights for the current epoch of ``state``."""
        last = state["last_epoch_mean"]
        prev = state["before_last_epoch_mean"]
        ratio = jnp.where(prev > 0, last / jnp.where(prev > 0, prev, 1.0), 1.0)
        t = last.shape[0]
        dwa = t * jax.nn.softmax(ratio / self.temperature)
        return jnp.where(state["epoch"] >= 2, dwa, jnp.ones_like(dwa))

    def loss(self, losses: ArrayLike, params: Params, state: State
             ) -> tuple[jax.Array, jax.Array]:
        """``sum_t w_t L_t`` with the epoch's DWA weights (constants)."""
        losses = _as_losses(losses)
        w = jax.lax.stop_gradient(self.weights(state))
        return jnp.sum(w * losses), w

    def update_state(self, state: State, losses: ArrayLike) -> State:
        """Add ``losses`` to the epoch sums; at an epoch end store the mean and roll."""
        losses = jax.lax.stop_gradient(_as_losses(losses))
        step = state["step"] + 1
        acc = state["epoch_loss_sum"] + losses
        end = (step % self.steps_per_epoch) == 0
        return {"step": step,
                "epoch": state["epoch"] + end.astype(jnp.int32),
                "epoch_loss_sum": jnp.where(end, jnp.zeros_like(acc), acc),
                "last_epoch_mean": jnp.where(end, acc / self.steps_per_epoch,
                                             state["last_epoch_mean"]),
                "before_last_epoch_mean": jnp.where(end, state["last_epoch_mean"],
                                                    state["before_last_epoch_mean"])}


@dataclasses.dataclass(frozen=True, kw_only=True)
class IMTLL(MTLMethod):
    """IMTL-L, loss balance (Liu et al., "Towards impartial multi-task learning", ICLR 2021):
    ``total = sum_t exp(s_t) L_t - s_t`` with learnt ``s`` (init 0, weights ``exp(s)``); at
    the optimum for ``s`` every scaled loss ``exp(s_t) L_t`` equals 1.
    Params: ``{"log_scales": (T,)}``."""

    name: str = dataclasses.field(default="imtl_l", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)

    def init_params(self, num_tasks: int) -> Params:
        """``{"log_scales": zeros(T)}``."""
        return {"log_scales": jnp.zeros((_check_num_tasks(num_tasks),), jnp.float32)}

    def loss(self, losses: ArrayLike, params: Params, state: State
             ) -> tuple[jax.Array, jax.Array]:
        """``sum_t exp(s_t) L_t - s_t`` and weights ``exp(s)``."""
        losses = _as_losses(losses)
        s = jnp.asarray(params["log_scales"], jnp.float32)
        return jnp.sum(jnp.exp(s) * losses - s), jax.lax.stop_gradient(jnp.exp(s))


# --- gradient manipulation ---------------------------------------------------------------------

def _check_sum_scale(method: MTLMethod) -> None:
    """Validate a ``sum_scale`` option (a bool)."""
    if not isinstance(method.sum_scale, (bool, np.bool_)):
        raise TypeError(f"method {method.name!r}: sum_scale must be True or False, got "
                         f"{method.sum_scale!r}.")


def _check_iterations(method: MTLMethod) -> None:
    """Validate an ``iterations`` option (an int >= 0)."""
    it = method.iterations
    if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or it < 0:
        raise ValueError(f"method {method.name!r}: iterations must be an int >= 0, got {it!r}.")
    object.__setattr__(method, "iterations", int(it))


def _finish(weights: jax.Array, grads: jax.Array, sum_scale: bool
            ) -> tuple[jax.Array, jax.Array]:
    """Scale the weights by ``T`` if ``sum_scale``; return ``(weights @ grads, weights)``."""
    if sum_scale:
        weights = weights * grads.shape[0]
    return _weighted_sum(weights, grads), weights


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
        return {"logits": jnp.zeros((_check_num_tasks(num_tasks),), jnp.float32)}

    def init_state(self, num_tasks: int) -> State:
        """Step counter and the first step's losses ``initial_losses: (T,)``."""
        t = _check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32),
                "initial_losses": jnp.zeros((t,), jnp.float32)}

    def initial_losses(self, state: State, losses: jax.Array) -> jax.Array:
        """``L(0)``: the stored first-step losses, or ``losses`` before the first update."""
        return jnp.where(state["step"] == 0, losses, state["initial_losses"])

    def update_state(self, state: State, losses: ArrayLike) -> State:
        """Increment the step; store ``losses`` as ``L(0)`` at the first step."""
        losses = jax.lax.stop_gradient(_as_losses(losses))
        return {"step": state["step"] + 1, "initial_losses": self.initial_losses(state, losses)}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_t w_t g_t``, the GradNorm gradient of the logits, and ``w``."""
        losses = jax.lax.stop_gradient(_as_losses(losses))
        t = losses.shape[0]
        grads = _as_grads(grads, t)
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
        return _weighted_sum(w, grads), {"logits": g_logits}, w


@dataclasses.dataclass(frozen=True, kw_only=True)
class MGDA(MTLMethod):
    """MGDA (Sener & Koltun, "Multi-task learning as multi-objective optimization",
    NeurIPS 2018): ``alpha`` = min-norm point of the convex hull of the (optionally normalised)
    task gradients (:func:`min_norm_weights`), combined gradient ``sum_t alpha_t g_t`` on the
    ORIGINAL gradients, as in the authors' code (they rescale the original losses by alpha).

    Options: ``iterations`` (at most 100 active-set solves for more than
    :data:`MIN_NORM_EXACT_MAX_TASKS` tasks; up to that the min-norm problem is solved
    exactly and ``iterations`` is not used), ``normalization`` in
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
        _check_iterations(self)
        _check_sum_scale(self)
        if self.normalization not in MGDA_NORMALIZATIONS:
            raise ValueError(f"mgda normalization must be one of {MGDA_NORMALIZATIONS}, got "
                             f"{self.normalization!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Min-norm weights (on normalised gradients) applied to the original gradients."""
        losses = _as_losses(losses)
        grads = _as_grads(grads, losses.shape[0])
        gram = gram_matrix(grads)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses,
                 "loss+": losses * norms}[self.normalization]
        scale = jnp.where(scale > 0, scale, 1.0)
        alpha = min_norm_weights(gram / (scale[:, None] * scale[None, :]), self.iterations)
        combined, weights = _finish(alpha, grads, self.sum_scale)
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
        losses = _as_losses(losses)
        t = losses.shape[0]
        grads = _as_grads(grads, t)
        orders = pcgrad_orders(_check_rng(rng, self.name), t)
        weights = pcgrad_weights(gram_matrix(grads), orders)
        return _weighted_sum(weights, grads), {}, weights


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
        losses = _as_losses(losses)
        t = losses.shape[0]
        grads = _as_grads(grads, t)
        self._check_leak(t)
        uniform = jax.random.uniform(_check_rng(rng, self.name), grads.shape[1:])
        combined, weights = graddrop_combine(grads, uniform, self.leak, eps=self.eps)
        return combined, {}, weights

    def combine_features(self, grads: ArrayLike, inputs: ArrayLike, losses: ArrayLike,
                         params: Params, state: State, rng: jax.Array | None = None
                         ) -> tuple[jax.Array, Params, jax.Array]:
        """The paper's GradDrop on per-example activation gradients ``(T, B, D)`` and the
        activation ``(B, D)``: one mask per feature from the batch-summed, sign-corrected
        gradients, applied to every example. Returns ``(combined (B, D), {}, (T,) kept
        fractions)``."""
        losses = _as_losses(losses)
        t = losses.shape[0]
        grads = jnp.asarray(grads, jnp.float32)
        if grads.ndim != 3 or grads.shape[0] != t:
            raise ValueError(f"graddrop combine_features: expected grads (T, B, D) with T = {t} "
                             f"tasks; got shape {tuple(grads.shape)}.")
        self._check_leak(t)
        uniform = jax.random.uniform(_check_rng(rng, self.name), grads.shape[2:])
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
        _check_sum_scale(self)

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Gradient-balanced combination of the task gradients."""
        losses = _as_losses(losses)
        grads = _as_grads(grads, losses.shape[0])
        combined, weights = _finish(imtl_g_weights(gram_matrix(grads)), grads, self.sum_scale)
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
        _check_sum_scale(self)

    def init_params(self, num_tasks: int) -> Params:
        """``{"log_scales": zeros(T)}``."""
        return IMTLL().init_params(num_tasks)

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """IMTL-G on the loss-scaled gradients; IMTL-L gradient for the scales."""
        losses = _as_losses(losses)
        grads = _as_grads(grads, losses.shape[0])
        s = jnp.asarray(params["log_scales"], jnp.float32)
        d_s = jax.grad(lambda s_: IMTLL().loss(losses, {"log_scales": s_}, state)[0])(s)
        scale = jnp.exp(jax.lax.stop_gradient(s))
        alpha = imtl_g_weights(gram_matrix(grads) * (scale[:, None] * scale[None, :]))
        combined, weights = _finish(alpha * scale, grads, self.sum_scale)
        return combined, {"log_scales": d_s}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class CAGrad(MTLMethod):
    """CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021); see
    :func:`cagrad_solve` and :func:`cagrad_weights`.

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
        _check_iterations(self)
        _check_sum_scale(self)
        if not float(self.c) >= 0:
            raise ValueError(f"cagrad c must be >= 0, got {self.c!r}.")
        object.__setattr__(self, "c", float(self.c))
        if self.rescale not in (0, 1, 2) or isinstance(self.rescale, bool):
            raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {self.rescale!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Conflict-averse combination of the task gradients."""
        losses = _as_losses(losses)
        grads = _as_grads(grads, losses.shape[0])
        weights = cagrad_weights(gram_matrix(grads), self.c, self.rescale, self.iterations)
        combined, weights = _finish(weights, grads, self.sum_scale)
        return combined, {}, weights


_CLASSES: dict[str, type] = {
    "uniform": Uniform, "uncertainty": Uncertainty, "dwa": DWA, "gradnorm": GradNorm,
    "mgda": MGDA, "pcgrad": PCGrad, "graddrop": GradDrop, "imtl_l": IMTLL, "imtl_g": IMTLG,
    "imtl_h": IMTLH, "cagrad": CAGrad,
}


def method_options(name: str) -> tuple[str, ...]:
    """Names of the options :func:`get_method` accepts for method ``name``."""
    return tuple(f.name for f in dataclasses.fields(_CLASSES[name]) if f.init)


def get_method(name: str, **options: Any) -> MTLMethod:
    """Build the multi-task method ``name`` (one of :data:`METHODS`; case and ``-`` vs ``_``
    are ignored) with its options, e.g. ``get_method("dwa", steps_per_epoch=398)``.

    Raises ValueError for an unknown name (listing :data:`METHODS`), an option the method does
    not take (listing the ones it does) or a bad option value.
    """
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key not in _CLASSES:
        raise ValueError(f"unknown multi-task method {name!r}; expected one of {METHODS}.")
    valid = method_options(key)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {key!r} does not take option(s) {unknown}; valid options: "
                         f"{list(valid) if valid else 'none'}.")
    return _CLASSES[key](**options)
