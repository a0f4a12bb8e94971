"""Visual Decathlon URL with parallel residual adapters: decathlon_url.py with Rebuffi et
al.'s parallel adapters (a per-domain 1x1 conv beside every 3x3 conv, zero at the start
so that the student starts as the ImageNet teacher) in the student.

Run (one GPU), loading the teachers of decathlon_sdl.py (otherwise they are trained first):

    python -m ur_jax.main --config configs/decathlon_url_parallel.py \\
        --workdir runs/decathlon_url_parallel \\
        --config.manual_dir=PATH/TO/folder/holding/decathlon-1.0 \\
        --config.teachers.checkpoints.imagenet12=runs/decathlon_sdl/teachers/imagenet12/model ...

Expected (PAPER.md §2, Table 2 "URL (parallel RA)", test accuracy %): 61.97 / 77.17 /
82.31 / 97.58 / 60.69 / 98.75 / 87.28 / 90.40 / 97.14 / 51.89 (ImNet, Airc, C100, DPed,
DTD, GTSR, Flwr, OGlt, SVHN, UCF), mean 80.52, decathlon score 4005, Delta_MDL +5.96%
against the Finetune row. Not yet reproduced here: no GPU run has been made.

`:smoke`: a seconds-long run on a fake tree (see decathlon_sdl.py).
"""

from __future__ import annotations

from ur_jax import decathlon_config


def get_config(arg: str | None = None):
    """URL with parallel adapters (``arg``: nothing or ``'smoke'``)."""
    _, smoke = decathlon_config.parse_args(arg, "decathlon_url_parallel.py")
    c = decathlon_config.base(("teachers", "url"), adapter="parallel")
    return decathlon_config.shrink_to_smoke(c) if smoke else c
