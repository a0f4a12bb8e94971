"""Evaluation protocols: few-shot episodes (:mod:`.fewshot` on precomputed features,
:mod:`.metadataset` on Meta-Dataset's images), dense-prediction metrics with Delta_MTL
(:mod:`.dense`), and the Visual Decathlon score with Delta_MDL (:mod:`.decathlon`).

Few-shot methods live in one registry, :mod:`.methods`, shared by both few-shot protocols:

* :func:`.fewshot.evaluate_episodes` (fixed-shape episodes on a feature pool) runs the
  methods that adapt features: ``ncc``, ``pa``, ``linear`` (defined in :mod:`.fewshot`);
* :class:`.metadataset.EpisodeEvaluator` (variable-way variable-shot episodes on images)
  runs every method, including those that adapt the backbone: ``tsa`` (:mod:`.tsa`).

Importing this package registers the built-in methods. **To add a few-shot method**, write
its ``fit`` and ``logits`` functions (contracts in :mod:`.methods`) in the module that
defines it and register one entry there, at import time::

    methods.register_method(methods.FewShotMethod(
        name="mine", adapts="features", fit=my_fit, logits=my_logits, steps=40,
        seen_learning_rates={"lr": 0.1}, unseen_learning_rates={"lr": 1.0}))

Both protocols, their learning-rate defaults (``metadataset.learning_rates``) and
``config.fewshot.methods=mine`` then find it by name; nothing else changes. A method that
adapts the backbone also gives ``adapter`` (the adapted backbone) and runs in the episodic
protocol only; the fixed-shape protocol refuses it with a ValueError.
"""

from __future__ import annotations

from ur_jax.evaluation import decathlon, dense, fewshot, methods, tsa
from ur_jax.evaluation.decathlon import (
           decathlon_score,
           delta_mdl,
           domain_scores,
           error_bounds,
)
from ur_jax.evaluation.dense import *
from ur_jax.evaluation.fewshot import *
from ur_jax.evaluation.methods import FewShotMethod, get_method, method_names, register_method

__all__ = (list(fewshot.__all__) + list(dense.__all__)
           + ["decathlon", "decathlon_score", "delta_mdl", "domain_scores", "error_bounds",
              "methods", "FewShotMethod", "get_method", "method_names", "register_method"])
assert not set(fewshot.__all__) & set(dense.__all__), "evaluation modules export clashing names"
