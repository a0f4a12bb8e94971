"""Registers the dense datasets ``scenes``, ``nyuv2``, ``cityscapes7`` and ``cityscapes19``
with :mod:`ur_jax.data.registry` (``register_dense``).

Imported by the registry on its first lookup (``SUITES``); the data modules are imported
only when a config loads a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ur_jax.data import registry


def load_scenes(config) -> registry.DenseData:
    """The procedural scenes (``config.scenes_config``: ``'default'``, or ``'tiny'`` with 24 / 8
    images for tests), built in ``config.data_dir`` on first use."""
    from ur_jax.suites.dense import scenes

    root = registry.data_dir(config)
    variant = config.scenes_config  # 'tiny': 24 / 8 images, for tests
    scenes.prepare(root, variant)
    return registry.DenseData(train=scenes.data_source("train", root, variant),
                              test=scenes.data_source("test", root, variant),
                              tasks=tuple(scenes.TASKS), num_classes=scenes.NUM_CLASSES,
                              image_shape=tuple(scenes.IMAGE_SHAPE), **_batch_makers())


def _batch_makers() -> dict[str, Callable[..., object]]:
    """The dense batch pipelines every dense dataset of this suite uses."""
    from ur_jax.suites.dense import transforms

    return {"make_train_batches": transforms.dense_train_batches,
            "make_eval_batches": transforms.dense_eval_batches}


def mtan_loader(name: str, depth_kind: str,
                reference: Callable[[], Mapping[str, Mapping[str, float]]] | None = None
                ) -> Callable[..., registry.DenseData]:
    """A loader of MTAN's dataset ``name`` (built from ``config.manual_dir`` into
    ``config.data_dir`` on first use); ``reference()`` gives the published single-task
    results that Delta_MTL is computed against, if any."""
    def load(config) -> registry.DenseData:
        from ur_jax.suites.dense import mtan

        root = registry.data_dir(config)
        mtan.prepare_dense(name, registry.manual_dir(config), root)
        train = mtan.dense_source(name, "train", root)
        example = train[0]
        return registry.DenseData(train=train, test=mtan.dense_source(name, "test", root),
                                  tasks=tuple(mtan.TASKS[name]),
                                  num_classes=mtan.NUM_CLASSES[name],
                                  image_shape=tuple(example["image"].shape),
                                  depth_kind=depth_kind,
                                  reference=reference() if reference else None,
                                  **_batch_makers())

    return load


def nyuv2_reference() -> Mapping[str, Mapping[str, float]]:
    """The single-task NYU-v2 results of the paper (:mod:`ur_jax.evaluation.dense`)."""
    from ur_jax.evaluation import dense as dense_eval

    return dense_eval.NYUV2_STL_REFERENCE


registry.register_dense("scenes", load_scenes)
registry.register_dense("nyuv2", mtan_loader("nyuv2", "depth", nyuv2_reference))
registry.register_dense("cityscapes7", mtan_loader("cityscapes7", "inverse_depth"))
registry.register_dense("cityscapes19", mtan_loader("cityscapes19", "inverse_depth"))
