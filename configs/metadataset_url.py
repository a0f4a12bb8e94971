"""Meta-Dataset universal representation (URL): a ResNet-18 student distilled from the eight
frozen single-domain teachers (metadataset_sdl.py) through linear 512 -> 512 adapters per source
(Adam lr 0.1, weight decay 5e-4): 1 - kernel CKA on L2-normalised features and KL with T = 4 on
the logits, weights 4 for ImageNet and 1 otherwise, annealed per source as 1 - t / (48k x k)
(k = 5 ImageNet, 2 Omniglot / QuickDraw / Fungi, 1 otherwise); 240k iterations of 448 ImageNet
+ 64 each other source, SGD momentum 0.9, lr 3e-2, weight decay 7e-4, warm restarts every 48k
(PAPER.md §3). Protocol of the authors' code (VICO-UoE/URL, train_net_url.py): the adapters'
Adam restarts with the student's cosine every 48k steps; every 48k steps NCC on 300 validation
episodes of each source's valid classes picks the best student, the one saved and evaluated.
Then NCC and PA (URL's protocol) on 600 test episodes of every source; add
TSA with --config.fewshot.methods=ncc,pa,tsa or evaluate the saved student with
metadataset_eval.py.

Run (one GPU), loading the teachers of metadataset_sdl.py (otherwise they are trained first):

    python -m ur_jax.main --config configs/metadataset_url.py --workdir runs/metadataset_url \\
        --config.metadataset.records_dir=PATH/TO/records \\
        --config.teachers.checkpoints.ilsvrc_2012=runs/metadataset_sdl/ilsvrc_2012/teachers/ilsvrc_2012/model \\
        --config.teachers.checkpoints.omniglot=runs/metadataset_sdl/omniglot/teachers/omniglot/model ...

The student is saved to runs/metadataset_url/students/url/model.

Expected (PAPER.md §3, "URL + PA" row, test accuracy %): 57.5 / 94.5 / 88.6 / 80.5 / 76.2 /
81.9 / 68.8 / 92.1 / 63.3 / 54.0 / 94.5 / 71.9 / 62.6 (ImNet, Omni, Airc, Birds, Text, QDraw,
Fungi, Flwr, Traffic, COCO, MNIST, C10, C100); seen / unseen / all averages 80.0 / 69.3 / 75.9
(results vary by one or two points from run to run). Not yet reproduced here: no GPU run has
been made.

`:smoke`: a seconds-long run on a fake records directory
(`python -m ur_jax.suites.metadataset --fake DIR`, then `--config.metadataset.records_dir=DIR`).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.metadataset import recipe as metadataset_config


def get_config(arg: str | None = None):
    """URL on Meta-Dataset (``arg``: nothing or ``'smoke'``)."""
    _, flags = parse_arg(arg, "metadataset_url.py")
    c = metadataset_config.base(("teachers", "url", "fewshot"))
    c.fewshot.models = ("url",)
    return metadataset_config.shrink_to_smoke(c) if "smoke" in flags else c
