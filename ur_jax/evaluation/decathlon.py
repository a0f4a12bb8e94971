"""The Visual Decathlon score and Delta_MDL (Rebuffi et al. 2017; paper Table 2).

The decathlon score rewards a model for beating a per-domain reference error and gives
nothing for doing worse::

    S = sum_d  alpha_d * max(0, Emax_d - E_d) ** gamma,   alpha_d = 1000 / Emax_d ** gamma

with ``E_d`` the test error (%) on domain ``d``, ``gamma = 2`` and ``Emax_d`` twice the error
of the reference (the challenge's *Finetune* baseline: a network per domain fine-tuned from
ImageNet). A domain scores at most 1000 (zero error), so 10 domains score at most 10000; the
reference itself scores exactly 250 per domain, 2500 in all.

>>> round(decathlon_score(PAPER_TABLE['Finetune']))
2500
>>> round(delta_mdl(PAPER_TABLE['URL']), 2)
4.19
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: The Decathlon's domains, in the column order of the paper's Table 2.
DOMAINS = ("imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb", "vgg-flowers",
           "omniglot", "svhn", "ucf101")


def _row(*accuracies: float) -> dict[str, float]:
    return dict(zip(DOMAINS, accuracies))


#: Test accuracies (%) of the paper's Table 2 (ResNet-26; reference/PAPER.md section 2).
PAPER_TABLE: dict[str, dict[str, float]] = {
    "Finetune": _row(59.87, 60.34, 82.12, 92.82, 55.53, 97.53, 81.41, 87.69, 96.55, 51.20),
    "MDL": _row(59.30, 67.21, 79.60, 97.08, 57.66, 97.28, 83.88, 87.41, 96.39, 45.76),
    "Parallel RA": _row(60.32, 64.21, 81.91, 94.73, 58.83, 99.38, 84.68, 89.21, 96.54, 50.94),
    "URL": _row(61.45, 74.35, 80.45, 97.55, 59.57, 98.24, 86.73, 89.72, 96.95, 49.01),
    "URL (parallel RA)": _row(61.97, 77.17, 82.31, 97.58, 60.69, 98.75, 87.28, 90.40, 97.14,
                              51.89),
}
#: The decathlon scores the paper prints for those rows.
PAPER_SCORES = {"Finetune": 2500, "MDL": 2866, "Parallel RA": 3412, "URL": 3626,
                "URL (parallel RA)": 4005}

#: The reference accuracies of the challenge: the Finetune row.
FINETUNE_ACCURACY: dict[str, float] = dict(PAPER_TABLE["Finetune"])


def _checked(accuracies: Mapping[str, float], what: str, percent: bool = False
             ) -> dict[str, float]:
    """``accuracies`` as floats, refused unless they are percentages: each must be finite
    and in 0..100, and (unless ``percent`` says they are known to be %) a mapping whose
    values are all <= 1 but not all 0 is refused as fractions (a fraction of 0.8 would
    otherwise count as 0.8 %, i.e. score 0). All zeros read the same in both units."""
    if not isinstance(accuracies, Mapping) or not accuracies:
        raise ValueError(f"{what} must be a non-empty mapping {{domain: accuracy in %}}; found "
                         f"{accuracies!r}.")
    out = {}
    for d, a in accuracies.items():
        a = float(a)
        if not np.isfinite(a) or not 0.0 <= a <= 100.0:
            raise ValueError(f"{what}[{d!r}] = {a} is not an accuracy in % (0..100). Pass "
                             f"percentages, not fractions.")
        out[d] = a
    if not percent and 0.0 < max(out.values()) <= 1.0:
        raise ValueError(f"{what} look like fractions: every value is <= 1 ({out}), but "
                         f"accuracies are expected in % (0..100). Multiply them by 100 (e.g. "
                         f"{{d: 100 * a for d, a in {what}.items()}}).")
    return out


def error_bounds(reference: Mapping[str, float] | None = None) -> dict[str, float]:
    """``Emax_d = 2 x`` the reference's test error (%), per domain (default: the Finetune row)."""
    reference = FINETUNE_ACCURACY if reference is None else reference
    return {d: 2.0 * (100.0 - float(a)) for d, a in _checked(reference, "reference").items()}


#: The challenge's error bounds, built from :data:`FINETUNE_ACCURACY`.
ERROR_BOUNDS: dict[str, float] = error_bounds()


def domain_scores(accuracies: Mapping[str, float], bounds: Mapping[str, float] | None = None,
                  gamma: float = 2.0, *, percent: bool = False) -> dict[str, float]:
    """Each domain's share of the decathlon score (0 to 1000), see :func:`decathlon_score`."""
    accuracies = _checked(accuracies, "accuracies", percent)
    bounds = ERROR_BOUNDS if bounds is None else dict(bounds)
    missing = sorted(set(accuracies) - set(bounds))
    if missing:
        raise ValueError(f"No error bound for domain(s) {missing}; bounds exist for "
                         f"{sorted(bounds)}. Pass bounds={{domain: Emax in %}} for other domains.")
    out = {}
    for d, acc in accuracies.items():
        emax = float(bounds[d])
        if not emax > 0:
            raise ValueError(f"The error bound of {d!r} must be positive; found {emax}.")
        alpha = 1000.0 / emax ** gamma
        out[d] = alpha * max(0.0, emax - (100.0 - acc)) ** gamma
    return out


def decathlon_score(accuracies: Mapping[str, float], bounds: Mapping[str, float] | None = None,
                    gamma: float = 2.0, *, percent: bool = False) -> float:
    """The decathlon score ``S`` of test accuracies (%) ``{domain: accuracy}``.

    Args:
      accuracies: test accuracy in % per domain (any subset of the domains that have a
        bound; the full challenge uses all ten).
      bounds: ``{domain: Emax_d}`` error bounds in %; default :data:`ERROR_BOUNDS` (twice
        the Finetune row's errors). :func:`error_bounds` builds them from other reference
        accuracies.
      gamma: the exponent (2 in the challenge).
      percent: the accuracies are known to be in % (e.g. computed as ``100 * correct / n``):
        skips the check for fractions, so that a model at chance level on every domain
        (all accuracies <= 1 %) scores 0 instead of being refused.

    A domain whose error is at or above its bound contributes 0.

    Raises:
      ValueError: for an empty mapping, a value outside 0..100, accuracies given as
        fractions (every value <= 1 and not all 0: multiply by 100; unless ``percent``), or
        a domain without a bound.
    """
    return float(sum(domain_scores(accuracies, bounds, gamma, percent=percent).values()))


def delta_mdl(accuracies: Mapping[str, float], reference: Mapping[str, float] | None = None,
              *, percent: bool = False) -> float:
    """Delta_MDL (%): the mean over domains of ``(acc_d - ref_d) / ref_d * 100``.

    ``reference``: per-domain accuracies (%) of the single-domain networks (default: the
    paper's Finetune row); every domain of ``accuracies`` needs one. Either mapping given as
    fractions is refused as in :func:`decathlon_score` (``percent=True`` skips that check).
    """
    accuracies = _checked(accuracies, "accuracies", percent)
    reference = _checked(FINETUNE_ACCURACY if reference is None else reference, "reference",
                         percent)
    missing = sorted(set(accuracies) - set(reference))
    if missing:
        raise ValueError(f"No reference accuracy for domain(s) {missing}.")
    zero = sorted(d for d in accuracies if reference[d] <= 0)
    if zero:
        raise ValueError(f"Delta_MDL is undefined for a reference accuracy of 0 (domain(s) "
                         f"{zero}).")
    return float(np.mean([(a - reference[d]) / reference[d] * 100.0
                          for d, a in accuracies.items()]))
