"""Evaluation protocols: few-shot episodes on precomputed features (:mod:`.fewshot`) and
dense-prediction metrics with Delta_MTL (:mod:`.dense`)."""

from __future__ import annotations

from ur_jax.evaluation import dense, fewshot
from ur_jax.evaluation.dense import *
from ur_jax.evaluation.fewshot import *

__all__ = list(fewshot.__all__) + list(dense.__all__)
assert not set(fewshot.__all__) & set(dense.__all__), "evaluation modules export clashing names"
