"""Reusable Flax adapter modules.

Three families, each usable on its own:

* **Alignment adapters** (URL): a small map from the student's feature to a
  teacher's feature space, trained with the distillation loss and thrown away after
  training. :class:`AlignmentAdapter` (one map) and :class:`AlignmentAdapters` (one per
  teacher / domain / task).
* **Conv adapters** that wrap a convolution ``y = conv(x)``:

  - :class:`ResidualAdapter` ``y + alpha(x)``: Rebuffi et al.'s *parallel* residual
    adapter and TSA's *residual* task-specific adapter (a 1x1 matrix or a channel-wise
    vector, at the conv's stride);
  - :class:`SerialAdapter` ``beta(y) + b``: TSA's *serial* adapter; with a matrix
    initialised at the identity it is also Rebuffi et al.'s *series* adapter
    ``y + A y`` (``A = beta - I``).

  They attach to a backbone through its ``conv_adapter`` hook (see
  :func:`attach`); their variables live in the ``'adapters'`` collection, so the
  backbone's ``params`` tree is unchanged and a pretrained tree loads as it is.
* **Pre-classifier alignment** (PA, :class:`PreClassifierAlignment`): a linear map on
  the final features, initialised to the identity, fitted per few-shot episode.

Example: residual TSA on every 3x3 conv of a pretrained ResNet, backbone frozen::

    backbone = attach(get_backbone('resnet18_metadataset'), tsa('residual', 'matrix'))
    adapters = init_adapters(backbone, rng, images)          # {'layer1_0': ...}
    feats = backbone.apply({**pretrained, 'adapters': adapters}, images)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any

#: The collection that conv adapters keep their variables in.
ADAPTER_COLLECTION = "adapters"

#: PyTorch's ``torch.nn.init.xavier_normal_``: an *untruncated* normal with variance
#: ``2 / (fan_in + fan_out)``, the initialiser of URL's alignment adapters and of MTAN's
#: SegNet convolutions. (Flax's ``glorot_normal`` truncates at two standard deviations and
#: rescales, which changes the draws; the authors' adapters start from the untruncated one.)
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


# ----------------------------------------------------------------------------- alignment


class AlignmentAdapter(nn.Module):
    """Maps student features to a teacher's width: the URL adapter.

    Acts on the last (channel) axis, so it is a bias-free dense layer on ``(N, C)``
    features and a bias-free 1x1 convolution on ``(N, H, W, C)`` feature maps.

    Attributes:
      features: output width (the teacher's feature width).
      kind: ``'linear'`` (``x @ W``) or ``'mlp'`` (``relu(x @ W1) @ W2``, hidden width
        ``hidden_multiplier`` x the input width).
      hidden_multiplier: hidden width of the ``'mlp'`` form, relative to the input.
      kernel_init: Xavier-normal (untruncated, as ``torch.nn.init.xavier_normal_``) by
        default, as in the paper and the authors' code.
      dtype: computation dtype.
    """

    features: int
    kind: str = "linear"
    hidden_multiplier: int = 2
    kernel_init: Callable[..., Array] = xavier_normal
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = functools.partial(nn.Dense, use_bias=False, kernel_init=self.kernel_init,
                                  dtype=self.dtype)
        if self.kind == "linear":
            return dense(self.features, name="linear")(x)
        if self.kind == "mlp":
            h = nn.relu(dense(x.shape[-1] * self.hidden_multiplier, name="hidden")(x))
            return dense(self.features, name="out")(h)
        raise ValueError(f"Unknown alignment adapter kind {self.kind!r}; expected 'linear' or 'mlp'.")


class AlignmentAdapters(nn.Module):
    """One :class:`AlignmentAdapter` per teacher, keyed by domain / task name.

    ``__call__({name: student_feature})`` returns ``{name: adapted_feature}`` for the
    names given (any subset). Parameters: ``{name: {...}}``.

    Attributes:
      features: ``((name, teacher_width), ...)``.
      kind, hidden_multiplier: as in :class:`AlignmentAdapter`.
    """

    features: Sequence[tuple[str, int]]
    kind: str = "linear"
    hidden_multiplier: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: Mapping[str, Array]) -> dict[str, Array]:
        widths = dict(self.features)
        missing = sorted(set(feats) - set(widths))
        if missing:
            raise KeyError(f"No alignment adapter for {missing}; adapters exist for {sorted(widths)}.")
        return {n: AlignmentAdapter(widths[n], self.kind, self.hidden_multiplier,
                                    dtype=self.dtype, name=n)(f)
                for n, f in feats.items()}


# ----------------------------------------------------------------------------- conv adapters


def _eye_init(scale: float) -> Callable[..., Array]:
    """Initialiser of a ``(1, 1, C_in, C_out)`` kernel or ``(C,)`` vector: ``scale * I``."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if len(shape) == 1:
            return jnp.full(shape, scale, dtype)
        eye = jnp.eye(shape[-2], shape[-1], dtype=dtype) * scale
        return eye.reshape(shape)

    return init


def _initializer(init: str, scale: float) -> Callable[..., Array]:
    if init == "eye":
        return _eye_init(scale)
    if init == "random":
        # A matrix: Kaiming normal over its input width. A vector: scale * (1 + N(0, 1)).
        matrix = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

        def init_fn(key, shape, dtype=jnp.float32):
            if len(shape) == 1:
                return scale + scale * jax.random.normal(key, shape, dtype)
            return matrix(key, shape, dtype)

        return init_fn
    if init == "zeros":
        return nn.initializers.zeros
    raise ValueError(f"Unknown adapter init {init!r}; expected 'eye', 'random' or 'zeros'.")


def _pointwise(x: Array, kernel: Array, strides: int) -> Array:
    """1x1 convolution at ``strides`` (no padding): subsample, then a channel matmul."""
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    return jnp.einsum("nhwc,cd->nhwd", x, kernel.reshape(kernel.shape[-2:]).astype(x.dtype))


class ResidualAdapter(nn.Module):
    """``y + alpha(x)``: a parallel residual adapter around a conv ``y = conv(x)``.

    ``alpha`` is a 1x1 convolution at the conv's stride (``shape='matrix'``, kernel
    ``(1, 1, C_in, C_out)``) or a channel-wise scale (``shape='vector'``, ``(C,)``;
    falls back to a matrix when ``C_in != C_out``, where no channel-wise map exists).

    This is TSA's residual adapter (``initializer='eye'``: ``alpha = 1e-4 * I`` so the wrapped
    backbone starts unchanged up to that scale) and Rebuffi et al.'s parallel adapter
    (``initializer='random'``).

    Attributes:
      in_features, out_features, strides: those of the wrapped conv.
      shape: ``'matrix'`` or ``'vector'``.
      initializer: ``'eye'`` (``scale * I``), ``'random'`` (Kaiming normal) or ``'zeros'``.
      scale: the identity's scale for ``initializer='eye'`` (TSA: 1e-4).
      collection: variable collection (``'adapters'``; ``'params'`` to train it as part
        of the model's own parameters).
    """

    in_features: int
    out_features: int
    strides: int = 1
    shape: str = "matrix"
    initializer: str = "eye"
    scale: float = 1e-4
    collection: str = ADAPTER_COLLECTION

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        init = _initializer(self.initializer, self.scale)
        if self.shape not in ("matrix", "vector"):
            raise ValueError(f"Unknown adapter shape {self.shape!r}; expected 'matrix' or 'vector'.")
        if self.shape == "vector" and self.in_features == self.out_features:
            alpha = self.variable(self.collection, "alpha",
                                  lambda: init(self.make_rng("params"), (self.out_features,))).value
            xs = x[:, ::self.strides, ::self.strides, :] if self.strides > 1 else x
            return y + xs * alpha.astype(y.dtype)
        alpha = self.variable(
            self.collection, "alpha",
            lambda: init(self.make_rng("params"), (1, 1, self.in_features, self.out_features))).value
        return y + _pointwise(x, alpha, self.strides).astype(y.dtype)


class SerialAdapter(nn.Module):
    """``beta(y) + b`` applied to a conv's output ``y``: TSA's serial adapter.

    ``beta`` is a 1x1 convolution ``(1, 1, C, C)`` (``shape='matrix'``) or a
    channel-wise scale ``(C,)`` (``shape='vector'``); ``b`` a per-channel bias
    initialised at zero. With ``initializer='eye'`` (``scale=1``) it is the identity at
    initialisation, which makes it Rebuffi et al.'s series adapter ``y + A y``.

    Attributes:
      in_features, out_features, strides: those of the wrapped conv (only
        ``out_features`` is used).
      shape, initializer, collection: as in :class:`ResidualAdapter`; ``scale`` defaults to 1.
    """

    in_features: int
    out_features: int
    strides: int = 1
    shape: str = "matrix"
    initializer: str = "eye"
    scale: float = 1.0
    collection: str = ADAPTER_COLLECTION

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        del x
        init = _initializer(self.initializer, self.scale)
        c = self.out_features
        bias = self.variable(self.collection, "bias", lambda: jnp.zeros((c,), jnp.float32)).value
        if self.shape == "vector":
            beta = self.variable(self.collection, "beta",
                                 lambda: init(self.make_rng("params"), (c,))).value
            return y * beta.astype(y.dtype) + bias.astype(y.dtype)
        if self.shape != "matrix":
            raise ValueError(f"Unknown adapter shape {self.shape!r}; expected 'matrix' or 'vector'.")
        beta = self.variable(self.collection, "beta",
                             lambda: init(self.make_rng("params"), (1, 1, c, c))).value
        return _pointwise(y, beta, 1).astype(y.dtype) + bias.astype(y.dtype)


def tsa(mode: str = "residual", shape: str = "matrix", init: str = "eye",
        collection: str = ADAPTER_COLLECTION) -> Callable[..., nn.Module]:
    """A ``conv_adapter`` factory for task-specific adapters (TSA, Li et al. CVPR 2022).

    ``mode='residual'``: ``y + alpha(x)`` with ``alpha = 1e-4 * I`` at ``init='eye'``;
    ``mode='serial'``: ``beta(y) + b`` with ``beta = I``, ``b = 0`` at ``init='eye'``.
    """
    if mode == "residual":
        return functools.partial(ResidualAdapter, shape=shape, initializer=init, scale=1e-4,
                                 collection=collection)
    if mode == "serial":
        return functools.partial(SerialAdapter, shape=shape, initializer=init, scale=1.0,
                                 collection=collection)
    raise ValueError(f"Unknown TSA mode {mode!r}; expected 'residual' or 'serial'.")


def parallel_adapter(init: str = "random", collection: str = ADAPTER_COLLECTION):
    """A ``conv_adapter`` factory for Rebuffi et al.'s parallel residual adapters (1x1 matrix)."""
    return functools.partial(ResidualAdapter, shape="matrix", initializer=init, scale=1.0,
                             collection=collection)


def series_adapter(collection: str = ADAPTER_COLLECTION):
    """A ``conv_adapter`` factory for Rebuffi et al.'s series adapters ``y + A y`` (A = 0 at init)."""
    return functools.partial(SerialAdapter, shape="matrix", initializer="eye", scale=1.0,
                             collection=collection)


# ----------------------------------------------------------------------------- PA


class PreClassifierAlignment(nn.Module):
    """Pre-classifier alignment (PA): ``z = f @ W`` with ``W`` initialised to the identity.

    Fitted on a few-shot episode's support set and applied to both support and query
    features before the nearest-centroid classifier. Input ``(N, D)``; ``W`` is
    ``(D, features or D)`` (a rectangular identity when the widths differ).
    """

    features: int | None = None

    @nn.compact
    def __call__(self, f: Array) -> Array:
        out = self.features or f.shape[-1]
        return nn.Dense(out, use_bias=False, kernel_init=_eye_init(1.0), name="linear")(f)


# ----------------------------------------------------------------------------- attaching


def attach(backbone: nn.Module, conv_adapter: Callable[..., nn.Module] | None) -> nn.Module:
    """Returns ``backbone`` with ``conv_adapter`` attached to its 3x3 convs.

    The backbone's ``params`` and ``batch_stats`` trees are unchanged (the adapters
    keep their variables in their own collection), so a pretrained tree applies to
    the adapted backbone as it is. ``conv_adapter=None`` detaches.
    """
    if not hasattr(backbone, "conv_adapter"):
        raise TypeError(f"{type(backbone).__name__} has no 'conv_adapter' hook; adapters attach "
                        "to backbones that declare one (e.g. ur_jax.models.ResNet).")
    return backbone.clone(conv_adapter=conv_adapter)


def init_adapters(backbone: nn.Module, rng: Array, images: Array,
                  collection: str = ADAPTER_COLLECTION) -> dict:
    """Initialises only the adapter variables of an adapted backbone.

    Runs ``backbone.init`` abstractly for everything else (no compute, no memory
    for the backbone's parameters) and returns the ``collection`` subtree.
    """

    def init(rng, images):
        return backbone.init(rng, images, train=False).get(collection, {})

    # Only the adapter subtree is returned, so XLA prunes the backbone's init.
    return jax.jit(init)(rng, images)


def split_adapters(variables: Mapping[str, Any], collection: str = ADAPTER_COLLECTION):
    """Splits ``variables`` into ``(backbone_variables, adapter_variables)``."""
    rest = {k: v for k, v in variables.items() if k != collection}
    return rest, variables.get(collection, {})
