"""ur_jax.models.conv: lax.conv_general_dilated's values and derivatives, and Eigen-friendly
input gradients inside loop bodies on XLA:CPU."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ur_jax import models
from ur_jax.models import conv as conv_lib

CASES = [  # strides, padding, lhs_dilation, rhs_dilation, dimension numbers, kernel shape
    ((1, 1), ((1, 1), (1, 1)), None, None, ("NHWC", "HWIO", "NHWC"), (3, 3, 5, 7)),
    ((2, 2), "SAME", None, None, ("NHWC", "HWIO", "NHWC"), (3, 3, 5, 7)),
    ((2, 2), [(0, 1), (0, 1)], None, (2, 2), ("NHWC", "HWIO", "NHWC"), (3, 3, 5, 7)),
    ((1, 1), ((0, 0), (1, 1)), (2, 2), None, ("NHWC", "HWIO", "NHWC"), (1, 1, 5, 4)),
    ((1, 2), "SAME", None, None, ("NCHW", "OIHW", "NCHW"), (7, 5, 3, 2)),
]


def _inputs(numbers, kernel_shape):
    rng = np.random.default_rng(0)
    shape = (3, 9, 10, 5) if numbers[0] == "NHWC" else (3, 5, 9, 10)
    return (jnp.asarray(rng.normal(size=shape), jnp.float32),
            jnp.asarray(rng.normal(size=kernel_shape), jnp.float32))


@pytest.mark.parametrize("strides,padding,lhs_dil,rhs_dil,numbers,kernel_shape", CASES)
def test_values_and_derivatives_are_lax(strides, padding, lhs_dil, rhs_dil, numbers, kernel_shape):
    """Output, gradients (bitwise: the same convolutions on the same data), forward-mode
    tangents and a Hessian-vector product equal lax.conv_general_dilated's."""
    x, w = _inputs(numbers, kernel_shape)

    def loss(conv):
        def f(x, w):
            y = conv(x, w, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
                     dimension_numbers=numbers)
            return jnp.sum(jnp.sin(y) * y)
        return f

    ours, theirs = loss(conv_lib.conv_general_dilated), loss(lax.conv_general_dilated)
    np.testing.assert_array_equal(jax.jit(ours)(x, w), jax.jit(theirs)(x, w))
    for a, b in zip(jax.jit(jax.grad(ours, (0, 1)))(x, w),
                    jax.jit(jax.grad(theirs, (0, 1)))(x, w)):
        np.testing.assert_array_equal(a, b)
    tangent = (0.5 * x, -w)
    np.testing.assert_allclose(jax.jvp(ours, (x, w), tangent)[1],
                               jax.jvp(theirs, (x, w), tangent)[1], rtol=1e-5)
    hvp = lambda f: jax.jvp(jax.grad(f, (0, 1)), (x, w), tangent)[1]  # noqa: E731
    for a, b in zip(hvp(ours), hvp(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_grouped_convolutions_are_passed_through():
    x = jnp.ones((2, 6, 6, 4))
    w = jnp.arange(3 * 3 * 2 * 4, dtype=jnp.float32).reshape(3, 3, 2, 4)
    args = ((1, 1), "SAME")
    kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    np.testing.assert_array_equal(conv_lib.conv_general_dilated(x, w, *args, **kw),
                                  lax.conv_general_dilated(x, w, *args, **kw))


def _kernel_layouts(fn, *args):
    """The kernel dim labels of every convolution XLA compiled for ``fn`` (this backend)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"dim_labels=\w+_(\w+)->", text)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution emitter")
def test_input_gradient_inside_a_loop_reads_the_kernel_as_io():
    """The reason the module exists: a model's input gradient computed in a fori_loop body
    compiles to no convolution whose kernel is read ...oi (not Eigen's: a naive loop nest on
    XLA:CPU), as at top level; lax.conv_general_dilated's leaves ...oi convolutions there."""
    model = models.get_backbone("resnet18_metadataset", width=0.125)
    x = jnp.ones((2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x)

    def looped(x):
        def body(_, x):
            g = jax.grad(lambda x: jnp.sum(model.apply(variables, x)["pooled"] ** 2))(x)
            return x - 0.1 * g
        return jax.lax.fori_loop(0, 2, body, x)

    layouts = _kernel_layouts(looped, x)
    assert layouts and not any(label.endswith("oi") for label in layouts), layouts

    kernel = jnp.ones((3, 3, 3, 4))

    def plain_looped(x):
        def body(_, x):
            return x - jax.grad(lambda x: jnp.sum(lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2))(x)
        return jax.lax.fori_loop(0, 2, body, x)

    # If this fails, XLA:CPU canonicalizes convolutions inside loops by itself now and
    # ur_jax.models.conv is no longer needed.
    assert any(label.endswith("oi") for label in _kernel_layouts(plain_looped, x))
