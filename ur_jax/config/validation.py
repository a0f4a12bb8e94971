"""Checks of a config before anything runs: every value that cannot work is refused with a
message that says what was expected, what was found and how to fix it.

:func:`validate` (called by :func:`ur_jax.run.run`) checks, in order: every key declared for
the config's blocks (:mod:`ur_jax.config.blocks`) is present with a value of its kind
(:func:`check_declared`); the stages are registered and each has the stages it needs; then
the problem's own rules (:func:`validate_classification`, :func:`validate_dense`).
"""

from __future__ import annotations

import types
from typing import Any

import ml_collections

from ur_jax.config.blocks import MTL_STAGE_METHODS, declared_blocks, fewshot_kind
from ur_jax.config.values import batch_size, stage_select_every, stage_value

#: What each stage may load instead of training (named in the error of a missing requirement).
LOADS = types.MappingProxyType({"teachers": "config.teachers.checkpoints",
                                "stl": "config.teachers.checkpoints.<task>"})
#: The blocks whose keys are all declared (a key outside the table is refused); the run
#: level also holds the suites' own keys.
CLOSED_BLOCKS = ("model", "teachers", "mdl", "stl", "mtl", "url", "fewshot")


def validate(config: ml_collections.ConfigDict, problem: str, mesh: Any = None) -> None:
    """Refuses a config whose values cannot work, before anything runs.

    Args:
      config: the experiment config.
      problem: ``'classification'`` or ``'dense'`` (``config.problem``).
      mesh: the data mesh batches are split over (default: every device).

    Raises:
      ValueError: a declared key missing or of the wrong kind, an unknown stage, a stage
        without a stage it needs, or a value the problem's checks refuse.
    """
    from ur_jax import stages  # the stage registry (imports the stages' modules)

    check_declared(config, problem)
    known = stages.names(problem)
    unknown = [s for s in config.stages if s not in known]
    if unknown:
        raise ValueError(f"Unknown stage(s) {unknown} in config.stages; a {problem} config takes "
                         f"a subset of {known}.")
    listed = tuple(config.stages)
    repeated = sorted({s for s in listed if listed.count(s) > 1})
    if repeated:
        raise ValueError(f"config.stages={listed} names {repeated} more than once; each stage "
                         f"runs once.")
    for i, name in enumerate(listed):
        for required in stages.get(problem, name).requires:
            if required not in listed:
                raise ValueError(f"Stage {name!r} needs stage {required!r} (which may load "
                                 f"{'the teachers' if required in LOADS else 'its models'} from "
                                 f"{LOADS.get(required, 'saved models')}).")
            if listed.index(required) > i:
                order = tuple(s for s in known if s in listed)
                raise ValueError(f"config.stages={listed}: stage {name!r} needs {required!r} to "
                                 f"run before it; list them in the order {order}.")
    {"classification": validate_classification, "dense": validate_dense}[problem](config, mesh)


def check_declared(config: ml_collections.ConfigDict, problem: str) -> None:
    """Every key :func:`ur_jax.config.blocks.declared_blocks` declares for ``config`` is
    present with a value of its kind (and one of its choices); the stage, model and few-shot
    blocks hold no other key.

    Raises:
      ValueError: naming the first key that is missing, unknown or of the wrong kind.
    """
    for path, table in declared_blocks(config, problem).items():
        where = f"config.{path}" if path else "config"
        if path and path not in config:
            raise ValueError(f"{where} is missing: a {problem} config needs this block "
                             f"(ur_jax.config.blocks builds it with its defaults).")
        node = config[path] if path else config
        for key, declared in table.items():
            name = f"{where}.{key}"
            if key not in node:
                fix = ("set it in the config's recipe" if declared.required else
                       f"its default is {declared.default!r}; build the block with "
                       f"ur_jax.config.blocks")
                raise ValueError(f"{name} is missing ({declared.doc}): {fix}.")
            problem_text = declared.problem(node[key])
            if problem_text:
                raise ValueError(f"{name}={_shown(node[key])}: {problem_text} ({declared.doc}).")
        if path in CLOSED_BLOCKS:
            extra = sorted(set(node.keys()) - set(table))
            if extra:
                raise ValueError(f"{where} has no key(s) {extra} (misspelt?); its keys: "
                                 f"{sorted(table)}.")


def _shown(value: Any) -> str:
    return repr(value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value)


def _device_count(mesh: Any) -> int:
    import jax

    return jax.device_count() if mesh is None else mesh.size


def validate_classification(config: ml_collections.ConfigDict, mesh: Any = None) -> None:
    """Refuses a classification config whose values cannot work, before anything runs.

    Raises:
      ValueError: the message names the key and says what it must be.
    """
    if not config.domains and set(config.stages) - {"fewshot"}:
        raise ValueError("config.domains is empty: name at least one training domain.")
    n = _device_count(mesh)
    for key in ("teachers", "mdl", "url"):
        bs = {d: batch_size(config[key], d) for d in config.domains}
        if any(b % n or b < 1 for b in bs.values()):
            raise ValueError(f"config.{key}.batch_size={_shown(config[key].batch_size)} must "
                             f"be a positive multiple of the {n} devices "
                             f"(per-domain batches are split over them).")
    if config.eval_batch_size % n:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be a multiple of "
                         f"the {n} devices.")
    if "fewshot" in config.stages:
        _validate_fewshot(config)
    for key in ("teachers", "mdl", "url"):
        for d in config.domains:
            for name in ("learning_rate", "weight_decay"):
                stage_value(config[key], name, d)  # a mapping without the domain raises here
    source = config.teachers.finetune_from
    if source and source not in config.domains:
        raise ValueError(f"config.teachers.finetune_from={source!r} is not a training domain "
                         f"({list(config.domains)}).")
    for key in ("mdl", "url"):
        init = config[key].init_from
        listed = tuple(config.stages)
        if init and key in listed and (init not in config.domains or "teachers" not in listed
                                       or listed.index("teachers") > listed.index(key)):
            raise ValueError(f"config.{key}.init_from={init!r} needs the 'teachers' stage (listed "
                             f"before {key!r}) and a training domain of that name (domains: "
                             f"{list(config.domains)}).")
    select_every = int(config.select_every)
    if select_every < 0 or (select_every and select_every % config.checkpoint_every):
        raise ValueError(f"config.select_every={select_every} must be 0 (no model selection) or "
                         f"a positive multiple of config.checkpoint_every="
                         f"{config.checkpoint_every}, so that a resumed run selects exactly as "
                         f"an uninterrupted one.")
    for key in ("teachers", "mdl", "url"):
        if key not in config.stages:
            continue
        for d in config.domains:
            every = stage_select_every(config, config[key], d)
            if every < 0 or (every and every % config.checkpoint_every):
                raise ValueError(f"config.{key}.select_every is {every} for {d!r}; it must be 0 "
                                 f"(no model selection), -1 (config.select_every) or a positive "
                                 f"multiple of config.checkpoint_every={config.checkpoint_every}, "
                                 f"so that a resumed run selects exactly as an uninterrupted one.")
    if int(config.select_episodes) < 1:
        raise ValueError(f"config.select_episodes={config.select_episodes}: validation episodes "
                         f"per source must be positive (the authors' eval_size is 300).")
    if config.model.student_input_size < 0:
        raise ValueError(f"config.model.student_input_size={config.model.student_input_size}; "
                         f"expected an integer side in pixels (72 on the Decathlon) or 0 for "
                         f"the native image sizes.")
    if config.url.anneal_every < 1:
        raise ValueError(f"config.url.anneal_every={config.url.anneal_every}: the annealed "
                         f"weights change every anneal_every >= 1 steps.")
    if config.evaluate_on == "val" and config.train_split == "train+val":
        raise ValueError("config.evaluate_on='val' with config.train_split='train+val' would score "
                         "images the models train on; use train_split='train' to evaluate on "
                         "validation.")


def _validate_fewshot(config: ml_collections.ConfigDict) -> None:
    from ur_jax.evaluation import fewshot as fewshot_lib
    from ur_jax.evaluation import metadataset as md_eval

    f = config.fewshot
    episodic = fewshot_kind(f) == "episodic"
    if not episodic:
        missing = [d for d in f.domains if d not in dict(f.pa_learning_rate)]
        if missing:
            raise ValueError(f"config.fewshot.pa_learning_rate has no rate for {missing} (0.1 "
                             f"for a seen domain, 1.0 for an unseen one).")
    saved = dict(f.checkpoints) if episodic else {}
    if set(config.stages) == {"fewshot"} and not any(saved.values()):
        raise ValueError("Only the 'fewshot' stage runs, so there is no model to evaluate: "
                         "point config.fewshot.checkpoints.<name> at a saved model, e.g. "
                         "--config.fewshot.checkpoints.model=RUN/students/url/model.")
    # the methods the protocol supports (the registry of ur_jax.evaluation.methods)
    known = md_eval.METHODS if episodic else fewshot_lib.METHODS
    bad = [m for m in f.methods if m not in known]
    if bad:
        raise ValueError(f"config.fewshot.methods has unknown method(s) {bad}; expected some "
                         f"of {tuple(known)} ({'episodic' if episodic else 'fixed-shape'} "
                         f"protocol). On the command line: --config.fewshot.methods=ncc,pa.")


def validate_dense(config: ml_collections.ConfigDict, mesh: Any = None) -> None:
    """Refuses a dense config whose values cannot work, before anything runs.

    Raises:
      ValueError: the message names the key and says what it must be.
    """
    bad = [t for t in config.tasks if t not in ("semantic", "depth", "normal")]
    if bad or not config.tasks:
        raise ValueError(f"config.tasks={tuple(config.tasks)}: expected a non-empty subset of "
                         f"('semantic', 'depth', 'normal').")
    n = _device_count(mesh)
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
