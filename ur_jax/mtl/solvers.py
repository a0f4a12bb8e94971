"""Solvers shared by the gradient-combination methods: pure, jit-compatible functions of
per-task gradients ``(T, D)`` or of their Gram matrix ``(T, T)``, usable on their own.

* :func:`gram_matrix`, :func:`project_to_simplex`;
* :func:`min_norm_weights` (MGDA's min-norm point: exact face enumeration up to
  :data:`MIN_NORM_EXACT_MAX_TASKS` tasks, an active-set iteration above);
* :func:`pcgrad_orders`, :func:`pcgrad_weights` (PCGrad as weights on the original gradients);
* :func:`graddrop_combine` (GradDrop with a given uniform sample; :data:`GRADDROP_EPS`);
* :func:`imtl_g_weights` (IMTL-G's closed form);
* :func:`cagrad_solve`, :func:`cagrad_weights` (CAGrad's inner problem and combination).

Numerics: Gram matrices at ``Precision.HIGHEST``; the small ``T x T`` solvers work on the Gram
matrix normalised by its diagonal, so their results do not depend on the gradients' scale.
The private helpers below (tiny exact matrix-vector products, the Gram normalisation, the
min-norm sub-solvers) are used only in this module.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import ArrayLike, as_gram, check_num_tasks

__all__ = [
    "GRADDROP_EPS",
    "MIN_NORM_EXACT_MAX_TASKS",
    "cagrad_solve",
    "cagrad_weights",
    "graddrop_combine",
    "gram_matrix",
    "imtl_g_weights",
    "min_norm_weights",
    "pcgrad_orders",
    "pcgrad_weights",
    "project_to_simplex",
]

_HIGHEST = jax.lax.Precision.HIGHEST
# Squared norms (in units of the largest squared norm) below this are treated as zero.
_REL_TINY = 1e-20


# ---------------------------------------------------------------------------------------------
# Exact small linear algebra
# ---------------------------------------------------------------------------------------------

def _mv(a: jax.Array, x: jax.Array) -> jax.Array:
    """Matrix-vector product ``a @ x`` for tiny matrices, exact float32 (no MXU passes)."""
    return jnp.sum(a * x[None, :], axis=-1)


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """Inner product of two small vectors, exact float32."""
    return jnp.sum(x * y)


def _normalise_gram(gram: jax.Array, how: str = "max") -> jax.Array:
    """Divide a Gram matrix by its largest (``how='max'``) or mean diagonal entry (0 stays 0)."""
    diag = jnp.diagonal(gram)
    scale = jnp.max(diag) if how == "max" else jnp.mean(diag)
    return gram / jnp.where(scale > 0, scale, 1.0)


# ---------------------------------------------------------------------------------------------
# Gram matrix and simplex
# ---------------------------------------------------------------------------------------------

def gram_matrix(grads: ArrayLike) -> jax.Array:
    """Gram matrix ``G G^T`` of per-task gradients ``grads: (T, D)``, ``(T, T)`` float32.

    Computed at ``Precision.HIGHEST`` and symmetrised.

    Raises:
      ValueError: if ``grads`` is not two-dimensional.
    """
    grads = jnp.asarray(grads, jnp.float32)
    if grads.ndim != 2:
        raise ValueError(f"grads must have shape (T, D), got shape {tuple(grads.shape)}.")
    gram = jnp.matmul(grads, grads.T, precision=_HIGHEST)
    return 0.5 * (gram + gram.T)


def project_to_simplex(v: ArrayLike) -> jax.Array:
    """Euclidean projection of ``v: (T,)`` onto the probability simplex (sort-based, exact);
    returns ``(T,)`` float32, non-negative, summing to 1."""
    v = jnp.asarray(v, jnp.float32)
    t = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(t)
    positive = u - css / (idx + 1).astype(v.dtype) > 0  # always true at index 0
    rho = jnp.max(jnp.where(positive, idx, 0))
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


# ---------------------------------------------------------------------------------------------
# Min-norm point of the convex hull (MGDA)
# ---------------------------------------------------------------------------------------------

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
    at 250 steps). Jit-compatible (``T`` static). Returns ``alpha: (T,)`` float32,
    non-negative, summing to 1; zero gradients give a vertex of a zero gradient (norm 0).

    Raises:
      ValueError: if ``gram`` is not a square ``(T, T)`` matrix with ``T >= 2``.
    """
    a = _normalise_gram(as_gram(gram))
    if a.shape[0] <= MIN_NORM_EXACT_MAX_TASKS:
        return _min_norm_exact(a)
    return _min_norm_active_set(a, int(iterations), float(tol))


# ---------------------------------------------------------------------------------------------
# PCGrad, GradDrop, IMTL-G, CAGrad
# ---------------------------------------------------------------------------------------------

def pcgrad_orders(rng: jax.Array, num_tasks: int) -> jax.Array:
    """Random projection orders for PCGrad: ``(T, T-1)`` int32, row ``i`` a permutation of
    ``[0..T-1] \\ {i}`` (task ``i``'s order of the other tasks), from ``rng``.

    Raises:
      TypeError, ValueError: if ``num_tasks`` is not an int >= 2.
    """
    t = check_num_tasks(num_tasks)
    keys = jax.random.split(rng, t)
    perms = jax.vmap(lambda k: jax.random.permutation(k, t - 1))(keys)
    return (perms + (perms >= jnp.arange(t)[:, None])).astype(jnp.int32)


def pcgrad_weights(gram: ArrayLike, orders: ArrayLike) -> jax.Array:
    """PCGrad (Yu et al., NeurIPS 2020) expressed as task weights on the original gradients.

    For every task ``i``, start from ``g_i' = g_i`` and for ``j`` in ``orders[i]`` (the other
    tasks) replace ``g_i' <- g_i' - min(0, g_i'.g_j) / |g_j|^2 g_j`` (projection away from the
    ORIGINAL ``g_j`` when they conflict). Each ``g_i'`` stays a linear combination of the
    original gradients, so everything is computed from ``gram: (T, T)``; the combined gradient
    ``sum_i g_i'`` equals ``sum_k w_k g_k`` with the returned ``w: (T,)`` float32.

    Raises:
      ValueError: if ``gram`` is not ``(T, T)`` with ``T >= 2`` or ``orders`` not ``(T, T-1)``.
    """
    gram = as_gram(gram)
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
    instead of NaN; zero gradients get ``u_t = 0``. Returns ``alpha: (T,)`` float32 summing
    to 1 (entries may be negative).

    Raises:
      ValueError: if ``gram`` is not a square ``(T, T)`` matrix with ``T >= 2``.
    """
    a = _normalise_gram(as_gram(gram))
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
    size needs tuning. Returns ``w: (T,)`` float32 on the simplex.

    Raises:
      ValueError: if ``gram`` is not a square ``(T, T)`` matrix with ``T >= 2``.
    """
    a = _normalise_gram(as_gram(gram), how="mean")
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
    Returns ``weights: (T,)`` float32.

    Raises:
      ValueError: if ``rescale`` is not 0, 1 or 2, or ``gram`` is not ``(T, T)`` with ``T >= 2``.
    """
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad rescale must be 0, 1 or 2, got {rescale!r}.")
    gram = as_gram(gram)
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

