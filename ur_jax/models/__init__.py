"""Flax Linen models: ResNet backbones with named features, heads, dense-prediction
networks (SegNet, DeepLab-v3 ResNet-50), and name registries.

>>> backbone = get_backbone('resnet18_metadataset', width=0.25)
>>> model = MultiHeadClassifier(backbone, num_classes=(('omniglot', 10),))
>>> decathlon = get_backbone('resnet26', domains=('imagenet12', 'dtd'), adapter='parallel')
>>> segnet = get_dense_model('segnet', tasks=(('semantic', 13), ('depth', 1)), width=0.5)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from ur_jax.models.conv import Conv, conv_general_dilated
from ur_jax.models.cross_stitch import CrossStitchSegNet
from ur_jax.models.heads import Heads, MultiHeadClassifier
from ur_jax.models.mtan import MTANSegNet
from ur_jax.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet18MetaDataset,
    ResNet34,
    ResNet50,
)
from ur_jax.models.resnet26 import AdapterBlock, PerDomain, ResNet26, from_single_domain
from ur_jax.models.segnet import (
    DeepLabV3ResNet50,
    SegNet,
    max_pool_with_indices,
    max_unpool,
)

_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet18_metadataset": ResNet18MetaDataset,
    "resnet26": ResNet26,
}


def register_backbone(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Makes ``get_backbone(name, **kwargs)`` return ``constructor(**kwargs)``."""
    if name in _BACKBONES:
        raise ValueError(f"Backbone {name!r} is already registered.")
    _BACKBONES[name] = constructor


def backbone_names() -> list[str]:
    """Names accepted by :func:`get_backbone`."""
    return sorted(_BACKBONES)


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered backbone, e.g. ``get_backbone('resnet50', width=0.5)``."""
    try:
        constructor = _BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; known: {backbone_names()}.") from None
    return constructor(**kwargs)


_DENSE_MODELS: dict[str, Callable[..., nn.Module]] = {
    "segnet": SegNet,
    "deeplabv3_resnet50": DeepLabV3ResNet50,
    "mtan": MTANSegNet,
    "cross_stitch": CrossStitchSegNet,
}


def dense_model_names() -> list[str]:
    """Names accepted by :func:`get_dense_model`."""
    return sorted(_DENSE_MODELS)


def dense_model_class(name: str) -> Callable[..., nn.Module]:
    """The constructor :func:`get_dense_model` calls for ``name``.

    Raises:
      ValueError: an unknown name (listing the known ones).
    """
    try:
        return _DENSE_MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown dense model {name!r}; known: {dense_model_names()}.") from None


def get_dense_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered dense model, e.g. ``get_dense_model('segnet', tasks=..., width=1.0)``:
    a module mapping images to ``(predictions, features)``."""
    try:
        constructor = _DENSE_MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown dense model {name!r}; known: {dense_model_names()}.") from None
    return constructor(**kwargs)


__all__ = ["AdapterBlock", "BasicBlock", "Bottleneck", "Conv", "CrossStitchSegNet",
           "DeepLabV3ResNet50", "Heads", "MTANSegNet", "MultiHeadClassifier", "PerDomain",
           "ResNet", "ResNet18", "ResNet18MetaDataset", "ResNet26", "ResNet34", "ResNet50",
           "SegNet", "backbone_names", "conv_general_dilated", "dense_model_class",
           "dense_model_names", "from_single_domain", "get_backbone", "get_dense_model",
           "max_pool_with_indices", "max_unpool", "register_backbone"]
