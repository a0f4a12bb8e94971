"""Model selection on validation data during training (:class:`BestModel`)."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from ur_jax import checkpointing, distributed
from ur_jax.run.context import RunContext
from ur_jax.run.workdir import write_json


class BestModel:
    """Keeps the variables with the best mean validation accuracy seen at the
    :func:`ur_jax.run.loop.fit` ``validate`` calls, on disk (``<directory>/model`` and
    ``best.json``), so that a resumed run selects exactly as an uninterrupted one.

    Args:
      directory: where the selected model and ``best.json`` live.
      spec: the model's saved-model spec (:func:`ur_jax.checkpointing.model_spec`).
      stage: metric tag prefix (``<stage>/val_accuracy``) and log prefix.
      writer: the run's metric writer.
      to_variables: the model's variables from a train state.
      measure: ``measure(variables) -> {domain: accuracy %}`` on validation data
        (classification accuracy, :func:`accuracy_measure`, or NCC on validation
        episodes, :func:`episodic_measure`).
    """

    def __init__(self, directory: str, spec, stage: str, writer,
                 to_variables: Callable[[Any], dict[str, Any]],
                 measure: Callable[[dict[str, Any]], dict[str, float]]):
        self.directory, self.spec, self.stage, self.writer = directory, spec, stage, writer
        self.to_variables, self.measure = to_variables, measure
        self.record = os.path.join(directory, "best.json")
        # Read once, before this run writes it (every process reads it here, and process 0
        # writes it only after a save every process takes part in); afterwards every process
        # keeps it in memory, so that all decide alike without reading another's file.
        self._best: dict[str, Any] | None = None
        if os.path.exists(self.record):
            with open(self.record) as f:
                self._best = json.load(f)

    def best(self) -> dict[str, Any] | None:
        """``{'step', 'accuracy', 'per_domain'}`` of the selected model so far, or ``None``."""
        return self._best

    def __call__(self, step: int, state: Any) -> None:
        variables = jax.device_get(self.to_variables(state))
        per_domain = {d: float(a) for d, a in self.measure(variables).items()}
        accuracy = float(np.mean(list(per_domain.values())))
        self.writer.write_scalars(step, {f"{self.stage}/val_accuracy": accuracy,
                                         **{f"{self.stage}/val_accuracy/{d}": a
                                            for d, a in per_domain.items()}})
        best = self.best()
        improved = best is None or accuracy > best["accuracy"] or best["step"] == step
        logging.info("[%s] step %d: validation accuracy %.2f%%%s", self.stage, step, accuracy,
                     " (best so far)" if improved else f" (best {best['accuracy']:.2f}% at step "
                                                       f"{best['step']})")
        if improved:  # every process decides alike: the measure is the global one
            checkpointing.save_model(os.path.join(self.directory, "model"), self.spec, variables)
            self._best = {"step": int(step), "accuracy": accuracy, "per_domain": per_domain}

            def write() -> None:
                os.makedirs(self.directory, exist_ok=True)
                write_json(self.record, self._best)

            distributed.on_primary(write, "record the selected model")

    def load(self) -> dict[str, Any]:
        """The selected model's variables."""
        _, variables = checkpointing.load_model(os.path.join(self.directory, "model"),
                                                expected=self.spec)
        return variables


def accuracy_measure(ctx: RunContext, model, names: Mapping[str, str]
                     ) -> Callable[[dict[str, Any]], dict[str, float]]:
    """Classification accuracy (%) on ``ctx.data.val`` of each ``{model domain: data
    domain}`` of ``names``."""
    from ur_jax.evaluation.evaluators.classification import evaluate

    settings = ctx.data.inputs(names)
    sources = {m: ctx.data.val[d] for m, d in names.items()}

    def measure(variables: dict[str, Any]) -> dict[str, float]:
        return {d: v["accuracy"] for d, v in evaluate(
            ctx, model, variables, sources, settings.get("transform"),
            settings["normalize"]).items()}

    return measure


def episodic_measure(ctx: RunContext, model, names: Mapping[str, str]
                     ) -> Callable[[dict[str, Any]], dict[str, float]]:
    """The Meta-Dataset validation of VICO-UoE/URL (``train_net*.py``): NCC accuracy (%) of
    the backbone on ``config.select_episodes`` (their ``eval_size``, 300) episodes of
    ``config.select_protocol`` (``'standard'``), padded to ``config.fewshot.buckets``, from
    the validation classes of each training domain of ``names``. The episodes are drawn
    once, seeded by ``config.seed`` and the source (the authors draw new ones at every
    validation): every validation of a run, and of a resumed run, scores the same episodes.

    Raises:
      ValueError: a training domain without validation classes, or domains with different
        image normalisations.
    """
    from ur_jax.data import episodes as episodes_lib
    from ur_jax.evaluation import metadataset as md_eval

    config, data = ctx.config, ctx.data
    domains = tuple(dict.fromkeys(names.values()))
    missing = [d for d in domains if d not in data.val_fewshot_specs]
    if missing:
        raise ValueError(f"Model selection needs validation classes of every training source; "
                         f"{missing} have none. Set select_every=0 for this stage (no "
                         f"selection: the last model is kept).")
    count, protocol = int(config.select_episodes), config.select_protocol
    episodes = {d: episodes_lib.sample_episodes(data.val_fewshot_specs[d], count, protocol,
                                                seed=ctx.seed(6, zlib.crc32(d.encode())))
                for d in domains}
    sources = {d: data.val_fewshot[d] for d in domains}
    normalize = {data.normalize(d) for d in domains}
    if len(normalize) > 1:  # md_eval.validation_accuracy takes one normalisation
        raise ValueError(f"Episodic model selection needs one image normalisation for all "
                         f"training sources; {list(domains)} have {len(normalize)} different "
                         f"ones. Set select_every=0 for this stage.")
    buckets = tuple(config.fewshot.buckets) or None  # the few-shot block's (episodic)

    def measure(variables: dict[str, Any]) -> dict[str, float]:
        backbone_vars = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
        kwargs = {"buckets": buckets} if buckets else {}
        per_source = md_eval.validation_accuracy(
            model.backbone, backbone_vars, sources, episodes, batch_size=config.eval_batch_size,
            mesh=ctx.mesh, normalize=next(iter(normalize)), **kwargs)
        logging.info("NCC on %d validation episodes per source: %s", count,
                     ", ".join(f"{d} {a:.2f}%" for d, a in per_source.items()))
        return per_source

    return measure


def selection(ctx: RunContext, name: str, spec, model, names: Mapping[str, str],
              to_variables: Callable[[Any], dict[str, Any]], every: int) -> BestModel | None:
    """A :class:`BestModel` for the stage ``name``, or ``None`` when selection is off
    (``every`` is 0), the data has no validation split, or ``config.train_split ==
    'train+val'`` (the validation images are training images: the last model is kept, as
    for the paper's Decathlon Table 2). Data whose validation classes are new classes
    (Meta-Dataset: ``data.val_fewshot_specs``) are scored by :func:`episodic_measure`,
    others by :func:`accuracy_measure` on ``data.val``."""
    if not every or ctx.config.train_split == "train+val":
        return None
    directory = os.path.join(ctx.workdir, "selection", name)
    if ctx.data.val_fewshot_specs:
        measure = episodic_measure(ctx, model, names)
    elif ctx.data.val:
        measure = accuracy_measure(ctx, model, names)
    else:
        return None
    return BestModel(directory, spec, name, ctx.writer, to_variables, measure)
