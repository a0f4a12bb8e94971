"""NYU-v2 URL student: one SegNet distilled from the three single-task teachers.

Per task, two bias-free 1x1 adapters map the student's encoder bottleneck (512 ch) and
decoder output (64 ch) to the teacher's width (64); both are resized bilinearly to the
teacher's decoder-output size and aligned to it with the channel-wise L2-normalised squared
distance, weights lambda = 1 / 1 / 2 (semantic / depth / normal); task losses uniform; no
annealing. Student: Adam 1e-4 halved after 100 of 200 epochs, batch 2; adapters: Adam 1e-2,
weight decay 5e-4, cosine decay (PAPER.md §1). Data: MTAN's preprocessed NYU-v2 (see
nyuv2_stl.py).

Run (one GPU), with teachers from nyuv2_stl.py (otherwise the run trains them first):

    python -m ur_jax.main --config configs/nyuv2_url.py --workdir runs/nyuv2_url \\
        --config.manual_dir=PATH \\
        --config.teachers.checkpoints.semantic=runs/nyuv2_stl_semantic/teachers/semantic/model \\
        --config.teachers.checkpoints.depth=runs/nyuv2_stl_depth/teachers/depth/model \\
        --config.teachers.checkpoints.normal=runs/nyuv2_stl_normal/teachers/normal/model

Protocol: the authors' DensePred losses and test metrics (VICO-UoE/UniversalRepresentations,
utils/dense_losses.py, utils/evaluation.py; see nyuv2_stl.py).

Expected (PAPER.md §1): mIoU 45.52 %, depth abs err 0.4912, normal mean angle 24.57 deg,
Delta_MTL +10.95 % against the STL constants (+10.94 against the table's rounded STL row).
Not yet reproduced here (no GPU run has been made). The earlier KD4MTL release used adapter
lr 1e-1: --config.url.adapter_learning_rate=0.1.

`:smoke`: a seconds-long run on a tiny SegNet (tests, fake data).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: nothing, or ``smoke``."""
    _, flags = parse_arg(arg, "nyuv2_url.py")
    c = dense_config.base("nyuv2")
    c.stages = ("stl", "url")
    return dense_config.shrink_to_smoke(c) if "smoke" in flags else c
