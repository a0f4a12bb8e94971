"""NYU-v2 multi-task baseline (SegNet, shared network + one head per task) with one of the
multi-task optimisation methods of ur_jax.mtl, next to the single-task teachers.

Methods: uniform, uncertainty, dwa, gradnorm, mgda, pcgrad, graddrop, imtl_l, imtl_g,
imtl_h, cagrad; the other weighting methods of LibMTL: gls, rlw, stch, famo, db_mtl, gradvac,
aligned_mtl, upgrad, excess_mtl, nash_mtl, fairgrad, moco, modo, sdmgrad (each written from
its paper; the docstrings of ur_jax.mtl say where LibMTL differs); and bam (Born-Again Multi-task networks, Clark et al. 2019: the multi-task
network is trained on targets moving linearly, over the stage's updates, from the single-task
teachers' predictions to the ground truth; it uses the teachers of the stl stage). Data:
MTAN's preprocessed NYU-v2 (see nyuv2_stl.py).

Protocol: training losses and test metrics are those of the authors' DensePred code
(VICO-UoE/UniversalRepresentations, utils/dense_losses.py and utils/evaluation.py, with which
the paper's numbers were computed): mIoU from the confusion matrix of the whole test set;
depth errors with the prediction clamped to >= 1e-9; normal pixels valid where the target's
channels sum to non-zero, angle of the L2-normalised prediction against the raw target.
GradDrop follows the GradDrop paper / LibMTL on the shared decoder feature, as issue 14
asks; note that the paper's GradDrop row below was computed by the authors' DensePred
baseline (utils/graddrop.py), which masks the parameter gradients with eps 1e-8 and averages
the masked task gradients: the closest here is --config.mtl.space=params
--config.mtl.options.eps=1e-8 (which sums them; with Adam the scale hardly matters). MGDA
solves its min-norm problem exactly.

Run (one GPU; batch 2, 200 epochs, Adam 1e-4 halved after 100 epochs), reusing teachers
trained with nyuv2_stl.py (otherwise the run trains them first):

    python -m ur_jax.main --config configs/nyuv2_mtl.py:pcgrad --workdir runs/nyuv2_mtl_pcgrad \\
        --config.manual_dir=PATH \\
        --config.teachers.checkpoints.semantic=runs/nyuv2_stl_semantic/teachers/semantic/model \\
        --config.teachers.checkpoints.depth=runs/nyuv2_stl_depth/teachers/depth/model \\
        --config.teachers.checkpoints.normal=runs/nyuv2_stl_normal/teachers/normal/model

Method options: --config.mtl.options.c=0.4 (cagrad), .alpha=1.5 (gradnorm),
.temperature=2.0 (dwa), .leak=0.0 and .eps=1e-7 (graddrop), .alpha=1.0 (fairgrad), ...
(ur_jax.mtl.method_options(name) lists a method's); --config.mtl.space=features|params chooses
where gradient methods combine the task gradients. bam takes no options.

Architectures (--config.model.name): segnet (default, shared SegNet + one head per task),
mtan (MTAN's attention SegNet, Liu et al. 2019: per-task attention over the shared SegNet;
parameter-space methods only) or cross_stitch (one SegNet column per task joined by
cross-stitch units, Misra et al. 2016; parameter-space methods only). With both, the stl
teachers stay single-task SegNets of the same width and filters, as in those papers (so
teachers trained by nyuv2_stl.py load); --config.teachers.model=mtan makes them single-task
MTANs instead.

Expected (PAPER.md §1, Table 1; mIoU %, depth abs err, normal mean angle, Delta_MTL %):
uniform 40.22 / 0.5196 / 29.09 / -1.13, uncertainty 37.35 / 0.5014 / 26.74 / +0.72,
gradnorm 40.15 / 0.5824 / 27.70 / -2.60, mgda 39.77 / 0.5669 / 29.05 / -3.95,
dwa 40.27 / 0.5247 / 28.71 / -0.82, pcgrad 39.55 / 0.5236 / 28.54 / -1.13,
graddrop 39.25 / 0.5226 / 29.41 / -2.52, imtl_h 40.62 / 0.5224 / 26.14 / +3.11,
cagrad 37.99 / 0.5196 / 25.77 / +1.61, bam 37.72 / 0.5571 / 28.58 / -4.47 (not yet
reproduced here: no GPU run has been made).
results.json gives Delta_MTL against the run's own STL row and against the paper's.

`:<method>,smoke`: a seconds-long run on a tiny SegNet (tests, fake data).
"""

from __future__ import annotations

from ur_jax.config import parse_arg
from ur_jax.suites.dense import recipe as dense_config


def get_config(arg: str | None = None):
    """``arg``: a method name (default ``uniform``), optionally followed by ``,smoke``."""
    method, flags = parse_arg(arg, "nyuv2_mtl.py", dense_config.MTL_STAGE_METHODS,
                              default="uniform")
    c = dense_config.base("nyuv2")
    c.stages = ("stl", "mtl")
    c.mtl.method = method
    return dense_config.shrink_to_smoke(c) if "smoke" in flags else c
