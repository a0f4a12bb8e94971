"""Reads and checks the official Visual Decathlon release on disk (``decathlon-1.0/``: COCO
style annotation files and JPEG images), without decoding any image.

The layout is :func:`~ur_jax.suites.decathlon.common.expected_tree`; :func:`check_tree` checks
it for the user; :func:`index_domain` gives the builder everything it writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ur_jax.suites.decathlon.common import NUM_CLASSES, check_domains, data_error

__all__ = ["DomainIndex", "check_tree", "index_domain", "resolve_root"]

logger = logging.getLogger(__name__)


def resolve_root(manual_dir: str | os.PathLike | None, domain: str | None = None) -> Path:
    """The ``decathlon-1.0`` folder: ``manual_dir`` itself or its ``decathlon-1.0/`` child.

    Raises:
      DecathlonDataError: ``manual_dir`` is ``None``, missing, or holds neither.
    """
    if manual_dir is None:
        raise data_error(domain, None, "no manual_dir given (the folder that contains data/ and "
                     "annotations/).")
    path = Path(os.path.expanduser(os.fspath(manual_dir)))
    if not path.is_dir():
        raise data_error(domain, None, f"manual_dir {path} does not exist or is not a folder.")
    if (path / "data").is_dir() or (path / "annotations").is_dir():
        return path
    if (path / "decathlon-1.0").is_dir():
        return path / "decathlon-1.0"
    hint = ""
    if path.name == "data" and (path.parent / "annotations").is_dir():
        hint = f" Hint: pass its parent {path.parent} instead."
    raise data_error(domain, path, f"manual_dir {path} holds neither data/ and annotations/ nor a "
                 f"decathlon-1.0/ folder.{hint}")


@dataclasses.dataclass(frozen=True)
class DomainIndex:
    """Everything needed to build one domain, checked against the files (:func:`index_domain`).

    Attributes:
      domain: the domain.
      root: the ``decathlon-1.0`` folder.
      category_ids: the sorted category ids (label ``i`` is ``category_ids[i]``).
      category_names: their names, in the same order.
      splits: ``{split: [(image_id, image file path, label), ...]}`` in image id order (label
        ``-1`` for unlabelled test images).
      test_labels: whether the test split has labels (``<d>_test.json`` was found).
    """

    domain: str
    root: Path
    category_ids: list[int]
    category_names: list[str]
    splits: dict[str, list[tuple[int, str, int]]]  # split -> [(image_id, path, label)]
    test_labels: bool


def _load_json(domain: str, root: Path, path: Path, need: Sequence[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise data_error(domain, root, f"{path} is not valid JSON ({e}); re-extract the devkit."
                     ) from None
    except OSError as e:
        raise data_error(domain, root, f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise data_error(domain, root, f"{path} holds a {type(data).__name__}; expected a COCO "
                     "style JSON object.")
    missing = [k for k in need if not isinstance(data.get(k), list)]
    if missing:
        raise data_error(domain, root, f"{path} lacks the list(s) {missing} (found keys "
                     f"{sorted(data)}); expected a COCO style file with {list(need)}.")
    return data


def _categories(domain: str, root: Path, path: Path, data: Mapping[str, Any]
                ) -> dict[int, str]:
    out: dict[int, str] = {}
    for cat in data["categories"]:
        try:
            cid, name = int(cat["id"]), str(cat.get("name", cat["id"]))
        except (KeyError, TypeError, ValueError):
            raise data_error(domain, root, f"{path}: bad category entry {cat!r}; expected "
                         "{'id': int, 'name': str}.") from None
        if cid in out:
            raise data_error(domain, root, f"{path}: category id {cid} appears twice.")
        out[cid] = name
    if not out:
        raise data_error(domain, root, f"{path} lists no categories.")
    return out


def _resolve_image(root: Path, file_name: str) -> Path:
    """``file_name`` relative to ``root`` (decathlon-1.0); without ``data/``, under data/."""
    name = file_name.replace("\\", "/")
    path = root / name
    if not name.startswith("data/") and not path.is_file():
        alt = root / "data" / name
        if alt.is_file():
            return alt
    return path


def _split_items(domain: str, root: Path, path: Path, data: Mapping[str, Any],
                 label_of: Mapping[int, int] | None) -> list[tuple[int, str, int]]:
    """(image_id, file path, label) of every image of one annotation file, by image id.

    ``label_of`` maps category id -> label index; ``None`` means the file has no labels.
    """
    files: dict[int, str] = {}
    for img in data["images"]:
        try:
            iid, name = int(img["id"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise data_error(domain, root, f"{path}: bad image entry {img!r}; expected "
                         "{'id': int, 'file_name': str, ...}.") from None
        if iid in files:
            raise data_error(domain, root, f"{path}: image id {iid} appears twice.")
        files[iid] = name
    if not files:
        raise data_error(domain, root, f"{path} lists no images.")
    labels = dict.fromkeys(files, -1)
    if label_of is not None:
        seen: set[int] = set()
        for ann in data["annotations"]:
            try:
                iid, cid = int(ann["image_id"]), int(ann["category_id"])
            except (KeyError, TypeError, ValueError):
                raise data_error(domain, root, f"{path}: bad annotation {ann!r}; expected "
                             "{'image_id': int, 'category_id': int, ...}.") from None
            if iid not in files:
                raise data_error(domain, root, f"{path}: an annotation refers to image id {iid}, "
                             "which is not in its 'images' list.")
            if iid in seen:
                raise data_error(domain, root, f"{path}: image id {iid} has more than one "
                             "annotation; expected exactly one category per image.")
            if cid not in label_of:
                raise data_error(domain, root, f"{path}: image id {iid} has category id {cid}, "
                             f"which is not among the domain's {len(label_of)} categories "
                             f"({min(label_of)} .. {max(label_of)}).")
            seen.add(iid)
            labels[iid] = label_of[cid]
        unlabelled = sorted(set(files) - seen)
        if unlabelled:
            raise data_error(domain, root, f"{path}: {len(unlabelled)} image(s) have no annotation "
                         f"(e.g. image ids {unlabelled[:5]}); expected one per image.")
    items, missing = [], []
    for iid in sorted(files):
        image_path = _resolve_image(root, files[iid])
        if not image_path.is_file():
            missing.append(f"{files[iid]} (image id {iid})")
        items.append((iid, os.fspath(image_path), labels[iid]))
    if missing:
        raise data_error(domain, root, (
            f"{path} lists {len(missing)} image(s) that are missing under {root} "
            f"(file_name is relative to decathlon-1.0/), e.g. {missing[:3]}. Extract the "
            "image archives into data/ (see below)."))
    return items


def index_domain(root: Path, domain: str, strict: bool = False) -> DomainIndex:
    """Reads and checks ``domain``'s annotations and images under ``root`` (decathlon-1.0).

    Args:
      root: the ``decathlon-1.0`` folder (:func:`resolve_root`).
      domain: one of :data:`~ur_jax.suites.decathlon.common.DOMAINS`.
      strict: refuse category counts that differ from the real ones (by default a smaller
        count, e.g. a fake tree, only warns).

    Raises:
      DecathlonDataError: a missing file or folder, a malformed annotation file, an image
        listed but missing; the message shows the expected layout.
    """
    ann_dir, data_dir = root / "annotations", root / "data"
    if not ann_dir.is_dir():
        raise data_error(domain, root, f"missing folder {ann_dir} (the devkit's annotations).")
    if not (data_dir / domain).is_dir():
        hint = ""
        if (data_dir / f"{domain}.tar").is_file():
            hint = (f" {data_dir / (domain + '.tar')} exists: extract it there "
                    f"(cd {data_dir} && tar -xf {domain}.tar).")
        elif domain == "imagenet12":
            hint = " The imagenet12 images are a separate download (see below)."
        raise data_error(domain, root, f"missing folder {data_dir / domain} (the domain's "
                     f"images).{hint}")
    paths = {s: ann_dir / f"{domain}_{s}.json" for s in ("train", "val")}
    for split, p in paths.items():
        if not p.is_file():
            raise data_error(domain, root, f"missing annotation file {p} (the {split} split).")
    labelled_test = ann_dir / f"{domain}_test.json"
    stripped_test = ann_dir / f"{domain}_test_stripped.json"
    test_labels = labelled_test.is_file()
    if not test_labels and not stripped_test.is_file():
        raise data_error(domain, root, f"missing annotation file {stripped_test} (the test "
                     "split's images).")
    train = _load_json(domain, root, paths["train"], ("images", "annotations", "categories"))
    cats = _categories(domain, root, paths["train"], train)
    ids = sorted(cats)
    expected = NUM_CLASSES[domain]
    if len(ids) != expected:
        msg = (f"{paths['train']} lists {len(ids)} categories; the real {domain!r} has "
               f"{expected}.")
        if strict or len(ids) > expected:
            raise data_error(domain, root, msg + (" Re-extract the devkit." if strict else ""))
        logger.warning("%s Continuing with %d classes (a subset or a fake tree; pass "
                       "strict=True to refuse).", msg, len(ids))
    label_of = {cid: i for i, cid in enumerate(ids)}
    splits = {"train": _split_items(domain, root, paths["train"], train, label_of)}
    del train
    val = _load_json(domain, root, paths["val"], ("images", "annotations"))
    if "categories" in val:
        val_ids = sorted(_categories(domain, root, paths["val"], val))
        if val_ids != ids:
            raise data_error(domain, root, f"{paths['val']} lists other categories than "
                         f"{paths['train']} ({len(val_ids)} vs {len(ids)} ids).")
    splits["val"] = _split_items(domain, root, paths["val"], val, label_of)
    del val
    if test_labels:
        test = _load_json(domain, root, labelled_test, ("images", "annotations"))
        splits["test"] = _split_items(domain, root, labelled_test, test, label_of)
    else:
        test = _load_json(domain, root, stripped_test, ("images",))
        splits["test"] = _split_items(domain, root, stripped_test, test, None)
    return DomainIndex(domain=domain, root=root, category_ids=ids,
                        category_names=[cats[c] for c in ids], splits=splits,
                        test_labels=test_labels)


def check_tree(manual_dir: str | os.PathLike, domains: Sequence[str] | None = None,
               strict: bool = False) -> dict[str, dict[str, int]]:
    """Checks the manual tree of ``domains`` and returns their split sizes.

    Reads every annotation file and checks that every listed image exists (no image is
    decoded). Category counts that differ from :data:`NUM_CLASSES` are refused with
    ``strict=True``; otherwise a smaller count (a subset, a fake tree) only warns.

    Returns:
      ``{domain: {'train': n, 'val': n, 'test': n}}``.

    Raises:
      DecathlonDataError: when anything is missing or inconsistent; the message shows the
        expected tree, what was found, and where to get the data.
    """
    out = {}
    for d in check_domains(domains):
        index = index_domain(resolve_root(manual_dir, d), d, strict)
        out[d] = {s: len(v) for s, v in index.splits.items()}
    return out
