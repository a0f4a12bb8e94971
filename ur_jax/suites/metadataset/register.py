"""Registers ``config.dataset = 'metadataset'`` with :mod:`ur_jax.data.registry`.

Imported by the registry on its first lookup (``SUITES``); the data modules are imported
only when a config loads the dataset.
"""

from __future__ import annotations

import os

from ur_jax.data import registry


def load(config) -> registry.ClassificationData:
    """Meta-Dataset (:mod:`ur_jax.suites.metadataset`): the training classes of each training
    source (``config.domains``) for the classifiers, and the ``config.fewshot.split``
    (``'test'``) classes of each ``config.fewshot.domains`` source for the episodes.
    Sources are built on first use from ``config.metadataset.origin``: ``'records'`` (the
    official converted records in ``records_dir``), ``'manual'`` (raw downloads in
    ``manual_dir``) or ``'tfds'`` (TFDS's own builders), or a mapping ``{source: origin}``."""
    from ur_jax.suites import metadataset as md

    m = config.metadataset
    domains = tuple(config.domains)
    fewshot = tuple(config.fewshot.domains) if "fewshot" in config.stages else ()
    for group, valid, what in ((domains, md.TRAIN_SOURCES, "training"),
                               (fewshot, md.SOURCES, "few-shot")):
        unknown = [d for d in group if d not in valid]
        if unknown:
            raise ValueError(f"Unknown Meta-Dataset {what} source(s) {unknown}; available: "
                             f"{list(valid)}.")
    root = registry.data_dir(config)
    origin = m.origin.to_dict() if hasattr(m.origin, "to_dict") else m.origin

    def path(key):
        value = m[key]
        return os.path.abspath(os.path.expanduser(value)) if value else None

    md.prepare(tuple(dict.fromkeys(domains + fewshot)), root, origin=origin,
               records_dir=path("records_dir"), manual_dir=path("manual_dir"),
               tfds_data_dir=path("tfds_data_dir"))
    split = config.fewshot.split
    shape = (md.IMAGE_SIZE, md.IMAGE_SIZE, 3)
    # the validation classes of the training sources: episodic model selection
    valid = tuple(d for d in domains if md.num_classes(d, "valid", root) > 0)
    return registry.ClassificationData(
        train={d: md.data_source(d, "train", root) for d in domains},
        test={},
        num_classes={d: md.num_classes(d, "train", root) for d in domains},
        image_shape=shape,
        fewshot={d: md.data_source(d, split, root) for d in fewshot},
        fewshot_specs={d: md.split_spec(d, split, root) for d in fewshot},
        val_fewshot={d: md.data_source(d, "valid", root) for d in valid},
        val_fewshot_specs={d: md.split_spec(d, "valid", root) for d in valid})


registry.register("metadataset", load)
