"""Cityscapes multi-task baseline (SegNet, semantic 7 classes + inverse depth) with one of the
multi-task optimisation methods of ur_jax.mtl, next to the single-task teachers.

Methods: uniform, uncertainty, dwa, gradnorm, mgda, pcgrad, graddrop, imtl_l, imtl_g,
imtl_h, cagrad; LibMTL's gls, rlw, stch, famo, db_mtl, gradvac, aligned_mtl, upgrad,
excess_mtl, nash_mtl, fairgrad, moco, modo, sdmgrad (ur_jax.mtl; options as in
nyuv2_mtl.py); and bam (Born-Again Multi-task networks: targets annealed linearly from the
stl teachers' predictions to the ground truth). Architectures: --config.model.name=segnet
(default), mtan or cross_stitch (see nyuv2_mtl.py). Data: MTAN's preprocessed Cityscapes (see
cityscapes_stl.py).

Protocol: the authors' DensePred losses and evaluation (VICO-UoE/UniversalRepresentations,
utils/dense_losses.py, utils/evaluation.py): mIoU from the whole-test-set confusion matrix,
depth (inverse depth here) errors with the prediction clamped to >= 1e-9; see nyuv2_mtl.py.

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

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: a method name (default ``uniform``), optionally followed by ``,smoke``."""
    method, flags = parse_arg(arg, "cityscapes_mtl.py", dense_config.MTL_STAGE_METHODS,
                              default="uniform")
    c = dense_config.base("cityscapes7")
    c.stages = ("stl", "mtl")
    c.mtl.method = method
    return dense_config.shrink_to_smoke(c) if "smoke" in flags else c
