"""Cityscapes URL student: one SegNet distilled from the semantic (7 classes) and inverse-depth
single-task teachers, with the NYU-v2 recipe (PAPER.md §1; lambda = 1 / 1; batch 8).

Run (one GPU), with teachers from cityscapes_stl.py (otherwise the run trains them first):

    python -m ur_jax.main --config configs/cityscapes_url.py --workdir runs/cityscapes_url \\
        --config.manual_dir=PATH \\
        --config.teachers.checkpoints.semantic=runs/cityscapes_stl_semantic/teachers/semantic/model \\
        --config.teachers.checkpoints.depth=runs/cityscapes_stl_depth/teachers/depth/model

Protocol: the authors' DensePred losses and test metrics (VICO-UoE/UniversalRepresentations,
utils/dense_losses.py, utils/evaluation.py; see cityscapes_stl.py).

Expected: the paper gives no Cityscapes numbers; results.json reports Delta_MTL against this
run's own STL row, which URL should beat as on NYU-v2. Not yet run here (no GPU).

`:smoke`: a seconds-long run on a tiny SegNet (tests, fake data).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: nothing, or ``smoke``."""
    _, flags = parse_arg(arg, "cityscapes_url.py")
    c = dense_config.base("cityscapes7")
    c.stages = ("stl", "url")
    return dense_config.shrink_to_smoke(c) if "smoke" in flags else c
