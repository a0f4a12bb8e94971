"""Meta-Dataset (Triantafillou et al. 2020): the 13 sources with the official class splits as
the TFDS builder ``ur_metadataset``, read without TensorFlow.

Modules:

* :mod:`~ur_jax.suites.metadataset.common`: the facts every reader shares (sources, official
  class splits, image size, :class:`ClassSource`: one source as classes in official order,
  the shape in which every origin reaches the builder);
* :mod:`~ur_jax.suites.metadataset.builder`: the ``ur_metadataset`` builder (84x84 images,
  records grouped by class): :func:`prepare`, :func:`data_source`, :func:`split_spec` (the
  episode sampler's :class:`~ur_jax.data.episodes.SplitSpec`), :func:`metadata`;
* the three origins of a source's data: :mod:`~ur_jax.suites.metadataset.records` (the
  official converted records; their TFRecord / ``tf.train.Example`` format is
  :mod:`~ur_jax.suites.metadataset.tfrecord`), :mod:`~ur_jax.suites.metadataset.raw` (raw
  manual downloads of aircraft, fungi, traffic_sign) and
  :mod:`~ur_jax.suites.metadataset.tfds_sources` (TFDS's own builders);
* :mod:`~ur_jax.suites.metadataset.fake`: fake records and fake raw downloads in the exact
  on-disk formats, for tests and smoke runs (``python -m ur_jax.suites.metadataset --fake
  DIR``);
* :mod:`~ur_jax.suites.metadataset.recipe`: the paper's recipe for ``configs/metadataset_*.py``;
* :mod:`~ur_jax.suites.metadataset.register`: ``config.dataset = 'metadataset'``.

The names of ``common``, ``builder``, ``records`` and ``tfrecord`` listed in ``__all__`` are
also attributes of this package (imported on first use, so that the recipe stays light).

Typical use::

    from ur_jax.suites import metadataset as md
    md.prepare(["omniglot"], "~/tensorflow_datasets", origin="records",
               records_dir="~/data/records")                   # once
    src = md.data_source("omniglot", "test", "~/tensorflow_datasets")
    spec = md.split_spec("omniglot", "test", "~/tensorflow_datasets")

To add an origin for a source: a module returning its :class:`ClassSource` in official order,
handled by ``builder.py`` (:data:`ORIGINS`, :func:`prepare`); to add a source: its facts in
``common.py`` (:data:`SOURCES`, :data:`CLASS_SPLITS`, :data:`SHORT_NAMES`) and its
description in ``builder.py``.
"""

from ur_jax.suites import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("ORIGINS", "TFDS_NAME", "UrMetaDataset", "data_source", "metadata",
                     "num_classes", "prepare", "preprocess_image", "resize_bilinear",
                     "split_spec", "to_rgb"), "builder"),
    **dict.fromkeys(("CLASS_SPLITS", "IMAGE_SIZE", "SHORT_NAMES", "SOURCES", "SPLITS",
                     "TRAIN_SOURCES", "UNSEEN_SOURCES", "ClassSource", "MetaDatasetError",
                     "split_class_range"), "common"),
    **dict.fromkeys(("DatasetSpec", "class_source", "read_dataset_spec"), "records"),
    **dict.fromkeys(("read_tfrecords", "write_tfrecords"), "tfrecord"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
