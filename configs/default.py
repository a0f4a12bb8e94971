"""The main job: teachers, the multi-domain baseline (MDL) and the URL student on the embedded data.

Four small training domains built offline by ``ur_jax.suites.embedded`` (real handwritten
digits, drawn shapes, oriented textures, font glyphs under random affine maps; 10
classes each, 32x32 RGB), one ResNet-18 teacher per domain (Meta-Dataset stem, 1/8 width), then MDL and
URL with the same budget, then 5-way 5-shot episodes on held-out data (unseen letters
of the glyph domain, and an unseen domain of symbols) with nearest-centroid (NCC) and
pre-classifier alignment (PA) on the MDL and URL features.

Run (about 2 minutes on 2 CPU cores, 1 device; the data are prepared in seconds first):

    python -m ur_jax.main --config configs/default.py --workdir /tmp/ur_default

Expected (seed 0, measured on 2 CPU cores; results.json in the workdir):

    test accuracy %  digits  shapes  textures  glyphs  mean
    teachers           83.6    88.2      89.6    26.2  71.9
    mdl                84.0    81.6      89.4    90.6  86.4
    url                90.6    95.4      95.2    94.8  94.0

    5-way 5-shot % (600 episodes, +- 95% CI)  glyphs_novel      symbols
    mdl ncc                                    78.5 +- 0.7  74.3 +- 0.7
    mdl pa                                     78.8 +- 0.6  74.0 +- 0.7
    url ncc                                    81.5 +- 0.8  76.5 +- 0.7
    url pa                                     82.2 +- 0.7  76.9 +- 0.7

How the students' learning rates were chosen (the same way for MDL and URL; never on
test): the grid {0.005, 0.01, 0.02, 0.04} for each stage, trained on 1500 of each domain's
2000 training images and scored on the 500 held out (``:tune``: ``holdout_per_class=50``,
``evaluate_on='val'``), seeds 0, 1, 2, with the seed-0 teachers of that split. Mean
validation accuracy % of the four domains, per seed, then mean +- sd over seeds:

    student lr   mdl (seeds 0/1/2)    mean +- sd   url (seeds 0/1/2)   mean +- sd
    0.005       84.8 / 78.8 / 68.0   77.2 +- 8.5  91.4 / 91.6 / 94.4  92.5 +- 1.7
    0.01        90.7 / 91.6 / 94.7   92.3 +- 2.1  93.8 / 97.9 / 95.5  95.7 +- 2.1
    0.02        96.6 / 80.5 / 89.1   88.7 +- 8.1  95.8 / 97.1 / 89.4  94.1 +- 4.1
    0.04        95.3 / 75.5 / 60.3  77.0 +- 17.6  83.0 / 86.1 / 94.1  87.7 +- 5.7

0.01 is the best of the grid for both, and is the default. The whole job at seeds 0, 1, 2
(test; the teachers retrained per seed; few-shot rows: the mean of the two held-out sets):

    whole job, test %  seed 0  seed 1  seed 2    mean +- sd
    teachers             71.9    91.1    65.3  76.1 +- 13.4
    mdl                  86.4    86.1    94.7   89.1 +- 4.9
    url                  94.0    95.1    97.0   95.4 +- 1.5
    few-shot mdl ncc     76.4    74.4    84.9   78.6 +- 5.6
    few-shot mdl pa      76.4    74.5    85.7   78.9 +- 6.0
    few-shot url ncc     79.0    79.8    88.2   82.3 +- 5.1
    few-shot url pa      79.5    80.6    88.4   82.8 +- 4.8

What the numbers support: with each student tuned the same way, URL
beats MDL on the training domains by about 3 points on validation (95.7 vs 92.3 over 3
seeds) and 6.3 on test (95.4 vs 89.1; ahead at every seed, by 2.3 to 9.0), and its features
transfer better to held-out classes and an unseen domain (+2.5 points few-shot with NCC,
+3.2 with PA at seed 0; +3.8 and +4.0 over the seeds); URL is also far less sensitive to the
learning rate and the seed (MDL's best single run, 96.6 at 0.02, is above URL's mean).
Earlier versions of this file reported a 26-point gap: MDL was then trained at 0.005 (its
worst rate here) and BatchNorm used a one-pass variance that loses precision
(ur_jax.models.resnet.BatchNorm). The teachers train alone on 2000 images and are unstable
at this budget (glyphs 26% here; validation means 80.1 / 84.7 / 74.2 at lr 0.01 / 0.02 /
0.05, with single domains swinging by 20-50 points); their rate was not tuned. Numbers are
bitwise reproducible on one machine (also across an interrupted and resumed run); other CPUs
may differ slightly.

    python -m ur_jax.main --config configs/default.py:tune --workdir /tmp/tune/teachers \
        --config.stages=teachers
    python -m ur_jax.main --config configs/default.py:tune --workdir /tmp/tune/s0_lr0.01 \
        --config.seed=0 --config.mdl.learning_rate=0.01 --config.url.learning_rate=0.01 \
        --config.teachers.checkpoints.digits=/tmp/tune/teachers/teachers/digits/model ...

Whole pipeline in well under a minute (2 domains, a few steps; what the tests run):

    python -m ur_jax.main --config configs/default.py:smoke --workdir /tmp/ur_smoke
"""

from __future__ import annotations

import ml_collections

from ur_jax import config as config_lib

TRAIN_DOMAINS = ("digits", "shapes", "textures", "glyphs")
FEWSHOT_DOMAINS = ("glyphs_novel", "symbols")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The default config; ``arg``: nothing, ``'tune'`` (the learning-rate search of the
    docstring) and / or ``'smoke'`` (a seconds-long run)."""
    choice, flags = config_lib.parse_arg(arg, "default.py", ("tune",))
    c = config_lib.classification_defaults(seed=0, dataset="embedded", domains=TRAIN_DOMAINS,
                                           stages=("teachers", "mdl", "url", "fewshot"))
    c.data_dir = ""  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    # The Meta-Dataset ResNet-18 (5x5/2 stem, no max-pool: 15x15 maps after the stem), 1/8
    # wide (8..64 channels, 64-d features): the best accuracy per CPU-second we measured.
    c.model = config_lib.classifier_model(backbone="resnet18_metadataset",
                                          kwargs={"width": 0.125})
    c.augment = "crop"  # random 2-pixel translations
    # Parameter-initialisation PRNG: 'rbg' compiles ~4x faster than 'threefry2x32' on CPU,
    # where compilation is much of a short run; results are deterministic either way.
    c.init_rng_impl = "rbg"
    c.teacher_mode = "auto"  # how stacked teachers run: vmap on GPU/TPU, lax.map on CPU

    sgd = {"steps": 700, "batch_size": 32, "learning_rate": 0.05, "momentum": 0.9,
           "weight_decay": 5e-4, "warmup_steps": 20}
    # Reuse trained teachers instead: --config.teachers.checkpoints.digits=DIR/teachers/digits/model
    c.teachers = config_lib.teacher_stage(**sgd, checkpoints={d: "" for d in TRAIN_DOMAINS})
    c.mdl = config_lib.student_stage(**sgd)  # per domain and step; the student's budget
    c.url = config_lib.url_stage(
        **sgd, adapter="linear", adapter_learning_rate=0.1, adapter_weight_decay=5e-4,
        feature_loss="kernel_cka", temperature=4.0, lambda_f={"default": 1.0},
        lambda_p={"default": 1.0},
        anneal=True,  # distillation weights decay linearly to 0 over anneal_steps
        anneal_steps=0)  # 0 = url.steps
    # The students' learning rate, chosen for each the same way: the grid {0.005, 0.01,
    # 0.02, 0.04} on a validation split carved from train (':tune', seeds 0-2; results in
    # the docstring). 0.01 is the best of the grid for MDL and for URL alike.
    c.mdl.learning_rate = 0.01
    c.url.learning_rate = 0.01

    c.eval_batch_size = 256
    c.eval_limit = 0  # 0 = the whole test split
    # Hyperparameter search (':tune'): hold out this many training examples per class as a
    # validation split, and report every table on it (evaluate_on='val'), never on test.
    c.holdout_per_class = 0
    c.evaluate_on = "test"
    c.fewshot = config_lib.fixed_shape_fewshot(
        domains=FEWSHOT_DOMAINS, models=("mdl", "url"), methods=("ncc", "pa"),
        ways=5, shots=5, queries=15, episodes=600, pa_steps=40,
        # PA's Adadelta learning rate: 0.1 on seen domains, 1 on unseen ones (the paper's rule)
        pa_learning_rate={"glyphs_novel": 0.1, "symbols": 1.0})

    c.log_every = 50
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.data_threads = 2

    if choice == "tune":  # the learning-rate search of the docstring: validation only
        c.stages = ("teachers", "mdl", "url")
        c.holdout_per_class = 50  # 500 of each domain's 2000 training images
        c.evaluate_on = "val"
    if "smoke" in flags:
        c.domains = ("digits", "shapes")
        for stage, n in (("teachers", 4), ("mdl", 6), ("url", 6)):
            c[stage].steps = n
            c[stage].batch_size = 8
            c[stage].warmup_steps = 1
        c.eval_batch_size = 32
        c.eval_limit = 64
        c.fewshot.domains = ("symbols",)
        c.fewshot.episodes = 10
        c.fewshot.pa_steps = 5
        c.log_every = 2
        c.checkpoint_every = 2
    return c
