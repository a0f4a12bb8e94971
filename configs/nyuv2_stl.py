"""NYU-v2 single-task teacher (SegNet): one of semantic / depth / normal, MTAN's recipe.

Data: MTAN's preprocessed NYU-v2 (288x384, 795 train / 654 test, 13 classes; download link in
https://github.com/lorenmt/mtan), unpacked so that PATH/train/image/0.npy exists.

Run (one GPU; the paper's recipe: batch 2, 200 epochs, Adam 1e-4 halved after 100 epochs):

    python -m ur_jax.main --config configs/nyuv2_stl.py:semantic --workdir runs/nyuv2_stl_semantic \\
        --config.manual_dir=PATH [--config.data_dir=DIR]

and the same with :depth and :normal. The teacher is saved to
runs/nyuv2_stl_<task>/teachers/<task>/model, which nyuv2_url.py and nyuv2_mtl.py take as
--config.teachers.checkpoints.<task>=... .

Protocol: the losses and test metrics of the authors' DensePred code, with which the paper's
numbers were computed (VICO-UoE/UniversalRepresentations, utils/dense_losses.py,
utils/evaluation.py): mIoU from the whole-test-set confusion matrix; depth errors with the
prediction clamped to >= 1e-9; normal pixels valid where the target's channels sum to
non-zero, angle of the L2-normalised prediction against the raw target.

Expected (PAPER.md §1, STL row): semantic mIoU 40.54 %, depth abs err 0.6276, normal mean
angle 24.28 deg (not yet reproduced here: no GPU run of this config has been made).

`:semantic,smoke` (or :depth,smoke / :normal,smoke) is a seconds-long run of the same code
path on a tiny SegNet, used by the tests on fake data.
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: ``semantic``, ``depth`` or ``normal``, optionally followed by ``,smoke``."""
    task, flags = parse_arg(arg, "nyuv2_stl.py", ("semantic", "depth", "normal"), required=True)
    c = dense_config.base("nyuv2")
    c.tasks = (task,)
    c.stages = ("stl",)
    c.teachers.checkpoints = {task: ""}
    return dense_config.shrink_to_smoke(c, batch_size=8) if "smoke" in flags else c
