"""The offline dense default: single-task teachers, a uniform multi-task baseline and URL on
procedurally rendered 3-D scenes.

The data (``ur_jax.data.scenes``, built offline and deterministically in about 15 s) are
64x96 renderings of spheres, boxes and cylinders on a floor in front of a wall or open sky,
with per-pixel class (5 classes; sky and no label = -1), metric depth (0 = invalid, with a
few sensor holes) and camera-space surface normals: the NYU-v2 record format. The recipe is
the paper's (PAPER.md §1: SegNet, MTAN's scale-crop and flip augmentation, Adam, URL
adapters on the student's bottleneck and decoder features, lambda = 1 / 1 / 2) on a 1/8-wide
SegNet and a CPU budget: a few epochs, a larger learning rate.

Run (about 7 minutes on 2 CPU cores, 1 device):

    python -m ur_jax.main --config configs/dense_default.py --workdir /tmp/ur_dense

Expected: see the table measured below (seed 0); results.json in the workdir.

    MEASURED_TABLE_PLACEHOLDER

Seconds-long version of the same pipeline (a two-level SegNet, 2 steps per stage):

    python -m ur_jax.main --config configs/dense_default.py:smoke --workdir /tmp/ur_dense_smoke
"""

from __future__ import annotations

from ur_jax import dense_config


def get_config(arg: str | None = None):
    """``arg``: nothing, or ``smoke``."""
    _, smoke = dense_config.parse_args(arg, None, "dense_default.py")
    c = dense_config.base("scenes")
    c.stages = ("stl", "mtl", "url")
    c.model.kwargs.width = 1 / 8  # 8..64 channels
    c.init_rng_impl = "rbg"  # compiles faster on CPU; deterministic either way
    for stage in ("stl", "mtl", "url"):
        c[stage].batch_size = 8
        c[stage].epochs = 4  # 150 steps per epoch
        c[stage].learning_rate = 1e-3
        c[stage].decay_every_epochs = 3
    c.scenes_config = "default"  # 1200 train / 300 test images ('tiny': 24 / 8, for tests)
    c.eval_batch_size = 50
    c.log_every = 50
    c.checkpoint_every = 200
    if smoke:
        c.scenes_config = "tiny"
        dense_config.shrink_to_smoke(c)
    return c
