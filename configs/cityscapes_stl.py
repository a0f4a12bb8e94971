"""Cityscapes single-task teacher (SegNet): semantic (7 classes) or inverse depth, MTAN's recipe.

Data: MTAN's preprocessed Cityscapes (128x256, 2975 train / 500 test; 7- and 19-class labels,
-1 ignore; inverse depth, 0 invalid; download link in https://github.com/lorenmt/mtan),
unpacked so that PATH/train/image/0.npy exists. The 19-class labels:
--config.dataset=cityscapes19.

Run (one GPU; batch 8, 200 epochs, Adam 1e-4 halved after 100 epochs):

    python -m ur_jax.main --config configs/cityscapes_stl.py:semantic \\
        --workdir runs/cityscapes_stl_semantic --config.manual_dir=PATH

and the same with :depth. The teacher is saved to runs/cityscapes_stl_<task>/teachers/<task>/model.

Protocol: the authors' DensePred losses and test metrics (VICO-UoE/UniversalRepresentations,
utils/dense_losses.py, utils/evaluation.py): mIoU from the whole-test-set confusion matrix,
inverse-depth errors with the prediction clamped to >= 1e-9.

Expected: the paper gives no Cityscapes numbers (PAPER.md §1); these single-task results
are the reference that cityscapes_mtl.py and cityscapes_url.py compute Delta_MTL against.
Not yet run here (no GPU).

`:semantic,smoke` / `:depth,smoke`: a seconds-long run on a tiny SegNet (tests, fake data).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: ``semantic`` or ``depth``, optionally followed by ``,smoke``."""
    task, flags = parse_arg(arg, "cityscapes_stl.py", ("semantic", "depth"), required=True)
    c = dense_config.base("cityscapes7")
    c.tasks = (task,)
    c.stages = ("stl",)
    c.teachers.checkpoints = {task: ""}
    return dense_config.shrink_to_smoke(c) if "smoke" in flags else c
