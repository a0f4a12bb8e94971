"""Evaluation protocols: few-shot episodes on precomputed features (:mod:`.fewshot`),
dense-prediction metrics with Delta_MTL (:mod:`.dense`), and the Visual Decathlon score
with Delta_MDL (:mod:`.decathlon`)."""

from __future__ import annotations

from ur_jax.evaluation import decathlon, dense, fewshot
from ur_jax.evaluation.decathlon import (
           decathlon_score,
           delta_mdl,
           domain_scores,
           error_bounds,
)
from ur_jax.evaluation.dense import *
from ur_jax.evaluation.fewshot import *

__all__ = (list(fewshot.__all__) + list(dense.__all__)
           + ["decathlon", "decathlon_score", "delta_mdl", "domain_scores", "error_bounds"])
assert not set(fewshot.__all__) & set(dense.__all__), "evaluation modules export clashing names"
