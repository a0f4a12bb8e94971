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
then valid, then test (:func:`ur_jax.data.metadataset.common.split_class_range`).

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

This module reads all of that with the standard library, NumPy and Pillow:

* TFRecord files: :func:`read_tfrecords` / :func:`write_tfrecords` (each record: uint64
  little-endian length, masked CRC-32C of those 8 bytes, the payload, masked CRC-32C of the
  payload; :func:`crc32c`, :func:`masked_crc32c`);
* ``tf.train.Example`` protos: :func:`parse_example` / :func:`encode_example` (the protobuf wire
  format of ``tensorflow/core/example/{example,feature}.proto``);
* the specs: :func:`read_dataset_spec` -> :class:`DatasetSpec`;
* one source as a :class:`~ur_jax.data.metadataset.common.ClassSource` for the
  ``ur_metadataset`` builder: :func:`class_source`;
* a small fake records tree in exactly this format, for tests and smoke runs:
  :func:`write_fake_records`, also from the command line::

      python -m ur_jax.data.metadataset --fake /tmp/md_records \\
          [--sources ilsvrc_2012,omniglot,traffic_sign] [--seed 0]

  then build it with ``ur_jax.data.metadataset.prepare([...], data_dir, origin='records',
  records_dir='/tmp/md_records')``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import io
import json
import logging
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ur_jax.data.files import listing
from ur_jax.data.metadataset.common import (
    CLASS_SPLITS,
    SOURCES,
    SPLITS,
    ClassSource,
    MetaDatasetError,
    check_source,
    split_class_range,
)

__all__ = [
    "DEFAULT_FAKE_SOURCES",
    "SPEC_FILE",
    "DatasetSpec",
    "SynsetNode",
    "class_source",
    "crc32c",
    "encode_example",
    "masked_crc32c",
    "parse_example",
    "read_dataset_spec",
    "read_tfrecords",
    "write_fake_records",
    "write_tfrecords",
]

logger = logging.getLogger(__name__)

SPEC_FILE = "dataset_spec.json"
"""Name of a source's specification file inside its records folder."""

DEFAULT_FAKE_SOURCES = ("ilsvrc_2012", "omniglot", "traffic_sign")
"""Sources written by :func:`write_fake_records` by default: one of each spec kind."""

_SPEC_KINDS = ("DatasetSpecification", "BiLevelDatasetSpecification",
               "HierarchicalDatasetSpecification")
_SPLIT_KEYS = ("TRAIN", "VALID", "TEST")  # learning_spec.Split names, in class-id order
_FILE_PATTERN = "{}.tfrecords"
_HOMEPAGE = "https://github.com/google-research/meta-dataset"


# --------------------------------------------------------------------------- #
# CRC-32C (Castagnoli), as used by TFRecord files.
# --------------------------------------------------------------------------- #

_CRC_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_table()
_CRC_TABLE_NP = np.asarray(_CRC_TABLE, dtype=np.uint32)
_LANE_BYTES = 64  # bytes per lane of the vectorised CRC
_NUMPY_MIN_BYTES = 2048  # shorter inputs use the table loop


def _crc32c_python(data: bytes | bytearray | memoryview) -> int:
    crc = _U32
    table = _CRC_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def _apply(cols: Sequence[int], v: int) -> int:
    """The GF(2)-linear map with columns ``cols`` (images of the 32 unit vectors) at ``v``."""
    out, i = 0, 0
    while v:
        if v & 1:
            out ^= cols[i]
        v >>= 1
        i += 1
    return out


@functools.lru_cache(maxsize=64)
def _zeros_operator(level: int) -> tuple[int, ...]:
    """Columns of the map ``r -> register after feeding _LANE_BYTES * 2**level zero bytes``."""
    if level < 0:  # one zero byte
        return tuple(_CRC_TABLE[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(32))
    if level == 0:
        cols = _zeros_operator(-1)
        n = _LANE_BYTES
    else:
        cols = _zeros_operator(level - 1)
        n = 2
    out = list(cols)
    for _ in range(n - 1):  # compose: out = cols o out
        out = [_apply(cols, c) for c in out]
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _zeros_tables(level: int) -> np.ndarray:
    """(4, 256) uint32: byte-wise lookup tables of :func:`_zeros_operator` ``(level)``."""
    cols = np.asarray(_zeros_operator(level), dtype=np.uint32)
    x = np.arange(256)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for b in range(4):
        for i in range(8):
            tables[b, ((x >> i) & 1).astype(bool)] ^= cols[8 * b + i]
    return tables


def _crc32c_numpy(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data`` (>= 4 bytes) with NumPy: independent lanes of ``_LANE_BYTES`` bytes
    advanced together, then merged pairwise (CRC is linear over GF(2))."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    n = len(buf)
    lanes = -(-n // _LANE_BYTES)
    padded = np.zeros(lanes * _LANE_BYTES, dtype=np.uint8)
    # Leading zeros leave a zero register unchanged; the initial register 0xFFFFFFFF equals
    # complementing the first four message bytes with a zero register.
    padded[len(padded) - n:] = buf
    padded[len(padded) - n:len(padded) - n + 4] ^= 0xFF
    cols = padded.reshape(lanes, _LANE_BYTES).T.astype(np.uint32)  # (_LANE_BYTES, lanes)
    reg = np.zeros(lanes, dtype=np.uint32)
    table = _CRC_TABLE_NP
    for j in range(_LANE_BYTES):
        reg = table[(reg ^ cols[j]) & 0xFF] ^ (reg >> 8)
    level = 0
    while len(reg) > 1:
        if len(reg) % 2:  # a zero lane in front stands for leading zeros
            reg = np.concatenate([np.zeros(1, dtype=np.uint32), reg])
        t = _zeros_tables(level)
        first, second = reg[0::2], reg[1::2]
        shifted = (t[0][first & 0xFF] ^ t[1][(first >> 8) & 0xFF]
                   ^ t[2][(first >> 16) & 0xFF] ^ t[3][first >> 24])
        reg = shifted ^ second
        level += 1
    return int(reg[0]) ^ _U32


def _fast_crc() -> Any:
    for name, attr in (("google_crc32c", "value"), ("crc32c", "crc32c")):
        try:
            module = __import__(name)
            return getattr(module, attr)
        except (ImportError, AttributeError):
            continue
    return None


_FAST_CRC = _fast_crc()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, as an unsigned 32-bit integer.

    Uses ``google-crc32c`` or ``crc32c`` when installed; otherwise a table-driven loop for
    short inputs and a NumPy lane-parallel version of the same table for long ones.
    """
    if _FAST_CRC is not None:
        return int(_FAST_CRC(bytes(data))) & _U32
    if len(data) >= _NUMPY_MIN_BYTES:
        return _crc32c_numpy(data)
    return _crc32c_python(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: ``((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2**32) with
    ``c = crc32c(data)``."""
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32


# --------------------------------------------------------------------------- #
# TFRecord files.
# --------------------------------------------------------------------------- #

def _frame(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", masked_crc32c(header)) + payload
            + struct.pack("<I", masked_crc32c(payload)))


def write_tfrecords(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes ``records`` (bytes payloads) as an uncompressed TFRecord file.

    Args:
      path: the file to (over)write.
      records: the payloads, e.g. serialized ``tf.train.Example`` protos
        (:func:`encode_example`).

    Returns:
      The number of records written.
    """
    n = 0
    with open(path, "wb") as f:
        for payload in records:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise TypeError(f"write_tfrecords: records must be bytes, found "
                                f"{type(payload).__name__}.")
            f.write(_frame(bytes(payload)))
            n += 1
    return n


def read_tfrecords(path: str | os.PathLike, verify_crc: bool = True) -> Iterator[bytes]:
    """Yields the payloads of an uncompressed TFRecord file, in order.

    The masked CRC of each record's length is always checked (it costs nothing and catches a
    misaligned or foreign file); the payload's CRC when ``verify_crc``.

    Args:
      path: a ``.tfrecords`` file (not GZIP/ZLIB compressed: Meta-Dataset's are not).
      verify_crc: check every payload's CRC-32C.

    Raises:
      MetaDatasetError: the file is missing, truncated, or a CRC does not match (corrupt
        file); the message names the file and the record index.
    """
    path = Path(path)
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 (closed below)
    except OSError as e:
        raise MetaDatasetError(f"Cannot open the TFRecord file {path}: {e}") from None
    with f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise _corrupt(path, index, f"the file ends inside a record header "
                               f"({len(header)} of 12 bytes)")
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise _corrupt(path, index, "the CRC of the record length does not match "
                               "(not a TFRecord file, a compressed one, or a damaged one)")
            payload = f.read(length)
            footer = f.read(4)
            if len(payload) < length or len(footer) < 4:
                raise _corrupt(path, index, f"the file ends inside a record of {length} "
                               f"bytes (truncated copy?)")
            if verify_crc and masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                raise _corrupt(path, index, "the CRC-32C of the record's data does not match")
            yield payload
            index += 1


def _corrupt(path: Path, index: int, problem: str) -> MetaDatasetError:
    return MetaDatasetError(
        f"Corrupt TFRecord file {path}: record {index}: {problem}. Re-copy or re-convert "
        "this class's records (meta_dataset/dataset_conversion/"
        "convert_datasets_to_records.py).")


# --------------------------------------------------------------------------- #
# tf.train.Example, in the protobuf wire format.
# --------------------------------------------------------------------------- #
#
# message Example  { Features features = 1; }
# message Features { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
# message Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
#                                 Int64List int64_list = 3; } }
# message BytesList { repeated bytes value = 1; }
# message FloatList { repeated float value = 1 [packed = true]; }
# message Int64List { repeated int64 value = 1 [packed = true]; }

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; LEN values are bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if number == 0:
            raise ValueError("field number 0")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: bytes) -> list[Any]:
    values: list[Any] = []
    for number, wire, body in _fields(buf):
        if wire != 2 or number not in (1, 2, 3):
            continue  # unknown field
        values = []  # last oneof member wins, as in protobuf
        for n2, w2, v in _fields(body):
            if n2 != 1:
                continue
            if number == 1 and w2 == 2:
                values.append(bytes(v))
            elif number == 2 and w2 == 2:  # packed floats
                if len(v) % 4:
                    raise ValueError("packed float list of a length not divisible by 4")
                values.extend(float(x) for x in np.frombuffer(v, dtype="<f4"))
            elif number == 2 and w2 == 5:
                values.append(struct.unpack("<f", v)[0])
            elif number == 3 and w2 == 2:  # packed varints
                pos = 0
                while pos < len(v):
                    x, pos = _varint(v, pos)
                    values.append(_signed64(x))
            elif number == 3 and w2 == 0:
                values.append(_signed64(v))
            else:
                raise ValueError(f"unexpected wire type {w2} in a feature list")
    return values


def parse_example(data: bytes) -> dict[str, list[Any]]:
    """Parses a serialized ``tf.train.Example``.

    Args:
      data: the proto's bytes (e.g. one TFRecord payload).

    Returns:
      ``{feature name: values}``: a list of ``bytes`` (BytesList), ``float`` (FloatList) or
      ``int`` (Int64List); an empty feature gives ``[]``.

    Raises:
      MetaDatasetError: ``data`` is not a valid serialized Example.
    """
    out: dict[str, list[Any]] = {}
    try:
        for number, wire, features in _fields(bytes(data)):
            if number != 1 or wire != 2:
                continue
            for n2, w2, entry in _fields(features):
                if n2 != 1 or w2 != 2:
                    continue
                key, value = "", b""
                for n3, w3, v in _fields(entry):
                    if n3 == 1 and w3 == 2:
                        key = bytes(v).decode("utf-8")
                    elif n3 == 2 and w3 == 2:
                        value = v
                out[key] = _parse_feature(value)
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise MetaDatasetError(f"Not a serialized tf.train.Example: {e}.") from None
    return out


def _put_varint(out: bytearray, v: int) -> None:
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_len(out: bytearray, number: int, body: bytes) -> None:
    _put_varint(out, (number << 3) | 2)
    _put_varint(out, len(body))
    out += body


def _feature_kind(name: str, values: Sequence[Any]) -> str:
    kinds = set()
    for v in values:
        if isinstance(v, bytes | bytearray | str):
            kinds.add("bytes")
        elif isinstance(v, bool | int | np.integer):
            kinds.add("int64")
        elif isinstance(v, float | np.floating):
            kinds.add("float")
        else:
            raise TypeError(f"encode_example: feature {name!r} has a value of type "
                            f"{type(v).__name__}; expected bytes/str, int or float.")
    if len(kinds) > 1:
        raise TypeError(f"encode_example: feature {name!r} mixes {sorted(kinds)} values; a "
                        "feature holds one type.")
    return kinds.pop() if kinds else "bytes"


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serializes a ``tf.train.Example``.

    Args:
      features: ``{name: value or list of values}``; ``bytes``/``str`` values become a
        BytesList, ``int`` an Int64List (packed), ``float`` a FloatList (packed). Entries are
        written in the mapping's order.

    Returns:
      The proto's bytes, readable by ``tf.train.Example.FromString`` and :func:`parse_example`.
    """
    feature_map = bytearray()
    for name, value in features.items():
        if isinstance(value, np.ndarray):
            value = value.reshape(-1).tolist()
        elif isinstance(value, bytes | bytearray | str) or not isinstance(value, Sequence):
            value = [value]
        kind = _feature_kind(name, value)
        body = bytearray()
        if kind == "bytes":
            for v in value:
                _put_len(body, 1, v.encode("utf-8") if isinstance(v, str) else bytes(v))
            number = 1
        elif kind == "float":
            if value:
                _put_len(body, 1, np.asarray(value, dtype="<f4").tobytes())
            number = 2
        else:
            packed = bytearray()
            for v in value:
                _put_varint(packed, int(v))
            if value:
                _put_len(body, 1, bytes(packed))
            number = 3
        feature = bytearray()
        _put_len(feature, number, bytes(body))
        entry = bytearray()
        _put_len(entry, 1, str(name).encode("utf-8"))
        _put_len(entry, 2, bytes(feature))
        _put_len(feature_map, 1, bytes(entry))
    out = bytearray()
    _put_len(out, 1, bytes(feature_map))
    return bytes(out)


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
    if not isinstance(value, Mapping) or set(value) != set(_SPLIT_KEYS):
        found = sorted(value) if isinstance(value, Mapping) else type(value).__name__
        raise _spec_error(path, f"{field!r} must map {list(_SPLIT_KEYS)} to counts; found "
                          f"{found}.")
    counts = tuple(int(value[k]) for k in _SPLIT_KEYS)
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
    if not isinstance(subgraphs, Mapping) or set(subgraphs) != set(_SPLIT_KEYS):
        raise _spec_error(path, f"'split_subgraphs' must map {list(_SPLIT_KEYS)} to node "
                          "lists.")
    images = raw.get("images_per_class")
    if not isinstance(images, Mapping) or set(images) != set(_SPLIT_KEYS):
        raise _spec_error(path, f"'images_per_class' must map {list(_SPLIT_KEYS)} to "
                          "{wn_id: count} objects (a HierarchicalDatasetSpecification).")
    graph: dict[str, dict[str, SynsetNode]] = {}
    leaves: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for key, split in zip(_SPLIT_KEYS, SPLITS):
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
    for key, split in zip(_SPLIT_KEYS, SPLITS):
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
    if pattern != _FILE_PATTERN:
        raise _spec_error(file, f"file_pattern is {pattern!r}; only {_FILE_PATTERN!r} (one file "
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
      source: one of :data:`~ur_jax.data.metadataset.common.SOURCES`.
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


# --------------------------------------------------------------------------- #
# Fake records in the official format.
# --------------------------------------------------------------------------- #

_FAKE_SPLITS = (6, 5, 5)
_FAKE_IMAGENET_SPLITS = (10, 6, 6)
# Omniglot: two alphabets of >= 5 characters in train and test (the sampler, like the
# official one, refuses an alphabet with fewer characters than min_ways = 5).
_FAKE_OMNIGLOT_SPLITS = (11, 5, 10)


def _fake_splits(source: str, classes_per_split: Any) -> tuple[int, int, int]:
    if isinstance(classes_per_split, Mapping):
        value = classes_per_split.get(source)
    else:
        value = classes_per_split
    official = CLASS_SPLITS[source]
    if value is None:
        default = {"ilsvrc_2012": _FAKE_IMAGENET_SPLITS,
                   "omniglot": _FAKE_OMNIGLOT_SPLITS}.get(source, _FAKE_SPLITS)
        return tuple(min(d, o) for d, o in zip(default, official))  # type: ignore[return-value]
    counts = tuple(int(v) for v in value)
    if len(counts) != 3 or any(c < 0 for c in counts) or not sum(counts):
        raise ValueError(f"write_fake_records: classes_per_split for {source} must be three "
                         f"non-negative counts (train, valid, test), not all 0; found {value}.")
    if any(c > o for c, o in zip(counts, official)):
        raise ValueError(f"write_fake_records: {source} has at most {official} classes "
                         f"(train, valid, test); found {counts}.")
    return counts  # type: ignore[return-value]


def _fake_image(rng: np.random.Generator, class_id: int, size: tuple[int, int],
                omniglot: bool) -> bytes:
    """A JPEG whose colour and stripe orientation / frequency depend on the class."""
    h, w = size
    angle = (class_id * 2.39996) % np.pi  # golden angle: well spread orientations
    freq = 2.0 + (class_id % 4)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (x * np.cos(angle) + y * np.sin(angle)) / max(h, w)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * freq * t + phase)
    if omniglot:  # dark strokes on white, stored as RGB like the official conversion
        grey = np.where(wave > 0.55, 30.0, 250.0) + rng.normal(0, 6, (h, w))
        pixels = np.repeat(grey[..., None], 3, axis=2)
    else:
        hue = (class_id * 0.618034) % 1.0
        colour = np.asarray(colorsys.hsv_to_rgb(hue, 0.7, 0.9)) * 255.0
        pixels = colour * (0.7 + 0.3 * wave[..., None]) + rng.normal(0, 8, (h, w, 3))
    img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")  # PIL's default quality, as the converter
    return buf.getvalue()


def _write_class_files(folder: Path, source: str, n_images: Sequence[int],
                       image_size: tuple[int, int], rng: np.random.Generator) -> None:
    lo, hi = image_size
    for class_id, n in enumerate(n_images):
        payloads = []
        for _ in range(int(n)):
            size = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
            jpeg = _fake_image(rng, class_id, size, source == "omniglot")
            payloads.append(encode_example({"image": [jpeg], "label": [class_id]}))
        write_tfrecords(folder / _FILE_PATTERN.format(class_id), payloads)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _fake_plain(folder: Path, source: str, counts: tuple[int, int, int],
                n_images: Sequence[int]) -> dict[str, Any]:
    total = sum(counts)
    if source == "traffic_sign":  # the official traffic_sign names are JSON integers
        names: dict[str, Any] = {str(c): c for c in range(total)}
    else:
        names = {str(c): f"{source}_class_{c:04d}" for c in range(total)}
    return {"name": source,
            "classes_per_split": dict(zip(_SPLIT_KEYS, counts)),
            "images_per_class": {str(c): int(n) for c, n in enumerate(n_images)},
            "class_names": names,
            "path": os.fspath(folder),
            "file_pattern": _FILE_PATTERN,
            "__class__": "DatasetSpecification"}


def _alphabet_sizes(n: int) -> list[int]:
    """Splits ``n`` characters into alphabets of 5, 6, 5, 6, ... characters (a remainder of
    fewer than 5 joins the last alphabet), so every alphabet can make a 5-way episode."""
    sizes: list[int] = []
    left = n
    while left > 0:
        s = min(5 if len(sizes) % 2 == 0 else 6, left)
        sizes.append(s)
        left -= s
    if len(sizes) > 1 and sizes[-1] < 5:
        last = sizes.pop()
        sizes[-1] += last
    return sizes


def _fake_omniglot(folder: Path, counts: tuple[int, int, int],
                   n_images: Sequence[int]) -> dict[str, Any]:
    supers_per_split, per_super, super_names, class_names = [], {}, {}, {}
    k = c = 0
    for split, n in zip(SPLITS, counts):
        sizes = _alphabet_sizes(n)
        supers_per_split.append(len(sizes))
        for size in sizes:
            alphabet = f"Fake_{split.capitalize()}_Alphabet_{k:02d}"
            per_super[str(k)] = size
            super_names[str(k)] = alphabet
            for j in range(size):
                class_names[str(c)] = f"{alphabet}-character{j + 1:02d}"
                c += 1
            k += 1
    return {"name": "omniglot",
            "superclasses_per_split": dict(zip(_SPLIT_KEYS, supers_per_split)),
            "classes_per_superclass": per_super,
            "images_per_class": {str(i): int(n) for i, n in enumerate(n_images)},
            "superclass_names": super_names,
            "class_names": class_names,
            "path": os.fspath(folder),
            "file_pattern": _FILE_PATTERN,
            "__class__": "BiLevelDatasetSpecification"}


def _fake_split_graph(leaves: Sequence[str], internal: Iterator[str], split: str
                      ) -> dict[str, tuple[str, list[str]]]:
    """``{wn_id: (words, children)}`` of a small DAG over ``leaves`` (sorted wn_ids).

    With ``n`` leaves ``l0 .. l{n-1}`` and ``a = max(2, (n - 1) // 2)``: the root's children
    are ``A``, ``B`` and ``l{n-1}``; ``A`` spans ``l0 .. l{a-1}`` (through a node ``C`` over
    ``l0, l1`` when ``a >= 3``); ``B`` spans ``l{a-1} .. l{n-2}``, so ``l{a-1}`` has two
    parents. Spans: root n, A a, B n - a, C 2. Fewer than 4 leaves: one root over all.
    """
    n = len(leaves)
    graph: dict[str, tuple[str, list[str]]] = {}
    if n < 2:
        return graph
    root = next(internal)
    if n < 4:
        graph[root] = (f"fake {split} root", list(leaves))
        return graph
    a = max(2, (n - 1) // 2)
    node_a, node_b = next(internal), next(internal)
    graph[root] = (f"fake {split} root", [node_a, node_b, leaves[n - 1]])
    if a >= 3:
        node_c = next(internal)
        graph[node_c] = (f"fake {split} pair", [leaves[0], leaves[1]])
        graph[node_a] = (f"fake {split} group A", [node_c, *leaves[2:a]])
    else:
        graph[node_a] = (f"fake {split} group A", list(leaves[:a]))
    graph[node_b] = (f"fake {split} group B", list(leaves[a - 1:n - 1]))
    return graph


def _fake_imagenet(folder: Path, counts: tuple[int, int, int], n_images: Sequence[int],
                   rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, int]]:
    total = sum(counts)
    numbers = rng.choice(np.arange(1_000_000, 15_000_000), size=total + 8 * 3, replace=False)
    wn = [f"n{int(v):08d}" for v in numbers]
    leaf_pool, internal_pool = wn[:total], iter(wn[total:])
    subgraphs, images, class_names = {}, {}, {}
    leaf_images: dict[str, int] = {}
    start = 0
    for key, split, n in zip(_SPLIT_KEYS, SPLITS, counts):
        leaves = sorted(leaf_pool[start:start + n])
        for offset, leaf in enumerate(leaves):  # class ids: sorted wn_ids within the split
            class_names[str(start + offset)] = leaf
            leaf_images[leaf] = int(n_images[start + offset])
        start += n
        dag = _fake_split_graph(leaves, internal_pool, split)
        children = {w: list(ch) for w, (_, ch) in dag.items()}
        words = {w: wd for w, (wd, _) in dag.items()}
        for leaf in leaves:
            children.setdefault(leaf, [])
            words.setdefault(leaf, f"fake synset {leaf}")
        parents: dict[str, list[str]] = {w: [] for w in children}
        for w, ch in children.items():
            for c in ch:
                parents[c].append(w)
        span: dict[str, set[str]] = {}

        def leaves_of(w: str, span: dict[str, set[str]] = span,
                      children: dict[str, list[str]] = children) -> set[str]:
            if w not in span:
                span[w] = ({w} if not children[w] else
                           set().union(*(leaves_of(c) for c in children[w])))
            return span[w]

        subgraphs[key] = [{"wn_id": w, "words": words[w], "children_ids": sorted(children[w]),
                           "parents_ids": sorted(parents[w])} for w in sorted(children)]
        images[key] = {w: sum(leaf_images[x] for x in leaves_of(w)) for w in sorted(children)}
    spec = {"name": "ilsvrc_2012",
            "split_subgraphs": subgraphs,
            "images_per_class": images,
            "class_names": class_names,
            "path": os.fspath(folder),
            "file_pattern": _FILE_PATTERN,
            "__class__": "HierarchicalDatasetSpecification"}
    return spec, leaf_images


def write_fake_records(root: str | os.PathLike,
                       sources: Sequence[str] = DEFAULT_FAKE_SOURCES,
                       classes_per_split: Sequence[int] | Mapping[str, Sequence[int]] | None
                       = None,
                       images_per_class: tuple[int, int] = (3, 6),
                       image_size: tuple[int, int] = (20, 28),
                       seed: int = 0) -> str:
    """Writes a small fake Meta-Dataset records tree in exactly the official on-disk format.

    For each source, ``<root>/<source>/`` gets ``dataset_spec.json`` as the official converter
    writes it (``to_dict()`` + ``json.dump(indent=2)``, with ``__class__``, the ``TRAIN`` /
    ``VALID`` / ``TEST`` keys, ``path`` and ``file_pattern``) and one ``<class id>.tfrecords``
    per class of serialized ``tf.train.Example`` {``'image'``: JPEG bytes, ``'label'``: class
    id}. ``ilsvrc_2012`` gets a HierarchicalDatasetSpecification over a small fake WordNet DAG
    per split (internal nodes spanning n, about n/2 and 2 leaves, one leaf with two parents;
    leaves sorted by WordNet id get consecutive class ids, as in the official conversion) and
    its ``num_leaf_images.json``; ``omniglot`` a BiLevelDatasetSpecification with fake
    alphabets of 5-6 characters; the others a DatasetSpecification (traffic_sign's class names
    are integers, as in the official spec). Images are JPEGs (PIL's default quality, like the
    converter) of random height and width in ``image_size``, coloured and striped by class
    (stripe angle and frequency depend on the class; omniglot: dark strokes on white, stored
    as RGB as the official conversion stores Omniglot) plus noise, so that a model can
    separate the classes. Deterministic given ``seed``.

    Args:
      root: the records root to create (existing files are overwritten).
      sources: source names.
      classes_per_split: ``(train, valid, test)`` for every source, or ``{source: (...)}``;
        default: ilsvrc_2012 (10, 6, 6), omniglot (11, 5, 10), others (6, 5, 5), each capped at the official counts
        (so splits without official classes stay empty, e.g. traffic_sign (0, 0, 5)).
      images_per_class: inclusive range of images per class.
      image_size: inclusive range of image height and width, in pixels.
      seed: random seed.

    Returns:
      ``root`` (as a string).
    """
    if isinstance(sources, str):
        raise TypeError(f"write_fake_records expects a sequence of sources, found the string "
                        f"{sources!r}; pass [{sources!r}] instead.")
    for s in sources:
        check_source(s)
    lo, hi = (int(v) for v in images_per_class)
    s_lo, s_hi = (int(v) for v in image_size)
    if not 1 <= lo <= hi or not 1 <= s_lo <= s_hi:
        raise ValueError(f"write_fake_records: images_per_class and image_size are inclusive "
                         f"(min, max) ranges >= 1; found {images_per_class}, {image_size}.")
    base = Path(os.path.expanduser(os.fspath(root)))
    for source in sources:
        counts = _fake_splits(source, classes_per_split)
        rng = np.random.default_rng([int(seed), zlib.crc32(source.encode())])
        folder = base / source
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.tfrecords"):
            old.unlink()
        n_images = [int(v) for v in rng.integers(lo, hi + 1, size=sum(counts))]
        if source == "ilsvrc_2012":
            spec, leaf_images = _fake_imagenet(folder, counts, n_images, rng)
            _write_json(folder / "num_leaf_images.json", leaf_images)
        elif source == "omniglot":
            spec = _fake_omniglot(folder, counts, n_images)
        else:
            spec = _fake_plain(folder, source, counts, n_images)
        _write_json(folder / SPEC_FILE, spec)
        _write_class_files(folder, source, n_images, (s_lo, s_hi), rng)
    return os.fspath(base)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m ur_jax.data.metadataset --fake DIR [--sources a,b] [--seed N]``:
    writes a fake records tree in the official format (for smoke runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ur_jax.data.metadataset",
                                     description=main.__doc__)
    parser.add_argument("--fake", required=True, help="records root to write")
    parser.add_argument("--sources", default=",".join(DEFAULT_FAKE_SOURCES),
                        help="comma-separated sources (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    path = write_fake_records(args.fake, sources=sources, seed=args.seed)
    print(f"Fake Meta-Dataset records written to {path} ({', '.join(sources)}). Build them "
          f"with ur_jax.data.metadataset.prepare({sources!r}, DATA_DIR, origin='records', "
          f"records_dir={path!r}).")

