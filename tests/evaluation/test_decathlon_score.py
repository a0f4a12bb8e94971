"""The decathlon score and Delta_MDL against the paper's Table 2 (reference/PAPER.md §2)."""

import numpy as np
import pytest

from ur_jax.evaluation import decathlon_score, delta_mdl, domain_scores, error_bounds
from ur_jax.evaluation.decathlon import (
    DOMAINS,
    ERROR_BOUNDS,
    FINETUNE_ACCURACY,
    PAPER_SCORES,
    PAPER_TABLE,
)


def test_finetune_row_scores_exactly_2500():
    assert decathlon_score(PAPER_TABLE["Finetune"]) == pytest.approx(2500.0, abs=1e-9)
    assert all(s == pytest.approx(250.0) for s in domain_scores(FINETUNE_ACCURACY).values())


@pytest.mark.parametrize("row,low,high", [("URL", 3625, 3626), ("URL (parallel RA)", 4004.5, 4005.5),
                                          ("MDL", 2866, 2867.5), ("Parallel RA", 3411.5, 3412.5)])
def test_paper_rows(row, low, high):
    score = decathlon_score(PAPER_TABLE[row])
    assert low <= score <= high
    # printed scores come from unrounded accuracies: within 1.1 of ours
    assert abs(score - PAPER_SCORES[row]) < 1.1


def test_formula_against_numpy_reference():
    rng = np.random.default_rng(0)
    acc = {d: float(rng.uniform(30, 99)) for d in DOMAINS}
    err = np.array([100 - acc[d] for d in DOMAINS])
    emax = np.array([2 * (100 - FINETUNE_ACCURACY[d]) for d in DOMAINS])
    want = np.sum(1000 / emax ** 2 * np.maximum(0, emax - err) ** 2)
    assert decathlon_score(acc) == pytest.approx(want, rel=1e-12)


def test_worse_than_bound_contributes_zero_and_perfect_scores_1000():
    acc = dict(FINETUNE_ACCURACY)
    acc["dtd"] = 100 - ERROR_BOUNDS["dtd"] - 5.0  # error above its bound
    per = domain_scores(acc)
    assert per["dtd"] == 0.0
    assert decathlon_score(acc) == pytest.approx(2250.0)
    acc["dtd"] = 100 - ERROR_BOUNDS["dtd"]  # exactly at the bound: still 0
    assert domain_scores(acc)["dtd"] == 0.0
    assert decathlon_score({d: 100.0 for d in DOMAINS}) == pytest.approx(10000.0)


def test_bounds_overridable_and_subset():
    bounds = error_bounds({"a": 90.0, "b": 50.0})
    assert bounds == {"a": pytest.approx(20.0), "b": pytest.approx(100.0)}
    assert decathlon_score({"a": 90.0}, bounds) == pytest.approx(250.0)
    assert decathlon_score({"a": 95.0, "b": 0.0}, bounds) == pytest.approx(1000 / 400 * 225)
    with pytest.raises(ValueError, match="No error bound"):
        decathlon_score({"unknown": 50.0})
    with pytest.raises(ValueError, match="percentages"):
        decathlon_score({"dtd": 120.0})
    with pytest.raises(ValueError, match="not a non-empty|non-empty"):
        decathlon_score({})


def test_delta_mdl():
    assert delta_mdl(FINETUNE_ACCURACY) == 0.0
    acc = {d: a * 1.1 for d, a in FINETUNE_ACCURACY.items() if a * 1.1 <= 100}
    assert delta_mdl(acc) == pytest.approx(10.0)
    want = np.mean([(PAPER_TABLE["URL"][d] - FINETUNE_ACCURACY[d]) / FINETUNE_ACCURACY[d] * 100
                    for d in DOMAINS])
    assert delta_mdl(PAPER_TABLE["URL"]) == pytest.approx(want)
    assert delta_mdl({"x": 60.0}, {"x": 50.0}) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="No reference"):
        delta_mdl({"x": 60.0})


def test_accuracies_given_as_fractions_are_refused():
    """0.6145 (a fraction) would read as 0.6145 %: an error above every bound, score 0."""
    fractions = {d: a / 100 for d, a in PAPER_TABLE["URL"].items()}
    with pytest.raises(ValueError, match="look like fractions.*Multiply them by 100"):
        decathlon_score(fractions)
    with pytest.raises(ValueError, match="fractions"):
        domain_scores({"dtd": 0.5957})
    with pytest.raises(ValueError, match="fractions"):
        delta_mdl(fractions)
    with pytest.raises(ValueError, match="reference look like fractions"):
        delta_mdl(PAPER_TABLE["URL"], {d: a / 100 for d, a in FINETUNE_ACCURACY.items()})
    # the same numbers in % score as the paper prints (3625.3 from the rounded row)
    assert decathlon_score({d: 100 * a for d, a in fractions.items()}) == pytest.approx(
        decathlon_score(PAPER_TABLE["URL"]))
    # all zeros read the same in both units: accepted, and worth nothing
    assert decathlon_score({d: 0.0 for d in DOMAINS}) == 0.0
    # percentages known to be small (a runner's 100 * correct / n at chance level)
    assert decathlon_score({"imagenet12": 0.4, "dtd": 0.9}, percent=True) == 0.0
    assert delta_mdl({"dtd": 0.9}, {"dtd": 0.5}, percent=True) == pytest.approx(80.0)
    # one domain above 1 % makes the mapping percentages
    assert decathlon_score({"dtd": 0.5, "svhn": 96.95}) == pytest.approx(
        1000 / (2 * 3.45) ** 2 * (2 * 3.45 - 3.05) ** 2)
