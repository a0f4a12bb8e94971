"""The official Meta-Dataset converted records, read (and, for tests, written) without
TensorFlow.

Meta-Dataset's conversion tools (google-research/meta-dataset,
``meta_dataset/dataset_conversion/convert_datasets_to_records.py``) turn every source into one
folder of TFRecord files::

    <records_root>/
      <source>/                       e.g. ilsvrc_2012/, omniglot/, traffic_sign/
        dataset_spec.json             the source's DatasetSpecification (below)
        0.tfrecords                   one file per class, named by the spec's file_pattern
        1.tfrecords                   ('{}.tfrecords' formatted with the global class id)
        ...
        num_leaf_images.json          ilsvrc_2012 only (a cache of the converter; unused here)

Every record is a serialized ``tf.train.Example`` with the features ``'image'`` (bytes: the
encoded image, JPEG for every source) and ``'label'`` (int64: the global class id, equal to
the number in the file name). Class ids are contiguous per split: the train classes first,
then valid, then test (:func:`ur_jax.suites.metadataset.common.split_class_range`).

``dataset_spec.json`` is ``DatasetSpecification.to_dict()`` (``meta_dataset/data/
dataset_spec.py``) dumped with ``json.dump(..., indent=2)``; its ``"__class__"`` key says which
of three kinds it is:

* ``DatasetSpecification`` (most sources): ``name``, ``classes_per_split``
  (``{"TRAIN": n, "VALID": n, "TEST": n}``), ``images_per_class`` (``{"<class id>": n}``),
  ``class_names`` (``{"<class id>": name}``; traffic_sign's names are JSON integers), ``path``,
  ``file_pattern``.
* ``BiLevelDatasetSpecification`` (omniglot): ``superclasses_per_split`` (alphabets per split),
  ``classes_per_superclass`` (``{"<superclass id>": n}``; the classes of superclass ``k`` are
  the ``n`` ids following those of superclasses ``0 .. k-1``), ``images_per_class``,
  ``superclass_names``, ``class_names``, ``path``, ``file_pattern``.
* ``HierarchicalDatasetSpecification`` (ilsvrc_2012): ``split_subgraphs`` (``{"TRAIN": [node,
  ...], ...}``, each node ``{"wn_id", "words", "children_ids", "parents_ids"}`` as written by
  ``imagenet_specification.export_graph``: nodes sorted by WordNet id, children and parents
  as sorted WordNet ids within the same split's graph), ``images_per_class`` (``{"TRAIN":
  {"<wn_id>": number of images spanned by the node}, ...}`` for every node, leaves included),
  ``class_names`` (``{"<class id>": "<leaf wn_id>"}``: within each split the leaves sorted by
  WordNet id get consecutive class ids), ``path``, ``file_pattern``. The leaves of a split's
  graph (nodes without children) are its classes; an internal node "spans" every leaf it
  reaches through children links (:attr:`DatasetSpec.spanning_leaves`).

This module reads all of that with the standard library and NumPy (the TFRecord files and the
``tf.train.Example`` protos through :mod:`ur_jax.suites.metadataset.tfrecord`):

* the specs: :func:`read_dataset_spec` -> :class:`DatasetSpec`;
* one source as a :class:`~ur_jax.suites.metadataset.common.ClassSource` for the
  ``ur_metadataset`` builder: :func:`class_source`.

A small fake records tree in exactly this format, for tests and smoke runs, is written by
:func:`ur_jax.suites.metadataset.fake.write_fake_records`, also from the command line::

    python -m ur_jax.suites.metadataset --fake /tmp/md_records \\
        [--sources ilsvrc_2012,omniglot,traffic_sign] [--seed 0]

then built with ``ur_jax.suites.metadataset.prepare([...], data_dir, origin='records',
records_dir='/tmp/md_records')``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ur_jax.data.files import listing
from ur_jax.suites.metadataset.common import (
    CLASS_SPLITS,
    SOURCES,
    SPLITS,
    ClassSource,
    MetaDatasetError,
    check_source,
    split_class_range,
)
from ur_jax.suites.metadataset.tfrecord import parse_example, read_tfrecords

__all__ = [
    "FILE_PATTERN",
    "SPEC_FILE",
    "SPLIT_KEYS",
    "DatasetSpec",
    "SynsetNode",
    "class_source",
    "read_dataset_spec",
]

logger = logging.getLogger(__name__)

SPEC_FILE = "dataset_spec.json"
"""Name of a source's specification file inside its records folder."""

SPLIT_KEYS: tuple[str, ...] = ("TRAIN", "VALID", "TEST")
"""The spec's split names (``learning_spec.Split``), in class-id order."""

FILE_PATTERN = "{}.tfrecords"
"""The one file pattern read: one file per class, named by its global class id."""

_SPEC_KINDS = ("DatasetSpecification", "BiLevelDatasetSpecification",
               "HierarchicalDatasetSpecification")
_HOMEPAGE = "https://github.com/google-research/meta-dataset"


# --------------------------------------------------------------------------- #
# dataset_spec.json
# --------------------------------------------------------------------------- #

@dataclasses.dataclass(frozen=True)
class SynsetNode:
    """One WordNet synset of a split's graph, as ``imagenet_specification.export_graph``
    writes it."""

    wn_id: str
    words: str
    children_ids: tuple[str, ...]
    parents_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A source's ``dataset_spec.json``, checked and converted to global class ids.

    Attributes:
      kind: ``'DatasetSpecification'``, ``'BiLevelDatasetSpecification'`` or
        ``'HierarchicalDatasetSpecification'`` (the JSON's ``__class__``).
      name: the source (the JSON's ``name``).
      classes_per_split: ``(train, valid, test)`` class counts (for ImageNet: the numbers of
        leaves of the split graphs; for Omniglot: the classes of each split's alphabets).
      class_names: every class's name by global class id (ImageNet: the leaf's WordNet id;
        traffic_sign's integer names as strings).
      images_per_class: ``{class id: number of images}``.
      path: the folder the spec was read from (the JSON's own ``path`` is the converter's
        output folder, usually elsewhere; it is ignored, as the official loader does).
      file_pattern: the class files' name pattern, ``'{}.tfrecords'``.
      superclass_names: Omniglot: the alphabets by superclass id.
      superclasses: Omniglot: ``{split: ((class ids of alphabet), ...)}`` (global ids, the
        split's alphabets in superclass id order).
      graph: ImageNet: ``{split: {wn_id: SynsetNode}}``.
      spanning_leaves: ImageNet: ``{split: {wn_id: (class ids of the leaves it spans)}}`` for
        every internal node (a node with children) of the split's graph; ids sorted.
      raw: the parsed JSON.
    """

    kind: str
    name: str
    classes_per_split: tuple[int, int, int]
    class_names: tuple[str, ...]
    images_per_class: Mapping[int, int]
    path: str
    file_pattern: str
    superclass_names: tuple[str, ...] | None = None
    superclasses: Mapping[str, tuple[tuple[int, ...], ...]] | None = None
    graph: Mapping[str, Mapping[str, SynsetNode]] | None = None
    spanning_leaves: Mapping[str, Mapping[str, tuple[int, ...]]] | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def hierarchy(self) -> dict[str, list[list[int]]] | None:
        """ImageNet: ``{split: [leaf class ids of each internal node]}`` (nodes in WordNet id
        order), the form :class:`ClassSource` takes; ``None`` for other kinds."""
        if self.spanning_leaves is None:
            return None
        return {s: [list(nodes[w]) for w in sorted(nodes)]
                for s, nodes in self.spanning_leaves.items()}

    def class_file(self, class_id: int) -> str:
        """The file name of class ``class_id``'s records."""
        return self.file_pattern.format(class_id)


def _spec_error(path: Path, problem: str) -> MetaDatasetError:
    return MetaDatasetError(f"Invalid Meta-Dataset spec {path}: {problem}\n"
                            f"Expected layout:\n{_expected_tree()}")


def _int_keys(path: Path, field: str, value: Any) -> dict[int, Any]:
    if not isinstance(value, Mapping):
        raise _spec_error(path, f"{field!r} must be an object keyed by id; found "
                          f"{type(value).__name__}.")
    try:
        return {int(k): v for k, v in value.items()}
    except (TypeError, ValueError):
        raise _spec_error(path, f"{field!r} has non-integer keys "
                          f"{sorted(value)[:5]}.") from None


def _split_counts(path: Path, field: str, value: Any) -> tuple[int, int, int]:
    if not isinstance(value, Mapping) or set(value) != set(SPLIT_KEYS):
        found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise _spec_error(path, f"{field!r} must map {list(SPLIT_KEYS)} to counts; found "
                          f"{found}.")
    counts = tuple(int(value[k]) for k in SPLIT_KEYS)
    if any(c < 0 for c in counts):
        raise _spec_error(path, f"{field!r} has a negative count: {counts}.")
    return counts  # type: ignore[return-value]


def _names_by_id(path: Path, field: str, value: Any, n: int) -> tuple[str, ...]:
    names = _int_keys(path, field, value)
    if sorted(names) != list(range(n)):
        missing = sorted(set(range(n)) - set(names))[:5]
        extra = sorted(set(names) - set(range(n)))[:5]
        raise MetaDatasetError(
            f"Meta-Dataset spec {path}: class count mismatch: the splits hold {n} "
            f"{'classes' if field == 'class_names' else 'superclasses'} (ids 0..{n - 1}), but "
            f"{field!r} has {len(names)} entries (missing ids {missing}, unexpected ids "
            f"{extra}). The spec is inconsistent; re-run the conversion for this source.")
    return tuple(str(names[i]) for i in range(n))


def _images_per_class(path: Path, value: Any, n: int) -> dict[int, int]:
    counts = _int_keys(path, "images_per_class", value)
    out = {}
    for c in range(n):
        if c not in counts:
            raise _spec_error(path, f"'images_per_class' has no entry for class {c}.")
        v = counts[c]
        if isinstance(v, Mapping):
            raise _spec_error(path, f"class {c} has example-level pools {sorted(v)} "
                              "(file_pattern '{}_{}.tfrecords'); only the standard "
                              "'{}.tfrecords' layout of the 13 Meta-Dataset sources is "
                              "supported.")
        out[c] = int(v)
    return out


def _spanning_leaves(path: Path, split: str, nodes: Mapping[str, SynsetNode],
                     leaf_ids: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Leaf class ids reachable from every internal node (iterative DFS, cycle-checked)."""
    memo: dict[str, frozenset[int]] = {}
    for start in sorted(nodes):
        if start in memo:
            continue
        stack: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while stack:
            wn, done = stack.pop()
            if done:
                node = nodes[wn]
                if node.children_ids:
                    memo[wn] = frozenset().union(*(memo[c] for c in node.children_ids))
                else:
                    memo[wn] = frozenset([leaf_ids[wn]])
                on_path.discard(wn)
                continue
            if wn in memo:
                continue
            if wn in on_path:
                raise _spec_error(path, f"the {split} graph has a cycle through {wn}.")
            on_path.add(wn)
            stack.append((wn, True))
            stack.extend((c, False) for c in nodes[wn].children_ids if c not in memo)
    return {wn: tuple(sorted(memo[wn])) for wn in sorted(nodes) if nodes[wn].children_ids}


def _hierarchical(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    subgraphs = raw.get("split_subgraphs")
    if not isinstance(subgraphs, Mapping) or set(subgraphs) != set(SPLIT_KEYS):
        raise _spec_error(path, f"'split_subgraphs' must map {list(SPLIT_KEYS)} to node "
                          "lists.")
    images = raw.get("images_per_class")
    if not isinstance(images, Mapping) or set(images) != set(SPLIT_KEYS):
        raise _spec_error(path, f"'images_per_class' must map {list(SPLIT_KEYS)} to "
                          "{wn_id: count} objects (a HierarchicalDatasetSpecification).")
    graph: dict[str, dict[str, SynsetNode]] = {}
    leaves: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for key, split in zip(SPLIT_KEYS, SPLITS):
        nodes: dict[str, SynsetNode] = {}
        for rep in subgraphs[key]:
            try:
                node = SynsetNode(str(rep["wn_id"]), str(rep.get("words", "")),
                                  tuple(str(c) for c in rep["children_ids"]),
                                  tuple(str(p) for p in rep["parents_ids"]))
            except (KeyError, TypeError):
                raise _spec_error(path, f"a {key} node lacks wn_id/children_ids/parents_ids: "
                                  f"{rep!r:.200}") from None
            if node.wn_id in seen:
                raise _spec_error(path, f"WordNet id {node.wn_id} appears in the {seen[node.wn_id]}"
                                  f" and {split} graphs; each synset belongs to one split graph.")
            seen[node.wn_id] = split
            nodes[node.wn_id] = node
        for node in nodes.values():
            outside = [w for w in node.children_ids + node.parents_ids if w not in nodes]
            if outside:
                raise _spec_error(path, f"{node.wn_id} in the {key} graph links to "
                                  f"{outside[:3]}, which are not in that graph.")
        graph[split] = nodes
        leaves[split] = sorted(w for w, n in nodes.items() if not n.children_ids)
    counts = tuple(len(leaves[s]) for s in SPLITS)
    class_names = _names_by_id(path, "class_names", raw.get("class_names"), sum(counts))
    leaf_ids = {name: c for c, name in enumerate(class_names)}
    images_per_class: dict[int, int] = {}
    spanning: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, split in zip(SPLIT_KEYS, SPLITS):
        want = split_class_range("ilsvrc_2012", split, counts)
        ids = []
        for wn in leaves[split]:
            if wn not in leaf_ids:
                raise MetaDatasetError(
                    f"Meta-Dataset spec {path}: class count mismatch: leaf {wn} of the {key} "
                    "graph has no class id in 'class_names'.")
            ids.append(leaf_ids[wn])
            if wn not in images[key]:
                raise _spec_error(path, f"images_per_class[{key!r}] has no count for {wn}.")
            images_per_class[leaf_ids[wn]] = int(images[key][wn])
        if sorted(ids) != list(want):
            raise _spec_error(path, f"the {key} leaves have class ids {sorted(ids)[:8]}..., "
                              f"expected the contiguous range {want} (train, then valid, then "
                              "test classes).")
        spanning[split] = _spanning_leaves(path, split, graph[split], leaf_ids)
    return {"classes_per_split": counts, "class_names": class_names,
            "images_per_class": images_per_class, "graph": graph,
            "spanning_leaves": spanning}


def _bilevel(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    super_counts = _split_counts(path, "superclasses_per_split",
                                 raw.get("superclasses_per_split"))
    n_super = sum(super_counts)
    per_super = _int_keys(path, "classes_per_superclass", raw.get("classes_per_superclass"))
    if sorted(per_super) != list(range(n_super)):
        raise MetaDatasetError(
            f"Meta-Dataset spec {path}: superclass count mismatch: superclasses_per_split "
            f"{super_counts} sums to {n_super}, but 'classes_per_superclass' has ids "
            f"{sorted(per_super)[:8]}...")
    sizes = [int(per_super[k]) for k in range(n_super)]
    names = _names_by_id(path, "superclass_names", raw.get("superclass_names"), n_super)
    superclasses: dict[str, tuple[tuple[int, ...], ...]] = {}
    counts = []
    k = start = 0
    for split, n_split in zip(SPLITS, super_counts):
        groups = []
        for _ in range(n_split):
            groups.append(tuple(range(start, start + sizes[k])))
            start += sizes[k]
            k += 1
        superclasses[split] = tuple(groups)
        counts.append(sum(len(g) for g in groups))
    class_names = _names_by_id(path, "class_names", raw.get("class_names"), sum(counts))
    return {"classes_per_split": tuple(counts), "class_names": class_names,
            "images_per_class": _images_per_class(path, raw.get("images_per_class"),
                                                  sum(counts)),
            "superclass_names": names, "superclasses": superclasses}


def _plain(path: Path, raw: Mapping[str, Any]) -> dict[str, Any]:
    counts = _split_counts(path, "classes_per_split", raw.get("classes_per_split"))
    class_names = _names_by_id(path, "class_names", raw.get("class_names"), sum(counts))
    return {"classes_per_split": counts, "class_names": class_names,
            "images_per_class": _images_per_class(path, raw.get("images_per_class"),
                                                  sum(counts))}


def read_dataset_spec(path: str | os.PathLike) -> DatasetSpec:
    """Reads a source's ``dataset_spec.json`` (any of the three kinds).

    Args:
      path: the JSON file, or the source's records folder that contains it.

    Returns:
      The checked :class:`DatasetSpec`, with class ids per split, superclasses (Omniglot) and
      every internal WordNet node's spanning leaves (ImageNet).

    Raises:
      MetaDatasetError: the file is missing (an older ``dataset_spec.pkl`` is not read) or
        inconsistent (class counts, ids, graph links).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    file = path / SPEC_FILE if path.is_dir() else path
    if not file.is_file():
        folder = file.parent
        hint = ""
        if (folder / "dataset_spec.pkl").is_file():
            hint = (" An older dataset_spec.pkl is there: convert it to JSON with the official "
                    "tools (dataset_spec.load_dataset_spec(path, convert_from_pkl=True)).")
        found = f"\nFound in {folder}: {listing(folder)}" if folder.is_dir() else ""
        raise MetaDatasetError(f"No Meta-Dataset spec at {file}.{hint}{found}\n"
                               f"Expected layout:\n{_expected_tree()}")
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise _spec_error(file, f"cannot read it as JSON ({e}).") from None
    if not isinstance(raw, dict):
        raise _spec_error(file, f"expected a JSON object, found {type(raw).__name__}.")
    kind = raw.get("__class__")
    if kind not in _SPEC_KINDS:
        raise _spec_error(file, f"'__class__' is {kind!r}; expected one of {list(_SPEC_KINDS)}.")
    pattern = raw.get("file_pattern")
    if pattern != FILE_PATTERN:
        raise _spec_error(file, f"file_pattern is {pattern!r}; only {FILE_PATTERN!r} (one file "
                          "per class, the layout of all 13 Meta-Dataset sources) is supported.")
    parse = {"DatasetSpecification": _plain, "BiLevelDatasetSpecification": _bilevel,
             "HierarchicalDatasetSpecification": _hierarchical}[kind]
    fields = parse(file, raw)
    return DatasetSpec(kind=kind, name=str(raw.get("name", "")), path=os.fspath(file.parent),
                       file_pattern=pattern, raw=raw, **fields)


# --------------------------------------------------------------------------- #
# One source as a ClassSource.
# --------------------------------------------------------------------------- #

def _expected_tree() -> str:
    return (
        "  <records_root>/                 (the records_root of convert_datasets_to_records)\n"
        "    <source>/                     one of " + ", ".join(SOURCES) + "\n"
        "      dataset_spec.json           written by the official conversion tools\n"
        "      0.tfrecords                 one file per class: '{}.tfrecords'.format(class id),\n"
        "      1.tfrecords ...             each record a tf.train.Example {'image': encoded\n"
        "                                  bytes, 'label': int64 class id}\n"
        f"  See {_HOMEPAGE} (doc/dataset_conversion.md) for the conversion.")


def _source_folder(records_dir: str | os.PathLike, source: str) -> Path:
    root = Path(os.path.expanduser(os.fspath(records_dir)))
    if not root.is_dir():
        raise MetaDatasetError(f"Meta-Dataset records folder {root} does not exist or is not a "
                               f"folder.\nExpected layout:\n{_expected_tree()}")
    if (root / source).is_dir():
        return root / source
    if root.name == source and ((root / SPEC_FILE).is_file() or any(root.glob("*.tfrecords"))):
        return root  # the source's folder itself (a missing spec is reported by the reader)
    if (root / SPEC_FILE).is_file():  # a source folder under another name: check its spec
        try:
            with open(root / SPEC_FILE, encoding="utf-8") as f:
                name = json.load(f).get("name")
        except (OSError, json.JSONDecodeError, AttributeError):
            name = None
        if name == source:
            return root
    raise MetaDatasetError(
        f"No records of Meta-Dataset source {source!r} in {root}: expected the folder "
        f"{root / source} (or {root} itself holding {source}'s {SPEC_FILE}).\nFound in "
        f"{root}: {listing(root)}\nExpected layout:\n{_expected_tree()}")


def class_source(records_dir: str | os.PathLike, source: str,
                 verify_crc: bool = True) -> ClassSource:
    """One source of the official converted records as a :class:`ClassSource`.

    Reads and checks ``dataset_spec.json`` and that every class's ``.tfrecords`` file exists;
    images are read lazily, class by class, as the encoded bytes stored in the records.

    Args:
      records_dir: the records root (containing ``<source>/``) or the source's folder.
      source: one of :data:`~ur_jax.suites.metadataset.common.SOURCES`.
      verify_crc: check every record's CRC-32C while reading images.

    Returns:
      The ClassSource: ``class_names`` and ``classes_per_split`` from the spec,
      ``images_per_class`` from the spec, ``superclasses`` (Omniglot: the alphabets of each
      split) or ``hierarchy`` (ImageNet: each split's internal WordNet nodes' leaves), all as
      global class ids; ``extra`` holds the folder, the spec kind, the superclass names and
      the WordNet ids of the hierarchy's nodes.

    Raises:
      MetaDatasetError: unknown source; missing folder, spec or class file; a spec for another
        source or inconsistent class counts. Reading a corrupt record raises it too.
    """
    check_source(source)
    folder = _source_folder(records_dir, source)
    spec = read_dataset_spec(folder)
    if spec.name != source:
        raise MetaDatasetError(f"{folder / SPEC_FILE} is the spec of {spec.name!r}, not of "
                               f"{source!r}; pass the records root that contains {source}/.")
    expected_kind = {"ilsvrc_2012": "HierarchicalDatasetSpecification",
                     "omniglot": "BiLevelDatasetSpecification"}.get(source,
                                                                   "DatasetSpecification")
    if spec.kind != expected_kind:
        raise MetaDatasetError(f"{folder / SPEC_FILE}: {source} is converted with a "
                               f"{expected_kind}, found a {spec.kind}; re-run the conversion.")
    n = len(spec.class_names)
    missing = [spec.class_file(c) for c in range(n) if not (folder / spec.class_file(c)).is_file()]
    if missing:
        raise MetaDatasetError(
            f"{source}: {len(missing)} of {n} class files are missing in {folder}: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}\nFound in {folder}: "
            f"{listing(folder)}\nExpected layout:\n{_expected_tree()}")
    if spec.classes_per_split != CLASS_SPLITS[source]:
        logger.info("%s: the records hold %s classes (train, valid, test); the official split "
                    "has %s.", source, spec.classes_per_split, CLASS_SPLITS[source])

    def images(class_id: int) -> Iterator[bytes]:
        path = folder / spec.class_file(class_id)
        for i, payload in enumerate(read_tfrecords(path, verify_crc=verify_crc)):
            try:
                feats = parse_example(payload)
            except MetaDatasetError as e:
                raise MetaDatasetError(f"Corrupt record {i} of {path}: {e}") from None
            image, label = feats.get("image"), feats.get("label")
            if not image or not isinstance(image[0], bytes):
                raise MetaDatasetError(f"Record {i} of {path} has no 'image' bytes feature "
                                       f"(features: {sorted(feats)}).")
            if label and int(label[0]) != class_id:
                raise MetaDatasetError(f"Record {i} of {path} has label {label[0]}, but the "
                                       f"file holds class {class_id}; the records are mixed "
                                       "up, re-run the conversion.")
            yield image[0]

    extra: dict[str, Any] = {"records_dir": os.fspath(folder), "spec_kind": spec.kind}
    if spec.superclass_names is not None:
        extra["superclass_names"] = list(spec.superclass_names)
    if spec.spanning_leaves is not None:
        extra["hierarchy_wn_ids"] = {s: sorted(v) for s, v in spec.spanning_leaves.items()}
    return ClassSource(
        name=source, class_names=list(spec.class_names), images=images,
        classes_per_split=spec.classes_per_split,
        superclasses=({s: [list(g) for g in groups] for s, groups in spec.superclasses.items()}
                      if spec.superclasses is not None else None),
        hierarchy=spec.hierarchy, images_per_class=dict(spec.images_per_class), extra=extra)
