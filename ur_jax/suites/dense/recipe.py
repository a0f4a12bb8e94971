"""Building blocks of the dense-prediction configs (``configs/nyuv2_*.py``,
``configs/cityscapes_*.py``, ``configs/dense_default.py``).

:func:`base` gives a complete dense config with the paper's recipe (PAPER.md §1: SegNet,
Adam 1e-4 halved every 100 of 200 epochs, MTAN's scale-crop and flip augmentation; URL
adapters with Adam 1e-2, weight decay 5e-4 and cosine decay; lambda = 1 / 1 / 2 for
semantic / depth / normal); the config files choose stages, tasks and the method (their
``:arg[,smoke]`` argument read by :func:`ur_jax.config.parse_arg`), and
:func:`shrink_to_smoke` makes any of them a seconds-long run.
"""

from __future__ import annotations

import ml_collections

from ur_jax import config as config_lib
from ur_jax.config.blocks import MTL_METHODS, MTL_STAGE_METHODS

__all__ = ["DATASETS", "MTL_METHODS", "MTL_STAGE_METHODS", "base", "shrink_to_smoke"]

#: Per dataset: tasks, batch size of the paper's recipe (MTAN: NYU-v2 2, Cityscapes 8).
DATASETS = {
    "nyuv2": (("semantic", "depth", "normal"), 2),
    "cityscapes7": (("semantic", "depth"), 8),
    "cityscapes19": (("semantic", "depth"), 8),
    "scenes": (("semantic", "depth", "normal"), 8),
}


def _adam(batch_size: int, epochs: int) -> dict:
    """The paper's Adam recipe of every dense stage, as block values."""
    return {"epochs": epochs, "batch_size": batch_size, "learning_rate": 1e-4,
            "weight_decay": 0.0, "decay_every_epochs": 100, "decay_factor": 0.5}


def base(dataset: str) -> ml_collections.ConfigDict:
    """A dense config for ``dataset`` (``'nyuv2'``, ``'cityscapes7'``, ``'cityscapes19'`` or
    ``'scenes'``) with the paper's recipe and every stage; callers set ``stages``. Every key
    the runner reads is there (:mod:`ur_jax.config.blocks`), plus this suite's own
    ``manual_dir`` and ``scenes_config``.

    Raises:
      ValueError: an unknown dataset.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dense dataset {dataset!r}; expected one of {sorted(DATASETS)}.")
    tasks, batch_size = DATASETS[dataset]
    c = config_lib.dense_defaults(seed=0, dataset=dataset, tasks=tasks,
                                  stages=("stl", "mtl", "url"))
    c.manual_dir = ""  # MTAN's preprocessed tree for nyuv2 / cityscapes*
    c.scenes_config = "default"  # dataset 'scenes': 1200 / 300 images ('tiny': 24 / 8, tests)
    c.model = config_lib.dense_model(name="segnet", kwargs={"width": 1.0})
    c.augment = True  # MTAN's random scale-crop (1, 1.2, 1.5) and horizontal flip
    c.init_rng_impl = "threefry2x32"

    c.stl = config_lib.adam_stage(**_adam(batch_size, 200))  # steps > 0 overrides epochs
    c.teachers = config_lib.dense_teachers(checkpoints={t: "" for t in tasks})
    # method: one of MTL_STAGE_METHODS; space: '' = the method's default ('features' for
    # graddrop, else 'params'); 'bam' takes no options and no space (it anneals over the
    # stage's updates)
    c.mtl = config_lib.mtl_stage(**_adam(batch_size, 200), method="uniform")
    c.url = config_lib.dense_url_stage(
        **_adam(batch_size, 200), lambdas={"semantic": 1.0, "depth": 1.0, "normal": 2.0},
        student_features=("bottleneck", "decoder"), teacher_feature="decoder",
        feature_loss="normalized_l2", adapter_learning_rate=1e-2, adapter_weight_decay=5e-4)

    c.eval_batch_size = 8
    c.eval_limit = 0
    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.data_threads = 2
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict, steps: int = 2, batch_size: int = 8
                    ) -> ml_collections.ConfigDict:
    """A seconds-long version of ``c`` for tests and dry runs: a two-level SegNet (4 and 8
    channels; it compiles several times faster than MTAN's five levels), ``steps`` updates
    per stage, a few test batches."""
    c.model.kwargs.width = 1.0
    c.model.kwargs.filters = (4, 8)
    c.init_rng_impl = "rbg"
    for stage in ("stl", "mtl", "url"):
        c[stage].steps = steps
        c[stage].batch_size = batch_size
    c.eval_batch_size = 8
    c.eval_limit = 16
    c.log_every = 1
    c.checkpoint_every = 1
    return c

