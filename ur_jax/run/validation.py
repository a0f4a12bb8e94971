"""Checks of a config before anything runs: every value that cannot work is refused with
a message that says what was expected, what was found and how to fix it.

:func:`validate` checks what every config shares (known stages, each stage's required
stages) and then the problem's own rules (:func:`validate_classification`,
:func:`validate_dense`).
"""

from __future__ import annotations

import jax
import ml_collections
from jax.sharding import Mesh

from ur_jax import optim, stages
from ur_jax.stages.common import batch_size, stage_select_every, stage_value
from ur_jax.suites.dense.recipe import MTL_STAGE_METHODS

#: What each stage may load instead of training (named in the error of a missing requirement).
_LOADS = {"teachers": "config.teachers.checkpoints", "stl": "config.teachers.checkpoints.<task>"}


def validate(config: ml_collections.ConfigDict, problem: str, mesh: Mesh | None = None) -> None:
    """Refuses a config whose values cannot work, before anything runs.

    Raises:
      ValueError: an unknown stage, a stage without a stage it needs, or a value the
        problem's checks refuse.
    """
    known = stages.names(problem)
    unknown = [s for s in config.stages if s not in known]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} in config.stages; a {problem} config takes "
                         f"a subset of {known}.")
    for name in config.stages:
        for required in stages.get(problem, name).requires:
            if required not in config.stages:
                raise ValueError(f"Stage {name!r} needs stage {required!r} (it may load them "
                                 f"from {_LOADS.get(required, 'saved models')}).")
    {"classification": validate_classification, "dense": validate_dense}[problem](config, mesh)


def validate_classification(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> None:
    """Refuses a config whose values cannot work, before anything runs."""
    if not config.domains and set(config.stages) - {"fewshot"}:
        raise ValueError("config.domains is empty: name at least one training domain.")
    n = jax.device_count() if mesh is None else mesh.size
    for key in ("teachers", "mdl", "url"):
        bs = {d: batch_size(config[key], d) for d in config.domains}
        if any(b % n or b < 1 for b in bs.values()):
            raise ValueError(f"config.{key}.batch_size={config[key].batch_size} must be a "
                             f"positive multiple of the {n} devices "
                             f"(per-domain batches are split over them).")
    if config.eval_batch_size % n:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                         f"the {n} devices.")
    if "fewshot" in config.stages and "pa_learning_rate" in config.fewshot:
        missing = [d for d in config.fewshot.domains if d not in dict(config.fewshot.pa_learning_rate)]
        if missing:
            raise ValueError(f"config.fewshot.pa_learning_rate has no rate for {missing} (0.1 "
                             f"for a seen domain, 1.0 for an unseen one).")
    if "fewshot" in config.stages:
        if set(config.stages) == {"fewshot"} and not any(
                dict(config.fewshot.get("checkpoints") or {}).values()):
            raise ValueError("Only the 'fewshot' stage runs, so there is no model to evaluate: "
                             "point config.fewshot.checkpoints.<name> at a saved model, e.g. "
                             "--config.fewshot.checkpoints.model=RUN/students/url/model.")
        from ur_jax.evaluation import fewshot as fewshot_lib
        from ur_jax.evaluation import metadataset as md_eval

        episodic = "protocol" in config.fewshot
        if episodic:
            from ur_jax.data.episodes import PROTOCOLS

            if config.fewshot.protocol not in PROTOCOLS:
                raise ValueError(f"config.fewshot.protocol={config.fewshot.protocol!r}; expected "
                                 f"one of {PROTOCOLS}.")
        # the methods the protocol supports (the registry of ur_jax.evaluation.methods)
        known = md_eval.METHODS if episodic else fewshot_lib.METHODS
        bad = [m for m in config.fewshot.methods if m not in known]
        if bad:
            raise ValueError(f"config.fewshot.methods has unknown method(s) {bad}; expected some "
                             f"of {tuple(known)} ({'episodic' if episodic else 'fixed-shape'} "
                             f"protocol). On the command line: --config.fewshot.methods=\"('ncc', "
                             f"'pa')\".")
    for key in ("teachers", "mdl", "url"):
        kind = config[key].get("schedule", "cosine")
        if kind not in optim.SCHEDULES:
            raise ValueError(f"config.{key}.schedule={kind!r}; expected one of {optim.SCHEDULES}.")
        for d in config.domains:
            for name in ("learning_rate", "weight_decay"):
                stage_value(config[key], name, d)  # a mapping without the domain raises here
    source = config.teachers.get("finetune_from") or ""
    if source and source not in config.domains:
        raise ValueError(f"config.teachers.finetune_from={source!r} is not a training domain "
                         f"({list(config.domains)}).")
    for key in ("mdl", "url"):
        init = config[key].get("init_from") or ""
        if init and key in config.stages and (init not in config.domains
                                              or "teachers" not in config.stages):
            raise ValueError(f"config.{key}.init_from={init!r} needs the 'teachers' stage and "
                             f"a training domain of that name (domains: {list(config.domains)}).")
    select_every = int(config.get("select_every") or 0)
    if select_every < 0 or (select_every and select_every % config.checkpoint_every):
        raise ValueError(f"config.select_every={select_every} must be 0 (no model selection) or "
                         f"a positive multiple of config.checkpoint_every="
                         f"{config.checkpoint_every}, so that a resumed run selects exactly as "
                         f"an uninterrupted one.")
    for key in ("teachers", "mdl", "url"):
        if key not in config.stages or "select_every" not in config[key]:
            continue
        for d in config.domains:
            every = stage_select_every(config, config[key], d)
            if every < 0 or (every and every % config.checkpoint_every):
                raise ValueError(f"config.{key}.select_every is {every} for {d!r}; it must be 0 "
                                 f"(no model selection) or a positive multiple of "
                                 f"config.checkpoint_every={config.checkpoint_every}, so that a "
                                 f"resumed run selects exactly as an uninterrupted one.")
    if int(config.get("select_episodes") or 1) < 1:
        raise ValueError(f"config.select_episodes={config.select_episodes}: validation episodes "
                         f"per source must be positive (the authors' eval_size is 300).")
    if config.get("select_protocol"):
        from ur_jax.data.episodes import PROTOCOLS

        if config.select_protocol not in PROTOCOLS:
            raise ValueError(f"config.select_protocol={config.select_protocol!r}; expected one "
                             f"of {PROTOCOLS}.")
    size = config.model.get("student_input_size") or 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"config.model.student_input_size={size!r}; expected an integer side "
                         f"in pixels (72 on the Decathlon) or 0 for the native image sizes.")
    if config.get("evaluate_on") == "val" and config.get("train_split") == "train+val":
        raise ValueError("config.evaluate_on='val' with config.train_split='train+val' would score "
                         "images the models train on; use train_split='train' to evaluate on "
                         "validation.")
    if config.get("evaluate_on") not in (None, "", "test", "val"):
        raise ValueError(f"config.evaluate_on={config.evaluate_on!r}; expected 'test' (tables on "
                         f"the test split) or 'val' (on the validation split, for tuning).")
    if config.get("score") not in (None, "", "decathlon"):
        raise ValueError(f"config.score={config.score!r}; expected '' or 'decathlon'.")


def validate_dense(config: ml_collections.ConfigDict, mesh: Mesh | None = None) -> None:
    """Refuses a dense config whose values cannot work, before anything runs."""
    bad = [t for t in config.tasks if t not in ("semantic", "depth", "normal")]
    if bad or not config.tasks:
        raise ValueError(f"config.tasks={tuple(config.tasks)}: expected a non-empty subset of "
                         f"('semantic', 'depth', 'normal').")
    n = jax.device_count() if mesh is None else mesh.size
    for key in ("stl", "mtl", "url"):
        bs = int(config[key].batch_size)
        if bs < 1 or bs % n:
            raise ValueError(f"config.{key}.batch_size={bs} must be a positive multiple of the "
                             f"{n} devices (the batch is split over them).")
    if config.eval_batch_size % n:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                         f"the {n} devices.")
    if "mtl" in config.stages and config.mtl.method not in MTL_STAGE_METHODS:
        raise ValueError(f"Unknown multi-task method config.mtl.method={config.mtl.method!r}; "
                         f"expected one of {MTL_STAGE_METHODS}.")
    if "mtl" in config.stages and config.mtl.method == "bam":
        if "stl" not in config.stages:
            raise ValueError("config.mtl.method='bam' needs stage 'stl' (BAM distils the "
                             "single-task teachers; the stage may load them from "
                             "config.teachers.checkpoints.<task>).")
        options = config.mtl.options
        options = dict(options.to_dict() if hasattr(options, "to_dict") else options)
        if options or config.mtl.space:
            raise ValueError(f"config.mtl.method='bam' takes no options and no space; found "
                             f"config.mtl.options={options}, config.mtl.space="
                             f"{config.mtl.space!r}. Clear them.")
