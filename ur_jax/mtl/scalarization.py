"""Methods of LibMTL that rescale, transform or randomise the task losses: GLS, RLW, STCH,
FAMO and DB-MTL.

Every class here follows :class:`ur_jax.mtl.base.MTLMethod`'s protocol and is registered by
its entry in :data:`CLASSES` (merged into :data:`ur_jax.mtl.registry.METHOD_CLASSES`):

* :class:`GLS` (``gls``): geometric mean of the task losses (loss method, no state);
* :class:`RLW` (``rlw``): random loss weights drawn from the step's ``rng`` (loss method);
* :class:`STCH` (``stch``): smooth Tchebycheff scalarisation of the log of the task losses
  normalised by a nadir point that a warm-up estimates (loss method, state: the nadir sums);
* :class:`FAMO` (``famo``): softmax weights on the log-losses whose logits follow the change
  of the log-losses between consecutive steps (loss method, state: logits, Adam moments and
  the previous step's losses);
* :class:`DBMTL` (``db_mtl``): moving averages of the gradients of the log-losses, each
  rescaled to the largest norm (gradient method, state: the ``(T, D)`` moving averages).

Conventions shared with the rest of :mod:`ur_jax.mtl`: the ``(T,)`` weights a method returns
are the derivatives ``d total / d L_t`` (so the base-class :meth:`~ur_jax.mtl.base.MTLMethod.
combine` of a loss method is exactly the chain rule), except for DB-MTL, which documents its
own. The small constants that keep the logarithms finite (``1e-8`` for FAMO and DB-MTL,
``1e-20`` for STCH) are LibMTL's; they make every method finite for zero losses.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import (ArrayLike, MTLMethod, Params, State, as_grads, as_losses,
                             check_grad_dim, check_num_tasks, check_rng, weighted_sum)

__all__ = ["CLASSES", "DBMTL", "FAMO", "GLS", "RLW", "RLW_DISTRIBUTIONS", "STCH"]

#: GLS: losses below this are treated as this value (keeps ``log`` and the gradient finite).
GLS_EPS = 1e-20
#: STCH: added to the (normalised) losses inside the logarithm, as LibMTL.
STCH_EPS = 1e-20
#: FAMO: added to the losses inside the logarithm, as the authors' code and LibMTL.
FAMO_EPS = 1e-8
#: FAMO's Adam on the logits: torch.optim.Adam's defaults (betas, eps), as both codes use.
FAMO_ADAM_BETAS = (0.9, 0.999)
FAMO_ADAM_EPS = 1e-8
#: DB-MTL: added to the losses inside the logarithm and to the norms, as LibMTL.
DB_MTL_EPS = 1e-8
#: RLW's ``distribution`` option: what the raw weights are drawn from before the softmax.
RLW_DISTRIBUTIONS = ("normal", "uniform", "dirichlet")
#: FAMO's ``optimizer`` option for the logits.
FAMO_OPTIMIZERS = ("adam", "sgd")


def _check_positive_float(method: MTLMethod, field: str, *, allow_zero: bool = False) -> None:
    """Validate ``method.<field>`` as a finite float > 0 (>= 0 with ``allow_zero``) and store
    it as a Python float."""
    value = getattr(method, field)
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and np.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"method {method.name!r}: {field} must be a finite number {bound}, "
                         f"got {value!r}.")
    object.__setattr__(method, field, float(value))


def _check_int(method: MTLMethod, field: str, minimum: int, hint: str = "") -> None:
    """Validate ``method.<field>`` as an int >= ``minimum`` and store it as a Python int."""
    value = getattr(method, field)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"method {method.name!r}: {field} must be an int >= {minimum}"
                         f"{hint}; got {value!r}.")
    object.__setattr__(method, field, int(value))


# ---------------------------------------------------------------------------------------------
# GLS
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class GLS(MTLMethod):
    """GLS, geometric loss strategy (Chennupati et al., "MultiNet++: multi-stream feature
    aggregation and geometric loss strategy for multi-task learning", CVPR Workshops 2019).

    ``total = (prod_t L_t)^(1/T)``, the geometric mean of the task losses; its weights are
    ``d total / d L_t = total / (T L_t)`` (a task's weight falls as its loss grows: rescaling
    one loss and its gradient by ``c`` rescales the update by ``c^(1/T)`` but leaves its
    direction unchanged). Matches ``LibMTL/weighting/GLS.py`` (no options in the paper or
    LibMTL). Differences: the total is computed in log space,
    ``exp(mean_t log L_t)`` (the same value; LibMTL's product over- or underflows in float32
    for many tasks or large losses); losses ``<= GLS_EPS`` (1e-20) count as ``GLS_EPS`` and
    get no gradient, so zero losses stay finite (LibMTL gives NaN gradients there); the
    returned weights are the true derivatives (LibMTL logs ``L_t / (T prod L)``, which is
    not). Scale: one loss's (a mean). Losses must be >= 0. No options, no state.
    """

    name: str = dataclasses.field(default="gls", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``(prod_t L_t)^(1/T)`` and weights ``total / (T L_t)``."""
        losses = as_losses(losses)
        positive = losses > GLS_EPS
        safe = jnp.where(positive, losses, GLS_EPS)     # no gradient to L below the guard
        total = jnp.exp(jnp.mean(jnp.log(safe)))
        t = losses.shape[0]
        weights = jnp.where(positive, total / (t * safe), 0.0)
        return total, jax.lax.stop_gradient(weights)


# ---------------------------------------------------------------------------------------------
# RLW
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class RLW(MTLMethod):
    """RLW, random loss weighting (Lin et al., "Reasonable effectiveness of random weighting:
    a litmus test for multi-task learning", TMLR 2022).

    Every step draws ``lambda ~ p`` from the step's ``rng`` and uses ``w = softmax(lambda)``:
    ``total = sum_t w_t L_t`` (weights sum to 1: the scale of the mean loss; ``E[w_t] = 1/T``).
    Matches ``LibMTL/weighting/RLW.py``: option ``distribution`` (default ``"normal"``,
    ``lambda ~ N(0, I)``, LibMTL's and the paper's default), ``"uniform"`` (``U(0, 1)^T``) or
    ``"dirichlet"`` (``Dir(1, ..., 1)``); as LibMTL's code, the softmax is applied to every
    distribution's sample (for the Dirichlet that flattens an already normalised sample).
    LibMTL's Bernoulli variants are not provided (they redraw until a weight is non-zero, a
    data-dependent loop). The draw uses JAX's generator on ``rng`` (``fold_in(key(seed),
    step)`` in the step), so it is reproducible and the same on any number of devices, but not
    PyTorch's numbers. ``rng=None`` is refused. No state, no parameters.
    """

    name: str = dataclasses.field(default="rlw", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)
    distribution: str = "normal"

    def __post_init__(self) -> None:
        """Validate ``distribution``."""
        super().__post_init__()
        if self.distribution not in RLW_DISTRIBUTIONS:
            raise ValueError(f"rlw distribution must be one of {RLW_DISTRIBUTIONS}, got "
                             f"{self.distribution!r}.")

    def sample_weights(self, rng: jax.Array, num_tasks: int) -> jax.Array:
        """The ``(T,)`` weights of the step whose key is ``rng`` (sum to 1)."""
        rng = check_rng(rng, self.name)
        shape = (num_tasks,)
        if self.distribution == "normal":
            raw = jax.random.normal(rng, shape, jnp.float32)
        elif self.distribution == "uniform":
            raw = jax.random.uniform(rng, shape, jnp.float32)
        else:
            raw = jax.random.dirichlet(rng, jnp.ones(shape, jnp.float32))
        return jax.nn.softmax(raw)

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``sum_t w_t L_t`` with this step's random weights ``w``."""
        losses = as_losses(losses)
        w = jax.lax.stop_gradient(self.sample_weights(rng, losses.shape[0]))
        return jnp.sum(w * losses), w


# ---------------------------------------------------------------------------------------------
# STCH
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class STCH(MTLMethod):
    """STCH, smooth Tchebycheff scalarisation (Lin et al., "Smooth Tchebycheff scalarization
    for multi-objective optimization", ICML 2024), as ``LibMTL/weighting/STCH.py`` (the same
    code as the authors' ``STCH_MTL``) implements it for multi-task learning.

    Paper: ``g_mu(x | lambda) = mu log sum_t exp(lambda_t (f_t(x) - z*_t) / mu)``, a smooth
    upper bound of the Tchebycheff scalarisation ``max_t lambda_t (f_t - z*_t)`` (``z*`` the
    ideal point, ``lambda`` a preference, ``mu`` the smoothing). LibMTL's multi-task form,
    with ``E = steps_per_epoch`` and ``W = warmup_epochs``:

    * epochs ``0 .. W`` (warm-up, ``step < (W + 1) E``): ``total = sum_t log(L_t + 1e-20)``;
      during epoch ``W`` the state sums the losses;
    * afterwards: the nadir point ``n = (sum of epoch W's losses) / E`` (the mean loss of the
      last warm-up epoch), ``a_t = log(L_t / n_t + 1e-20)`` and
      ``total = T (mu log sum_t exp((a_t - m) / mu))`` with ``m = max_t a_t`` held constant.

    So the objectives ``f_t`` are the log-losses normalised by the nadir point; the reference
    ("ideal") point is 0 in that space, i.e. ``L_t = n_t``; ``lambda_t = 1``; the shift ``m``
    (a constant: it changes the value, not the gradient, and keeps ``exp`` in range) and the
    factor ``T`` are LibMTL's. Weights: ``d total / d L_t`` (``1 / (L_t + 1e-20)`` in the
    warm-up, ``T softmax(a / mu)_t / (L_t + 1e-20 n_t)`` after); LibMTL logs ones instead.

    Options: ``steps_per_epoch`` (required int >= 1: ur_jax counts epochs from the step as
    ``step // steps_per_epoch``), ``warmup_epochs`` (4, LibMTL's ``STCH_warmup_epoch``;
    ``>= 0``), ``mu`` (1.0, LibMTL's ``STCH_mu``). Differences from LibMTL: epochs come from
    the step count (LibMTL's trainer sets its epoch); a nadir component that is not > 0 (zero
    losses all through epoch W) is replaced by 1 (LibMTL would divide by zero).
    State: ``step`` and ``nadir_sum: (T,)``.
    """

    name: str = dataclasses.field(default="stch", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)
    steps_per_epoch: int | None = None
    warmup_epochs: int = 4
    mu: float = 1.0

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        _check_int(self, "steps_per_epoch", 1,
                   " (the number of training steps per epoch: the warm-up and the nadir "
                   "estimate are counted in epochs, e.g. ceil(795 / batch_size))")
        _check_int(self, "warmup_epochs", 0)
        _check_positive_float(self, "mu")

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter and the sum of the losses of the nadir epoch ``nadir_sum: (T,)``."""
        t = check_num_tasks(num_tasks)
        return {"step": jnp.zeros((), jnp.int32), "nadir_sum": jnp.zeros((t,), jnp.float32)}

    def epoch(self, state: State) -> jax.Array:
        """The epoch of the next step (int32 scalar)."""
        return state["step"] // self.steps_per_epoch

    def nadir(self, state: State) -> jax.Array:
        """The nadir point ``(T,)`` estimated so far (components that are not > 0 read 1)."""
        n = state["nadir_sum"] / self.steps_per_epoch
        return jnp.where(n > 0, n, 1.0)

    def _total(self, losses: jax.Array, state: State) -> jax.Array:
        warm = jnp.sum(jnp.log(losses + STCH_EPS))
        a = jnp.log(losses / self.nadir(state) + STCH_EPS)
        m = jax.lax.stop_gradient(jnp.max(a))
        smooth = losses.shape[0] * self.mu * jax.nn.logsumexp((a - m) / self.mu)
        return jnp.where(self.epoch(state) > self.warmup_epochs, smooth, warm)

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Sum of log-losses during the warm-up, the smooth Tchebycheff total after."""
        losses = as_losses(losses)
        total = self._total(losses, state)
        weights = jax.grad(self._total)(jax.lax.stop_gradient(losses), state)
        return total, jax.lax.stop_gradient(weights)

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Add ``losses`` to ``nadir_sum`` during epoch ``warmup_epochs``; count the step."""
        losses = jax.lax.stop_gradient(as_losses(losses))
        collect = self.epoch(state) == self.warmup_epochs
        return {"step": state["step"] + 1,
                "nadir_sum": jnp.where(collect, state["nadir_sum"] + losses,
                                       state["nadir_sum"])}


# ---------------------------------------------------------------------------------------------
# FAMO
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class FAMO(MTLMethod):
    """FAMO, fast adaptive multitask optimization (Liu, Feng, Stone & Liu, NeurIPS 2023);
    matches ``LibMTL/weighting/FAMO.py`` and the authors' ``famo.py`` (Cranial-XIX/FAMO).

    Loss: task logits ``xi`` (state, init 0), ``z = softmax(xi)``, ``D_t = L_t + 1e-8`` and
    ``total = sum_t z_t log D_t / c`` with ``c = sum_t z_t / D_t`` held constant, so the update
    is ``sum_t w_t g_t`` with weights ``w_t = z_t / (c D_t)`` (they sum to 1: the scale of one
    loss). At ``xi = 0``: ``w_t = (1 / L_t) / sum_s (1 / L_s)``.

    Logit update (in :meth:`update_state`): ``delta_t = log D_t(prev) - log D_t(now)``, the
    decrease of each log-loss, and ``d = J_z(xi)^T delta = z * (delta - z . delta)`` (the
    gradient of ``z . delta`` w.r.t. ``xi``; a task whose loss fell faster loses weight).
    ``optimizer="adam"`` (default, both codes): one ``torch.optim.Adam`` step on ``xi`` with
    gradient ``d``, learning rate ``lr`` and L2 ``weight_decay = gamma`` (``d + gamma xi``;
    betas (0.9, 0.999), eps 1e-8, bias-corrected); ``optimizer="sgd"``: the paper's Algorithm
    1, ``xi <- xi - lr (d + gamma xi)``.

    Defaults: ``lr = 0.025`` (LibMTL's ``FAMO_w_lr``, the authors' ``--method-params-lr``),
    ``gamma = 1e-3`` (LibMTL's ``FAMO_w_gamma``; the authors' code defaults to 0.01 and their
    scripts set 0.01 for CelebA, 0.001 for QM9).

    Difference from the paper and both codes (one batch per step): they re-evaluate the losses
    on the SAME batch after the parameter update (an extra forward pass) and update ``xi`` at
    once. Inside ur_jax's single jitted step only the losses of the current parameters are
    known, so :meth:`update_state` of step ``k`` uses ``delta = log L_(k-1) - log L_k``, the
    change between the previous step's losses (kept in the state) and this step's, i.e. over
    the parameter update of step ``k - 1`` but on two different batches, with the Jacobian at
    the current ``xi``; the first step (no previous losses) leaves ``xi`` unchanged, so the
    logits lag the paper's by one step and carry mini-batch noise. The authors' trainers also
    clip the shared gradient to norm 1 (``max_norm``); LibMTL and ur_jax do not
    (``min_losses`` is 0 in both codes and here).

    State: ``step``, ``logits: (T,)``, ``adam_mu``, ``adam_nu: (T,)`` (Adam's moments; unused
    by ``"sgd"``) and ``prev_losses: (T,)``. No trainable parameters.
    """

    name: str = dataclasses.field(default="famo", init=False)
    uses_gradients: bool = dataclasses.field(default=False, init=False)
    space: str = dataclasses.field(default="params", init=False)
    lr: float = 0.025
    gamma: float = 1e-3
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        _check_positive_float(self, "lr")
        _check_positive_float(self, "gamma", allow_zero=True)
        if self.optimizer not in FAMO_OPTIMIZERS:
            raise ValueError(f"famo optimizer must be one of {FAMO_OPTIMIZERS}, got "
                             f"{self.optimizer!r}.")

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Zero logits, zero Adam moments, zero previous losses."""
        t = check_num_tasks(num_tasks)
        # One buffer per leaf: a step that donates its state must not see one array twice.
        return {"step": jnp.zeros((), jnp.int32),
                **{k: jnp.zeros((t,), jnp.float32)
                   for k in ("logits", "adam_mu", "adam_nu", "prev_losses")}}

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``sum_t z_t log(L_t + 1e-8) / c`` and weights ``z_t / (c (L_t + 1e-8))``."""
        losses = as_losses(losses)
        z = jax.nn.softmax(jnp.asarray(state["logits"], jnp.float32))
        d = losses + FAMO_EPS
        c = jax.lax.stop_gradient(jnp.sum(z / d))
        total = jnp.sum(z * jnp.log(d)) / c
        return total, jax.lax.stop_gradient(z / (c * d))

    def logit_gradient(self, logits: jax.Array, prev_losses: jax.Array, losses: jax.Array
                       ) -> jax.Array:
        """``J_z(xi)^T delta`` with ``delta = log(prev + 1e-8) - log(losses + 1e-8)``."""
        delta = jnp.log(prev_losses + FAMO_EPS) - jnp.log(losses + FAMO_EPS)
        z = jax.nn.softmax(logits)
        # z_t (delta_t - z . delta) written as z_t sum_s z_s (delta_t - delta_s): exactly 0
        # when every task's log-loss fell by the same amount (Adam would otherwise turn the
        # rounding error of z . delta into a full step of size lr).
        return z * jnp.sum(z[None, :] * (delta[:, None] - delta[None, :]), axis=1)

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """One logit update from the previous and the current losses (none at step 0)."""
        losses = jax.lax.stop_gradient(as_losses(losses))
        step = state["step"]
        xi = state["logits"]
        g = self.logit_gradient(xi, state["prev_losses"], losses) + self.gamma * xi
        mu, nu = state["adam_mu"], state["adam_nu"]
        if self.optimizer == "adam":
            b1, b2 = FAMO_ADAM_BETAS
            mu_new = b1 * mu + (1 - b1) * g
            nu_new = b2 * nu + (1 - b2) * g * g
            k = jnp.maximum(step, 1).astype(jnp.float32)   # the update count at step >= 1
            m_hat = mu_new / (1 - b1 ** k)
            v_hat = nu_new / (1 - b2 ** k)
            xi_new = xi - self.lr * m_hat / (jnp.sqrt(v_hat) + FAMO_ADAM_EPS)
        else:
            mu_new, nu_new = mu, nu
            xi_new = xi - self.lr * g
        has_prev = step >= 1
        return {"step": step + 1,
                "logits": jnp.where(has_prev, xi_new, xi),
                "adam_mu": jnp.where(has_prev, mu_new, mu),
                "adam_nu": jnp.where(has_prev, nu_new, nu),
                "prev_losses": losses}


# ---------------------------------------------------------------------------------------------
# DB-MTL
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class DBMTL(MTLMethod):
    """DB-MTL, dual-balancing multi-task learning (Lin et al., "Dual-balancing for multi-task
    learning", arXiv:2308.12029, 2023); matches ``LibMTL/weighting/DB_MTL.py``.

    Loss-scale balancing: the task losses are log-transformed; the gradient of
    ``log(L_t + 1e-8)`` is ``h_t = g_t / (L_t + 1e-8)`` (computed from the supplied gradients
    ``g_t`` of the plain losses). Gradient-magnitude balancing: a moving average of each
    task's log-loss gradient, ``m_t <- beta_k m_t + (1 - beta_k) h_t`` with
    ``beta_k = beta / k^sigma`` at the ``k``-th step (``k = 1, 2, ...``; ``m = 0`` at the start
    and no bias correction, as LibMTL), then every average is rescaled to the largest norm:
    ``combined = sum_t a_t m_t`` with ``a_t = max_s |m_s| / (|m_t| + 1e-8)``. The combined
    gradient is a sum over tasks (each term has the largest norm): the scale of the *sum* of
    ``T`` gradients of that norm. Only the shared parameters get this treatment: task heads
    keep their plain gradients ``grad L_t`` (ur_jax's convention for gradient methods; the
    paper and LibMTL log-transform the heads' losses too).

    Options: ``beta`` (0.9, LibMTL's ``DB_beta``), ``beta_sigma`` (0.0, LibMTL's
    ``DB_beta_sigma``; 0 is the paper's plain moving average with constant ``beta``). The
    state holds a ``(T, D)`` average: ``init_state(T, grad_dim=D)`` (``D`` the length of the
    flattened shared gradient; :func:`ur_jax.dense_steps.init_mtl_state` passes it).
    ``space`` is ``"params"`` (LibMTL refuses representation gradients for DB-MTL: a moving
    average of per-example feature gradients over different batches has no meaning).

    Returned weights: the rescaling factors ``a: (T,)`` (>= 1; 1 for the task with the largest
    averaged gradient). They multiply the moving averages, not the current gradients, so no
    ``(T,)`` vector reproduces ``combined`` from ``grads`` alone (with ``beta = 0`` the weights
    on the current gradients are ``a_t / (L_t + 1e-8)``).

    :meth:`combine` computes the new averages from the state and ``grads``; :meth:`update_state`
    (which receives the same ``grads``) recomputes and stores them (XLA shares the work).
    State: ``step`` and ``grad_ema: (T, D)`` float32. No trainable parameters.
    """

    name: str = dataclasses.field(default="db_mtl", init=False)
    uses_gradients: bool = dataclasses.field(default=True, init=False)
    space: str = dataclasses.field(default="params", init=False)
    beta: float = 0.9
    beta_sigma: float = 0.0

    def __post_init__(self) -> None:
        """Validate the options."""
        super().__post_init__()
        b = self.beta
        if (isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating))
                or not 0 <= b < 1):
            raise ValueError(f"db_mtl beta must be a number in [0, 1), got {b!r}.")
        object.__setattr__(self, "beta", float(b))
        _check_positive_float(self, "beta_sigma", allow_zero=True)

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter and zero moving averages ``grad_ema: (T, grad_dim)``.

        Raises:
          ValueError: ``grad_dim`` missing (:func:`ur_jax.mtl.base.check_grad_dim`).
        """
        t = check_num_tasks(num_tasks)
        d = check_grad_dim(grad_dim, self.name)
        return {"step": jnp.zeros((), jnp.int32),
                "grad_ema": jnp.zeros((t, d), jnp.float32)}

    def moving_average(self, state: State, losses: ArrayLike, grads: ArrayLike) -> jax.Array:
        """The ``(T, D)`` moving averages of the log-loss gradients after this step."""
        losses = jax.lax.stop_gradient(as_losses(losses))
        grads = as_grads(grads, losses.shape[0])
        ema = state["grad_ema"]
        if grads.shape != ema.shape:
            raise ValueError(f"db_mtl: grads have shape {tuple(grads.shape)} but the state "
                             f"holds averages of shape {tuple(ema.shape)}; pass init_state the "
                             "length of the flattened shared gradient as grad_dim.")
        log_grads = grads / (losses + DB_MTL_EPS)[:, None]
        k = (state["step"] + 1).astype(jnp.float32)
        beta_k = self.beta / k ** self.beta_sigma
        return beta_k * ema + (1.0 - beta_k) * log_grads

    def combine(self, grads: ArrayLike, losses: ArrayLike, params: Params, state: State,
                rng: jax.Array | None = None) -> tuple[jax.Array, Params, jax.Array]:
        """``sum_t a_t m_t`` with the updated averages ``m`` rescaled to the largest norm."""
        ema = self.moving_average(state, losses, grads)
        norms = jnp.sqrt(jnp.sum(ema * ema, axis=1))
        scale = jnp.max(norms) / (norms + DB_MTL_EPS)
        return weighted_sum(scale, ema), {}, scale

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Store the updated moving averages (needs the step's ``grads``)."""
        if grads is None:
            raise ValueError("db_mtl.update_state needs the step's (T, D) grads (the same ones "
                             "passed to combine) to update its moving averages.")
        return {"step": state["step"] + 1,
                "grad_ema": self.moving_average(state, losses, grads)}


#: This module's methods by name (merged into the registry in this order).
CLASSES: dict[str, type[MTLMethod]] = {
    "gls": GLS, "rlw": RLW, "stch": STCH, "famo": FAMO, "db_mtl": DBMTL,
}
