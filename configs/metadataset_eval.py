"""Meta-Dataset few-shot evaluation of any saved model (a URL or MDL student, an SDL teacher):
600 test episodes per source of a protocol (the argument: `standard`, the official
variable-way variable-shot episodes; `five_way_one_shot`; `varying_way_five_shot`), classified
by NCC, PA and TSA (residual matrix adapters on every 3x3 conv, alpha = 1e-4 x I, plus PA;
Adadelta 40 steps; alpha lr 0.05 seen / 0.5 unseen, beta lr 0.1 / 1; PAPER.md §3). Per-source
accuracy with 95% CI, and the seen / unseen / all averages.

Run (one GPU) on the URL student of metadataset_url.py:

    python -m ur_jax.main --config configs/metadataset_eval.py:standard \\
        --workdir runs/metadataset_eval/url \\
        --config.metadataset.records_dir=PATH/TO/records \\
        --config.fewshot.checkpoints.url=runs/metadataset_url/students/url/model

Choose the methods with --config.fewshot.methods=ncc,pa,tsa,linear; several models at once
with more of the entries --config.fewshot.checkpoints.{model,url,mdl,sdl}=PATH (the row names).
Seen sources (the authors' protocol, VICO-UoE/URL after their fix): PA / TSA use the "seen"
learning rates only on the sources each model was trained on, read from its heads (a URL /
MDL student: its training sources; an ImageNet teacher: ImageNet only, so aircraft gets the
unseen rates; a converted teacher with the default head name: the source whose official
class count it has). Override them for one model with
--config.fewshot.checkpoint_seen.url=ilsvrc_2012,omniglot or for all with
--config.fewshot.seen=omniglot.

Expected (PAPER.md §3, standard protocol): URL + PA 57.5 / 94.5 / 88.6 / 80.5 / 76.2 / 81.9 /
68.8 / 92.1 / 63.3 / 54.0 / 94.5 / 71.9 / 62.6, averages 80.0 / 69.3 / 75.9; TSA 57.4 / 95.0 /
89.3 / 81.4 / 76.7 / 82.0 / 67.4 / 92.2 / 83.5 / 55.8 / 96.7 / 80.6 / 69.6, averages 80.2 / 77.2
/ 79.0 (ImNet, Omni, Airc, Birds, Text, QDraw, Fungi, Flwr, Traffic, COCO, MNIST, C10, C100).
Not yet reproduced here: no GPU run has been made.

`:standard,smoke`: 4 episodes per source of a fake records directory
(`python -m ur_jax.suites.metadataset --fake DIR`), on a model saved by a smoke run.
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.data.episodes import PROTOCOLS
from ur_jax.suites.metadataset import recipe as metadataset_config

#: Row names a saved model can take on the command line (--config.fewshot.checkpoints.<name>).
ROWS = ("model", "url", "mdl", "sdl")


def get_config(arg: str | None = None):
    """Few-shot evaluation of saved models (``arg``: ``'[protocol][,smoke]'``)."""
    protocol, flags = parse_arg(arg, "metadataset_eval.py", PROTOCOLS, default="standard")
    c = metadataset_config.base(("fewshot",), domains=())
    c.fewshot.protocol = protocol
    c.fewshot.methods = ("ncc", "pa", "tsa")
    c.fewshot.models = ()
    c.fewshot.checkpoints = {name: "" for name in ROWS}
    c.fewshot.checkpoint_seen = {name: "" for name in ROWS}  # '' = from the model's heads
    return metadataset_config.shrink_to_smoke(c) if "smoke" in flags else c
