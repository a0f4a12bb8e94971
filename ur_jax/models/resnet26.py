"""ResNet-26 of the residual-adapter papers (Rebuffi et al. 2017, 2018), with per-domain parts.

The Visual Decathlon network: a 3x3 stem conv (32 channels, stride 1) with BatchNorm, three
stages of four basic blocks (64, 128, 256 channels, each stage starting with stride 2),
then BatchNorm + ReLU and global average pooling: a 256-d feature for 64-72 px inputs
(8x8 or 9x9 maps before pooling). A block is ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``
with the parameter-free shortcut ``s`` of the original code: 2x2 average pooling and
zero channels appended when the block changes shape. Convolutions have no bias.

**Per-domain parts.** With ``domains=()`` the network is an ordinary single-domain model
(a Decathlon teacher). With ``domains=('imagenet12', 'aircraft', ...)`` every BatchNorm,
and every adapter, exists once per domain while the convolutions are shared; the
forward pass takes the domain, ``backbone.apply(v, x, domain='dtd')``, and a
:class:`~ur_jax.models.MultiHeadClassifier` runs it once per domain of its batch. The
per-domain parameters sit one level below their layer, keyed by domain::

    params['layer1_0']['conv1']['kernel']               # shared
    params['layer1_0']['bn1']['dtd']['scale']           # dtd's BatchNorm
    params['layer1_0']['conv1_adapter']['dtd']['alpha'] # dtd's parallel adapter

so :func:`from_single_domain` can start a multi-domain network from a teacher.

**Adapters** (``adapter=``, from :mod:`ur_jax.adapters`, trained with the model's params):

* ``'parallel'``: Rebuffi et al. 2018: ``bn(conv(x) + alpha(x))`` with ``alpha`` a 1x1
  conv at the conv's stride (:class:`~ur_jax.adapters.ResidualAdapter`), on every 3x3 conv
  including the stem's. ``adapter_init='zeros'`` (default) starts the adapted network
  exactly at the pretrained one; ``'random'`` is the original's He-normal init.
* ``'series'``: Rebuffi et al. 2017: ``bn(A(conv(x)))`` with ``A = I + 1x1 conv`` and a bias
  (:class:`~ur_jax.adapters.SerialAdapter`, identity at init). The original also
  batch-normalises the adapter's input; here that affine map is absorbed into ``A``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ur_jax import adapters as adapters_lib
from ur_jax.models.conv import Conv
from ur_jax.models.resnet import BatchNorm, conv_init, same_padding, scaled_width

Array = Any
ADAPTERS = ("none", "series", "parallel")


class PerDomain(nn.Module):
    """One ``make(name=domain)`` module per domain; ``__call__(domain, *args)`` applies
    that domain's. Modules are created on first use (``init`` must see every domain)."""

    make: Callable[..., nn.Module]
    domains: Sequence[str]

    @nn.compact
    def __call__(self, domain: str, *args: Any) -> Any:
        if domain not in self.domains:
            raise KeyError(f"Unknown domain {domain!r}; this network has {list(self.domains)}.")
        return self.make(name=domain)(*args)


class _Parts(nn.Module):
    """Base of the modules below: shared convs, per-domain BatchNorm and adapters."""

    domains: Sequence[str] = ()
    adapter: str = "none"
    adapter_init: str = "zeros"
    norm: Callable[..., nn.Module] = BatchNorm
    conv: Callable[..., nn.Module] = Conv

    def _per_domain(self, make, name: str, domain: str | None, *args):
        if self.domains:
            return PerDomain(make, tuple(self.domains), name=name)(domain, *args)
        return make(name=name)(*args)

    def conv_bn(self, x: Array, features: int, strides: int, name: str, bn_name: str,
                domain: str | None) -> Array:
        """``bn(conv3x3(x))`` with the configured adapter around the conv."""
        y = self.conv(features, (3, 3), (strides, strides), padding=same_padding(3), name=name)(x)
        if self.adapter != "none":
            if self.adapter == "parallel":
                make = functools.partial(adapters_lib.ResidualAdapter, x.shape[-1], features,
                                         strides, shape="matrix", initializer=self.adapter_init,
                                         scale=1.0, collection="params")
            else:
                make = functools.partial(adapters_lib.SerialAdapter, x.shape[-1], features,
                                         strides, shape="matrix", initializer="eye", scale=1.0,
                                         collection="params")
            y = self._per_domain(make, f"{name}_adapter", domain, x, y)
        return self._per_domain(self.norm, bn_name, domain, y)


class AdapterBlock(_Parts):
    """Rebuffi's basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    features: int = 64
    strides: int = 1

    @nn.compact
    def __call__(self, x: Array, domain: str | None) -> Array:
        y = nn.relu(self.conv_bn(x, self.features, self.strides, "conv1", "bn1", domain))
        y = self.conv_bn(y, self.features, 1, "conv2", "bn2", domain)
        residual = x
        if self.strides > 1:
            residual = nn.avg_pool(residual, (self.strides, self.strides),
                                   (self.strides, self.strides))
        extra = self.features - residual.shape[-1]
        if extra > 0:  # the original's zero channels
            residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, extra)))
        elif extra < 0:
            raise ValueError(f"A block cannot reduce channels ({residual.shape[-1]} -> "
                             f"{self.features}).")
        return nn.relu(y + residual)


class _Stem(_Parts):
    features: int = 32

    @nn.compact
    def __call__(self, x: Array, domain: str | None) -> Array:
        return self.conv_bn(x, self.features, 1, "conv", "bn", domain)


class _EndNorm(_Parts):
    @nn.compact
    def __call__(self, x: Array, domain: str | None) -> Array:
        return self._per_domain(self.norm, "bn", domain, x)


class ResNet26(nn.Module):
    """ResNet-26 with optional per-domain BatchNorm and residual adapters (module docstring).

    Attributes:
      domains: ``()`` for a single-domain network, else the domains that get their own
        BatchNorm (and adapters).
      adapter: ``'none'``, ``'series'`` or ``'parallel'``.
      adapter_init: parallel adapters' init: ``'zeros'`` or ``'random'`` (He normal).
      end_relu: a ReLU after the final BatchNorm (Rebuffi et al.'s network); the paper's
        released Decathlon models (VICO-UoE/UniversalRepresentations) have none: ``False``
        for those (:mod:`ur_jax.convert.resnet26` sets it).
      width: channel multiplier (tests use small widths).
      stage_sizes, stage_widths, stem_width: the architecture ((4, 4, 4), (64, 128, 256), 32).
      dtype: computation dtype; parameters stay float32.
      bn_momentum, bn_epsilon: PyTorch's defaults (momentum 0.1 there is 0.9 here).

    ``__call__(x, train=False, domain=None)`` returns ``{'stem', 'layer1', 'layer2',
    'layer3', 'pooled'}``; ``domain`` is required when ``domains`` has more than one.
    """

    domains: Sequence[str] = ()
    adapter: str = "none"
    adapter_init: str = "zeros"
    width: float = 1.0
    stage_sizes: Sequence[int] = (4, 4, 4)
    stage_widths: Sequence[int] = (64, 128, 256)
    stem_width: int = 32
    end_relu: bool = True
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @property
    def domain_specific(self) -> bool:
        """Whether the forward pass needs a ``domain`` (see MultiHeadClassifier)."""
        return bool(self.domains)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature."""
        return scaled_width(self.stage_widths[-1], self.width)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, domain: str | None = None
                 ) -> dict[str, Array]:
        if x.ndim != 4:
            raise ValueError(f"ResNet26 expects NHWC images of rank 4; found shape {x.shape}.")
        if self.adapter not in ADAPTERS:
            raise ValueError(f"Unknown adapter {self.adapter!r}; expected one of {ADAPTERS}.")
        if domain is None and len(self.domains) == 1:
            domain = self.domains[0]
        if self.domains and domain is None:
            raise ValueError(f"This ResNet26 has per-domain parts for {list(self.domains)}: "
                             f"pass domain=.")
        if not self.domains and domain is not None:
            raise ValueError(f"This ResNet26 is single-domain; got domain={domain!r}.")
        conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        norm = functools.partial(BatchNorm, use_running_average=not train,
                                 momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                 dtype=self.dtype)
        parts = {"domains": tuple(self.domains), "adapter": self.adapter,
                 "adapter_init": self.adapter_init, "norm": norm, "conv": conv}
        x = jnp.asarray(x, self.dtype)
        feats: dict[str, Array] = {}
        x = _Stem(features=scaled_width(self.stem_width, self.width), name="stem", **parts)(x, domain)
        feats["stem"] = x
        for i, (blocks, base) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for j in range(blocks):
                x = AdapterBlock(features=scaled_width(base, self.width),
                                 strides=2 if j == 0 else 1, name=f"layer{i + 1}_{j}",
                                 **parts)(x, domain)
            feats[f"layer{i + 1}"] = x
        x = _EndNorm(name="end", **parts)(x, domain)
        if self.end_relu:
            x = nn.relu(x)
        feats["pooled"] = jnp.mean(x, axis=(1, 2))
        return feats


def from_single_domain(variables: Mapping[str, Any], teacher: Mapping[str, Any],
                       domains: Sequence[str], heads: Mapping[str, str] | None = None
                       ) -> tuple[dict[str, Any], int]:
    """Starts a multi-domain model from a single-domain one (e.g. the ImageNet teacher).

    Every backbone leaf of ``variables`` (a :class:`~ur_jax.models.MultiHeadClassifier`
    over a per-domain :class:`ResNet26`, or any model with the same layout) takes the
    teacher's value at the same path with the domain key removed: shared convolutions
    copy the teacher's, each domain's BatchNorm starts as a copy of the teacher's. Leaves
    the teacher lacks (adapters) keep their initial values. ``heads``: ``{student head:
    teacher head}`` to copy as well (same class count). Returns ``(variables, copied)``.
    """
    flat_t = {tuple(str(getattr(k, "key", k)) for k in p): v
              for p, v in jax.tree_util.tree_leaves_with_path(dict(teacher))}
    heads = dict(heads or {})
    copied = 0

    def pick(path, value):
        nonlocal copied
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if len(keys) > 2 and keys[1] == "heads":
            source = heads.get(keys[2])
            want = keys[:2] + (source,) + keys[3:] if source else None
        else:
            want = tuple(k for k in keys if k not in domains)
        t = flat_t.get(want) if want else None
        if t is None or tuple(t.shape) != tuple(value.shape):
            return value
        copied += 1
        return jnp.asarray(t, value.dtype)

    out = jax.tree_util.tree_map_with_path(pick, dict(variables))
    return out, copied
