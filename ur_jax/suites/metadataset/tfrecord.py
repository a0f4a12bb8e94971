"""TFRecord files and ``tf.train.Example`` protos, read and written without TensorFlow.

* TFRecord files: :func:`read_tfrecords` / :func:`write_tfrecords` (each record: uint64
  little-endian length, masked CRC-32C of those 8 bytes, the payload, masked CRC-32C of the
  payload; :func:`crc32c`, :func:`masked_crc32c`);
* ``tf.train.Example`` protos: :func:`parse_example` / :func:`encode_example` (the protobuf wire
  format of ``tensorflow/core/example/{example,feature}.proto``).

Meta-Dataset's official converted records (:mod:`ur_jax.suites.metadataset.records`) are
stored this way; only the standard library and NumPy are used.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ur_jax.suites.metadataset.common import MetaDatasetError

__all__ = [
    "crc32c",
    "encode_example",
    "masked_crc32c",
    "parse_example",
    "read_tfrecords",
    "write_tfrecords",
]


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
