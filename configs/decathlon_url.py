"""Visual Decathlon universal representation (URL): a ResNet-26 student with per-domain
BatchNorm and heads, started from the ImageNet teacher and distilled from the ten frozen
single-domain teachers through per-domain linear adapters (256 -> 256): 1 - kernel CKA on
the features, KL with T = 8 on the logits, lambda 10 for ImageNet, 0.1 for DPed and 1
otherwise, annealed linearly per epoch to 0 (PAPER.md §2).

Protocol: the authors' release (VICO-UoE/UniversalRepresentations, VisualDecathlon/,
train_url.py, run_train_url_train+val.sh, run_test_url.sh): teachers and student trained on
train + val (`train_split='train+val'`), the last model kept, scored on the labelled test
split; fixed per-domain mean/std (Rebuffi et al.); the student sees every 64 px crop
bilinearly resized to 72 x 72 (`model.student_input_size=72`, as `trainurl` / `urltest` do
with kornia) in training and evaluation, while each teacher gets its native crop of the same
batch. `--config.train_split=train` selects the model on validation instead.

Run (one GPU), loading the teachers of decathlon_sdl.py (trained on train + val as well;
otherwise they are trained first):

    python -m ur_jax.main --config configs/decathlon_url.py --workdir runs/decathlon_url \\
        --config.manual_dir=PATH/TO/folder/holding/decathlon-1.0 \\
        --config.train_split=train+val \\
        --config.teachers.checkpoints.imagenet12=runs/decathlon_sdl/teachers/imagenet12/model \\
        --config.teachers.checkpoints.aircraft=runs/decathlon_sdl/teachers/aircraft/model ...

Expected (PAPER.md §2, Table 2, test accuracy %): 61.45 / 74.35 / 80.45 / 97.55 / 59.57 /
98.24 / 86.73 / 89.72 / 96.95 / 49.01 (ImNet, Airc, C100, DPed, DTD, GTSR, Flwr, OGlt,
SVHN, UCF), mean 79.40, decathlon score 3626 (3625.3 from the rounded row), Delta_MDL
+4.19% against the Finetune row. Not yet reproduced here: no GPU run has been made.

`:smoke`: a seconds-long run on a fake tree (see decathlon_sdl.py; train split only, with
model selection).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.decathlon import recipe as decathlon_config


def get_config(arg: str | None = None):
    """URL on the Decathlon (``arg``: nothing or ``'smoke'``)."""
    _, flags = parse_arg(arg, "decathlon_url.py")
    c = decathlon_config.base(("teachers", "url"))
    return decathlon_config.shrink_to_smoke(c) if "smoke" in flags else c
