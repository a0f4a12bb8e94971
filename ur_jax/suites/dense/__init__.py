"""Dense prediction (multi-task: semantic segmentation, depth, surface normals).

Datasets (``config.dataset`` of a dense config; registered by
:mod:`~ur_jax.suites.dense.register`):

* ``scenes``: procedurally rendered 3-D scenes in NYU-v2's record format, offline and
  deterministic (the dense default; builder ``ur_scenes``, :mod:`~ur_jax.suites.dense.scenes`).
* ``nyuv2``: builder ``ur_nyuv2``; semantic (13 classes), depth (metric), normal;
  288 x 384; 795 train / 654 test.
* ``cityscapes7`` / ``cityscapes19``: builder ``ur_cityscapes``, config ``label7`` /
  ``label19``; semantic (7 / 19 classes), inverse depth; 128 x 256; 2975 train / 500 test.

NYU-v2 and Cityscapes are MTAN's preprocessed ``.npy`` trees (Liu, Johns, Davison, CVPR 2019;
https://github.com/lorenmt/mtan), checked and built by :mod:`~ur_jax.suites.dense.mtan`.

Modules:

* :mod:`~ur_jax.suites.dense.mtan`: MTAN's tree -> TFDS builders (:func:`check_mtan_tree`,
  :func:`prepare_dense`, :func:`dense_source`), the constants (:data:`DATASETS`,
  :data:`TASKS`, :data:`NUM_CLASSES`, :data:`DEPTH_KIND`, ...);
* :mod:`~ur_jax.suites.dense.scenes`: the procedural scenes (renderer and builder);
* :mod:`~ur_jax.suites.dense.transforms`: MTAN's augmentation, exactly (random scale-crop
  resized back with PyTorch's ``F.interpolate`` semantics, then a horizontal flip:
  :func:`augment`) and the grain pipelines: infinite, seeded, resumable training batches
  (:func:`dense_train_batches`) and padded evaluation batches with a ``'mask'``
  (:func:`dense_eval_batches`);
* :mod:`~ur_jax.suites.dense.fake`: fake MTAN trees in exactly the real on-disk format
  (:func:`~ur_jax.suites.dense.fake.write_fake_mtan`), for tests and smoke runs;
* :mod:`~ur_jax.suites.dense.recipe`: the paper's recipe for ``configs/nyuv2_*.py``,
  ``configs/cityscapes_*.py`` and ``configs/dense_default.py``;
* :mod:`~ur_jax.suites.dense.register`: the loaders.

The names of ``mtan`` and ``transforms`` are also attributes of this package (imported on
first use, so that the recipe stays light).

Every record (and every batch, with a leading batch axis) is a dict::

    {'image':    float32 (H, W, 3)  RGB in [0, 1] (no mean/std normalisation),
     'semantic': int32   (H, W)     class id, -1 = ignore,
     'depth':    float32 (H, W, 1)  NYU-v2: metric depth (m); Cityscapes: INVERSE depth
                                    (disparity-like, 1/m); 0 = invalid,
     'normal':   float32 (H, W, 3)  unit surface normal, all-zero = invalid (NYU-v2 only)}

(``scenes`` stores uint8 images; the pipelines convert them to float32 / 255.) The MTAN
builders accept whatever (H, W) the files have (the features have dynamic spatial
dimensions), as long as every file of a split agrees, so the small fake trees of the
tests build exactly like the real ones.

On-disk format read (``manual_dir``; ``val/`` is the test split)::

    root/{train,val}/image/<i>.npy    float (H, W, 3), RGB in [0, 1]
    root/{train,val}/label/<i>.npy    float (H, W), class ids, -1 = ignore     (NYU-v2)
    root/{train,val}/label_7/<i>.npy  and label_19/<i>.npy                    (Cityscapes)
    root/{train,val}/depth/<i>.npy    float (H, W, 1), 0 = invalid
    root/{train,val}/normal/<i>.npy   float (H, W, 3), all-zero = invalid      (NYU-v2)

with ``<i>`` = 0 .. N-1 in every folder of a split. Typical use::

    from ur_jax.data import pipeline
    from ur_jax.suites import dense
    dense.prepare_dense("nyuv2", "~/data/nyuv2", "~/tensorflow_datasets")   # once
    train = dense.dense_source("nyuv2", "train", "~/tensorflow_datasets")
    batches = dense.dense_train_batches(train, batch_size=2, seed=0,
                                        depth_kind=dense.DEPTH_KIND["nyuv2"])
    it = pipeline.iterate(batches)          # checkpointable iterator (ur_jax.data.pipeline)

To add a dense dataset: a builder module here (over :class:`ur_jax.data.tfds_helper.
LocalBuilder`) producing records in the format above, a fake writer in ``fake.py``, its tasks
and batch size in ``recipe.DATASETS``, and a loader returning a
:class:`~ur_jax.data.registry.DenseData` registered in ``register.py`` with
``registry.register_dense``.
"""

from ur_jax.suites import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DATASETS", "DEPTH_KIND", "DEPTH_KINDS", "IMAGE_HW", "MTAN_SOURCES",
                     "NUM_CLASSES", "RECORD_DTYPES", "RECORD_KEYS", "SPLITS", "SPLIT_SIZES",
                     "TASKS", "DenseDataError", "SplitLayout", "UrCityscapes", "UrNyuv2",
                     "check_mtan_tree", "dense_source", "prepare_dense"), "mtan"),
    **dict.fromkeys(("DEFAULT_SCALES", "augment", "dense_eval_batches", "dense_train_batches",
                     "hflip", "resize_bilinear_align_corners", "resize_nearest", "scale_crop"),
                    "transforms"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
