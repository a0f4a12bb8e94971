"""The printed results tables of a run (the same numbers as ``results.json``)."""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from typing import Any

#: The metrics printed per task, in the NYU-v2 table's order.
TABLE_METRICS = {
    "semantic": (("miou", "mIoU"), ("pixel_acc", "PixAcc")),
    "depth": (("abs_err", "AbsErr"), ("rel_err", "RelErr")),
    "normal": (("angle_mean", "Mean"), ("angle_median", "Median"), ("within_11_25", "<11.25"),
               ("within_22_5", "<22.5"), ("within_30", "<30")),
}
#: Decimals printed per task (depth errors are in metres, a few tenths).
TABLE_DIGITS = {"semantic": 2, "depth": 4, "normal": 2}


def format_number(value: float, digits: int = 2, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals, halves rounded away from zero, as tables are read
    (``sign``: a ``+`` before positive values). The float noise of the sums goes first, so a
    mean accuracy of 86.05 shows as 86.1 whether its float is 86.05000000000001 or
    86.04999999999998 (which depends on the order of the sums), where ``f"{x:.1f}"`` would
    give either."""
    exact = decimal.Decimal(f"{value:.9f}")
    text = str(exact.quantize(decimal.Decimal(1).scaleb(-digits), rounding=decimal.ROUND_HALF_UP))
    return f"+{text}" if sign and not text.startswith("-") else text


def model_rows(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(stage, its results)`` for every stage that reported models, in the order of
    ``results`` (the stages' registration order): the entries holding per-domain
    accuracies (``'mean'``) or per-task metrics (``'delta_mtl'``)."""
    return [(name, res) for name, res in results.items()
            if isinstance(res, Mapping) and ("mean" in res or "delta_mtl" in res)]


def classification_table(results: Mapping[str, Any]) -> str:
    """The printed results: per-domain accuracy of teachers / MDL / URL (with the decathlon
    score and Delta_MDL when computed), and few-shot."""
    domains = [d for d in results["config"]["domains"]]
    rows = model_rows(results)
    width = max([8, *(len(d) for d in domains)])
    split = {"test": "Test", "val": "Validation"}[results.get("evaluated_on", "test")]
    if split == "Validation" and results["config"].get("train_split") == "train+val":
        split += " (trained on: train_split=train+val)"
    scores = results.get("scores") or {}
    extra = f"{'score':>{9}}{'dMDL':>{8}}" if scores else ""
    lines = [f"{split} accuracy (%)",
             f"{'':<10}" + "".join(f"{d:>{width + 2}}" for d in domains) + f"{'mean':>{width + 2}}"
             + extra] if rows else []
    for name, res in rows:
        cells = "".join(f"{format_number(res[d]['accuracy']):>{width + 2}}" if d in res
                        else f"{'-':>{width + 2}}" for d in domains)
        tail = ""
        if name in scores:
            sc = scores[name]
            tail = (f"{format_number(sc['decathlon_score'], 0):>9}"
                    + (f"{format_number(sc['delta_mdl'], sign=True):>8}" if "delta_mdl" in sc
                       else f"{'-':>8}"))
        lines.append(f"{name:<10}{cells}{format_number(res['mean']['accuracy']):>{width + 2}}{tail}")
    if scores:
        lines.append("score: decathlon score (max 1000 per domain); dMDL: Delta_MDL (%) vs the "
                     "run's teachers")
    fs = results.get("fewshot")
    if fs and fs.get("kind") == "episodic":
        from ur_jax.suites.metadataset.common import SHORT_NAMES
        from ur_jax.evaluation.metadataset import format_results

        lines += ["" if lines else None, f"Few-shot accuracy (%), {fs['protocol']} episodes ({fs['episodes']} per "
                      f"source), ± 95% CI; averages over seen / unseen / all sources",
                  format_results(fs["rows"], fs["domains"], SHORT_NAMES)]
        lines = [line for line in lines if line is not None]
    elif fs:
        p = fs["protocol"]
        fdomains = results["config"]["fewshot"]["domains"]
        lines += ["", f"Few-shot accuracy (%), {p['ways']}-way {p['shots']}-shot, "
                      f"{p['episodes']} episodes, ± 95% CI"]
        lines.append(f"{'':<10}" + "".join(f"{d:>{width + 10}}" for d in fdomains)
                     + f"{'mean':>{width + 2}}")
        for name, per_method in fs.items():
            if name == "protocol":
                continue
            for method, res in per_method.items():
                cells = "".join(f"{format_number(res[d]['accuracy']):>{width + 3}} ± "
                                f"{format_number(res[d]['ci95']):<4}" for d in fdomains)
                lines.append(f"{name + ' ' + method:<10}{cells}"
                             f"{format_number(res['mean']['accuracy']):>{width + 2}}")
    return "\n".join(lines)


def dense_table(results: Mapping[str, Any]) -> str:
    """The printed NYU-v2-style table: per model (STL, the MTL method, URL) the semantic,
    depth and normal metrics and Delta_MTL."""
    tasks = results["config"]["tasks"]
    cols = [(t, key, label) for t in tasks for key, label in TABLE_METRICS[t]]
    width = 9
    groups = "".join(f"{t:^{width * len(TABLE_METRICS[t])}}" for t in tasks)
    lines = [f"Test metrics ({results['config']['dataset']})",
             f"{'':<14}{groups}{'Delta_MTL (%)':>16}",
             f"{'':<14}" + "".join(f"{label:>{width}}" for _, _, label in cols)
             + f"{'vs STL':>9}{'vs ref':>9}"]
    labels = {"stl": "STL", "url": "URL"}
    rows = [(labels.get(name, res.get("method", name)), res) for name, res in model_rows(results)]
    for name, res in rows:
        if not res:
            continue
        cells = "".join(f"{format_number(res[t][k], TABLE_DIGITS[t]):>{width}}"
                        if t in res and k in res[t] else f"{'-':>{width}}" for t, k, _ in cols)
        delta = res.get("delta_mtl", {})
        cells += "".join(f"{format_number(delta[k], sign=True):>9}" if k in delta else f"{'-':>9}"
                         for k in ("stl", "reference"))
        lines.append(f"{name:<14}{cells}")
    lines.append("mIoU, PixAcc and <angle columns in %; depth errors in the dataset's units; "
                 "angles in degrees.")
    return "\n".join(lines)
