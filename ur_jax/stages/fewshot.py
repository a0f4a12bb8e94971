"""The ``fewshot`` classification stage: few-shot episodes on the run's models and on saved
ones, with the few-shot evaluator the data's protocol calls for
(:mod:`ur_jax.evaluation.evaluators.fewshot`): Meta-Dataset's episodes on images
(``'episodic'``) when the data describes its held-out classes (``data.fewshot_specs``),
else fixed-shape episodes on features (``'fewshot'``)."""

from __future__ import annotations

from ur_jax.evaluation import evaluators
from ur_jax.run.context import RunContext
from ur_jax.stages import register


@register("classification", "fewshot")
def fewshot(ctx: RunContext) -> None:
    """Evaluates the teachers (rows ``teacher_<domain>``), the MDL and URL students of this
    run and the saved models of ``config.fewshot.checkpoints``; the result goes to
    ``results['fewshot']`` (nothing when no model is chosen)."""
    models = {}
    for d, pair in (ctx.models.get("teachers") or {}).items():
        models[f"teacher_{d}"] = pair
    for stage in ("mdl", "url"):
        if stage in ctx.models:
            models[stage] = next(iter(ctx.models[stage].values()))
    name = "episodic" if ctx.data.fewshot_specs else "fewshot"
    result = evaluators.get(name).fn(ctx, models)
    if result:
        ctx.results["fewshot"] = result
