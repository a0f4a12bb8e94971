"""Multi-objective solvers of LibMTL: Nash-MTL, FairGrad, MoCo, MoDo and SDMGrad.

Every class here follows :class:`ur_jax.mtl.base.MTLMethod`'s protocol and is registered by
its entry in :data:`CLASSES` (merged into :data:`ur_jax.mtl.registry.METHOD_CLASSES`).

* :class:`NashMTL` (``nash_mtl``) and :class:`FairGrad` (``fairgrad``) solve, every step, the
  positive system ``G w = w^(-1/alpha)`` on the ``T x T`` Gram matrix ``G`` of the task
  gradients (Nash-MTL is ``alpha = 1``) with :func:`fair_weights`, a bounded damped Newton
  iteration written in JAX (LibMTL calls cvxpy/ECOS and scipy's ``least_squares``).
* :class:`MoCo` (``moco``), :class:`MoDo` (``modo``) and :class:`SDMGrad` (``sdmgrad``) are
  stochastic multi-objective methods whose simplex weights ``lambda`` (and MoCo's gradient
  trackers) are state carried from step to step.

Gradient-shaped state. MoCo's trackers and the previous step's gradients that MoDo and SDMGrad
use as their second, independent sample are ``(T, D)`` arrays: their ``init_state(T,
grad_dim=D)`` needs ``D``, the length of one task's gradient row
(:func:`ur_jax.dense_steps.init_mtl_state` passes it), and raises a ValueError without it
(:func:`ur_jax.mtl.base.check_grad_dim`). Their :meth:`update_state` (and Nash-MTL's, which
stores the solved weights) needs the step's ``(T, D)`` gradients and raises without them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import (ArrayLike, MTLMethod, Params, State, as_gram, as_grads, as_losses,
                             check_grad_dim, check_iterations, check_num_tasks, check_sum_scale,
                             finish_combination, weighted_sum)
from ur_jax.mtl.solvers import gram_matrix, project_to_simplex

__all__ = [
    "CLASSES",
    "FAIR_RIDGE",
    "MOCO_LAMBDA_UPDATES",
    "MOCO_NORMALIZATIONS",
    "SECOND_SAMPLES",
    "FairGrad",
    "MoCo",
    "MoDo",
    "NashMTL",
    "SDMGrad",
    "fair_weights",
]

_HIGHEST = jax.lax.Precision.HIGHEST
#: Relative ridge added to the diagonal of the Gram matrix (``G_ii -> (1 + FAIR_RIDGE) G_ii``,
#: at least ``FAIR_RIDGE * 1e-12`` of the largest ``G_ii``) before solving
#: ``G w = w^(-1/alpha)``: it makes the system solvable when no positive solution exists (a
#: zero task gradient, or the origin in the cone of the gradients, i.e. a Pareto-stationary
#: point) and keeps the weights finite there; elsewhere it moves them by about
#: ``1e-6 x cond(G)`` relative (measured 6-9e-4 for two gradients at cosine -0.999).
FAIR_RIDGE = 1e-6
# A task's squared gradient norm below this fraction of the largest one counts as this much in
# the ridge (zero task gradients get large but finite weights).
_FAIR_FLOOR = 1e-12
# Largest diagonal entries of the Gram matrix at or below this count as all-zero gradients.
_TINY_GRAM = 1e-30
# Step sizes tried along each Newton direction: eta_max * 2^-k, k < _NEWTON_STEP_SIZES, and 0.
_NEWTON_STEP_SIZES = 16
#: Where MoDo and SDMGrad take their second gradient sample (see :class:`MoDo`).
SECOND_SAMPLES = ("previous", "current")
#: MoCo's ``lambda_update``: the paper's simplex projection or LibMTL's softmax.
MOCO_LAMBDA_UPDATES = ("projection", "softmax")
#: MoCo's ``grad_normalization``: LibMTL's ``L_t g_t / |g_t|`` or the raw gradients.
MOCO_NORMALIZATIONS = ("loss", "none")


# ---------------------------------------------------------------------------------------------
# Solver of G w = w^(-1/alpha) (Nash-MTL, FairGrad)
# ---------------------------------------------------------------------------------------------

def _mv(a: jax.Array, x: jax.Array) -> jax.Array:
    """Tiny matrix-vector product ``a @ x`` in exact float32 (no MXU passes)."""
    return jnp.sum(a * x[None, :], axis=-1)


def _h_change(w: jax.Array, delta: jax.Array, alpha: float) -> jax.Array:
    """``h(w + delta) - h(w)`` elementwise for the concave ``h`` with ``h'(w) = w^(-1/alpha)``
    (``log w`` for ``alpha = 1``, ``w^p / p`` with ``p = 1 - 1/alpha`` otherwise), written
    without cancellation."""
    rel = jnp.log1p(delta / w)
    if alpha == 1.0:
        return rel
    p = 1.0 - 1.0 / alpha
    return w ** p * jnp.expm1(p * rel) / p


def _fair_newton(a: jax.Array, alpha: float, iterations: int) -> jax.Array:
    """Positive solution of ``a w = w^(-1/alpha)`` for a positive-definite ``a: (T, T)``.

    It is the unique minimiser of the strictly convex ``f(w) = w^T a w / 2 - sum_i h(w_i)``
    on ``w > 0`` (``h`` as in :func:`_h_change`), found by damped Newton steps: start at
    ``u_i = a_ii^(-alpha/(alpha+1))`` (the exact solution for orthogonal gradients) scaled to
    the minimum of ``f`` along the ray ``c u`` (closed form); each step solves the Newton
    system (scaled by ``diag(w)``), caps the step at 99% of the way to the boundary ``w = 0``
    and keeps, among ``eta_max 2^-k`` (``k < 16``) and 0, the step size that lowers ``f``
    most (changes of ``f`` computed without cancellation). ``f`` never increases and ``w``
    stays positive; ``iterations`` steps in all (a ``fori_loop``).
    """
    inv = 1.0 / alpha
    p = 1.0 - inv
    u = jnp.diagonal(a) ** (-alpha / (alpha + 1.0))
    q = jnp.sum(u * _mv(a, u))
    s = jnp.sum(u ** p)
    w0 = (s / q) ** (alpha / (alpha + 1.0)) * u
    etas_unit = jnp.concatenate([0.5 ** jnp.arange(_NEWTON_STEP_SIZES, dtype=jnp.float32),
                                 jnp.zeros((1,), jnp.float32)])

    def step(_, w):
        aw = _mv(a, w)
        resid = aw - w ** (-inv)                               # gradient of f
        # Newton system (a + diag(inv w^(-inv-1))) d = -resid, scaled by W = diag(w).
        scaled = w[:, None] * a * w[None, :] + jnp.diag(inv * w ** (1.0 - inv))
        d = -w * jnp.linalg.solve(scaled, w * resid)
        d = jnp.where(jnp.isfinite(d), d, 0.0)
        room = jnp.min(jnp.where(d < 0, w / jnp.where(d < 0, -d, 1.0), jnp.inf))
        etas = jnp.minimum(1.0, 0.99 * room) * etas_unit
        dad = jnp.sum(d * _mv(a, d))
        dg = jnp.sum(d * aw)

        def change(eta):
            return eta * dg + 0.5 * eta * eta * dad - jnp.sum(_h_change(w, eta * d, alpha))

        changes = jax.vmap(change)(etas)
        changes = jnp.where(jnp.isfinite(changes), changes, jnp.inf)
        return w + etas[jnp.argmin(changes)] * d

    return jax.lax.fori_loop(0, int(iterations), step, w0)


def _check_fair_alpha(alpha: Any, name: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise ValueError(f"{name} alpha must be a finite number > 0, got {alpha!r}.")
    return float(alpha)


def _fair_solve(gram: jax.Array, alpha: float, iterations: int
                ) -> tuple[jax.Array, jax.Array]:
    """``(v, m)``: ``v`` solves ``(A + FAIR_RIDGE diag(max(A_ii, 1e-12))) v = v^(-1/alpha)``
    for ``A = gram / m``, ``m`` the largest diagonal entry of ``gram``; all-zero gradients
    give ``m = 1`` and ``v = 1``."""
    m = jnp.max(jnp.diagonal(gram))
    nonzero = m > _TINY_GRAM
    m = jnp.where(nonzero, m, 1.0)
    a = gram / m
    a = 0.5 * (a + a.T)
    a = a + jnp.diag(FAIR_RIDGE * jnp.maximum(jnp.diagonal(a), _FAIR_FLOOR))
    v = _fair_newton(a, alpha, iterations)
    return jnp.where(nonzero, v, jnp.ones_like(v)), m


def fair_weights(gram: ArrayLike, alpha: float = 1.0, iterations: int = 20) -> jax.Array:
    """FairGrad's / Nash-MTL's task weights: the positive solution ``w: (T,)`` of
    ``G w = w^(-1/alpha)`` (elementwise power), ``G = gram: (T, T)`` the Gram matrix of the
    task gradients (Ban & Ji, ICML 2024; ``alpha = 1`` is Nash-MTL's ``G w = 1/w``, Navon et
    al., ICML 2022).

    Solved on ``G`` normalised by its largest diagonal entry ``m`` plus the ridge
    :data:`FAIR_RIDGE` ``* I`` (so a solution always exists), by :func:`_fair_newton`'s
    ``iterations`` damped Newton steps, then rescaled exactly to ``G``:
    ``w = v m^(-alpha/(alpha+1))``. Orthogonal gradients give ``w_i = |g_i|^(-2 alpha/(alpha+1))``
    (``1/|g_i|`` for ``alpha = 1``). Without a positive solution of the un-ridged system (a zero
    task gradient, or the origin in the cone of the gradients) the weights are large but
    finite (up to ``1e9 m^(-1/2)`` for ``alpha = 1``); all-zero gradients give ``w = 1``.
    Accuracy (float32, 20 steps, random ``T <= 7`` with gradient norms spread over 100x and
    nearly opposite pairs): relative error of ``w`` below 1e-4 against a float64 solution of
    the same ridged system (against the un-ridged one, add the ridge's ``1e-6 x cond(G)``);
    solutions spanning many orders of magnitude (large ``alpha`` with norms spread over
    1e5x) may need more steps. Returns float32 ``w > 0``.

    Raises:
      ValueError: if ``gram`` is not ``(T, T)`` with ``T >= 2``, ``alpha <= 0`` or
        ``iterations`` is not an int >= 0.
    """
    alpha = _check_fair_alpha(alpha, "fair_weights")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) \
            or iterations < 0:
        raise ValueError(f"fair_weights iterations must be an int >= 0, got {iterations!r}.")
    v, m = _fair_solve(as_gram(gram), alpha, int(iterations))
    return v * m ** (-alpha / (alpha + 1.0))


def _clip_by_norm(combined: jax.Array, weights: jax.Array, max_norm: float
                  ) -> tuple[jax.Array, jax.Array]:
    """``torch.nn.utils.clip_grad_norm_``'s rule: scale by ``min(1, max_norm / (|g| + 1e-6))``
    (nothing when ``max_norm <= 0``)."""
    if max_norm <= 0:
        return combined, weights
    norm = jnp.sqrt(jnp.sum(combined * combined))
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return combined * coef, weights * coef


def _check_nonnegative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(float(value)) and float(value) >= 0):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    return float(value)


def _check_positive(value: Any, what: str) -> float:
    value = _check_nonnegative(value, what)
    if value <= 0:
        raise ValueError(f"{what} must be > 0, got {value!r}.")
    return value


def _check_choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class NashMTL(MTLMethod):
    """Nash-MTL (Navon et al., "Multi-task learning as a bargaining game", ICML 2022);
    LibMTL's ``LibMTL/weighting/Nash_MTL.py`` (after the authors' ``nash-mtl`` code).

    Paper: the Nash bargaining solution among the tasks is ``d = sum_i alpha_i g_i`` with
    ``alpha > 0`` solving ``G alpha = 1/alpha`` (``G`` the ``T x T`` Gram matrix of the task
    gradients), i.e. every task gets ``g_i . d = 1 / alpha_i``. The paper (and LibMTL, with
    cvxpy/ECOS) finds ``alpha`` by a sequence of convex approximations (minimise
    ``sum_i (G alpha)_i + phi(alpha)``, ``phi(alpha) = sum_i log alpha_i + log (G alpha)_i``
    linearised at the previous iterate, subject to ``alpha_i (G alpha)_i >= 1``), at most
    ``optim_niter = 20`` approximations, warm-started from the previous step's ``alpha``. Here
    :func:`fair_weights` with ``alpha = 1`` solves the same equation by ``iterations`` damped
    Newton steps (default 20) on the equivalent strictly convex problem
    ``min_a a^T G a / 2 - sum_i log a_i``, bounded and jit-compatible, from a closed-form
    start (not warm-started); where the paper's equation has no positive solution (a zero
    task gradient, opposite gradients: a Pareto-stationary point) the ridge
    :data:`FAIR_RIDGE` gives large finite weights and a combination near 0, where cvxpy fails
    and LibMTL keeps the previous ``alpha``.

    Scale: the paper's ``alpha`` of the raw Gram matrix, as LibMTL's (its cvxpy problem is
    written on ``G / |G|_F`` for the solver's conditioning, but its constraint
    ``-log(alpha_i |G|_F) - log((G / |G|_F) alpha)_i <= 0`` is the raw ``alpha_i (G alpha)_i >= 1``,
    so it returns the raw ``alpha``; before clipping ``|d| = sqrt(T)``); the combined gradient
    is then clipped to norm ``max_norm`` (``clip_grad_norm_`` of the shared parameters in LibMTL, here
    of the combined ``(D,)`` gradient; ``max_norm <= 0``: no clipping). The reported weights
    include the clipping factor. With ``update_weights_every = k`` the weights are solved at
    steps ``0, k, 2k, ...`` and reused in between (state ``alpha``), as in the paper's faster
    variant and LibMTL.

    Task heads keep their plain gradients ``grad L_t`` (ur_jax's convention for every gradient
    method; LibMTL back-propagates the alpha-weighted losses through them).

    Options (defaults = LibMTL's): ``max_norm`` (1.0), ``update_weights_every`` (1),
    ``iterations`` (20 Newton steps; LibMTL ``optim_niter = 20`` counts convex
    approximations), ``space`` (``"params"``; LibMTL refuses
    ``rep_grad``). State: ``step``, ``alpha: (T,)`` (the last solved weights, before clipping;
    init ones as LibMTL).
    """

    name: str = dataclasses.field(default="nash_mtl", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    max_norm: float = 1.0
    update_weights_every: int = 1
    iterations: int = 20

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        check_iterations(self)
        object.__setattr__(self, "max_norm",
                           _check_nonnegative(self.max_norm, "nash_mtl max_norm"))
        every = self.update_weights_every
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"nash_mtl update_weights_every must be an int >= 1, got "
                             f"{every!r}.")
        object.__setattr__(self, "update_weights_every", int(every))

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter and the last solved weights ``alpha`` (ones); ``grad_dim`` is not
        used."""
        t = check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32), "alpha": jnp.ones((t,), jnp.float32)}

    def solve(self, grads: jax.Array, state: State) -> jax.Array:
        """The unclipped Nash-MTL weights of this step: solved from ``grads: (T, D)`` at a
        weight-update step, else the state's ``alpha``."""
        gram = gram_matrix(grads)
        v, m = _fair_solve(gram, 1.0, self.iterations)
        alpha = v * m ** -0.5
        if self.update_weights_every == 1:
            return alpha
        update = (state["step"] % self.update_weights_every) == 0
        return jnp.where(update, alpha, jnp.asarray(state["alpha"], jnp.float32))

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Count the step and store this step's (unclipped) weights; needs ``grads``."""
        _needs_grads(self, grads)
        losses = as_losses(losses)
        alpha = self.solve(jax.lax.stop_gradient(as_grads(grads, losses.shape[0])), state)
        return {"step": state["step"] + 1, "alpha": alpha}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_i alpha_i g_i`` clipped to ``max_norm``, and the clipped weights."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        alpha = self.solve(grads, state)
        combined, weights = _clip_by_norm(weighted_sum(alpha, grads), alpha, self.max_norm)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class FairGrad(MTLMethod):
    """FairGrad (Ban & Ji, "Fair resource allocation in multi-task learning", ICML 2024);
    LibMTL's ``LibMTL/weighting/FairGrad.py`` (after the authors' ``fairgrad`` code).

    Paper: maximise the alpha-fair utility ``sum_i (g_i . d)^(1-alpha) / (1-alpha)`` of the
    task improvements; with ``d = sum_i w_i g_i`` the optimality condition is
    ``G w = w^(-1/alpha)`` (elementwise), ``G`` the Gram matrix of the task gradients
    (``alpha = 1``: Nash-MTL's proportional fairness; ``alpha -> inf``: max-min fairness).
    LibMTL solves it with ``scipy.optimize.least_squares`` (bounds ``w >= 0``, start ``1/T``)
    on the raw Gram matrix and uses ``w`` as loss weights (combined gradient ``sum_i w_i
    g_i``, no clipping); here :func:`fair_weights` solves the same system by ``iterations``
    damped Newton steps (bounded, jit-compatible) with the relative ridge :data:`FAIR_RIDGE`
    (finite weights where no positive solution exists). Same weights, same scale as LibMTL.
    Task heads keep their plain gradients (ur_jax's convention; LibMTL weights them too).

    Options: ``alpha`` (1.0, LibMTL's ``FairGrad_alpha`` default; the paper tunes it per
    benchmark), ``iterations`` (20), ``max_norm`` (0.0 = no clipping, as LibMTL; > 0 clips the
    combined gradient like Nash-MTL), ``space`` (``"params"``). No state beyond ``step``.
    """

    name: str = dataclasses.field(default="fairgrad", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = "params"
    alpha: float = 1.0
    iterations: int = 20
    max_norm: float = 0.0

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        object.__setattr__(self, "alpha", _check_fair_alpha(self.alpha, "fairgrad"))
        check_iterations(self)
        object.__setattr__(self, "max_norm",
                           _check_nonnegative(self.max_norm, "fairgrad max_norm"))

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_i w_i g_i`` with ``G w = w^(-1/alpha)``, and ``w``."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        w = fair_weights(gram_matrix(grads), self.alpha, self.iterations)
        combined, weights = _clip_by_norm(weighted_sum(w, grads), w, self.max_norm)
        return combined, {}, weights


# ---------------------------------------------------------------------------------------------
# Stochastic multi-objective methods with state: MoCo, MoDo, SDMGrad
# ---------------------------------------------------------------------------------------------

def _needs_grads(method: MTLMethod, grads: ArrayLike | None) -> None:
    if grads is None:
        raise ValueError(f"{method.name}.update_state needs the step's (T, D) grads (the same "
                         "ones passed to combine) to update its state.")


def _stored_grads(stored: ArrayLike, grads: jax.Array, name: str, what: str) -> jax.Array:
    """The stored ``(T, D)`` state, checked against ``grads: (T, D)``.

    Raises:
      ValueError: if the stored array has another shape (a different ``D``).
    """
    stored = jnp.asarray(stored)
    if stored.shape != grads.shape:
        raise ValueError(f"method {name!r}: the state's {what} has shape {tuple(stored.shape)} "
                         f"but the gradients have shape {tuple(grads.shape)}; build the state "
                         f"with init_state(T, grad_dim=D) for the D of these gradients.")
    return stored.astype(jnp.float32)


def _second_sample(method: MTLMethod, grads: jax.Array, state: State) -> jax.Array:
    """MoDo's / SDMGrad's second gradient sample: the previous step's gradients (state
    ``prev_grads``) with ``second_sample="previous"`` after the first step, else ``grads``."""
    if method.second_sample == "current":
        return grads
    prev = _stored_grads(state["prev_grads"], grads, method.name, "prev_grads")
    return jnp.where(state["step"] > 0, prev, grads)


def _cross_gram(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a b^T`` for ``(T, D)`` gradients, ``(T, T)`` at ``Precision.HIGHEST``."""
    return jnp.matmul(a, b.T, precision=_HIGHEST)


def _check_second_sample(method: MTLMethod) -> None:
    _check_choice(method.second_sample, SECOND_SAMPLES, f"{method.name} second_sample")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoCo(MTLMethod):
    """MoCo (Fernando et al., "Mitigating gradient bias in multi-objective learning: a provably
    convergent approach", ICLR 2023); LibMTL's ``LibMTL/weighting/MoCo.py``.

    At step ``k = step + 1`` (1-based, as LibMTL), with step sizes ``beta_k = beta /
    k^beta_sigma`` and ``gamma_k = gamma / k^gamma_sigma`` and the task gradients ``h_i``:

    * trackers (state ``y: (T, D)``, init 0 as LibMTL): ``y_i <- y_i - beta_k (y_i - h_i)``;
    * weights (state ``lambd: (T,)``, init ``1/T``):
      ``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda)`` with the updated
      trackers ``Y`` (the paper's Algorithm 1; ``lambda_update="softmax"`` takes LibMTL's
      ``softmax(...)`` of the same vector instead of the projection);
    * combined gradient ``Y^T lambda = sum_i lambda_i y_i`` (of the trackers, not of this
      step's gradients; the reported weights are ``lambda``, summing to 1, times ``T`` with
      ``sum_scale``).

    ``grad_normalization="loss"`` (default, LibMTL, from the authors' shared code) feeds
    ``h_i = L_i g_i / (|g_i| + 1e-8)`` to the trackers; ``"none"`` feeds the raw ``g_i`` (the
    paper's algorithm). Differences: the paper projects onto the simplex (default here),
    LibMTL applies a softmax; LibMTL normalises the gradients by the loss (default here), the
    paper's algorithm does not. Options (defaults = LibMTL's, except ``lambda_update``: the
    paper's projection): ``beta`` (0.5), ``beta_sigma``
    (0.5), ``gamma`` (0.1), ``gamma_sigma`` (0.5), ``rho`` (0.0), ``lambda_update``
    (``"projection"``), ``grad_normalization`` (``"loss"``), ``sum_scale`` (False). The
    trackers follow the gradients across steps, so the space is the shared parameters
    (LibMTL refuses ``rep_grad``). State: ``step``, ``y: (T, D)`` (``init_state(T,
    grad_dim=D)``), ``lambd: (T,)``; :meth:`update_state` stores the updated trackers and
    weights.
    """

    name: str = dataclasses.field(default="moco", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = dataclasses.field(default="params", init=False)
    beta: float = 0.5
    beta_sigma: float = 0.5
    gamma: float = 0.1
    gamma_sigma: float = 0.5
    rho: float = 0.0
    lambda_update: str = "projection"
    grad_normalization: str = "loss"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        beta = _check_positive(self.beta, "moco beta")
        if beta > 1:
            raise ValueError(f"moco beta must be in (0, 1] (the trackers' step size), got "
                             f"{self.beta!r}.")
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "gamma", _check_positive(self.gamma, "moco gamma"))
        for field in ("beta_sigma", "gamma_sigma", "rho"):
            object.__setattr__(self, field,
                               _check_nonnegative(getattr(self, field), f"moco {field}"))
        _check_choice(self.lambda_update, MOCO_LAMBDA_UPDATES, "moco lambda_update")
        _check_choice(self.grad_normalization, MOCO_NORMALIZATIONS, "moco grad_normalization")
        check_sum_scale(self)

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter, trackers ``y: (T, grad_dim)`` (zeros) and weights ``lambd = 1/T``.

        Raises:
          ValueError: ``grad_dim`` missing (:func:`ur_jax.mtl.base.check_grad_dim`).
        """
        t = check_num_tasks(num_tasks)
        d = check_grad_dim(grad_dim, self.name)
        return {"step": jnp.zeros((), jnp.int32), "y": jnp.zeros((t, d), jnp.float32),
                "lambd": jnp.full((t,), 1.0 / t, jnp.float32)}

    def advance(self, grads: jax.Array, losses: jax.Array, state: State
                ) -> tuple[jax.Array, jax.Array]:
        """This step's updated trackers ``y: (T, D)`` and weights ``lambda: (T,)``."""
        t = losses.shape[0]
        if self.grad_normalization == "loss":
            norms = jnp.sqrt(jnp.sum(grads * grads, axis=1, keepdims=True))
            h = grads / (norms + 1e-8) * jax.lax.stop_gradient(losses)[:, None]
        else:
            h = grads
        y = _stored_grads(state["y"], grads, self.name, "trackers y")
        k = (state["step"] + 1).astype(jnp.float32)
        beta_k = self.beta / k ** self.beta_sigma
        gamma_k = self.gamma / k ** self.gamma_sigma
        y = y - beta_k * (y - h)
        lam = jnp.asarray(state["lambd"], jnp.float32)
        a = gram_matrix(y) + self.rho * jnp.eye(t, dtype=jnp.float32)
        v = lam - gamma_k * _mv(a, lam)
        lam = project_to_simplex(v) if self.lambda_update == "projection" else jax.nn.softmax(v)
        return y, lam

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Count the step and store the updated trackers and weights; needs ``grads``."""
        _needs_grads(self, grads)
        losses = jax.lax.stop_gradient(as_losses(losses))
        grads = jax.lax.stop_gradient(as_grads(grads, losses.shape[0]))
        y, lam = self.advance(grads, losses, state)
        return {"step": state["step"] + 1, "y": y, "lambd": lam}

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_i lambda_i y_i`` with this step's trackers and weights, and ``lambda``."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        y, lam = self.advance(grads, losses, state)
        combined, weights = finish_combination(lam, y, self.sum_scale)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoDo(MTLMethod):
    """MoDo, multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen,
    "Three-way trade-off in multi-objective learning: optimization, generalization and
    conflict-avoidance", NeurIPS 2023); LibMTL's ``LibMTL/weighting/MoDo.py``.

    Paper / LibMTL, with three independent mini-batches ``z1, z2, z3`` per step and their
    ``(T, D)`` task gradients ``G1, G2, G3``:
    ``lambda <- Proj_simplex(lambda - gamma (G1 G2^T lambda + rho lambda))`` (an unbiased
    stochastic gradient of ``|G^T lambda|^2 / 2`` because ``z1, z2`` are independent), then the
    update ``G3^T lambda``. LibMTL draws the three batches in its trainer.

    One-batch form here (ur_jax's step computes one ``(T, D)`` gradient ``G_t`` per step):
    with ``second_sample="previous"`` (default) the two independent samples of the weight
    update are this step's batch and the PREVIOUS step's batch (its gradients ``G_{t-1}``,
    kept in state ``prev_grads``, computed at the previous parameters):
    ``lambda <- Proj(lambda - gamma (G_t G_{t-1}^T lambda + rho lambda))``; at the first step
    (nothing stored yet) ``G_{t-1} = G_t``. ``second_sample="current"`` uses ``G_t G_t^T``
    (no second sample: a biased, single-sample estimate, no ``(T, D)`` state). The update is
    ``G_t^T lambda`` with the new ``lambda``, i.e. ``z3 = z1``: the update shares its batch
    with the weight step instead of a third, independent one; in exchange every step costs one
    batch, not three. Weights sum to 1 (times ``T`` with ``sum_scale``).

    Options (defaults = LibMTL's ``MoDo_gamma``, ``MoDo_rho``): ``gamma`` (1e-3), ``rho``
    (0.1), ``second_sample`` (``"previous"``), ``sum_scale`` (False). The weight step uses the
    raw, unnormalised gradient products as the paper and LibMTL, so ``gamma`` depends on the
    gradients' scale. Space: the shared parameters (LibMTL refuses ``rep_grad``; the previous
    batch's feature gradients belong to other examples). State: ``step``, ``lambd: (T,)``
    (init ``1/T``) and, with ``"previous"``, ``prev_grads: (T, D)`` (``init_state(T,
    grad_dim=D)``).
    """

    name: str = dataclasses.field(default="modo", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = dataclasses.field(default="params", init=False)
    gamma: float = 1e-3
    rho: float = 0.1
    second_sample: str = "previous"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        object.__setattr__(self, "gamma", _check_positive(self.gamma, "modo gamma"))
        object.__setattr__(self, "rho", _check_nonnegative(self.rho, "modo rho"))
        _check_second_sample(self)
        check_sum_scale(self)

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter, weights ``lambd = 1/T`` and, with ``second_sample="previous"``,
        ``prev_grads: (T, grad_dim)`` (zeros; ``grad_dim`` is not used with ``"current"``).

        Raises:
          ValueError: ``grad_dim`` missing with ``"previous"``.
        """
        t = check_num_tasks(num_tasks)
        state = {"step": jnp.zeros((), jnp.int32), "lambd": jnp.full((t,), 1.0 / t, jnp.float32)}
        if self.second_sample == "previous":
            state["prev_grads"] = jnp.zeros((t, check_grad_dim(grad_dim, self.name)),
                                            jnp.float32)
        return state

    def weights(self, grads: jax.Array, state: State) -> jax.Array:
        """This step's updated ``lambda: (T,)``."""
        lam = jnp.asarray(state["lambd"], jnp.float32)
        cross = _cross_gram(grads, _second_sample(self, grads, state))
        return project_to_simplex(lam - self.gamma * (_mv(cross, lam) + self.rho * lam))

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Count the step, store the new ``lambda`` and (``"previous"``) the gradients for the
        next step; needs ``grads``."""
        _needs_grads(self, grads)
        losses = as_losses(losses)
        grads = jax.lax.stop_gradient(as_grads(grads, losses.shape[0]))
        new = {**state, "step": state["step"] + 1, "lambd": self.weights(grads, state)}
        if self.second_sample == "previous":
            new["prev_grads"] = grads
        return new

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_i lambda_i g_i`` with this step's ``lambda``, and ``lambda``."""
        losses = as_losses(losses)
        grads = as_grads(grads, losses.shape[0])
        combined, weights = finish_combination(self.weights(grads, state), grads,
                                               self.sum_scale)
        return combined, {}, weights


@dataclasses.dataclass(frozen=True, kw_only=True)
class SDMGrad(MTLMethod):
    """SDMGrad, stochastic direction-oriented multi-objective gradient descent (Xiao, Ban &
    Ji, "Direction-oriented multi-objective learning: simple and provable stochastic
    algorithms", NeurIPS 2023); LibMTL's ``LibMTL/weighting/SDMGrad.py``.

    Paper: the weights ``w`` on the simplex minimise ``|G^T w + lamda g0|^2 / 2`` (``g0`` the
    mean task gradient: the direction the update is regularised towards), by projected SGD
    whose stochastic gradient ``G_xi G_xi'^T w + lamda G_xi G_xi'^T 1/T`` uses two independent
    batches ``xi, xi'``; the update is ``d = (G_zeta^T w + lamda g0_zeta) / (1 + lamda)`` on a
    third batch ``zeta``. LibMTL (authors' code): ``A = G_xi G_xi'^T / (s^2 + 1e-8)`` with
    ``s`` the mean of ``sqrt(max(diag A, 0))``, then ``iterations = 20`` steps of SGD (lr 5,
    momentum 0.5, the momentum buffer restarted every step) each followed by the projection
    onto the simplex, warm-started from the previous step's ``w``.

    Here: the same inner loop (``fori_loop``), with ``A`` normalised by ``s^2`` (a
    scale-free guard for ``s = 0`` instead of LibMTL's absolute ``+1e-8``, which changes the
    step when the gradient norms are below ~1e-3); the one-batch form of :class:`MoDo`:
    ``xi`` = this step's batch, ``xi'`` = the previous step's batch (state ``prev_grads``;
    ``second_sample="current"``: ``xi' = xi``), ``zeta = xi``. The objective-sampling variant
    SDMGrad-OS of the paper is not implemented (no randomness). Combined gradient
    ``sum_i ((w_i + lamda/T) / (1 + lamda)) g_i``: those are the reported weights, summing to
    1 (times ``T`` with ``sum_scale``).

    Options (defaults = LibMTL's): ``lamda`` (0.3, ``SDMGrad_lamda``), ``iterations`` (20,
    ``SDMGrad_niter``), ``lr`` (5.0), ``momentum`` (0.5), ``second_sample``
    (``"previous"``), ``sum_scale`` (False). Space: the shared parameters. State: ``step``,
    ``w: (T,)`` (init ``1/T``) and, with ``"previous"``, ``prev_grads: (T, D)``
    (``init_state(T, grad_dim=D)``).
    """

    name: str = dataclasses.field(default="sdmgrad", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = dataclasses.field(default="params", init=False)
    lamda: float = 0.3
    iterations: int = 20
    lr: float = 5.0
    momentum: float = 0.5
    second_sample: str = "previous"
    sum_scale: bool = False

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        object.__setattr__(self, "lamda", _check_nonnegative(self.lamda, "sdmgrad lamda"))
        check_iterations(self)
        object.__setattr__(self, "lr", _check_positive(self.lr, "sdmgrad lr"))
        momentum = _check_nonnegative(self.momentum, "sdmgrad momentum")
        if momentum >= 1:
            raise ValueError(f"sdmgrad momentum must be in [0, 1), got {self.momentum!r}.")
        object.__setattr__(self, "momentum", momentum)
        _check_second_sample(self)
        check_sum_scale(self)

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter, weights ``w = 1/T`` and, with ``second_sample="previous"``,
        ``prev_grads: (T, grad_dim)`` (as :meth:`MoDo.init_state`).

        Raises:
          ValueError: ``grad_dim`` missing with ``"previous"``.
        """
        t = check_num_tasks(num_tasks)
        state = {"step": jnp.zeros((), jnp.int32), "w": jnp.full((t,), 1.0 / t, jnp.float32)}
        if self.second_sample == "previous":
            state["prev_grads"] = jnp.zeros((t, check_grad_dim(grad_dim, self.name)),
                                            jnp.float32)
        return state

    def simplex_weights(self, grads: jax.Array, state: State) -> jax.Array:
        """This step's ``w: (T,)`` after the inner projected-SGD loop."""
        t = grads.shape[0]
        a = _cross_gram(grads, _second_sample(self, grads, state))
        diag = jnp.maximum(jnp.diagonal(a), 0.0)
        s2 = jnp.mean(jnp.sqrt(diag)) ** 2
        a = a / jnp.where(s2 > _TINY_GRAM, s2, 1.0)
        ag0 = jnp.mean(a, axis=1)                                # A 1/T

        def body(_, carry):
            w, buf = carry
            grad = _mv(a, w) + self.lamda * ag0
            buf = self.momentum * buf + grad
            return project_to_simplex(w - self.lr * buf), buf

        w0 = jnp.asarray(state["w"], jnp.float32)
        w, _ = jax.lax.fori_loop(0, self.iterations, body, (w0, jnp.zeros((t,), jnp.float32)))
        return w

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Count the step, store the new ``w`` and (``"previous"``) the gradients for the next
        step; needs ``grads``."""
        _needs_grads(self, grads)
        losses = as_losses(losses)
        grads = jax.lax.stop_gradient(as_grads(grads, losses.shape[0]))
        new = {**state, "step": state["step"] + 1, "w": self.simplex_weights(grads, state)}
        if self.second_sample == "previous":
            new["prev_grads"] = grads
        return new

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``(G^T w + lamda g0) / (1 + lamda)`` and its weights on the task gradients."""
        losses = as_losses(losses)
        t = losses.shape[0]
        grads = as_grads(grads, t)
        w = self.simplex_weights(grads, state)
        weights = (w + self.lamda / t) / (1.0 + self.lamda)
        combined, weights = finish_combination(weights, grads, self.sum_scale)
        return combined, {}, weights


#: This module's methods by name (merged into the registry in this order).
CLASSES: dict[str, type[MTLMethod]] = {
    "nash_mtl": NashMTL, "fairgrad": FairGrad, "moco": MoCo, "modo": MoDo, "sdmgrad": SDMGrad,
}
