"""Meta-Dataset single-domain teacher (SDL): a ResNet-18 trained on the training classes of one
source with its own recipe (PAPER.md §3: SGD momentum 0.9, weight decay 7e-4, cosine annealing
with warm restarts; e.g. ImageNet 64 / 3e-2 / 480k iterations / restarts every 48k, Omniglot
16 / 3e-2 / 50k / 3k), then evaluated by NCC and PA on 600 test episodes of every source.
Protocol of the authors' code (VICO-UoE/URL, train_resnet18_sdl.sh): at every restart (eval_freq
= the restart period) NCC on 300 validation episodes of the source's valid classes; the best
model is kept and saved; PA / TSA treat only this source as seen.

Run (one GPU; the source is the config argument), from the official converted records:

    python -m ur_jax.main --config configs/metadataset_sdl.py:omniglot \\
        --workdir runs/metadataset_sdl/omniglot \\
        --config.metadataset.records_dir=PATH/TO/records

The teacher is saved to runs/metadataset_sdl/omniglot/teachers/omniglot/model; the URL config
loads the eight of them (metadataset_url.py).

Expected (PAPER.md §3, "Best SDL" row, the best teacher per test source, NCC): 54.3 / 93.8 /
84.5 / 70.6 / 72.1 / 82.6 / 65.9 / 86.7 / 47.1 / 49.7 / 91.0 / 65.4 / 56.2 (ImNet, Omni, Airc,
Birds, Text, QDraw, Fungi, Flwr, Traffic, COCO, MNIST, C10, C100); seen / unseen / all averages
76.3 / 61.9 / 70.8. A source's own teacher is the best one on its own test classes. Not yet
reproduced here: no GPU run has been made.

`:omniglot,smoke` (any training source with ilsvrc_2012 or omniglot for the fake data): a
seconds-long run on a fake records directory
(`python -m ur_jax.suites.metadataset --fake DIR`, then `--config.metadataset.records_dir=DIR`).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.metadataset import recipe as metadataset_config
from ur_jax.suites.metadataset.common import TRAIN_SOURCES


def get_config(arg: str | None = None):
    """The SDL teacher of one source (``arg``: ``'<source>[,smoke]'``)."""
    source, flags = parse_arg(arg, "metadataset_sdl.py", TRAIN_SOURCES, required=True)
    c = metadataset_config.base(("teachers", "fewshot"), domains=(source,))
    c.fewshot.models = ("teachers",)
    return metadataset_config.shrink_to_smoke(c) if "smoke" in flags else c
