"""Visual Decathlon multi-domain baseline (MDL): one ResNet-26 shared by the ten domains,
with per-domain BatchNorm and heads, trained on all domains at once (one batch per
domain per iteration) with the task losses only, from the ImageNet teacher.

`:parallel` adds Rebuffi et al.'s parallel residual adapters (the "Parallel RA" row),
`:series` their series adapters.

Protocol: the authors' release (VICO-UoE/UniversalRepresentations, VisualDecathlon/,
train_mdl.py, run_train_mdl_train+val.sh): trained on train + val (`train_split=
'train+val'`), the last model kept, scored on the labelled test split; fixed per-domain
mean/std (Rebuffi et al.); the student sees every 64 px crop bilinearly resized to 72 x 72
(imagenet12's crop size, `model.student_input_size=72`; as `trainmdl` / `urltest` do with
kornia), in training and evaluation, while the teachers see their native crops.
`--config.train_split=train` selects the model on validation instead;
`--config.model.student_input_size=0` feeds the native 64 px crops.

Run (one GPU), loading the teachers of decathlon_sdl.py (trained on train + val as well;
otherwise they are trained first):

    python -m ur_jax.main --config configs/decathlon_mdl.py --workdir runs/decathlon_mdl \\
        --config.manual_dir=PATH/TO/folder/holding/decathlon-1.0 \\
        --config.train_split=train+val \\
        --config.teachers.checkpoints.imagenet12=runs/decathlon_sdl/teachers/imagenet12/model \\
        --config.teachers.checkpoints.aircraft=runs/decathlon_sdl/teachers/aircraft/model ...

Expected (PAPER.md §2, Table 2, test accuracy %): MDL 59.30 / 67.21 / 79.60 / 97.08 /
57.66 / 97.28 / 83.88 / 87.41 / 96.39 / 45.76 (ImNet, Airc, C100, DPed, DTD, GTSR, Flwr,
OGlt, SVHN, UCF), mean 77.16, score 2866; Parallel RA mean 78.07, score 3412. Not yet
reproduced here: no GPU run has been made. results.json: per-domain accuracy, decathlon
score, Delta_MDL against the run's teachers and against the paper's Finetune row.

`:smoke` / `:parallel,smoke`: a seconds-long run on a fake tree (see decathlon_sdl.py;
train split only, with model selection).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.decathlon import recipe as decathlon_config


def get_config(arg: str | None = None):
    """MDL with ``arg`` adapters (none, ``'parallel'`` or ``'series'``)."""
    adapter, flags = parse_arg(arg, "decathlon_mdl.py", ("parallel", "series"))
    c = decathlon_config.base(("teachers", "mdl"), adapter or "none")
    return decathlon_config.shrink_to_smoke(c) if "smoke" in flags else c
