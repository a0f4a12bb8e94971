"""Visual Decathlon single-domain teachers (SDL, the "Finetune" baseline): ResNet-26, one
network per domain; ImageNet from scratch, every other domain fine-tuned from it.

Protocol: the authors' release (VICO-UoE/UniversalRepresentations, VisualDecathlon/,
run_train_sdl_train+val.sh): trained on train + val (`train_split='train+val'`), the last
model kept, images normalised with Rebuffi et al.'s fixed per-domain mean/std; scored on the
test split with its labels (see README, "Multi-domain learning on the Visual Decathlon", for
the labelled test annotations). `--config.train_split=train` trains on train only and keeps
the model with the best validation accuracy instead.

Data: the local decathlon-1.0/ (data/ with the images, annotations/ with the COCO-style
json files, plus <d>_test.json from the authors' labels_test.zip;
https://www.robots.ox.ac.uk/~vgg/decathlon/), prepared on first use.

Run all ten (one GPU; 120 epochs x 100 iterations each, SGD, lr x0.1 at epochs 80 and 100):

    python -m ur_jax.main --config configs/decathlon_sdl.py --workdir runs/decathlon_sdl \\
        --config.manual_dir=PATH/TO/folder/holding/decathlon-1.0 \\
        --config.train_split=train+val

or one domain (`:dtd`; the ImageNet teacher is trained first unless given with
--config.teachers.checkpoints.imagenet12=runs/decathlon_sdl/teachers/imagenet12/model).
Teachers are saved as <workdir>/teachers/<domain>/model, which the MDL and URL configs load.

Expected (PAPER.md §2, Table 2 "Finetune", test accuracy %): ImNet 59.87, Airc 60.34,
C100 82.12, DPed 92.82, DTD 55.53, GTSR 97.53, Flwr 81.41, OGlt 87.69, SVHN 96.55,
UCF 51.20; mean 76.51; decathlon score 2500 (by construction of the score). Not yet
reproduced here: no GPU run has been made. Without test labels (the challenge's stripped
test file) results are on the validation split (with train+val: images the teachers were
trained on) and <workdir>/predictions/teachers_test.json is the challenge's results file.

`:smoke` (or `:dtd,smoke`): a seconds-long run on a fake tree, for tests (train split only,
with model selection):

    python -m ur_jax.suites.decathlon --fake /tmp/fake_decathlon
    python -m ur_jax.main --config configs/decathlon_sdl.py:smoke --workdir /tmp/dec_sdl \\
        --config.manual_dir=/tmp/fake_decathlon
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.decathlon import recipe as decathlon_config


def get_config(arg: str | None = None):
    """SDL teachers for every domain, or for ``arg`` (a domain, with ImageNet first)."""
    domain, flags = parse_arg(arg, "decathlon_sdl.py", decathlon_config.DOMAINS)
    c = decathlon_config.base(("teachers",))
    if domain is not None:
        c.domains = tuple(dict.fromkeys(("imagenet12", domain)))
    if "smoke" in flags:
        keep = c.domains if domain is not None else None
        c = decathlon_config.shrink_to_smoke(c)
        if keep is not None:
            c.domains = keep
            c.teachers.checkpoints = {d: "" for d in keep}
    return c
