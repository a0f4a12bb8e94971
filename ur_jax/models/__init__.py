"""Flax Linen models: ResNet backbones with named features, heads, and a name registry.

>>> backbone = get_backbone('resnet18_metadataset', width=0.25)
>>> model = MultiHeadClassifier(backbone, num_classes=(('omniglot', 10),))
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from ur_jax.models.heads import Heads, MultiHeadClassifier
from ur_jax.models.resnet import (BasicBlock, Bottleneck, ResNet, ResNet18, ResNet18MetaDataset,
                                  ResNet34, ResNet50)

_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet18_metadataset": ResNet18MetaDataset,
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


__all__ = ["BasicBlock", "Bottleneck", "Heads", "MultiHeadClassifier", "ResNet", "ResNet18",
           "ResNet18MetaDataset", "ResNet34", "ResNet50", "backbone_names", "get_backbone",
           "register_backbone"]
