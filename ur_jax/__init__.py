"""ur_jax: Universal Representations (Li, Liu, Bilen, IJCV 2023) in JAX/Flax.

The core library (pure functions and Flax modules, usable from a notebook without the
runner): :mod:`ur_jax.models` (backbones, heads), :mod:`ur_jax.adapters` (reusable Flax
adapter modules), :mod:`ur_jax.losses` (task and alignment losses), :mod:`ur_jax.steps` and
:mod:`ur_jax.dense_steps` (jitted train / distill / MTL / eval steps), :mod:`ur_jax.mtl`
(multi-task methods), :mod:`ur_jax.teachers` (frozen, stacked teachers), :mod:`ur_jax.optim`
(optimizers, schedules, parameter partitions), :mod:`ur_jax.sharding` (the data-parallel
mesh), :mod:`ur_jax.checkpointing` (every orbax call), :mod:`ur_jax.evaluation` (few-shot,
dense and decathlon metrics).

The application layer: :mod:`ur_jax.run` (the one runner: ``run(config, workdir)``),
:mod:`ur_jax.stages` (teachers / MDL / URL / few-shot and dense STL / MTL / URL, by name),
:mod:`ur_jax.evaluation.evaluators` (evaluators by name), :mod:`ur_jax.data` (generic
pipelines, episodes, the dataset registry) and :mod:`ur_jax.suites` (one package per
benchmark); ``python -m ur_jax.main`` is the command line.
"""

__version__ = "0.1.0"
