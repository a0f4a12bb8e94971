"""Generic data machinery of ur_jax (no benchmark lives here).

* :mod:`ur_jax.data.pipeline`: grain pipelines over random-access sources (seeded, resumable
  training batches, padded evaluation batches, normalisation, sources concatenated or split).
* :mod:`ur_jax.data.episodes`: the Meta-Dataset-style episode sampler (variable ways and shots).
* :mod:`ur_jax.data.registry`: ``config.dataset`` -> sources (:class:`~ur_jax.data.registry.
  ClassificationData` / :class:`~ur_jax.data.registry.DenseData`), filled by the suites.
* :mod:`ur_jax.data.tfds_helper`: the TFDS quirks every suite's builder needs, handled once.
* :mod:`ur_jax.data.files`: small file-system helpers for error messages.

The benchmarks (builders, readers, transforms, fake data, recipes) are packages under
:mod:`ur_jax.suites`: ``embedded``, ``dense``, ``decathlon``, ``metadataset``.
"""
