"""Evaluation protocols: few-shot episodes on precomputed features (:mod:`.fewshot`)."""

from __future__ import annotations

from ur_jax.evaluation import fewshot
from ur_jax.evaluation.fewshot import *  # noqa: F403  (the public names, listed in fewshot.__all__)

__all__ = list(fewshot.__all__)
