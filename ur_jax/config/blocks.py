"""Every config key the runner reads, declared once: its kind, its default and what it means,
grouped in the blocks of a config, with a builder per block.

A config (``configs/*.py``) is a tree of blocks: the run level (:data:`CLASSIFICATION_RUN` or
:data:`DENSE_RUN`), ``model``, one block per training stage (classification: ``teachers``,
``mdl``, ``url``; dense: ``stl``, ``mtl``, ``url``, plus ``teachers`` holding saved
single-task teachers) and, for few-shot evaluation, ``fewshot``. :func:`declared_blocks`
says which table declares which block. The builders (:func:`classification_defaults`,
:func:`sgd_stage`, :func:`url_stage`, :func:`episodic_fewshot`, :func:`dense_defaults`,
:func:`adam_stage`, ...) return a block holding every declared key that has a default, plus
the values given; the recipes (``ur_jax/suites/*/recipe.py``, ``configs/default.py``) build
their configs from them and set the keys without a default. Because every key exists once
the config is built, ``--config.<key>=...`` can set any of them, and a misspelt key is
refused by ml_collections (``--config.url.anneal_evry=2``: no such key).
:func:`ur_jax.config.validation.validate` checks, before a run starts, that every declared key
is present with a value of its kind (and one of its ``choices``).

No key defaults to ``None``: ml_collections cannot override a ``None`` field from the command
line. Keys that take a number or a per-domain mapping (``steps``, ``batch_size``,
``learning_rate``, ``weight_decay``, ``restart_every``, ``select_every``) keep the kind the
recipe gave them (ml_collections' type safety): on the command line a number for a number
(``--config.teachers.select_every=500``), a dict literal for a mapping
(``--config.teachers.steps="{'default': 3}"``).
A suite's own keys (``decathlon_source``, ``metadataset.*``, ``scenes_config``,
``holdout_per_class``, ``manual_dir``) are declared by its recipe, next to its loader's use.

This module imports no JAX: loading a config stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

#: ``select_every`` of a stage block: follow the run's ``config.select_every``.
FROM_RUN = -1
#: The learning-rate schedules of :func:`ur_jax.optim.learning_rate_schedule` (a test keeps
#: the two lists equal; listed here so that loading a config does not import JAX).
SCHEDULES = ("cosine", "step", "cosine_restarts")
#: ``adapter_schedule`` values of a URL stage (``''`` follows the stage's schedule).
ADAPTER_SCHEDULES = ("", "cosine", "cosine_restarts")
#: The multi-task methods of :mod:`ur_jax.mtl` (a test keeps the two lists equal).
MTL_METHODS = ("uniform", "uncertainty", "dwa", "gradnorm", "mgda", "pcgrad", "graddrop",
               "imtl_l", "imtl_g", "imtl_h", "cagrad", "gls", "rlw", "stch", "famo", "db_mtl",
               "gradvac", "aligned_mtl", "upgrad", "excess_mtl", "nash_mtl", "fairgrad", "moco",
               "modo", "sdmgrad")
#: What ``config.mtl.method`` takes: those methods and ``'bam'`` (Born-Again Multi-task
#: networks, distilled from the single-task teachers with teacher annealing; the paper's BAM
#: row; it needs the ``stl`` stage).
MTL_STAGE_METHODS = (*MTL_METHODS, "bam")
#: Meta-Dataset's episode protocols (:data:`ur_jax.data.episodes.PROTOCOLS`; a test keeps the
#: two lists equal).
PROTOCOLS = ("standard", "five_way_one_shot", "varying_way_five_shot")


# ----------------------------------------------------------------------------- kinds

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_mapping(v: Any) -> bool:
    return isinstance(v, (Mapping, ml_collections.ConfigDict))


def _mapping_values(v: Any) -> list[Any]:
    return list((v.to_dict() if isinstance(v, ml_collections.ConfigDict) else dict(v)).values())


def _is_names(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and all(_is_number(x) for x in v)


#: ``kind -> (test, description)``: what a declared key's value may be.
KINDS: Mapping[str, tuple[Callable[[Any], bool], str]] = types.MappingProxyType({
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "names": (_is_names, "a tuple of names (on the command line --config.KEY=a,b)"),
    "numbers": (_is_numbers, "a tuple of numbers (--config.KEY=\"(0.5, 0.75)\")"),
    "mapping": (_is_mapping, "a mapping {name: value}"),
    "names_or_str": (lambda v: isinstance(v, str) or _is_names(v),
                     "a tuple of names or one comma-separated string"),
    "int_or_mapping": (lambda v: _is_int(v) or (_is_mapping(v) and all(
        _is_int(x) for x in _mapping_values(v))),
        "an integer, or a mapping {domain: integer} with an optional 'default'"),
    "number_or_mapping": (lambda v: _is_number(v) or (_is_mapping(v) and all(
        _is_number(x) for x in _mapping_values(v))),
        "a number, or a mapping {domain: number} with an optional 'default'"),
})


@dataclasses.dataclass(frozen=True)
class Key:
    """One declared key: its ``kind`` (a name in :data:`KINDS`), its ``default`` (``None``:
    none, the recipe sets it), the values it may take (``choices``; empty: any of its kind)
    and what it means (``doc``)."""

    kind: str
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] = ()

    @property
    def required(self) -> bool:
        """Whether the recipe must set the key (it has no default)."""
        return self.default is None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this key in words, or ``None`` when it fits."""
        test, description = KINDS[self.kind]
        if not test(value):
            return f"expected {description}"
        if self.choices and value not in self.choices:
            return f"expected one of {self.choices}"
        return None


def _table(*parts: Mapping[str, Key], **keys: Key) -> Mapping[str, Key]:
    """An immutable declaration table: ``parts`` merged, then ``keys``."""
    merged: dict[str, Key] = {}
    for part in parts:
        merged.update(part)
    merged.update(keys)
    return types.MappingProxyType(merged)


# ----------------------------------------------------------------------------- run level

#: The run-level keys of every config.
RUN = _table(
    seed=Key("int", doc="seeds every random choice of the run"),
    dataset=Key("str", doc="a loader of ur_jax.data.registry"),
    data_dir=Key("str", "", "where prepared TFDS data lives; '' = $TFDS_DATA_DIR or "
                            "~/tensorflow_datasets"),
    stages=Key("names", doc="the stages to run, in order (ur_jax.stages)"),
    init_rng_impl=Key("str", doc="the parameter-initialisation PRNG ('threefry2x32', 'rbg')"),
    precision=Key("str", "fp32", "the computation dtype (ur_jax.models.precision): 'fp32', or "
                                 "'bf16' (bfloat16 compute; float32 parameters, BatchNorm "
                                 "statistics, heads and losses; for GPUs and TPUs)",
                  ("fp32", "bf16")),
    evaluators=Key("names", (), "the evaluators that score the stages' models "
                                "(ur_jax.evaluation.evaluators); () = the problem's own"),
    eval_batch_size=Key("int", doc="evaluation batch (per domain), a multiple of the devices"),
    eval_limit=Key("int", doc="evaluate on the first eval_limit examples only; 0 = all"),
    log_every=Key("int", doc="steps between logged metrics"),
    checkpoint_every=Key("int", doc="steps between checkpoints"),
    keep_checkpoints=Key("int", doc="checkpoints kept per stage"),
    data_threads=Key("int", doc="threads reading and transforming training data"),
)

#: The run level of a classification config (the embedded default, the Decathlon, Meta-Dataset).
CLASSIFICATION_RUN = _table(
    RUN,
    problem=Key("str", "classification", "what the config poses (ur_jax.run.problems)",
                ("classification",)),
    domains=Key("names", doc="the training domains"),
    augment=Key("str", doc="training augmentation where the data has none of its own: "
                           "'none', 'crop' or 'crop_flip'"),
    teacher_mode=Key("str", doc="how stacked teachers run: 'auto', 'vmap' or 'map'"),
    select_every=Key("int", 0, "validate for model selection every this many steps (0: "
                               "never; a stage's own select_every overrides it)"),
    select_episodes=Key("int", 300, "episodic model selection: validation episodes per source "
                                    "(the authors' eval_size)"),
    select_protocol=Key("str", "standard", "episodic model selection: the episodes' protocol",
                        PROTOCOLS),
    train_split=Key("str", "train", "'train', or 'train+val' (train on both where the "
                                    "dataset has a val split, no model selection)",
                    ("train", "train+val")),
    evaluate_on=Key("str", "test", "the split the tables report: 'test', or 'val' (choosing "
                                   "hyperparameters: test is never looked at)", ("test", "val")),
    score=Key("str", "", "an extra score of the run: '' or 'decathlon'", ("", "decathlon")),
    score_bounds=Key("mapping", types.MappingProxyType({}),
                     "score='decathlon': {domain: Emax %} overriding the challenge's bounds"),
)

#: The run level of a dense-prediction config (NYU-v2, Cityscapes, the scenes).
DENSE_RUN = _table(
    RUN,
    problem=Key("str", "dense", "what the config poses (ur_jax.run.problems)", ("dense",)),
    tasks=Key("names", doc="a subset of ('semantic', 'depth', 'normal')"),
    augment=Key("bool", doc="MTAN's random scale-crop and horizontal flip"),
)

# ----------------------------------------------------------------------------- models

#: ``config.model`` of a classification config.
CLASSIFIER_MODEL = _table(
    backbone=Key("str", doc="a backbone of ur_jax.models"),
    kwargs=Key("mapping", doc="the backbone's constructor arguments"),
    student_input_size=Key("int", 0, "the students (MDL, URL) resize images to this side "
                                     "(pixels) when the domains' sizes differ; 0: native"),
    student_kwargs=Key("mapping", types.MappingProxyType({}),
                       "the students' extra backbone arguments (e.g. adapter='parallel')"),
    per_domain=Key("bool", False, "the students get per-domain parts (BatchNorm, adapters) "
                                  "for every training domain"),
)

#: ``config.model`` of a dense config.
DENSE_MODEL = _table(
    name=Key("str", doc="a dense model of ur_jax.models ('segnet')"),
    kwargs=Key("mapping", doc="its constructor arguments"),
)

# ----------------------------------------------------------------------------- stages

#: A classification stage trained with SGD (``teachers``, ``mdl``, ``url``). The keys marked
#: per-domain may map domains to values, with an optional ``'default'``.
SGD_STAGE = _table(
    steps=Key("int_or_mapping", doc="training steps (per-domain)"),
    batch_size=Key("int_or_mapping", doc="images per domain and step (per-domain)"),
    learning_rate=Key("number_or_mapping", doc="SGD's base rate (per-domain)"),
    weight_decay=Key("number_or_mapping", doc="L2 weight decay (per-domain)"),
    momentum=Key("number", doc="SGD momentum"),
    warmup_steps=Key("int", doc="linear warmup steps"),
    schedule=Key("str", "cosine", "the learning-rate schedule", SCHEDULES),
    decay_at=Key("numbers", (), "schedule='step': fractions of the stage where the rate is "
                                "multiplied by decay_factor"),
    decay_factor=Key("number", 0.1, "schedule='step': the factor at each decay_at"),
    restart_every=Key("int_or_mapping", 0, "schedule='cosine_restarts': the restart period "
                                           "in steps (per-domain)"),
    select_every=Key("int_or_mapping", FROM_RUN,
                     f"validate for model selection every this many steps (per-domain); 0: "
                     f"never; {FROM_RUN}: the run's select_every"),
)

#: ``config.teachers`` of a classification config.
TEACHER_STAGE = _table(
    SGD_STAGE,
    checkpoints=Key("mapping", doc="{domain: saved model to load instead of training; '' "
                                   "trains it}"),
    finetune_from=Key("str", "", "a domain whose teacher trains first and starts every other "
                                 "one (a fresh head); '' trains each from scratch"),
)

#: ``config.mdl`` (and the shared part of ``config.url``).
STUDENT_STAGE = _table(
    SGD_STAGE,
    init_from=Key("str", "", "a teacher's domain to start the student from; '' fresh"),
)

#: ``config.url`` of a classification config: the student, its alignment adapters and the
#: distillation weights.
URL_STAGE = _table(
    STUDENT_STAGE,
    adapter=Key("str", doc="the alignment adapters' kind (ur_jax.adapters)"),
    adapter_learning_rate=Key("number", doc="the adapters' Adam rate"),
    adapter_weight_decay=Key("number", doc="the adapters' weight decay"),
    adapter_schedule=Key("str", "", "the adapters' schedule; '' follows the stage's",
                         ADAPTER_SCHEDULES),
    feature_loss=Key("str", doc="the feature alignment loss (ur_jax.losses)"),
    temperature=Key("number", doc="the logits' KL temperature"),
    lambda_f=Key("mapping", doc="feature-loss weights {domain: weight} with 'default'"),
    lambda_p=Key("mapping", doc="logit-loss weights {domain: weight} with 'default'"),
    anneal=Key("bool", doc="the weights decay linearly to 0"),
    anneal_steps=Key("int", doc="anneal over this many steps (x anneal_k); 0 = steps"),
    anneal_every=Key("int", 1, "the annealed weights change every this many steps"),
    anneal_k=Key("mapping", types.MappingProxyType({"default": 1.0}),
                 "{domain: k}: a domain anneals over anneal_steps x k"),
)

# ----------------------------------------------------------------------------- few-shot

#: ``config.fewshot``, fixed-shape episodes on features (the embedded default).
FIXED_SHAPE_FEWSHOT = _table(
    domains=Key("names", doc="the held-out domains episodes are drawn from"),
    models=Key("names", doc="the run's models to evaluate ('teachers', 'mdl', 'url')"),
    methods=Key("names", doc="few-shot methods (ur_jax.evaluation.fewshot.METHODS)"),
    ways=Key("int", doc="classes per episode"),
    shots=Key("int", doc="support examples per class"),
    queries=Key("int", doc="query examples per class"),
    episodes=Key("int", doc="episodes per domain"),
    pa_steps=Key("int", doc="PA's inner-loop steps"),
    pa_learning_rate=Key("mapping", doc="{domain: PA's Adadelta rate}"),
)

#: ``config.fewshot``, Meta-Dataset's episodes on images (a block with a ``protocol``).
EPISODIC_FEWSHOT = _table(
    domains=Key("names", doc="the sources episodes are drawn from"),
    split=Key("str", "test", "the sources' classes episodes use ('test', 'valid', 'train')"),
    protocol=Key("str", doc="the episodes' protocol", choices=PROTOCOLS),
    episodes=Key("int", doc="episodes per source"),
    methods=Key("names", doc="few-shot methods (ur_jax.evaluation.metadataset.METHODS)"),
    models=Key("names", doc="the run's models to evaluate ('teachers', 'mdl', 'url')"),
    seen=Key("names_or_str", (), "the sources every saved model counts as trained on (PA / "
                                 "TSA's 'seen' rates); () = from each model's heads"),
    checkpoint_seen=Key("mapping", types.MappingProxyType({}),
                        "{row name: seen sources} for one saved model; '' = as seen"),
    checkpoints=Key("mapping", types.MappingProxyType({}),
                    "{row name: saved model directory} to evaluate as well"),
    buckets=Key("numbers", doc="support / query padding sizes, multiples of the devices"),
    inner_steps=Key("int", 0, "PA / TSA / probe steps; 0 = the paper's"),
)

# ----------------------------------------------------------------------------- dense stages

#: A dense stage trained with Adam and a step decay (``stl``; shared part of ``mtl``, ``url``).
ADAM_STAGE = _table(
    epochs=Key("int", doc="epochs of the training split (unless steps > 0)"),
    steps=Key("int", 0, "updates; > 0 overrides epochs"),
    batch_size=Key("int", doc="images per step"),
    learning_rate=Key("number", doc="Adam's base rate"),
    weight_decay=Key("number", doc="weight decay"),
    decay_every_epochs=Key("int", doc="the rate is multiplied by decay_factor every this many "
                                      "epochs (0: never)"),
    decay_factor=Key("number", doc="the step decay's factor"),
)

#: ``config.mtl`` of a dense config.
MTL_STAGE = _table(
    ADAM_STAGE,
    method=Key("str", doc="a method of ur_jax.mtl, or 'bam' (MTL_STAGE_METHODS)"),
    space=Key("str", "", "where gradient methods combine task gradients: 'params', "
                         "'features'; '' = the method's default"),
    options=Key("mapping", types.MappingProxyType({}), "the method's options"),
)

#: ``config.url`` of a dense config.
DENSE_URL_STAGE = _table(
    ADAM_STAGE,
    lambdas=Key("mapping", doc="{task: alignment weight} with an optional 'default'"),
    student_features=Key("names", doc="the student features aligned ('bottleneck', "
                                      "'decoder')"),
    teacher_feature=Key("str", doc="the teachers' feature they are aligned to"),
    feature_loss=Key("str", doc="the alignment loss (ur_jax.losses)"),
    adapter_learning_rate=Key("number", doc="the adapters' Adam rate (cosine decay)"),
    adapter_weight_decay=Key("number", doc="the adapters' weight decay"),
)

#: ``config.teachers`` of a dense config: saved single-task teachers.
DENSE_TEACHERS = _table(
    checkpoints=Key("mapping", doc="{task: saved model to load instead of training; '' "
                                   "trains it}"),
    model=Key("str", "", "the single-task teachers' dense model; '' follows config.model, "
                         "except that the multi-task architectures (mtan, cross_stitch) are "
                         "compared with single-task SegNets, as in their papers"),
)


# ----------------------------------------------------------------------------- builders

def block(table: Mapping[str, Key], what: str = "The block", /, **values: Any
          ) -> ml_collections.ConfigDict:
    """A config block of ``table``: every key with a default, then ``values``; ``what``
    names the block in the error.

    Raises:
      ValueError: a key of ``values`` that ``table`` does not declare (named, with the
        declared keys).
    """
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ValueError(f"{what} has no key(s) {unknown}; its keys: {sorted(table)}.")
    out = {k: _plain(key.default) for k, key in table.items() if not key.required}
    out.update(values)
    return ml_collections.ConfigDict(out)


def _plain(value: Any) -> Any:
    """A fresh mutable copy of a declared default (tables hold read-only mappings)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def classification_defaults(**values: Any) -> ml_collections.ConfigDict:
    """The run level of a classification config (:data:`CLASSIFICATION_RUN`) with its
    defaults and ``values``; the recipe sets the keys without a default and the blocks
    (``model`` from :func:`classifier_model`, ``teachers`` / ``mdl`` / ``url``, ``fewshot``)."""
    return block(CLASSIFICATION_RUN, "A classification config", **values)


def dense_defaults(**values: Any) -> ml_collections.ConfigDict:
    """The run level of a dense config (:data:`DENSE_RUN`) with its
    defaults and ``values``; the recipe adds ``model`` (:func:`dense_model`), ``teachers``
    (:func:`dense_teachers`), ``stl`` / ``mtl`` / ``url``."""
    return block(DENSE_RUN, "A dense config", **values)


def classifier_model(**values: Any) -> ml_collections.ConfigDict:
    """``config.model`` of a classification config (:data:`CLASSIFIER_MODEL`)."""
    return block(CLASSIFIER_MODEL, "config.model", **values)


def dense_model(**values: Any) -> ml_collections.ConfigDict:
    """``config.model`` of a dense config (:data:`DENSE_MODEL`)."""
    return block(DENSE_MODEL, "config.model", **values)


def sgd_stage(**values: Any) -> ml_collections.ConfigDict:
    """A classification stage block (:data:`SGD_STAGE`)."""
    return block(SGD_STAGE, "An SGD stage block", **values)


def teacher_stage(**values: Any) -> ml_collections.ConfigDict:
    """``config.teachers`` of a classification config (:data:`TEACHER_STAGE`)."""
    return block(TEACHER_STAGE, "config.teachers", **values)


def student_stage(**values: Any) -> ml_collections.ConfigDict:
    """``config.mdl`` (:data:`STUDENT_STAGE`)."""
    return block(STUDENT_STAGE, "config.mdl", **values)


def url_stage(**values: Any) -> ml_collections.ConfigDict:
    """``config.url`` of a classification config (:data:`URL_STAGE`)."""
    return block(URL_STAGE, "config.url", **values)


def fixed_shape_fewshot(**values: Any) -> ml_collections.ConfigDict:
    """``config.fewshot`` for fixed-shape feature episodes (:data:`FIXED_SHAPE_FEWSHOT`)."""
    return block(FIXED_SHAPE_FEWSHOT, "config.fewshot", **values)


def episodic_fewshot(**values: Any) -> ml_collections.ConfigDict:
    """``config.fewshot`` for Meta-Dataset's episodes (:data:`EPISODIC_FEWSHOT`)."""
    return block(EPISODIC_FEWSHOT, "config.fewshot", **values)


def adam_stage(**values: Any) -> ml_collections.ConfigDict:
    """A dense stage block (:data:`ADAM_STAGE`; ``config.stl``)."""
    return block(ADAM_STAGE, "config.stl", **values)


def mtl_stage(**values: Any) -> ml_collections.ConfigDict:
    """``config.mtl`` of a dense config (:data:`MTL_STAGE`)."""
    return block(MTL_STAGE, "config.mtl", **values)


def dense_url_stage(**values: Any) -> ml_collections.ConfigDict:
    """``config.url`` of a dense config (:data:`DENSE_URL_STAGE`)."""
    return block(DENSE_URL_STAGE, "config.url", **values)


def dense_teachers(**values: Any) -> ml_collections.ConfigDict:
    """``config.teachers`` of a dense config (:data:`DENSE_TEACHERS`)."""
    return block(DENSE_TEACHERS, "config.teachers", **values)


# ----------------------------------------------------------------------------- the whole tree

def fewshot_kind(fewshot: Any) -> str:
    """``'episodic'`` for a few-shot block with a ``protocol`` (:data:`EPISODIC_FEWSHOT`),
    else ``'fixed_shape'`` (:data:`FIXED_SHAPE_FEWSHOT`)."""
    return "episodic" if "protocol" in fewshot else "fixed_shape"


def declared_blocks(config: Any, problem: str) -> dict[str, Mapping[str, Key]]:
    """``{block path: table}`` for a config of ``problem`` (``''``: the run level). The
    ``fewshot`` block is declared when the ``fewshot`` stage runs or the config has one.

    Raises:
      ValueError: an unknown problem.
    """
    if problem == "classification":
        out = {"": CLASSIFICATION_RUN, "model": CLASSIFIER_MODEL, "teachers": TEACHER_STAGE,
               "mdl": STUDENT_STAGE, "url": URL_STAGE}
        if "fewshot" in config or "fewshot" in tuple(config.get("stages", ())):
            fewshot = config.get("fewshot", {})
            out["fewshot"] = (EPISODIC_FEWSHOT if fewshot_kind(fewshot) == "episodic"
                              else FIXED_SHAPE_FEWSHOT)
        return out
    if problem == "dense":
        return {"": DENSE_RUN, "model": DENSE_MODEL, "teachers": DENSE_TEACHERS,
                "stl": ADAM_STAGE, "mtl": MTL_STAGE, "url": DENSE_URL_STAGE}
    raise ValueError(f"config.problem={problem!r}; expected 'classification' or 'dense'.")


def declared_defaults(config: Any, problem: str) -> dict[str, Any]:
    """``{dotted key: default}`` of every declared key with a default in ``config``'s blocks
    (:func:`declared_blocks`), the defaults as plain Python values (tuples, dicts)."""
    out = {}
    for path, table in declared_blocks(config, problem).items():
        for key, declared in table.items():
            if not declared.required:
                out[f"{path}.{key}" if path else key] = _plain(declared.default)
    return out


def split_names(config: Any) -> None:
    """Splits, in place, the comma-separated entries of every declared tuple-of-names key of
    ``config`` (kind ``'names'``): ``--config.fewshot.methods=pa,tsa`` arrives from
    ml_collections as ``('pa,tsa',)`` and becomes ``('pa', 'tsa')``; ``--config.stages=
    teachers,mdl`` likewise. A config without a known ``problem`` is left as it is (the run
    refuses it)."""
    problem = config.get("problem", "")
    if problem not in ("classification", "dense"):
        return
    for path, table in declared_blocks(config, problem).items():
        if path and path not in config:
            continue
        node = config[path] if path else config
        for key, declared in table.items():
            value = node.get(key)
            if declared.kind == "names" and _is_names(value) and any("," in v for v in value):
                node[key] = tuple(p.strip() for v in value for p in v.split(",") if p.strip())
