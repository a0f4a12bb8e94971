"""Loss-weighting methods (``uses_gradients=False``): the step differentiates
:meth:`~ur_jax.mtl.base.MTLMethod.loss`, a scalar total of the ``T`` task losses, with respect
to the model parameters and the method's own parameters.

:class:`Uniform` (equal weights; also a single task), :class:`Uncertainty` (Kendall et
al.), :class:`DWA` (Liu et al., MTAN) and :class:`IMTLL` (IMTL-L). GradNorm also learns loss
weights, but it needs the per-task gradients to train them, so it lives in
:mod:`ur_jax.mtl.gradient` with the other methods that implement
:meth:`~ur_jax.mtl.base.MTLMethod.combine`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ur_jax.mtl.base import (ArrayLike, MTLMethod, Params, State, as_losses,
                             check_num_tasks)

__all__ = ["DWA", "IMTLL", "Uncertainty", "Uniform"]


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

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``sum_t L_t`` and weights ``ones(T)``."""
        losses = as_losses(losses, minimum=1)
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
        return {"log_vars": jnp.zeros((check_num_tasks(num_tasks),), jnp.float32)}

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Uncertainty-weighted total and weights ``1 / (2 exp(s))``."""
        losses = as_losses(losses)
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

    def init_state(self, num_tasks: int, grad_dim: int | None = None) -> State:
        """Step counter, completed-epoch count, current epoch's loss sums and the two previous
        epochs' mean losses (``last``: e-1, ``before_last``: e-2)."""
        t = check_num_tasks(num_tasks)
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

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``sum_t w_t L_t`` with the epoch's DWA weights (constants)."""
        losses = as_losses(losses)
        w = jax.lax.stop_gradient(self.weights(state))
        return jnp.sum(w * losses), w

    def update_state(self, state: State, losses: ArrayLike, grads: ArrayLike | None = None
                     ) -> State:
        """Add ``losses`` to the epoch sums; at an epoch end store the mean and roll."""
        losses = jax.lax.stop_gradient(as_losses(losses))
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
        return {"log_scales": jnp.zeros((check_num_tasks(num_tasks),), jnp.float32)}

    def loss(self, losses: ArrayLike, params: Params, state: State,
             rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """``sum_t exp(s_t) L_t - s_t`` and weights ``exp(s)``."""
        losses = as_losses(losses)
        s = jnp.asarray(params["log_scales"], jnp.float32)
        return jnp.sum(jnp.exp(s) * losses - s), jax.lax.stop_gradient(jnp.exp(s))

