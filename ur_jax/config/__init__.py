"""Experiment configs: one argument parser, every key the runner reads declared with its
default, and the checks a config passes before a run starts.

* :func:`parse_arg` (:mod:`.args`): the ``configs/<file>.py:<choice>[,smoke]`` argument of
  every config file's ``get_config(arg)``;
* :mod:`.blocks`: the declaration tables (key -> kind, default, meaning) of every block of
  a config (run level, ``model``, the stages, ``fewshot``) and a builder per block
  (:func:`classification_defaults`, :func:`sgd_stage`, :func:`url_stage`,
  :func:`episodic_fewshot`, :func:`dense_defaults`, :func:`adam_stage`, ...), which the
  recipes (``ur_jax/suites/*/recipe.py``, ``configs/default.py``) build configs from;
* :mod:`.values`: per-domain stage values (:func:`stage_value`, :func:`batch_size`, ...);
* :mod:`.validation`: :func:`~ur_jax.config.validation.validate`, run by :func:`ur_jax.run.run`
  before anything else (imported on its own: it needs JAX);
* :func:`load_config` (:mod:`.loading`): a config file from Python, as the CLI loads it.

To add a key the runner reads: declare it in the block's table of :mod:`.blocks` with its
default (never ``None``), read it as a plain attribute, and check its value in
:mod:`.validation` when its kind is not enough. Importing this package imports no JAX.
"""

from __future__ import annotations

from ur_jax.config.args import parse_arg
from ur_jax.config.blocks import (
    FROM_RUN,
    Key,
    adam_stage,
    block,
    classification_defaults,
    classifier_model,
    declared_blocks,
    dense_defaults,
    dense_model,
    dense_teachers,
    dense_url_stage,
    episodic_fewshot,
    fewshot_kind,
    fixed_shape_fewshot,
    mtl_stage,
    sgd_stage,
    split_names,
    student_stage,
    teacher_stage,
    url_stage,
)
from ur_jax.config.loading import load_config
from ur_jax.config.values import batch_size, stage_select_every, stage_steps, stage_value

__all__ = ["FROM_RUN", "Key", "adam_stage", "batch_size", "block", "classification_defaults",
           "classifier_model", "declared_blocks", "dense_defaults", "dense_model",
           "dense_teachers", "dense_url_stage", "episodic_fewshot", "fewshot_kind",
           "fixed_shape_fewshot", "load_config", "mtl_stage", "parse_arg", "sgd_stage",
           "split_names", "stage_select_every", "stage_steps", "stage_value", "student_stage",
           "teacher_stage", "url_stage"]
