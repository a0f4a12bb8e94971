"""Visual Decathlon (Rebuffi, Bilen, Vedaldi 2017): ten image domains, read without TensorFlow.

The Visual Domain Decathlon (https://www.robots.ox.ac.uk/~vgg/decathlon/) is the benchmark of
the paper's multi-domain experiments (ResNet-26, Table 2). Every domain's images are resized so
that their shorter side is 72 px; each domain has a ``train``, a ``val`` and a ``test`` split
(the devkit withholds the test labels; predictions go to the evaluation server as a
``results.json`` file, :func:`export_predictions`, unless the labelled ``<d>_test.json``
files that the authors ship, ``VisualDecathlon/labels_test.zip`` in
VICO-UoE/UniversalRepresentations, are put in ``annotations/``). This package

* turns the official on-disk release into the TFDS builder ``ur_decathlon``
  (:class:`UrDecathlon`, one config per domain, ArrayRecord files readable without TensorFlow):
  :func:`prepare`, :func:`data_source`, :func:`metadata` (``builder.py``), :func:`check_tree`
  (``tree.py``, the reader of the release);
* reproduces the paper's preprocessing exactly (:func:`train_transform`,
  :func:`eval_transform` in ``transforms.py``; :func:`normalization` with Rebuffi et al.'s
  published per-domain mean/std :data:`MEAN_STD`, or the mean/std measured while preparing);
* gives the train + val union the paper's Table 2 models train on (:data:`TRAIN_VAL`);
* writes the challenge's results file (``submission.py``: :func:`export_predictions`);
* writes fake trees in exactly the official on-disk format for tests and smoke runs
  (``fake.py``: :func:`~ur_jax.suites.decathlon.fake.write_fake_decathlon`; command line
  ``python -m ur_jax.suites.decathlon --fake DIR``);
* also reads TFDS's own ``visual_domain_decathlon/<domain>`` (which downloads the data itself
  and needs TensorFlow to build) in the same record format (``from_tfds.py``:
  :func:`tfds_source`);
* holds the paper's recipe for ``configs/decathlon_*.py`` (``recipe.py``) and registers
  ``config.dataset = 'decathlon'`` (``register.py``).

Constants, checks and messages shared by these modules are in ``common.py``. The names listed
above are also attributes of this package (imported on first use, so that the recipe stays
light).

Domains (:data:`DOMAINS`), classes and split sizes (train / val / test):

==============  =======  =========  ======  ======
domain          classes  train      val     test
==============  =======  =========  ======  ======
imagenet12      1000     1232167    49000   48238
aircraft        100      3334       3333    3333
cifar100        100      40000      10000   10000
daimlerpedcls   2        23520      5880    19600
dtd             47       1880       1880    1880
gtsrb           43       31367      7842    12630
omniglot        1623     17853      6492    8115
svhn            10       47217      26040   26032
ucf101          101      7585       1952    3783
vgg-flowers     102      1020       1020    6149
==============  =======  =========  ======  ======

On-disk format read (``manual_dir``: the folder that contains ``data/`` and ``annotations/``,
i.e. ``decathlon-1.0/`` itself, or the folder that contains ``decathlon-1.0/``)::

    decathlon-1.0/
      data/<d>/train/<class:04d>/<n>.jpg        (classes numbered from 0001)
      data/<d>/val/<class:04d>/<n>.jpg
      data/<d>/test/<n>.jpg
      annotations/<d>_train.json                COCO style: "images" (id, file_name, width,
      annotations/<d>_val.json                  height), "annotations" (image_id, category_id),
      annotations/<d>_test_stripped.json        "categories" (id, name); test: no annotations
      annotations/<d>_test.json                 optional: test labels (labels_test.zip)

An image's ``file_name`` is relative to ``decathlon-1.0/`` (``data/aircraft/train/...``; a
name without the ``data/`` prefix is looked up under ``data/`` too). Category ids are offset
per domain (aircraft ``10000001 ...``); a record's ``label`` is the index of its category id in
the domain's sorted category ids (:func:`metadata` ``['category_ids']``), ``-1`` for a test
image without a label. Where to get the data: the devkit ``decathlon-1.0-devkit.tar.gz``
(annotations) and ``decathlon-1.0-data.tar.gz`` (images of nine domains, one ``<d>.tar`` each),
plus ImageNet's ``decathlon-1.0-data-imagenet.tar`` for ``imagenet12``; see
:data:`DOWNLOAD_NOTE`.

Records (``data_source(...)[i]``) are ``{'image': bytes, 'label': int, 'image_id': int}``:
``image`` holds the JPEG file's bytes unchanged (decode with :func:`decode`). Records are in
increasing ``image_id`` order. The prepared builder's metadata (:func:`metadata`) holds
``category_ids``, ``category_names``, per-channel RGB ``mean`` / ``std`` of the train images (in
[0, 1] units, after the training resize, from all train images or a fixed sample of
:data:`STATS_SAMPLE` of them) and ``test_labels`` (whether the test split has labels).

Preprocessing (PAPER.md section 2, as in the authors' code): resize so that the shorter side is
72 px (bilinear; ``daimlerpedcls`` and ``aircraft`` are resized to 72 x 72, ignoring the aspect
ratio), then for training a random crop of :func:`crop_size` (64; 72 for ``imagenet12``) and a
horizontal flip with p = 0.5 except for :data:`NO_FLIP`; for evaluation a centre crop. Mean/std
normalisation follows (:func:`normalization`: the published :data:`MEAN_STD` by default). The
multi-domain students' resize of the 64 px crops to 72 px happens in the model
(:class:`ur_jax.models.MultiHeadClassifier` ``input_sizes``), not here.

Typical use::

    import numpy as np
    from ur_jax.suites import decathlon
    decathlon.prepare("~/data/decathlon-1.0", "~/tensorflow_datasets")      # once
    train = decathlon.data_source("aircraft", "train", "~/tensorflow_datasets")
    fn = decathlon.train_transform("aircraft")
    example = fn(train[0], np.random.default_rng(0))     # {'image': uint8 (64, 64, 3), 'label'}
    norm = decathlon.normalization("aircraft")   # Rebuffi et al.'s published mean/std
    both = decathlon.data_source("aircraft", decathlon.TRAIN_VAL, "~/tensorflow_datasets")
    # ... after predicting label indices on the test split of each domain:
    decathlon.export_predictions({"aircraft": (image_ids, labels)},
                                 "~/tensorflow_datasets", "results.json")

To add a domain: its name, class count, split sizes and published mean/std in ``common.py``
(:data:`DOMAINS`, :data:`NUM_CLASSES`, :data:`SPLIT_SIZES`, :data:`MEAN_STD`; :data:`NO_FLIP`
/ :data:`SQUARE_RESIZE` if it is preprocessed differently) and its description in
``builder.py``; the builder gets one config per domain automatically.
"""

from ur_jax.suites import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DOMAINS", "DOWNLOAD_NOTE", "MEAN_STD", "NORMALIZATIONS", "NO_FLIP",
                     "NUM_CLASSES", "RESIZE", "SPLITS", "SPLIT_SIZES", "SQUARE_RESIZE",
                     "STATS_SAMPLE", "TFDS_NAME", "TRAIN_VAL", "DecathlonDataError",
                     "crop_size", "image_shape"), "common"),
    "check_tree": "tree",
    **dict.fromkeys(("ConcatSource", "UrDecathlon", "data_source", "metadata", "normalization",
                     "prepare"), "builder"),
    **dict.fromkeys(("decode", "eval_transform", "resize", "train_transform"), "transforms"),
    "export_predictions": "submission",
    "tfds_source": "from_tfds",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
