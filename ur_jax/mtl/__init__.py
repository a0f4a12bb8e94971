"""Multi-task optimisation methods as pure, jit-compatible JAX functions.

The multi-task learning (MTL) baselines the URL paper (Li, Liu & Bilen, IJCV 2023, Table 1)
compares with on NYU-v2 / Cityscapes, and every other weighting method of LibMTL (Lin &
Zhang, JMLR 2023): 25 methods, each inside ur_jax's one jitted data-parallel step. Each is an
:class:`MTLMethod` obtained with :func:`get_method`. Given the ``T`` per-task losses of a step
(``losses: (T,) float32``) a method produces one update, in one of two ways:

* **loss weighting** (``uses_gradients=False``: uniform, uncertainty, dwa, imtl_l, gls, rlw,
  stch, famo):
  :meth:`MTLMethod.loss` returns a scalar total loss that the step differentiates with respect
  to the model parameters *and* the method's own trainable parameters.
* **gradient manipulation** (``uses_gradients=True``: gradnorm, mgda, pcgrad, graddrop,
  imtl_g, imtl_h, cagrad, db_mtl, gradvac, aligned_mtl, upgrad, excess_mtl, nash_mtl,
  fairgrad, moco, modo, sdmgrad): the step computes the per-task gradients of the shared parameters
  flattened into ``grads: (T, D)``; :meth:`MTLMethod.combine` returns the combined gradient
  ``(D,)`` to use in their place, the gradients of the method's own parameters, and ``(T,)``
  effective task weights for logging. With ``method.space == "features"`` the step passes
  the per-example gradients of the shared feature ``(T, B, D)`` and the feature ``(B, D)``
  to :meth:`MTLMethod.combine_features` instead (GradDrop masks per feature, for the whole
  batch; the other methods flatten to ``(T, B*D)``). Task-specific parameters (heads) keep
  their ordinary gradients of ``sum_t L_t``.

Protocol of one training step (``mparams``/``mstate`` are the method's params and state)::

    method = get_method("pcgrad")
    mparams = method.init_params(T)                                  # once
    mstate = method.init_state(T, grad_dim=D)                        # D: a gradient row's length
    rng = jax.random.fold_in(key, step)                              # randomised methods
    if method.uses_gradients:
        combined, mparam_grads, weights = method.combine(grads, losses, mparams, mstate, rng)
    else:
        total, weights = method.loss(losses, mparams, mstate, rng)    # inside jax.grad
    mstate = method.update_state(mstate, losses, grads)               # after the update

``loss``/``combine`` read the state *before* the step; ``update_state`` then records the step
(gradient methods get the same ``grads`` there; loss methods ``grads=None``). Methods whose
state follows the gradients (DB-MTL, ExcessMTL, MoCo, MoDo, SDMGrad: ``(T, D)`` arrays) need
``grad_dim``; :func:`ur_jax.dense_steps.init_mtl_state` passes it.
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

Layout (``ur_jax/mtl/``)::

    base.py       MTLMethod (the protocol above), SPACES, input checks, shared option
                  validators, weighted_sum / finish_combination
    solvers.py    pure solvers on (T, D) gradients or their (T, T) Gram matrix: gram_matrix,
                  project_to_simplex, min_norm_weights, pcgrad_orders / pcgrad_weights,
                  graddrop_combine, imtl_g_weights, cagrad_solve / cagrad_weights
    weighting.py  loss weighting (uses_gradients=False): Uniform, Uncertainty, DWA, IMTLL
    gradient.py   gradient combination (uses_gradients=True): GradNorm, MGDA, PCGrad,
                  GradDrop, IMTLG, IMTLH, CAGrad
    scalarization.py  LibMTL's loss transforms: GLS, RLW, STCH, FAMO (loss weighting),
                  DB-MTL (log-loss gradients, magnitude-balanced moving averages)
    alignment.py  LibMTL's gradient alignment / projection: GradVac, Aligned-MTL, UPGrad,
                  ExcessMTL
    moo.py        LibMTL's multi-objective solvers: Nash-MTL, FairGrad, MoCo, MoDo, SDMGrad
    registry.py   the one registry: METHOD_CLASSES (read-only name -> class), METHODS,
                  get_method, method_options

Imports point one way (base <- solvers, weighting <- gradient, scalarization, alignment,
moo <- registry <- this package's ``__init__``); ``__init__`` re-exports the public API (``from ur_jax import mtl`` then
``mtl.get_method``, ``mtl.METHODS``, ``mtl.MTLMethod``, ``mtl.min_norm_weights``, ...).

To add a method: write one frozen, keyword-only dataclass subclassing :class:`MTLMethod`
(``name`` and ``uses_gradients`` fixed with ``dataclasses.field(default=..., init=False)``,
the options as fields validated in ``__post_init__``; implement :meth:`MTLMethod.loss` for
loss weighting or :meth:`MTLMethod.combine` for gradient combination, and ``init_params`` /
``init_state`` / ``update_state`` if it has parameters or state) in ``weighting.py``,
``gradient.py`` or a new module of its own, with any new solver as a pure function in
``solvers.py`` or beside it; then register it with one entry in ``registry.METHOD_CLASSES``
(or the ``CLASSES`` dict of its module, which the registry merges). Its options
become :func:`get_method`'s keyword arguments. ``ur_jax.config.blocks.MTL_METHODS`` lists the
names again (so that loading a config does not import JAX): add the name there too.
"""

from ur_jax.mtl.base import SPACES, ArrayLike, MTLMethod, Params, State
from ur_jax.mtl.gradient import (MGDA, MGDA_NORMALIZATIONS, CAGrad, GradDrop, GradNorm, IMTLG,
                                 IMTLH, PCGrad)
from ur_jax.mtl.registry import METHOD_CLASSES, METHODS, get_method, method_options
from ur_jax.mtl.solvers import (GRADDROP_EPS, MIN_NORM_EXACT_MAX_TASKS, cagrad_solve,
                                cagrad_weights, graddrop_combine, gram_matrix, imtl_g_weights,
                                min_norm_weights, pcgrad_orders, pcgrad_weights,
                                project_to_simplex)
from ur_jax.mtl.weighting import DWA, IMTLL, Uncertainty, Uniform

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
