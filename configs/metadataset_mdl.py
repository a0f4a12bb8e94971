"""Meta-Dataset multi-domain baseline (MDL): one ResNet-18 with a head per training source,
trained on the eight training sources at once (one batch per source per step, 448 ImageNet +
64 each other source; 240k iterations, SGD momentum 0.9, lr 3e-2, weight decay 7e-4, warm
restarts every 48k; PAPER.md §3), then evaluated by NCC and PA on 600 test episodes of every
source. Protocol of the authors' code (VICO-UoE/URL, train_resnet18_mdl.sh): every 48k steps
NCC on 300 validation episodes of each source's valid classes; the best model is kept
(runs/.../selection/mdl/best.json) and is the one saved and evaluated.

Run (one GPU), from the official converted records:

    python -m ur_jax.main --config configs/metadataset_mdl.py --workdir runs/metadataset_mdl \\
        --config.metadataset.records_dir=PATH/TO/records

Expected (PAPER.md §3, MDL row, test accuracy % with PA): 52.9 / 93.7 / 84.9 / 79.2 / 70.9 /
81.7 / 63.2 / 88.7 / 49.2 / 47.3 / 94.2 / 63.2 / 54.7 (ImNet, Omni, Airc, Birds, Text, QDraw,
Fungi, Flwr, Traffic, COCO, MNIST, C10, C100); seen / unseen / all averages 76.9 / 61.7 / 71.1
(results vary by one or two points from run to run). Not yet reproduced here: no GPU run has
been made.

`:smoke`: a seconds-long run on a fake records directory
(`python -m ur_jax.suites.metadataset --fake DIR`, then `--config.metadataset.records_dir=DIR`).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.metadataset import recipe as metadataset_config


def get_config(arg: str | None = None):
    """MDL on Meta-Dataset (``arg``: nothing or ``'smoke'``)."""
    _, flags = parse_arg(arg, "metadataset_mdl.py")
    c = metadataset_config.base(("mdl", "fewshot"))
    c.fewshot.models = ("mdl",)
    return metadataset_config.shrink_to_smoke(c) if "smoke" in flags else c
