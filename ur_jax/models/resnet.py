"""ResNet backbones (Flax Linen) that return named features.

Every backbone maps NHWC images to a dict of named features::

    feats = backbone.apply(variables, images, train=False)
    feats['pooled']   # (N, C) global-average-pooled feature (what URL aligns)
    feats['layer3']   # (N, H', W', C') output of a stage, for dense alignment

Names: ``'stem'``, ``'layer1'`` ... ``'layer4'``, ``'pooled'``. Classification
heads are separate modules (:mod:`ur_jax.models.heads`).

Layout choices follow the PyTorch models the paper's checkpoints come from, so
that converted weights give the same numbers: symmetric explicit padding
(``k // 2``; never XLA's asymmetric ``'SAME'`` for strided convs), bias-free
convolutions, a 1x1-conv + BatchNorm projection shortcut, the stride of a
bottleneck on its 3x3 conv, and BatchNorm with PyTorch's defaults
(``momentum=0.1`` there is ``momentum=0.9`` here, ``eps=1e-5``).

Conv adapters (residual adapters, task-specific adapters; see
:mod:`ur_jax.adapters`) attach through ``conv_adapter``: a factory called as
``conv_adapter(in_features=, out_features=, strides=, name=)`` for every 3x3 conv
of the residual blocks; the module it returns is applied as ``y = m(x, y)`` with
``x`` the conv input and ``y`` its output. Adapters keep their variables in a
collection of their own (``'adapters'`` by default), so the backbone's
``params`` / ``batch_stats`` trees are identical with and without them and a
pretrained tree loads unchanged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ur_jax.models.conv import Conv

Array = Any
ModuleDef = Any

# PyTorch's default conv init in torchvision ResNets: kaiming normal, fan_out, relu.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

#: BatchNorm with the two-pass batch variance ``mean((x - mean(x))^2)`` that PyTorch
#: computes. Flax's default one-pass ``E[x^2] - E[x]^2`` cancels catastrophically on
#: channels whose mean is large against their spread; the error then depends on how the
#: batch is split over devices (measured: a 4-step teacher of configs/default.py:smoke ended
#: with test loss 3.78 on 8 devices and 4.31 on 1; with two passes both give 4.31).
BatchNorm = functools.partial(nn.BatchNorm, use_fast_variance=False)


def scaled_width(width: int, multiplier: float) -> int:
    """Channel count ``width * multiplier`` rounded, at least 1."""
    return max(1, int(round(width * multiplier)))


def same_padding(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ``kernel // 2`` padding on both sides of H and W (PyTorch's
    ``padding=kernel // 2``; with stride 2 it differs from flax's ``'SAME'``)."""
    p = kernel // 2
    return ((p, p), (p, p))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or projected) shortcut."""

    features: int
    strides: int = 1
    conv: ModuleDef = Conv
    norm: ModuleDef = BatchNorm
    conv_adapter: Callable[..., nn.Module] | None = None
    zero_init_residual: bool = False

    def _conv3x3(self, x, features, strides, name):
        y = self.conv(features, (3, 3), (strides, strides), padding=same_padding(3), name=name)(x)
        if self.conv_adapter is not None:
            y = self.conv_adapter(
                in_features=x.shape[-1], out_features=features, strides=strides,
                name=f"{name}_adapter")(x, y)
        return y

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = self._conv3x3(x, self.features, self.strides, "conv1")
        y = nn.relu(self.norm(name="bn1")(y))
        y = self._conv3x3(y, self.features, 1, "conv2")
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(scale_init=last_scale, name="bn2")(y)
        if residual.shape != y.shape:
            residual = self.conv(self.features, (1, 1), (self.strides, self.strides),
                                 padding="VALID", name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) block, torchvision's "v1.5"."""

    features: int
    strides: int = 1
    conv: ModuleDef = Conv
    norm: ModuleDef = BatchNorm
    conv_adapter: Callable[..., nn.Module] | None = None
    zero_init_residual: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        residual = x
        y = self.conv(self.features, (1, 1), padding="VALID", name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        z = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=same_padding(3),
                      name="conv2")(y)
        if self.conv_adapter is not None:
            z = self.conv_adapter(in_features=y.shape[-1], out_features=self.features,
                                  strides=self.strides, name="conv2_adapter")(y, z)
        y = nn.relu(self.norm(name="bn2")(z))
        y = self.conv(self.features * 4, (1, 1), padding="VALID", name="conv3")(y)
        last_scale = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        y = self.norm(scale_init=last_scale, name="bn3")(y)
        if residual.shape != y.shape:
            residual = self.conv(self.features * 4, (1, 1), (self.strides, self.strides),
                                 padding="VALID", name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """A ResNet backbone returning ``{'stem', 'layer1'.., 'pooled'}`` features.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      block_cls: :class:`BasicBlock` or :class:`Bottleneck`.
      stage_widths: base channel count of each stage (before ``width``).
      width: width multiplier applied to every channel count (tests use 1/8).
      stem: ``'imagenet'`` (7x7/2 conv, pad 3, then 3x3/2 max-pool) or
        ``'metadataset'`` (5x5/2 conv, pad 1, no max-pool; PAPER.md section 3).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      conv_adapter: optional adapter factory for the blocks' 3x3 convs (see the
        module docstring).
      zero_init_residual: start each block's last BatchNorm scale at zero.
      bn_momentum, bn_epsilon: BatchNorm running-average decay and epsilon.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BasicBlock
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    width: float = 1.0
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    conv_adapter: Callable[..., nn.Module] | None = None
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature."""
        expansion = 4 if self.block_cls is Bottleneck else 1
        return scaled_width(self.stage_widths[-1], self.width) * expansion

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        if x.ndim != 4:
            raise ValueError(f"ResNet expects NHWC images of rank 4; found shape {x.shape}.")
        if len(self.stage_sizes) != len(self.stage_widths):
            raise ValueError(f"stage_sizes {tuple(self.stage_sizes)} and stage_widths "
                             f"{tuple(self.stage_widths)} must have the same length.")
        conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 dtype=self.dtype)
        feats: dict[str, Array] = {}
        x = jnp.asarray(x, self.dtype)
        stem_width = scaled_width(self.stage_widths[0], self.width)
        if self.stem == "imagenet":
            x = conv(stem_width, (7, 7), (2, 2), padding=same_padding(7), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "metadataset":
            x = conv(stem_width, (5, 5), (2, 2), padding=((1, 1), (1, 1)), name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        else:
            raise ValueError(f"Unknown stem {self.stem!r}; expected 'imagenet' or 'metadataset'.")
        feats["stem"] = x
        for i, (blocks, base) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for j in range(blocks):
                strides = 2 if (i > 0 and j == 0) else 1
                x = self.block_cls(scaled_width(base, self.width), strides, conv=conv, norm=norm,
                                   conv_adapter=self.conv_adapter,
                                   zero_init_residual=self.zero_init_residual,
                                   name=f"layer{i + 1}_{j}")(x)
            feats[f"layer{i + 1}"] = x
        feats["pooled"] = jnp.mean(x, axis=(1, 2))
        return feats


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
#: The Meta-Dataset ResNet-18 of URL / TSA: 5x5 stride-2 stem, no max-pool, 512-d feature.
ResNet18MetaDataset = functools.partial(ResNet18, stem="metadataset")
