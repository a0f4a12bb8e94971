"""Cityscapes multi-task baseline (SegNet, semantic 7 classes + inverse depth) with one of the
multi-task optimisation methods of ur_jax.mtl, next to the single-task teachers.

Methods: uniform, uncertainty, dwa, gradnorm, mgda, pcgrad, graddrop, imtl_l, imtl_g,
imtl_h, cagrad. Data: MTAN's preprocessed Cityscapes (see cityscapes_stl.py).

Run (one GPU; batch 8, 200 epochs), reusing teachers from cityscapes_stl.py (otherwise the
run trains them first):

    python -m ur_jax.main --config configs/cityscapes_mtl.py:uniform \\
        --workdir runs/cityscapes_mtl_uniform --config.manual_dir=PATH \\
        --config.teachers.checkpoints.semantic=runs/cityscapes_stl_semantic/teachers/semantic/model \\
        --config.teachers.checkpoints.depth=runs/cityscapes_stl_depth/teachers/depth/model

Expected: the paper gives no Cityscapes numbers; results.json reports Delta_MTL (mIoU and
depth abs err) against this run's own STL row. Not yet run here (no GPU).

`:<method>,smoke`: a seconds-long run on a tiny SegNet (tests, fake data).
"""

from __future__ import annotations

from ur_jax import dense_config


def get_config(arg: str | None = None):
    """``arg``: a method name (default ``uniform``), optionally followed by ``,smoke``."""
    method, smoke = dense_config.parse_args(arg, dense_config.MTL_METHODS, "cityscapes_mtl.py",
                                            default="uniform")
    c = dense_config.base("cityscapes7")
    c.stages = ("stl", "mtl")
    c.mtl.method = method
    return dense_config.shrink_to_smoke(c) if smoke else c
