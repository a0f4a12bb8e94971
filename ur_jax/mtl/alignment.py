"""Methods of LibMTL that align or project the task gradients: GradVac, Aligned-MTL, UPGrad and
ExcessMTL.

Every class here follows :class:`ur_jax.mtl.base.MTLMethod`'s protocol and is registered by
its entry in :data:`CLASSES` (merged into :data:`ur_jax.mtl.registry.METHOD_CLASSES`). All four
are gradient methods (``uses_gradients=True``). Their numerical cores are the pure functions
of this module, usable on their own:

* :func:`gradvac_weights` (GradVac's sequential "vaccine" corrections, as weights on the
  original gradients, from the Gram matrix) and :func:`gradvac_update_targets` (its EMA);
* :func:`aligned_mtl_transform` (Aligned-MTL's ``T x T`` alignment matrix from the Gram
  matrix's eigendecomposition);
* :func:`nonneg_quadratic_min` (a bounded primal active-set solver for
  ``min_x 1/2 x^T A x + b^T x, x >= 0``) and :func:`upgrad_weights` (UPGrad's projections
  onto the dual cone, through that solver);
* :func:`excess_risks` (ExcessMTL's diagonal-Hessian excess-risk estimates).

Scale conventions: gradvac sums the corrected task gradients (as PCGrad and LibMTL); aligned_mtl
sums the aligned gradients (each of norm ``sqrt(lambda_min)``, as LibMTL and the authors'
code); upgrad averages the projected gradients (the paper's ``1/T`` preference vector);
excess_mtl's weights sum to ``T`` (LibMTL; the paper's simplex weights times ``T``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import (ArrayLike, MTLMethod, Params, State, as_grads, as_gram,
                             as_losses, check_grad_dim, check_iterations, check_num_tasks,
                             check_rng, weighted_sum)
from ur_jax.mtl.solvers import gram_matrix, pcgrad_orders

__all__ = [
    "ALIGNED_MTL_SCALE_MODES",
    "CLASSES",
    "GRADVAC_EMA_UPDATES",
    "AlignedMTL",
    "ExcessMTL",
    "GradVac",
    "UPGrad",
    "aligned_mtl_transform",
    "excess_risks",
    "gradvac_update_targets",
    "gradvac_weights",
    "nonneg_quadratic_min",
    "upgrad_weights",
]

_HIGHEST = jax.lax.Precision.HIGHEST
# Squared norms (in units of the largest squared norm) below this are treated as zero.
_REL_TINY = 1e-20

#: GradVac's ``ema_update`` option: move every target each step (the paper's Algorithm 1), or
#: only the targets of the pairs whose similarity fell below them (LibMTL's ``GradVac.py``).
GRADVAC_EMA_UPDATES = ("always", "on_conflict")
#: Aligned-MTL's ``scale_mode``: the common singular value after alignment is the smallest
#: (``"min"``, the paper's choice), the (lower) median, or the root mean square of the
#: retained singular values (the authors' code's alternatives).
ALIGNED_MTL_SCALE_MODES = ("min", "median", "rmse")


def _mv(a: jax.Array, x: jax.Array) -> jax.Array:
    """``a @ x`` for tiny matrices, exact float32 (no reduced-precision matmul passes)."""
    return jnp.sum(a * x[None, :], axis=-1)


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """Inner product of two small vectors, exact float32."""
    return jnp.sum(x * y)


def _normalise_max(gram: jax.Array) -> jax.Array:
    """The Gram matrix divided by its largest diagonal entry (zero stays zero)."""
    scale = jnp.max(jnp.diagonal(gram))
    return gram / jnp.where(scale > 0, scale, 1.0)


def _check_float(method: MTLMethod, name: str, low: float, high: float | None = None,
                 low_open: bool = False) -> None:
    """Validate a float option of ``method`` in ``[low, high]`` (``(low, high]`` if
    ``low_open``) and store it as a Python float."""
    value = getattr(method, name)
    ok = (not isinstance(value, bool)) and isinstance(value, (int, float, np.floating,
                                                               np.integer))
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (v > low if low_open else v >= low) and (
            high is None or v <= high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}"
        bound += "]" if high is not None else ")"
        raise ValueError(f"method {method.name!r}: {name} must be a finite number in {bound}, "
                         f"got {value!r}.")
    object.__setattr__(method, name, float(value))


# ---------------------------------------------------------------------------------------------
# GradVac
# ---------------------------------------------------------------------------------------------

def gradvac_weights(gram: ArrayLike, orders: ArrayLike, targets: ArrayLike,
                    eps: float = 1e-8) -> jax.Array:
    """GradVac's combined gradient (Wang et al., ICLR 2021) as weights on the original
    gradients: ``sum_i g_i' = sum_k w_k g_k``.

    For every task ``i``, start from ``g_i' = g_i`` and visit the other tasks ``j`` in
    ``orders[i]``: with ``phi = cos(g_i', g_j)`` and the target ``phi_hat = targets[i, j]``,
    if ``phi < phi_hat`` add ``c g_j`` with
    ``c = |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
    / (|g_j| sqrt(1 - phi_hat^2))``, the multiple that makes ``cos(g_i' + c g_j, g_j) = phi_hat`` (paper, Eq. 5). Each ``g_i'``
    stays a combination of the original gradients, so all of it is computed from
    ``gram: (T, T)`` (normalised by its largest diagonal entry; ``eps`` guards the cosine and
    ``c`` denominators in those units, as LibMTL's ``1e-8``). Pairs with a zero gradient are
    not corrected. ``orders``: ``(T, T-1)`` int, row ``i`` a permutation of the other tasks
    (:func:`ur_jax.mtl.pcgrad_orders`); ``targets``: ``(T, T)``. Returns ``(T,)`` float32.

    Raises:
      ValueError: for inconsistent shapes.
    """
    a = _normalise_max(as_gram(gram))
    t = a.shape[0]
    orders = jnp.asarray(orders, jnp.int32)
    targets = jnp.asarray(targets, jnp.float32)
    if orders.shape != (t, t - 1) or targets.shape != (t, t):
        raise ValueError(f"gradvac: expected orders ({t}, {t - 1}) and targets ({t}, {t}), got "
                         f"{tuple(orders.shape)} and {tuple(targets.shape)}.")
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
    tiny = jnp.sqrt(jnp.float32(_REL_TINY))

    def per_task(i, order):
        def body(r, coef):
            j = order[r]
            n_i = jnp.sqrt(jnp.maximum(_dot(coef, _mv(a, coef)), 0.0))
            n_j = norms[j]
            phi = _dot(coef, a[:, j]) / (n_i * n_j + eps)
            target = targets[i, j]
            phi_c = jnp.clip(phi, -1.0, 1.0)
            tgt_c = jnp.clip(target, -1.0, 1.0)
            root_t = jnp.sqrt(1.0 - tgt_c * tgt_c)
            c = n_i * (tgt_c * jnp.sqrt(1.0 - phi_c * phi_c) - phi_c * root_t) / (
                n_j * root_t + eps)
            active = (phi < target) & (n_i > tiny) & (n_j > tiny)
            return coef + jnp.where(active, c, 0.0) * jax.nn.one_hot(j, t, dtype=coef.dtype)
        return jax.lax.fori_loop(0, t - 1, body, jax.nn.one_hot(i, t, dtype=a.dtype))

    coefs = jax.vmap(per_task)(jnp.arange(t), orders)
    return jnp.sum(coefs, axis=0)


def gradvac_update_targets(gram: ArrayLike, targets: ArrayLike, beta: float,
                           ema_update: str = "always", eps: float = 1e-8) -> jax.Array:
    """GradVac's EMA of the pairwise cosine similarities: ``targets (T, T)`` after a step.

    ``phi_ij = cos(g_i, g_j)`` of the ORIGINAL gradients (from ``gram``, same ``eps`` as
    :func:`gradvac_weights`); ``new_ij = (1 - beta) targets_ij + beta phi_ij`` for every
    ``i != j`` (``ema_update="always"``) or only where ``phi_ij < targets_ij``
    (``"on_conflict"``); the diagonal stays 0. Returns ``(T, T)`` float32.

    Raises:
      ValueError: for an unknown ``ema_update`` or inconsistent shapes.
    """
    if ema_update not in GRADVAC_EMA_UPDATES:
        raise ValueError(f"gradvac ema_update must be one of {GRADVAC_EMA_UPDATES}, got "
                         f"{ema_update!r}.")
    a = _normalise_max(as_gram(gram))
    t = a.shape[0]
    targets = jnp.asarray(targets, jnp.float32)
    if targets.shape != (t, t):
        raise ValueError(f"gradvac: targets must have shape ({t}, {t}), got "
                         f"{tuple(targets.shape)}.")
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
    phi = a / (norms[:, None] * norms[None, :] + eps)
    moved = (1.0 - beta) * targets + beta * phi
    update = ~jnp.eye(t, dtype=bool)
    if ema_update == "on_conflict":
        update = update & (phi < targets)
    return jnp.where(update, moved, jnp.where(jnp.eye(t, dtype=bool), 0.0, targets))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradVac(MTLMethod):
    """GradVac, gradient vaccine (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine:
    Investigating and Improving Multi-task Optimization in Massively Multilingual Models",
    ICLR 2021); LibMTL's ``LibMTL/weighting/GradVac.py`` with ``GradVac_group_type=0``
    (``whole_model``).

    GradVac generalises PCGrad: instead of acting only when ``cos(g_i, g_j) < 0`` it keeps,
    per ordered task pair, a target similarity ``phi_hat_ij`` (an exponential moving average
    of the observed similarity, initialised at 0, so the first steps act like PCGrad on the
    cosine) and, whenever ``cos(g_i', g_j) < phi_hat_ij``, adds the closed-form multiple of
    ``g_j`` to ``g_i'`` that raises the cosine exactly to the target
    (:func:`gradvac_weights`). Each task's order of the other tasks is drawn from ``rng``
    every step (:func:`ur_jax.mtl.pcgrad_orders`, as ur_jax's PCGrad). Combined gradient
    ``sum_i g_i'`` (sum scale, as LibMTL). State: ``{"step", "targets": (T, T)}``.

    Options: ``beta`` (EMA rate, 0.5 = LibMTL's ``GradVac_beta`` default; ``beta=0`` keeps
    the targets at 0, i.e. a PCGrad-like rule that raises conflicting cosines to 0),
    ``ema_update`` (:data:`GRADVAC_EMA_UPDATES`), ``eps`` (1e-8, LibMTL's guard), ``space``.

    Differences from the paper and LibMTL:

    * Granularity: the whole shared-parameter vector is one group (LibMTL's
      ``group_type=0``). The paper applies the rule per layer (or finer) with per-group
      targets (LibMTL's ``all_layer`` / ``all_matrix``); that is not implemented here.
    * EMA input: the paper (Algorithm 1) and LibMTL feed the EMA with the cosine measured
      at the moment of the correction, i.e. between ``g_j`` and the partially corrected
      ``g_i'``, which depends on that step's random order. :meth:`update_state` has no
      ``rng`` to replay that order, so here the targets track the cosine of the ORIGINAL
      gradients (:func:`gradvac_update_targets`), deterministic and recomputable. For
      ``T = 2`` (one partner per task, visited first) the two coincide exactly.
    * When the targets move: the paper's Algorithm 1 updates every visited pair's target each
      step (``ema_update="always"``, the default here); LibMTL updates a target only inside
      its ``if cos < target`` branch (``ema_update="on_conflict"``), which, from targets
      initialised at 0, lets targets only decrease.
    * The Gram matrix is normalised by its largest diagonal entry, so ``eps`` acts in those
      units (results independent of the gradients' scale); LibMTL adds ``1e-8`` to raw norms.

    :meth:`update_state` without ``grads`` only counts the step (the targets stay).
    """

    name: str = dataclasses.field(default="gradvac", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    beta: float = 0.5
    ema_update: str = "always"
    eps: float = 1e-8

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        _check_float(self, "beta", 0.0, 1.0)
        _check_float(self, "eps", 0.0)
        if self.ema_update not in GRADVAC_EMA_UPDATES:
            raise ValueError(f"gradvac ema_update must be one of {GRADVAC_EMA_UPDATES}, got "
                             f"{self.ema_update!r}.")

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter and the similarity targets ``targets: zeros (T, T)``."""
        t = check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32), "targets": jnp.zeros((t, t), jnp.float32)}

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Increment the step; move the targets towards the cosines of ``grads``."""
        losses = as_losses(losses)
        if grads is None:
            return {**state, "step": state["step"] + 1}
        grads = jax.lax.stop_gradient(as_grads(grads, losses.shape[0]))
        targets = gradvac_update_targets(gram_matrix(grads), state["targets"], self.beta,
                                         self.ema_update, self.eps)
        return {**state, "step": state["step"] + 1, "targets": targets}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Sum of the vaccinated task gradients, and its weights on the originals."""
        losses = as_losses(losses)
        t = losses.shape[0]
        grads = as_grads(grads, t)
        orders = pcgrad_orders(check_rng(rng, self.name), t)
        weights = gradvac_weights(gram_matrix(grads), orders, state["targets"], self.eps)
        return weighted_sum(weights, grads), {}, weights


# ---------------------------------------------------------------------------------------------
# Aligned-MTL
# ---------------------------------------------------------------------------------------------

def aligned_mtl_transform(gram: ArrayLike, scale_mode: str = "min") -> jax.Array:
    """Aligned-MTL's alignment matrix ``B: (T, T)`` (Senushkin et al., CVPR 2023).

    With the eigendecomposition ``gram = V diag(lambda) V^T`` of the task Gram matrix
    ``M = G G^T`` (``G: (T, D)`` the task gradients; normalised by its largest diagonal
    entry, which leaves ``B`` unchanged), the eigenvalues ``lambda > max(lambda) T eps32`` are
    kept (the numerical rank ``r``, as LibMTL and the authors' code) and
    ``B = s V_r diag(lambda_r)^(-1/2) V_r^T`` with ``s = sqrt(lambda_min)`` of the kept ones
    (``scale_mode="min"``), ``sqrt`` of their lower median (``"median"``) or of their mean
    (``"rmse"``). The aligned gradients ``B G`` then have Gram matrix
    ``B M B = s^2 V_r V_r^T`` (``s^2 I`` at full rank): orthogonal, of equal norms ``s``,
    condition number 1. Returns ``B`` float32 (zeros when every gradient is zero).

    Raises:
      ValueError: for an unknown ``scale_mode`` or a non-square ``gram``.
    """
    if scale_mode not in ALIGNED_MTL_SCALE_MODES:
        raise ValueError(f"aligned_mtl scale_mode must be one of {ALIGNED_MTL_SCALE_MODES}, "
                         f"got {scale_mode!r}.")
    a = _normalise_max(as_gram(gram))
    t = a.shape[0]
    lam, vecs = jnp.linalg.eigh(a)                             # ascending
    tol = jnp.max(lam) * t * jnp.finfo(jnp.float32).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    safe = jnp.where(keep, lam, 1.0)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    if scale_mode == "min":
        sq_scale = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":                               # kept = the top `rank`
        sq_scale = lam[jnp.clip(t - rank + (rank - 1) // 2, 0, t - 1)]
    else:
        sq_scale = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
    scale = jnp.where(rank > 0, jnp.sqrt(jnp.where(rank > 0, sq_scale, 0.0)), 0.0)
    return scale * jnp.einsum("ik,k,jk->ij", vecs, inv_sqrt, vecs, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlignedMTL(MTLMethod):
    """Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023); LibMTL's
    ``LibMTL/weighting/Aligned_MTL.py`` (itself from the authors' ``ProcrustesSolver``).

    The gradient system ``G: (T, D)`` is replaced by the closest (Procrustes) system with
    condition number 1 whose singular values all equal the smallest one,
    ``G_hat = B G`` with ``B = sqrt(lambda_min) V Lambda^(-1/2) V^T`` from the
    eigendecomposition of the ``T x T`` Gram matrix ``G G^T = V Lambda V^T``
    (:func:`aligned_mtl_transform`), and the update is the sum of the aligned task gradients,
    ``G_hat^T 1 = sum_k w_k g_k`` with ``w = B 1`` (the returned weights; LibMTL's
    ``alpha = B.sum(0)``, ``B`` symmetric). Scale: each aligned gradient has norm
    ``sqrt(lambda_min)``; the sum, as LibMTL and the authors' balancer (task weights 1).
    Eigenvalues below ``max(lambda) T eps32`` are dropped (rank-deficient systems are aligned
    on their span), as both implementations do.

    Options: ``scale_mode`` (:data:`ALIGNED_MTL_SCALE_MODES`, default ``"min"``: the paper's
    and LibMTL's, which has no such option; ``"median"``/``"rmse"`` are the authors' code's
    alternatives), ``space`` (``"features"`` is the paper's Aligned-MTL-UB).

    Differences: the Gram matrix is normalised by its largest diagonal entry before the
    eigendecomposition (``B`` is scale-invariant, so only round-off changes); the paper's
    optional task pre-weights are fixed to 1 (as in both codes).
    """

    name: str = dataclasses.field(default="aligned_mtl", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    scale_mode: str = "min"

    def __post_init__(self) -> None:
        """Validate ``scale_mode``."""
        super().__post_init__()
        if self.scale_mode not in ALIGNED_MTL_SCALE_MODES:
            raise ValueError(f"aligned_mtl scale_mode must be one of "
                             f"{ALIGNED_MTL_SCALE_MODES}, got {self.scale_mode!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Sum of the aligned task gradients, and its weights ``B 1`` on the originals."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        weights = jnp.sum(aligned_mtl_transform(gram_matrix(grads), self.scale_mode), axis=0)
        return weighted_sum(weights, grads), {}, weights


# ---------------------------------------------------------------------------------------------
# UPGrad
# ---------------------------------------------------------------------------------------------

def nonneg_quadratic_min(a: ArrayLike, b: ArrayLike, iterations: int = 100,
                         tol: float = 1e-6) -> jax.Array:
    """``argmin_{x >= 0} 1/2 x^T a x + b^T x`` for a small symmetric positive (semi-)definite
    ``a: (T, T)`` and ``b: (T,)`` by a primal active-set method (Lawson-Hanson style).

    From ``x = 0`` (no free coordinate), alternately: solve the equality-constrained problem
    on the free coordinates (one ``T x T`` solve with one refinement step); if that makes a
    free coordinate non-positive, step towards it as far as feasible and fix the first
    coordinate that reaches 0; otherwise move there and free the fixed coordinate with the
    most negative gradient ``(a x + b)_j < -tol``, or stop when there is none (the KKT
    conditions hold up to ``tol``). Also stops when a just-freed coordinate is fixed again at
    once (round-off cycling), on a singular solve (keeping the last feasible point) or after
    ``iterations`` solves; it typically needs about ``2 T``. Jit- and vmap-compatible.
    Returns ``x: (T,)`` float32, non-negative.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    t = a.shape[0]
    idx = jnp.arange(t)
    eye = jnp.eye(t, dtype=a.dtype)

    def face_solve(free):
        m = jnp.where(free[:, None] & free[None, :], a, eye)
        rhs = jnp.where(free, -b, 0.0)
        z = jnp.linalg.solve(m, rhs)
        z = z + jnp.linalg.solve(m, rhs - _mv(m, z))          # one refinement step
        return jnp.where(free, z, 0.0)

    def cond(carry):
        count, _, _, _, done = carry
        return (count < iterations) & ~done

    def body(carry):
        count, x, free, added, _ = carry
        z = face_solve(free)
        finite = jnp.all(jnp.isfinite(z))
        neg = free & (z <= 0)
        blocked = jnp.any(neg)
        # Blocked: move from x towards z until the first free coordinate reaches 0; fix it.
        gap = x - z
        ratios = jnp.where(neg, x / jnp.where(gap > 0, gap, 1.0), jnp.inf)
        first = jnp.argmin(ratios)
        x_blocked = x + jnp.clip(ratios[first], 0.0, 1.0) * (z - x)
        free_blocked = free & (x_blocked > 0) & (idx != first)
        x_blocked = jnp.where(free_blocked, jnp.maximum(x_blocked, 0.0), 0.0)
        # Unblocked: move to z; free the fixed coordinate whose gradient is most negative.
        grad = _mv(a, z) + b
        candidate = jnp.where(free, jnp.inf, grad)
        j = jnp.argmin(candidate)
        optimal = candidate[j] >= -tol
        cycling = blocked & (first == added)
        done = ~finite | cycling | (~blocked & optimal)
        keep = ~finite | cycling
        new_x = jnp.where(keep, x, jnp.where(blocked, x_blocked, z))
        new_free = jnp.where(keep, free, jnp.where(blocked, free_blocked,
                                                   free | ((idx == j) & ~optimal)))
        new_added = jnp.where(blocked, -1, j)
        return count + 1, new_x, new_free, new_added, done

    carry = (jnp.zeros((), jnp.int32), jnp.zeros((t,), a.dtype), jnp.zeros((t,), bool),
             jnp.asarray(-1), jnp.bool_(False))
    return jax.lax.while_loop(cond, body, carry)[1]


def upgrad_weights(gram: ArrayLike, norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                   iterations: int = 100) -> jax.Array:
    """UPGrad's weights (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    2024): ``sum_k w_k g_k = 1/T sum_i pi(g_i)``, the mean of the projections of the task
    gradients onto the dual cone ``{v : <v, g_t> >= 0 for all t}``.

    By the paper's Proposition 1, ``pi(g_i) = G^T v_i`` with
    ``v_i = argmin_{v >= e_i} v^T A v`` on the Gram matrix; written ``v = e_i + x``,
    ``x = argmin_{x >= 0} 1/2 x^T A x + x^T A e_i`` (:func:`nonneg_quadratic_min`, one per
    task, vmapped). As LibMTL/TorchJD, ``A = gram / trace(gram) + reg_eps I`` (the zero
    matrix plus ``reg_eps I`` when ``trace(gram) < norm_eps`` or is 0); then ``w = mean_i v_i``.
    The projection property holds for ``A``: ``(A v_i)_t >= 0``, i.e.
    ``<pi(g_i), g_t> >= -reg_eps v_it trace(gram)`` (exactly ``>= 0`` with ``reg_eps=0``, which
    needs linearly independent gradients). Returns ``(T,)`` float32 (all ``>= 1/T``).

    Raises:
      ValueError: if ``gram`` is not a square ``(T, T)`` matrix with ``T >= 2``.
    """
    gram = as_gram(gram)
    t = gram.shape[0]
    trace = jnp.trace(gram)
    small = (trace < norm_eps) | (trace <= 0)
    a = jnp.where(small, 0.0, gram / jnp.where(small, 1.0, trace))
    a = 0.5 * (a + a.T) + reg_eps * jnp.eye(t, dtype=a.dtype)
    eye = jnp.eye(t, dtype=a.dtype)
    x = jax.vmap(lambda b: nonneg_quadratic_min(a, b, iterations))(a)   # row i: b = A e_i
    return jnp.mean(eye + x, axis=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UPGrad(MTLMethod):
    """UPGrad, unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", 2024, arXiv:2406.16232); LibMTL's
    ``LibMTL/weighting/UPGrad.py`` (adapted there from TorchJD).

    Each task gradient is projected onto the dual cone of the task gradients,
    ``pi(g_i) = argmin_{v : <v, g_t> >= 0 for all t} |v - g_i|``, and the projections are
    averaged: ``combined = 1/T sum_i pi(g_i)`` (the paper's aggregator with the uniform
    preference ``1/T``; so it has a non-negative inner product with every task gradient, and
    equals the mean gradient when no two gradients conflict). The projections are computed
    in the ``T``-dimensional dual on the Gram matrix (:func:`upgrad_weights`): LibMTL calls
    the ``quadprog`` QP solver on the CPU; here a bounded primal active-set method
    (:func:`nonneg_quadratic_min`) solves the same QP exactly up to float32 round-off inside
    the jitted step.

    Options: ``norm_eps`` (1e-4) and ``reg_eps`` (1e-4), LibMTL's ``UPGrad_norm_eps`` /
    ``UPGrad_reg_eps`` defaults: the Gram matrix is divided by its trace (replaced by 0 when
    the trace is below ``norm_eps``; note that this threshold is in absolute squared-gradient
    units, so very small gradients give the mean gradient, as in LibMTL) and ``reg_eps I`` is
    added, so the cone condition holds up to ``reg_eps`` in trace units (``reg_eps=0`` makes
    it exact for linearly independent gradients); ``iterations`` (100, the bound on active-set
    solves per projection; the optimum needs about ``2 T``); ``space`` (LibMTL refuses
    ``rep_grad``; here ``"features"`` is allowed and flattens the batch, as for every method).
    """

    name: str = dataclasses.field(default="upgrad", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    norm_eps: float = 1e-4
    reg_eps: float = 1e-4
    iterations: int = 100

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        _check_float(self, "norm_eps", 0.0)
        _check_float(self, "reg_eps", 0.0)
        check_iterations(self)
        if self.iterations < 1:
            raise ValueError(f"method 'upgrad': iterations must be >= 1, got "
                             f"{self.iterations!r}.")

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """Mean of the task gradients' projections onto their dual cone."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        weights = upgrad_weights(gram_matrix(grads), self.norm_eps, self.reg_eps,
                                 self.iterations)
        return weighted_sum(weights, grads), {}, weights


# ---------------------------------------------------------------------------------------------
# ExcessMTL
# ---------------------------------------------------------------------------------------------

def excess_risks(grads: ArrayLike, grad_sq_sum: ArrayLike, eps: float = 1e-7) -> jax.Array:
    """ExcessMTL's excess-risk estimates (He et al., ICML 2024): ``(T,)`` float32 with
    ``r_t = sum_d g_td^2 / sqrt(grad_sq_sum_td + eps)``, the Taylor estimate
    ``g^T H^-1 g`` with the AdaGrad-style diagonal ``H_t = diag(sqrt(grad_sq_sum_t + eps))``
    (``grad_sq_sum`` already including this step's ``g^2``; the paper's factor 1/2 cancels in
    the normalised ratio ExcessMTL uses and is dropped, as LibMTL does).
    """
    g = jnp.asarray(grads, jnp.float32)
    acc = jnp.asarray(grad_sq_sum, jnp.float32)
    return jnp.sum(g * g / jnp.sqrt(acc + eps), axis=-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExcessMTL(MTLMethod):
    """ExcessMTL (He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task
    Learning with Excess Risks", ICML 2024); LibMTL's ``LibMTL/weighting/ExcessMTL.py`` (the
    authors' implementation).

    Task weights follow the tasks' estimated distances to convergence (excess risks) rather
    than their losses, which keeps noisy tasks (large Bayes error, small excess risk) from
    dominating. Every step ``k``, with the task gradients ``g_t``:

    1. ``S_t += g_t^2`` (per coordinate; the AdaGrad-style diagonal Hessian approximation
       ``H_t = diag(sqrt(S_t + eps))``), and ``r_t = g_t^T H_t^-1 g_t`` (:func:`excess_risks`);
    2. at the first step the baseline ``r_t(0) = r_t`` is stored and the weights stay 1;
       afterwards ``lambda_t <- lambda_t exp(robust_step_size r_t / r_t(0))`` and
       ``lambda <- T lambda / sum(lambda)`` (the paper's exponentiated-gradient step on the
       scale-normalised excess risks; computed in log space, free of overflow);
    3. combined gradient ``sum_t lambda_t g_t`` with the weights of THIS step (LibMTL updates
       the weights before its backward pass).

    The protocol's :meth:`combine` reads the state before the step and :meth:`update_state`
    records it, so both evaluate steps 1-2 on the same gradients (one computation under jit).
    State: ``{"step", "grad_sq_sum": (T, D) float32, "initial_risks": (T,),
    "has_baseline": int32 0/1, "loss_weights": (T,) (init 1)}``.

    Options: ``robust_step_size`` (1e-2, LibMTL's default), ``eps`` (1e-7, LibMTL's),
    ``space``. ``grad_sq_sum`` has its ``(T, D)`` shape from the start:
    ``init_state(T, grad_dim=D)`` (``D`` the length of one task's gradient row;
    :func:`ur_jax.dense_steps.init_mtl_state` passes it; LibMTL creates its ``grad_sum``
    lazily).

    Differences from the paper and LibMTL: weights sum to ``T`` (LibMTL; the paper's weights
    lie on the simplex, a factor ``T`` on the update); the baseline is the first step's
    estimate (LibMTL and the authors' code; the paper's appendix averages over warm-up
    epochs); a task whose baseline estimate is 0 (zero gradient at step 0) gets ratio 0
    instead of LibMTL's NaN; as for every ur_jax gradient method, task heads keep their
    ordinary gradients (LibMTL back-propagates ``sum lambda_t L_t`` through the heads too);
    with ``space="features"`` the per-example feature gradients are flattened (LibMTL's
    ``rep_grad`` sums them over the batch). :meth:`update_state` without ``grads`` only
    counts the step.
    """

    name: str = dataclasses.field(default="excess_mtl", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    robust_step_size: float = 1e-2
    eps: float = 1e-7

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        _check_float(self, "robust_step_size", 0.0)
        _check_float(self, "eps", 0.0, low_open=True)

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step, squared-gradient sums ``(T, grad_dim)``, baseline excess risks,
        ``has_baseline`` and the loss weights (ones).

        Raises:
          ValueError: ``grad_dim`` missing (:func:`ur_jax.mtl.base.check_grad_dim`).
        """
        t = check_num_tasks(num_tasks)
        d = check_grad_dim(grad_dim, self.name)
        return {"step": jnp.zeros((), jnp.int32),
                "grad_sq_sum": jnp.zeros((t, d), jnp.float32),
                "initial_risks": jnp.zeros((t,), jnp.float32),
                "has_baseline": jnp.zeros((), jnp.int32),
                "loss_weights": jnp.ones((t,), jnp.float32)}

    def _advance(self, state: State, grads: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Steps 1-2: the new squared-gradient sums, baseline and weights."""
        acc = state["grad_sq_sum"]
        if acc.shape != grads.shape:
            raise ValueError(f"excess_mtl: the state's grad_sq_sum has shape {acc.shape} but "
                             f"grads have shape {grads.shape}; init_state's grad_dim must be "
                             f"D.")
        acc = acc + grads * grads
        risks = excess_risks(grads, acc, self.eps)
        first = state["has_baseline"] == 0
        base = jnp.where(first, risks, state["initial_risks"])
        ratio = jnp.where(base > 0, risks / jnp.where(base > 0, base, 1.0), 0.0)
        old = state["loss_weights"]
        logits = jnp.log(jnp.maximum(old, jnp.finfo(jnp.float32).tiny)) + (
            self.robust_step_size * ratio)
        new = old.shape[0] * jax.nn.softmax(logits)
        return acc, base, jnp.where(first, old, new)

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Record the step: squared-gradient sums, baseline (first step) and weights."""
        losses = as_losses(losses)
        if grads is None:
            return {**state, "step": state["step"] + 1}
        grads = jax.lax.stop_gradient(as_grads(grads, losses.shape[0]))
        acc, base, weights = self._advance(state, grads)
        return {"step": state["step"] + 1, "grad_sq_sum": acc, "initial_risks": base,
                "has_baseline": jnp.ones((), jnp.int32), "loss_weights": weights}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_t lambda_t g_t`` with this step's updated excess-risk weights."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        _, _, weights = self._advance(state, jax.lax.stop_gradient(grads))
        return weighted_sum(weights, grads), {}, weights


#: This module's methods by name (merged into the registry in this order).
CLASSES: dict[str, type[MTLMethod]] = {
    "gradvac": GradVac, "aligned_mtl": AlignedMTL, "upgrad": UPGrad, "excess_mtl": ExcessMTL,
}
