"""A drop-in ``lax.conv_general_dilated`` whose input gradient keeps XLA:CPU's fast path in loops.

Reverse-mode differentiation of a convolution with respect to its input is itself a
convolution, of the output gradient with the spatially flipped kernel with its input and
output feature axes exchanged: JAX expresses the exchange in the dimension numbers (an
``HWIO`` kernel is read as ``HWOI``). XLA:CPU runs a convolution with Eigen's kernels only
when its kernel is laid out ``...IO``; its ``ConvCanonicalization`` pass inserts the
transpose that makes it so, but only for convolutions of the entry computation. Inside a
``lax.fori_loop`` / ``while_loop`` / ``scan`` body the ``HWOI`` convolution stays as it is
and is emitted as a naive loop nest: TSA's 40-step inner loop
(:func:`ur_jax.evaluation.tsa.tsa_fit`), which differentiates through the frozen backbone in
a ``fori_loop``, ran 4-5x slower per step than the same step compiled on its own
(``benchmarks/README.md``).

:func:`conv_general_dilated` computes exactly ``lax.conv_general_dilated``; its JVP rule
writes the input tangent's convolution against an explicitly transposed kernel (``HWOI``
data read with ``HWOI`` dimension numbers), so that transposing it for the gradient gives a
convolution whose kernel is already ``...IO``: the same Eigen convolution XLA builds at top
level, now also inside loops. The transpose of the (usually loop-invariant) kernel is the
only extra work. Forward-mode and higher-order derivatives stay available (a
``custom_jvp``, not a ``custom_vjp``). Grouped convolutions are passed to
``lax.conv_general_dilated`` unchanged.

Every ur_jax model builds its convolutions with :class:`Conv` (``flax.linen.Conv`` with this
function); use it for convolutions of your own that are differentiated inside loops.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Conv", "conv_general_dilated"]


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated`` with the same arguments and result (see the module doc).

    Differs only in how its input gradient is expressed: against an explicitly transposed
    kernel, so that XLA:CPU uses its Eigen convolution for it inside loop bodies too.

    Raises:
      Whatever ``lax.conv_general_dilated`` raises for the same arguments.
    """
    kwargs = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                  rhs_dilation=rhs_dilation, feature_group_count=feature_group_count,
                  batch_group_count=batch_group_count, precision=precision,
                  preferred_element_type=preferred_element_type)
    if feature_group_count != 1 or batch_group_count != 1:
        return lax.conv_general_dilated(lhs, rhs, dimension_numbers=dimension_numbers,
                                        **kwargs)
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return _conv(numbers, tuple((k, _hashable(v)) for k, v in sorted(kwargs.items())), lhs, rhs)


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _conv(numbers: lax.ConvDimensionNumbers, kwargs: tuple, lhs: jax.Array,
          rhs: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(lhs, rhs, dimension_numbers=numbers, **dict(kwargs))


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(numbers, kwargs, primals, tangents):
    lhs, rhs = primals
    lhs_dot, rhs_dot = tangents
    out = _conv(numbers, kwargs, lhs, rhs)
    out_dot = None
    if not isinstance(lhs_dot, jax.custom_derivatives.SymbolicZero):
        # The kernel's output and input feature axes exchanged in memory and in the
        # dimension numbers: the same convolution, whose transpose (the input gradient)
        # reads the transposed kernel as ...IO.
        out_axis, in_axis = numbers.rhs_spec[0], numbers.rhs_spec[1]
        swapped = jnp.swapaxes(rhs, out_axis, in_axis)
        swapped_numbers = lax.ConvDimensionNumbers(
            numbers.lhs_spec, (in_axis, out_axis, *numbers.rhs_spec[2:]), numbers.out_spec)
        out_dot = lax.conv_general_dilated(lhs_dot, swapped, dimension_numbers=swapped_numbers,
                                           **dict(kwargs))
    if not isinstance(rhs_dot, jax.custom_derivatives.SymbolicZero):
        term = lax.conv_general_dilated(lhs, rhs_dot, dimension_numbers=numbers, **dict(kwargs))
        out_dot = term if out_dot is None else out_dot + term
    if out_dot is None:
        out_dot = jnp.zeros_like(out)
    return out, out_dot


#: ``flax.linen.Conv`` computing with :func:`conv_general_dilated` (same parameters, same
#: outputs; faster gradients inside loops on CPU). Every ur_jax model uses it.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
