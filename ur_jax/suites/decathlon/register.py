"""Registers ``config.dataset = 'decathlon'`` with :mod:`ur_jax.data.registry`.

Imported by the registry on its first lookup (``SUITES``); the data modules are imported
only when a config loads the dataset.
"""

from __future__ import annotations

import functools

from ur_jax.data import registry


def load(config) -> registry.ClassificationData:
    """The Visual Decathlon (:mod:`ur_jax.suites.decathlon`): built from the local
    ``decathlon-1.0/`` in ``config.manual_dir`` (``config.decathlon_source='manual'``), or
    TFDS's ``visual_domain_decathlon`` (``'tfds'``, downloads).

    ``config.train_split``: ``'train'`` or ``'train+val'`` (the union the paper's
    Table 2 models train on; the runner then selects no model on validation).
    ``config.decathlon_normalization``: ``'published'`` (the recipe's: the fixed per-domain
    constants :data:`ur_jax.suites.decathlon.MEAN_STD`, as the authors) or ``'estimated'``
    (measured on the prepared train images; manual source only)."""
    from ur_jax.suites import decathlon
    from ur_jax.suites.decathlon import from_tfds, submission

    domains = tuple(config.domains)
    unknown = [d for d in domains if d not in decathlon.DOMAINS]
    if unknown:
        raise ValueError(f"Unknown Decathlon domain(s) {unknown}; available: "
                         f"{list(decathlon.DOMAINS)}.")
    train_split = config.train_split
    if train_split not in ("train", decathlon.TRAIN_VAL):
        raise ValueError(f"config.train_split={train_split!r}; expected 'train' (validation "
                         f"selects the model) or {decathlon.TRAIN_VAL!r} (the paper's Table 2 "
                         "protocol: train on both, keep the last model).")
    stats = config.decathlon_normalization
    if stats not in decathlon.NORMALIZATIONS:
        raise ValueError(f"config.decathlon_normalization={stats!r}; expected one of "
                         f"{list(decathlon.NORMALIZATIONS)}.")
    root = registry.data_dir(config)
    kind = config.decathlon_source
    if kind == "manual":
        decathlon.prepare(registry.manual_dir(config), root, domains)
        source = functools.partial(decathlon.data_source, data_dir=root)
        meta = {d: decathlon.metadata(d, root) for d in domains}
        num_classes = {d: len(meta[d]["category_ids"]) for d in domains}
        labelled = {d: bool(meta[d]["test_labels"]) for d in domains}
        normalization = {d: decathlon.normalization(d, root, stats) for d in domains}

        def export(predictions, path):
            return submission.export_predictions(predictions, root, path)
    elif kind == "tfds":
        if stats != "published":
            raise ValueError("config.decathlon_normalization='estimated' needs the manual "
                             "source (config.decathlon_source='manual'), whose builder measures "
                             "the mean/std; use 'published' with 'tfds'.")
        source = functools.partial(from_tfds.tfds_source, data_dir=root)
        num_classes = {d: decathlon.NUM_CLASSES[d] for d in domains}
        labelled = {d: False for d in domains}  # TFDS's test split has no labels
        normalization = {d: decathlon.normalization(d) for d in domains}
        export = None
    else:
        raise ValueError(f"config.decathlon_source={kind!r}; expected 'manual' (a local "
                         f"decathlon-1.0/ in config.manual_dir) or 'tfds'.")
    return registry.ClassificationData(
        train={d: source(d, train_split) for d in domains},
        test={d: source(d, "test") for d in domains},
        val={d: source(d, "val") for d in domains},
        num_classes=num_classes,
        image_shape=decathlon.image_shape(domains[0]),
        image_shapes={d: decathlon.image_shape(d) for d in domains},
        train_transform={d: decathlon.train_transform(d) for d in domains},
        eval_transform={d: decathlon.eval_transform(d) for d in domains},
        normalization=normalization, test_labelled=labelled, export_predictions=export)


registry.register("decathlon", load)
