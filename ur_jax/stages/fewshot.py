"""The ``fewshot`` classification stage: few-shot episodes on the run's models and on saved
ones, with the few-shot evaluator the data's protocol calls for
(:mod:`ur_jax.evaluation.evaluators.fewshot`): Meta-Dataset's episodes on images
(``'episodic'``) when the data describes its held-out classes (``data.fewshot_specs``),
else fixed-shape episodes on features (``'fewshot'``)."""

from __future__ import annotations

from ur_jax.evaluation import evaluators
from ur_jax.run.context import RunContext
from ur_jax.stages import register


@register("classification", "fewshot", reports=False)
def fewshot(ctx: RunContext) -> None:
    """Evaluates the models of this run that ``config.fewshot.models`` names (the teachers
    as rows ``teacher_<domain>``; every other stage's model under the stage's name) and
    the saved models of ``config.fewshot.checkpoints``; the result goes to
    ``results['fewshot']`` (nothing when no model is chosen)."""
    models = {}
    for stage, per_domain in ctx.models.items():
        if stage == "teachers":
            models.update({f"teacher_{d}": pair for d, pair in per_domain.items()})
        else:  # one model for every domain
            models[stage] = next(iter(per_domain.values()))
    name = "episodic" if ctx.data.fewshot_specs else "fewshot"
    result = evaluators.get(name).fn(ctx, models)
    if result:
        ctx.results["fewshot"] = result
