"""Visual Decathlon URL with parallel residual adapters: decathlon_url.py with Rebuffi et
al.'s parallel adapters (a per-domain 1x1 conv beside every 3x3 conv, zero at the start
so that the student starts as the ImageNet teacher) in the student.

Protocol: the authors' release (VICO-UoE/UniversalRepresentations, VisualDecathlon/,
train_url_ad.py, run_train_url_ad_train+val.sh, run_test_url.sh --mode parallel_adapters):
trained on train + val (`train_split='train+val'`), the last model kept, scored on the
labelled test split; fixed per-domain mean/std (Rebuffi et al.). Unlike decathlon_url.py,
the student sees the native 64 px crops (`model.student_input_size=0`): the authors'
`trainurlad` runs each domain through the network separately and their `urltest` /
`urltestset` skip the 72 x 72 resize when adapters are attached (`ad=True`).
`--config.model.student_input_size=72` resizes as the plain URL student does.

Run (one GPU), loading the teachers of decathlon_sdl.py (trained on train + val as well;
otherwise they are trained first):

    python -m ur_jax.main --config configs/decathlon_url_parallel.py \\
        --workdir runs/decathlon_url_parallel \\
        --config.manual_dir=PATH/TO/folder/holding/decathlon-1.0 \\
        --config.train_split=train+val \\
        --config.teachers.checkpoints.imagenet12=runs/decathlon_sdl/teachers/imagenet12/model ...

Expected (PAPER.md §2, Table 2 "URL (parallel RA)", test accuracy %): 61.97 / 77.17 /
82.31 / 97.58 / 60.69 / 98.75 / 87.28 / 90.40 / 97.14 / 51.89 (ImNet, Airc, C100, DPed,
DTD, GTSR, Flwr, OGlt, SVHN, UCF), mean 80.52, decathlon score 4005, Delta_MDL +5.96%
against the Finetune row. Not yet reproduced here: no GPU run has been made.

`:smoke`: a seconds-long run on a fake tree (see decathlon_sdl.py; train split only, with
model selection).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.decathlon import recipe as decathlon_config


def get_config(arg: str | None = None):
    """URL with parallel adapters (``arg``: nothing or ``'smoke'``)."""
    _, flags = parse_arg(arg, "decathlon_url_parallel.py")
    c = decathlon_config.base(("teachers", "url"), adapter="parallel")
    c.model.student_input_size = 0  # the authors' adapter code feeds the native crops
    return decathlon_config.shrink_to_smoke(c) if "smoke" in flags else c
