"""Evaluation protocols: few-shot episodes on precomputed features (:mod:`.fewshot`)."""

from __future__ import annotations

from ur_jax.evaluation.fewshot import (
    METHODS,
    NCC_SCALE,
    PA_STEPS,
    SEEN_PA_LR,
    UNSEEN_PA_LR,
    Episodes,
    episode_accuracy,
    evaluate_episodes,
    mean_confidence_interval,
    ncc_logits,
    pa_fit,
    pa_loss,
    pa_transform,
    sample_episodes,
)

__all__ = [
    "METHODS",
    "NCC_SCALE",
    "PA_STEPS",
    "SEEN_PA_LR",
    "UNSEEN_PA_LR",
    "Episodes",
    "episode_accuracy",
    "evaluate_episodes",
    "mean_confidence_interval",
    "ncc_logits",
    "pa_fit",
    "pa_loss",
    "pa_transform",
    "sample_episodes",
]
