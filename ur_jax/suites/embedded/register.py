"""Registers ``config.dataset = 'embedded'`` with :mod:`ur_jax.data.registry`.

Imported by the registry on its first lookup (``SUITES``); the data modules are imported
only when a config loads the dataset.
"""

from __future__ import annotations

from ur_jax.data import registry


def load(config) -> registry.ClassificationData:
    """The embedded domains of ``config.domains`` (train / test, plus a validation split carved
    from train when ``config.holdout_per_class`` > 0) and, when the ``fewshot`` stage runs, the
    test splits of ``config.fewshot.domains`` for episodes; built in ``config.data_dir`` on
    first use.

    Raises:
      ValueError: for an unknown domain.
    """
    from ur_jax.suites import embedded

    fewshot = tuple(config.fewshot.domains) if "fewshot" in config.stages else ()
    for group, valid in ((tuple(config.domains), embedded.TRAIN_DOMAINS + embedded.FEWSHOT_DOMAINS),
                         (fewshot, embedded.ALL_DOMAINS)):
        unknown = [d for d in group if d not in valid]
        if unknown:
            raise ValueError(f"Unknown embedded domain(s) {unknown}; available: {list(valid)}.")
    root = registry.data_dir(config)
    embedded.prepare(root, tuple(config.domains) + fewshot)
    train = {d: embedded.data_source(d, "train", root) for d in config.domains}
    val = {}
    holdout = int(config.holdout_per_class)
    if holdout:  # a validation split carved from train, for choosing hyperparameters
        from ur_jax.data.pipeline import holdout_split

        for d in config.domains:
            train[d], val[d] = holdout_split(train[d], holdout, seed=0)
    return registry.ClassificationData(
        train=train,
        test={d: embedded.data_source(d, "test", root) for d in config.domains},
        num_classes={d: embedded.NUM_CLASSES[d] for d in config.domains},
        image_shape=tuple(embedded.IMAGE_SHAPE),
        fewshot={d: embedded.data_source(d, "test", root) for d in fewshot},
        val=val)


registry.register("embedded", load)
