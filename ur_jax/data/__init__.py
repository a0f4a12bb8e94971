"""Data pipelines for ur_jax.

:mod:`ur_jax.data.embedded` holds the default dataset: six small, offline,
deterministic image domains (four for training, two for few-shot episodes)
exposed as the TFDS builder ``ur_embedded`` (its names are re-exported here).

Dense prediction: :mod:`ur_jax.data.dense` (MTAN's preprocessed NYU-v2 and Cityscapes as
the TFDS builders ``ur_nyuv2`` / ``ur_cityscapes``, MTAN's augmentation, grain pipelines)
and :mod:`ur_jax.data.scenes` (``ur_scenes``, procedurally rendered scenes for the offline
dense default). :mod:`ur_jax.data.registry` maps ``config.dataset`` to sources.
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
