"""Mixed precision: which dtype a model computes in, with float32 parameters.

The policy (``config.precision``):

* ``'fp32'`` (the default; what every result in README was measured with): everything in
  float32.
* ``'bf16'``: convolutions, dense layers, activations and the backbone's features in
  bfloat16; parameters, optimizer state, BatchNorm statistics (Flax reduces in float32
  and keeps the running averages in float32), the classification heads (tiny, and their
  logits feed the losses), every loss (:mod:`ur_jax.losses` upcasts its inputs) and every
  metric in float32. This is the usual recipe on GPUs and TPUs, whose matrix units run
  bfloat16 several times faster; on CPUs it is rarely faster.

Every model of :mod:`ur_jax.models` and the adapters of :mod:`ur_jax.adapters` have a
``dtype`` attribute (the computation dtype; ``param_dtype`` stays float32);
:func:`with_precision` sets it throughout a model. The saved-model specs
(:func:`ur_jax.checkpointing.model_spec`) do not record it: a model trained in one
precision loads and runs in the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

#: ``config.precision`` values and the computation dtype of each.
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def compute_dtype(precision: str) -> Any:
    """The computation dtype of ``precision`` (a key of :data:`PRECISIONS`).

    Raises:
      ValueError: an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {sorted(PRECISIONS)}.")
    return PRECISIONS[precision]


def with_precision(module: nn.Module, precision: str) -> nn.Module:
    """``module`` computing in ``precision``'s dtype: a clone in which the ``dtype``
    attribute of the module and of every module it holds (a classifier's backbone, a
    backbone's adapters) is set; parameters keep their float32 ``param_dtype``.

    ``'fp32'`` returns ``module`` itself when it already computes in float32, so that
    float32 runs share compiled functions (and numbers) with runs that never call this.
    Modules without a ``dtype`` attribute (e.g. the classification heads, which compute
    in their float32 parameters' dtype) are left as they are.

    Raises:
      ValueError: an unknown precision.
    """
    return _with_dtype(module, compute_dtype(precision))


def _with_dtype(module: nn.Module, dtype: Any) -> nn.Module:
    updates = {}
    for field in dataclasses.fields(module):
        if field.name in ("parent", "name"):
            continue
        value = getattr(module, field.name, None)
        if isinstance(value, nn.Module):
            inner = _with_dtype(value, dtype)
            if inner is not value:
                updates[field.name] = inner
        elif field.name == "dtype" and value != dtype:
            updates["dtype"] = dtype
    return module.clone(**updates) if updates else module
