"""Building blocks of the Meta-Dataset configs (``configs/metadataset_*.py``).

:func:`base` gives a complete config with the paper's recipe (PAPER.md §3): the Meta-Dataset
ResNet-18 (5x5 stride-2 stem, no max-pool, 512-d feature) on 84x84 images in [-1, 1];

* teachers (SDL), one per training source, SGD momentum 0.9, weight decay 7e-4, cosine
  annealing with warm restarts, and per source batch / learning rate / iterations / restart
  period (:data:`TEACHER_RECIPE`);
* the multi-domain baseline (MDL) and the URL student: 240k iterations of one batch per source
  (448 ImageNet + 64 each other source), SGD momentum 0.9, lr 3e-2, weight decay 7e-4, warm
  restarts every 48k; URL adds linear 512 -> 512 adapters per source (Adam lr 0.1, weight
  decay 5e-4, with the student's warm restarts every 48k as in VICO-UoE/URL's
  ``train_net_url.py``), 1 - kernel CKA on L2-normalised features and KL with T = 4 on the
  logits, weights 4 for ImageNet and 1 otherwise, annealed as ``1 - t / (48k * k)`` with
  k = 5 for ImageNet, 2 for Omniglot / QuickDraw / Fungi, 1 otherwise;
* model selection as in the authors' code: every ``select_every`` steps (their ``eval_freq``:
  48k for MDL and URL, each source's restart period for its teacher) NCC accuracy on 300
  episodes (``select_episodes``, their ``eval_size``) of the validation classes of every
  training source, drawn once from the config's seed; the model with the best average is
  kept (``workdir/selection/<stage>/best.json`` and ``model``), and also checked at a stage's
  last step;
* few-shot evaluation on the test classes of all 13 sources, 600 episodes per source of the
  standard variable-way variable-shot protocol (or 5-way-1-shot / varying-way-5-shot), with
  NCC, PA or TSA; PA / TSA use the "seen" learning rates only on the sources the evaluated
  model was trained on (a teacher: its source; a saved model: the domains of its heads).

The config files choose the stages (their ``:arg[,smoke]`` argument read by
:func:`ur_jax.config.parse_arg`); :func:`shrink_to_smoke` makes any of them a seconds-long
run on a fake records directory (``python -m ur_jax.suites.metadataset --fake DIR``).
"""

from __future__ import annotations

import ml_collections

from ur_jax import config as config_lib
from ur_jax.suites.metadataset.common import SOURCES, TRAIN_SOURCES

__all__ = ["SMOKE_FEWSHOT", "SMOKE_TRAIN", "TEACHER_RECIPE", "base", "shrink_to_smoke"]

#: Teachers (PAPER.md §3): ``{source: (batch, learning rate, iterations, restart period)}``.
TEACHER_RECIPE = {
    "ilsvrc_2012": (64, 3e-2, 480_000, 48_000),
    "omniglot": (16, 3e-2, 50_000, 3_000),
    "aircraft": (8, 3e-2, 50_000, 3_000),
    "cu_birds": (16, 3e-2, 50_000, 3_000),
    "dtd": (32, 3e-2, 50_000, 1_500),
    "quickdraw": (64, 1e-2, 480_000, 48_000),
    "fungi": (32, 3e-2, 480_000, 15_000),
    "vgg_flower": (8, 3e-2, 50_000, 1_500),
}
STUDENT_STEPS, RESTART = 240_000, 48_000
#: Smoke runs: two training sources with structure (WordNet nodes, alphabets) and one
#: unseen source, as in the fake records directory's defaults.
SMOKE_TRAIN = ("ilsvrc_2012", "omniglot")
SMOKE_FEWSHOT = ("ilsvrc_2012", "omniglot", "traffic_sign")


def _student() -> dict:
    """The students' (MDL, URL) SGD values with warm restarts and model selection."""
    return {"steps": STUDENT_STEPS, "batch_size": {"ilsvrc_2012": 448, "default": 64},
            "learning_rate": 3e-2, "weight_decay": 7e-4, "momentum": 0.9, "warmup_steps": 0,
            "schedule": "cosine_restarts", "restart_every": RESTART,
            # model selection every 48k steps (the authors' --train.eval_freq=48000)
            "select_every": RESTART}


def base(stages: tuple[str, ...], domains: tuple[str, ...] = TRAIN_SOURCES
         ) -> ml_collections.ConfigDict:
    """A Meta-Dataset config running ``stages`` on the training sources ``domains``. Every key
    the runner reads is there (:mod:`ur_jax.config.blocks`), plus this suite's own
    ``metadataset`` block."""
    c = config_lib.classification_defaults(seed=0, dataset="metadataset", domains=tuple(domains),
                                           stages=tuple(stages))
    # Where the sources come from: 'records' (the official converted records, records_dir),
    # 'manual' (raw downloads of aircraft / fungi / traffic_sign, manual_dir), 'tfds' (TFDS's
    # own builders, tfds_data_dir), or {source: origin}.
    c.metadataset = ml_collections.ConfigDict({
        "origin": "records", "records_dir": "", "manual_dir": "", "tfds_data_dir": ""})
    c.data_dir = ""  # the prepared ur_metadataset; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.model = config_lib.classifier_model(backbone="resnet18_metadataset", kwargs={"width": 1.0})
    c.augment = "none"  # or 'crop' / 'crop_flip' (random 2-pixel translations, flips)
    c.init_rng_impl = "threefry2x32"
    c.teacher_mode = "auto"

    r = {d: TEACHER_RECIPE[d] for d in domains}
    c.teachers = config_lib.teacher_stage(
        steps={d: v[2] for d, v in r.items()}, batch_size={d: v[0] for d, v in r.items()},
        learning_rate={d: v[1] for d, v in r.items()}, weight_decay=7e-4,
        momentum=0.9, warmup_steps=0, schedule="cosine_restarts",
        restart_every={d: v[3] for d, v in r.items()},
        # model selection at every restart (train_resnet18_sdl.sh: eval_freq = anneal_freq)
        select_every={d: v[3] for d, v in r.items()},
        # Reuse trained teachers: --config.teachers.checkpoints.dtd=RUN/teachers/dtd/model
        checkpoints={d: "" for d in domains})
    c.mdl = config_lib.student_stage(**_student())
    c.url = config_lib.url_stage(
        **_student(), adapter="linear", adapter_learning_rate=0.1, adapter_weight_decay=5e-4,
        adapter_schedule="",  # '' = the student's warm restarts (the authors'); or 'cosine'
        feature_loss="kernel_cka", temperature=4.0,
        lambda_f={"ilsvrc_2012": 4.0, "default": 1.0},
        lambda_p={"ilsvrc_2012": 4.0, "default": 1.0},
        anneal=True,  # weight 1 - t / (anneal_steps * k), per source
        anneal_steps=RESTART,
        anneal_k={"ilsvrc_2012": 5, "omniglot": 2, "quickdraw": 2, "fungi": 2, "default": 1},
        anneal_every=1)

    # Model selection (the stages' select_every): NCC on select_episodes validation episodes
    # (the authors' eval_size) of each training source's valid classes; the best average wins.
    c.select_every = 0
    c.select_episodes = 300
    c.select_protocol = "standard"
    c.eval_batch_size = 256
    c.eval_limit = 0
    c.fewshot = config_lib.episodic_fewshot(
        domains=SOURCES, split="test", protocol="standard", episodes=600,
        methods=("ncc", "pa"), models=("teachers", "mdl", "url"),
        # The sources a loaded checkpoint was trained on get the "seen" inner-loop learning
        # rates: by default each model's own training domains (its heads); `seen` overrides
        # them for every checkpoint, checkpoint_seen.<row name> for one (sources or 'a,b').
        seen=(),
        checkpoint_seen={},
        checkpoints={},  # {row name: saved model (workdir/students/url/model, ...)}
        buckets=(16, 32, 64, 128, 256, 512),
        inner_steps=0)  # PA / TSA / probe steps; 0 = the paper's (40; probe 100)
    c.log_every = 100
    c.checkpoint_every = 500  # divides every select_every (1.5k ... 48k)
    c.keep_checkpoints = 2
    c.data_threads = 8
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A seconds-long version of ``c`` on a fake records directory: ImageNet and Omniglot as
    training sources (or the single source of an SDL config, when it is one of them), a
    1/16-wide ResNet-18, 3 steps per stage of 8 images per source with model selection at
    steps 2 and 3 on 3 validation episodes per source, 4 test episodes per source of ImageNet,
    Omniglot and traffic signs with 3 inner-loop steps for PA / TSA."""
    if c.domains:
        kept = tuple(d for d in c.domains if d in SMOKE_TRAIN) or SMOKE_TRAIN[:1]
        c.domains = kept
    c.teachers.checkpoints = {d: "" for d in c.domains}
    c.model.kwargs = {"width": 1 / 16}
    c.init_rng_impl = "rbg"
    for stage in ("teachers", "mdl", "url"):
        mapping = stage == "teachers"  # the teachers' values are per-source mappings
        c[stage].steps = {"default": 3} if mapping else 3
        c[stage].batch_size = {"default": 8}
        c[stage].restart_every = {"default": 2} if mapping else 2
        c[stage].select_every = {"default": 2} if mapping else 2
    c.select_episodes = 3
    c.url.anneal_steps = 2
    c.fewshot.domains = SMOKE_FEWSHOT
    c.fewshot.episodes = 4
    c.fewshot.buckets = (32, 64)
    c.fewshot.inner_steps = 3
    c.checkpoint_every = 1
    c.eval_batch_size = 16
    c.log_every = 1
    c.data_threads = 2
    return c
