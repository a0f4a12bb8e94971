"""Meta-Dataset (Triantafillou et al. 2020) for ur_jax: the 13 sources with the official class
splits as the TFDS builder ``ur_metadataset``, read without TensorFlow.

:mod:`~ur_jax.data.metadataset.records` reads the official converted records (TFRecord files
and ``dataset_spec.json``) and writes fakes in that format; :mod:`~ur_jax.data.metadataset.
builder` turns a source into the ``ur_metadataset`` TFDS builder (84x84 images, records grouped
by class) and gives each split's data source and :class:`~ur_jax.data.episodes.SplitSpec`.
"""

from ur_jax.data.metadataset.builder import (  # noqa: F401
    ORIGINS,
    TFDS_NAME,
    UrMetaDataset,
    data_source,
    metadata,
    num_classes,
    prepare,
    preprocess_image,
    resize_bilinear,
    split_spec,
    to_rgb,
)
from ur_jax.data.metadataset.common import (  # noqa: F401
    CLASS_SPLITS,
    IMAGE_SIZE,
    SHORT_NAMES,
    SOURCES,
    SPLITS,
    TRAIN_SOURCES,
    UNSEEN_SOURCES,
    ClassSource,
    MetaDatasetError,
    split_class_range,
)
from ur_jax.data.metadataset.records import (  # noqa: F401
    DatasetSpec,
    class_source,
    read_dataset_spec,
    read_tfrecords,
    write_fake_records,
    write_tfrecords,
)
