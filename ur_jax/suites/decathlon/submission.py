"""The Visual Decathlon challenge's results file (the evaluation server's submission format)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ur_jax.suites.decathlon.builder import metadata
from ur_jax.suites.decathlon.common import DOMAINS

__all__ = ["export_predictions"]


def _integers(name: str, domain: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"export_predictions: {name} of {domain!r} must be a 1-D sequence; "
                         f"found shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"export_predictions: {name} of {domain!r} must be integers; "
                             f"found dtype {arr.dtype}.")
    return arr.astype(np.int64)


def export_predictions(predictions: Mapping[str, tuple[Any, Any]],
                       data_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """Writes the challenge's results file for ``predictions``.

    Args:
      predictions: ``{domain: (image_ids, labels)}``, with ``labels`` label indices (as in
        the records, i.e. indices into the domain's sorted category ids).
      data_dir: TFDS data directory holding the prepared domains (for the category ids).
      path: the JSON file to write (folders are created; written atomically).

    Returns:
      ``path`` as a string. The file is one JSON list of ``{"image_id": int, "category_id":
      int}`` (the domain's offset category id), domain by domain in the given order.

    Raises:
      ValueError: for an empty mapping, an unknown domain, image ids and labels of
        different lengths, non-integer values, repeated image ids or label indices out of
        range.
      DecathlonDataError: when a domain is not prepared in ``data_dir``.
    """
    if not isinstance(predictions, Mapping) or not predictions:
        raise ValueError("export_predictions expects a non-empty mapping {domain: (image_ids, "
                         f"labels)}}; found {type(predictions).__name__}.")
    results: list[dict[str, int]] = []
    for domain, value in predictions.items():
        if domain not in DOMAINS:
            raise ValueError(f"export_predictions: unknown domain {domain!r}; expected names "
                             f"from {list(DOMAINS)}.")
        try:
            image_ids, labels = value
        except (TypeError, ValueError):
            raise ValueError(f"export_predictions: predictions[{domain!r}] must be a pair "
                             "(image_ids, labels).") from None
        ids = _integers("image_ids", domain, image_ids)
        labs = _integers("labels", domain, labels)
        if len(ids) != len(labs):
            raise ValueError(f"export_predictions: {domain!r} has {len(ids)} image ids but "
                             f"{len(labs)} labels; they must pair up.")
        uniq, counts = np.unique(ids, return_counts=True)
        if np.any(counts > 1):
            raise ValueError(f"export_predictions: {domain!r} repeats image id(s) "
                             f"{uniq[counts > 1][:5].tolist()}; give one prediction per image.")
        cats = metadata(domain, data_dir)["category_ids"]
        bad = (labs < 0) | (labs >= len(cats))
        if np.any(bad):
            raise ValueError(f"export_predictions: {domain!r} has label indices "
                             f"{np.unique(labs[bad])[:5].tolist()} outside 0..{len(cats) - 1} "
                             f"(the domain has {len(cats)} categories).")
        results.extend({"image_id": int(i), "category_id": int(cats[k])}
                       for i, k in zip(ids.tolist(), labs.tolist()))
    out = Path(os.path.expanduser(os.fspath(path)))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return os.fspath(out)
