"""Data pipelines for ur_jax.

:mod:`ur_jax.data.embedded` holds the default dataset: six small, offline,
deterministic image domains (four for training, two for few-shot episodes)
exposed as the TFDS builder ``ur_embedded``.
"""

from __future__ import annotations

from ur_jax.data.embedded import (
    ALL_DOMAINS,
    FEWSHOT_DOMAINS,
    IMAGE_SHAPE,
    NUM_CLASSES,
    TRAIN_DOMAINS,
    UrEmbedded,
    data_source,
    prepare,
    render,
)

__all__ = [
    "ALL_DOMAINS",
    "FEWSHOT_DOMAINS",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "TRAIN_DOMAINS",
    "UrEmbedded",
    "data_source",
    "prepare",
    "render",
]
