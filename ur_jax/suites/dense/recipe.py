"""Building blocks of the dense-prediction configs (``configs/nyuv2_*.py``,
``configs/cityscapes_*.py``, ``configs/dense_default.py``).

:func:`base` gives a complete dense config with the paper's recipe (PAPER.md §1: SegNet,
Adam 1e-4 halved every 100 of 200 epochs, MTAN's scale-crop and flip augmentation; URL
adapters with Adam 1e-2, weight decay 5e-4 and cosine decay; lambda = 1 / 1 / 2 for
semantic / depth / normal); the config files choose stages, tasks and the method, and
:func:`parse_args` / :func:`shrink_to_smoke` handle their ``:arg[,smoke]`` suffix.
"""

from __future__ import annotations

import ml_collections

#: The multi-task methods of :mod:`ur_jax.mtl` (listed here so that loading a config does
#: not import JAX; a test keeps the two lists equal).
MTL_METHODS = ("uniform", "uncertainty", "dwa", "gradnorm", "mgda", "pcgrad", "graddrop",
               "imtl_l", "imtl_g", "imtl_h", "cagrad")

#: What ``config.mtl.method`` takes: those methods and ``'bam'`` (Born-Again Multi-task
#: networks, distilled from the single-task teachers with teacher annealing; the paper's BAM
#: row; it needs the ``stl`` stage).
MTL_STAGE_METHODS = (*MTL_METHODS, "bam")

#: Per dataset: tasks, batch size of the paper's recipe (MTAN: NYU-v2 2, Cityscapes 8).
DATASETS = {
    "nyuv2": (("semantic", "depth", "normal"), 2),
    "cityscapes7": (("semantic", "depth"), 8),
    "cityscapes19": (("semantic", "depth"), 8),
    "scenes": (("semantic", "depth", "normal"), 8),
}


def _adam_stage(batch_size: int, epochs: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "epochs": epochs, "steps": 0,  # steps > 0 overrides epochs
        "batch_size": batch_size, "learning_rate": 1e-4, "weight_decay": 0.0,
        "decay_every_epochs": 100, "decay_factor": 0.5})


def base(dataset: str) -> ml_collections.ConfigDict:
    """A dense config for ``dataset`` (``'nyuv2'``, ``'cityscapes7'``, ``'cityscapes19'`` or
    ``'scenes'``) with the paper's recipe and every stage; callers set ``stages``."""
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dense dataset {dataset!r}; expected one of {sorted(DATASETS)}.")
    tasks, batch_size = DATASETS[dataset]
    c = ml_collections.ConfigDict()
    c.problem = "dense"
    c.seed = 0
    c.dataset = dataset
    c.manual_dir = ""  # MTAN's preprocessed tree for nyuv2 / cityscapes*
    c.data_dir = ""  # prepared TFDS data; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.tasks = tasks
    c.stages = ("stl", "mtl", "url")
    c.model = ml_collections.ConfigDict({"name": "segnet", "kwargs": {"width": 1.0}})
    c.augment = True  # MTAN's random scale-crop (1, 1.2, 1.5) and horizontal flip
    c.init_rng_impl = "threefry2x32"

    c.stl = _adam_stage(batch_size, 200)
    c.teachers = ml_collections.ConfigDict({"checkpoints": {t: "" for t in tasks}})
    c.mtl = _adam_stage(batch_size, 200)
    c.mtl.method = "uniform"
    c.mtl.space = ""  # '' = the method's default ('features' for graddrop, else 'params')
    # (mtl.method 'bam' takes no options and no space; it anneals over the stage's updates)
    c.mtl.options = {}
    c.url = _adam_stage(batch_size, 200)
    c.url.lambdas = {"semantic": 1.0, "depth": 1.0, "normal": 2.0}
    c.url.student_features = ("bottleneck", "decoder")
    c.url.teacher_feature = "decoder"
    c.url.feature_loss = "normalized_l2"
    c.url.adapter_learning_rate = 1e-2
    c.url.adapter_weight_decay = 5e-4

    c.eval_batch_size = 8
    c.eval_limit = 0
    c.log_every = 100
    c.checkpoint_every = 1000
    c.keep_checkpoints = 2
    c.data_threads = 2
    return c


def parse_args(arg: str | None, choices: tuple[str, ...] | None, config_name: str,
               default: str | None = None) -> tuple[str | None, bool]:
    """``'<choice>[,smoke]'`` -> ``(choice, smoke)``; refuses anything else clearly."""
    parts = [p for p in (arg or "").split(",") if p]
    smoke = "smoke" in parts
    rest = [p for p in parts if p != "smoke"]
    if choices is None:
        if rest:
            raise ValueError(f"{config_name} takes no argument other than 'smoke'; found {arg!r}.")
        return None, smoke
    if len(rest) > 1 or (not rest and default is None) or (rest and rest[0] not in choices):
        raise ValueError(f"{config_name} takes one of {choices} (optionally ',smoke'), e.g. "
                         f"{config_name}:{choices[0]}; found {arg!r}.")
    return (rest[0] if rest else default), smoke


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

