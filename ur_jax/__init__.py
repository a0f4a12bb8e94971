"""ur_jax: Universal Representations (Li, Liu, Bilen, IJCV 2023) in JAX/Flax.

Subpackages: :mod:`ur_jax.models` (backbones, heads), :mod:`ur_jax.adapters`
(reusable Flax adapter modules), :mod:`ur_jax.losses` (task and alignment losses),
:mod:`ur_jax.steps` (jitted train / distill / eval steps), :mod:`ur_jax.teachers`
(frozen, stacked teachers), :mod:`ur_jax.optim` (optimizers and parameter
partitions) and :mod:`ur_jax.sharding` (the data-parallel mesh).
"""

__version__ = "0.1.0"
