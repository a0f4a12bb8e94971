"""Meta-Dataset records reader (TFRecord, tf.train.Example, dataset_spec.json) and the
``ur_metadataset`` TFDS builder, on fake records written in the official on-disk format."""

from __future__ import annotations

import io
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ur_jax.suites.metadataset import builder, records, tfrecord
from ur_jax.suites.metadataset.fake import write_fake_records
from ur_jax.suites.metadataset.common import SPLITS, MetaDatasetError, split_class_range

FAKE_SOURCES = ("ilsvrc_2012", "omniglot", "traffic_sign")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """One fake records tree (ImageNet, Omniglot, Traffic Sign), prepared once."""
    root = tmp_path_factory.mktemp("metadataset")
    records_dir = write_fake_records(root / "records", sources=FAKE_SOURCES)
    data_dir = root / "tfds"
    builder.prepare(FAKE_SOURCES, data_dir, records_dir=records_dir)
    return records_dir, data_dir


def records_dir_path(records_dir, source):
    return Path(records_dir) / source


def _record_images(records_dir, source, class_id):
    path = f"{records_dir}/{source}/{class_id}.tfrecords"
    out = []
    for payload in tfrecord.read_tfrecords(path):
        feats = tfrecord.parse_example(payload)
        assert feats["label"] == [class_id]
        out.append(feats["image"][0])
    return out


# --------------------------------------------------------------------------- #
# CRC-32C and TFRecord files.
# --------------------------------------------------------------------------- #

def test_crc32c_known_vectors_and_numpy_path():
    assert tfrecord.crc32c(b"") == 0
    assert tfrecord.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    # RFC 3720 (iSCSI) appendix B.4.
    assert tfrecord.crc32c(bytes(32)) == 0x8A9136AA
    assert tfrecord.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tfrecord.crc32c(bytes(range(32))) == 0x46DD794E
    assert tfrecord.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    c = 0xE3069283
    assert tfrecord.masked_crc32c(b"123456789") == (
        ((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    rng = np.random.default_rng(0)
    for n in (4, 63, 64, 65, 2048, 5001, 70001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tfrecord._crc32c_numpy(data) == tfrecord._crc32c_python(data), n


def test_tfrecord_round_trip_record_by_record(tmp_path):
    rng = np.random.default_rng(1)
    payloads = [b"", b"abc", rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes()]
    path = tmp_path / "x.tfrecords"
    assert tfrecord.write_tfrecords(path, payloads) == 3
    assert path.stat().st_size == sum(16 + len(p) for p in payloads)
    head = path.read_bytes()[:12]
    assert struct.unpack("<Q", head[:8])[0] == 0
    it = tfrecord.read_tfrecords(path)
    assert next(it) == payloads[0]
    assert next(it) == payloads[1]
    assert next(it) == payloads[2]
    with pytest.raises(StopIteration):
        next(it)


def test_tfrecord_writer_matches_tensorboard_writer(tmp_path):
    rw = pytest.importorskip("tensorboard.summary.writer.record_writer")
    payloads = [b"hello", bytes(range(256)) * 20]
    buf = io.BytesIO()
    writer = rw.RecordWriter(buf)
    for p in payloads:
        writer.write(p)
    tfrecord.write_tfrecords(tmp_path / "a.tfrecords", payloads)
    assert (tmp_path / "a.tfrecords").read_bytes() == buf.getvalue()


def test_crc_detects_corruption(tmp_path):
    p0, p1 = b"first record", b"second record payload"
    path = tmp_path / "x.tfrecords"
    tfrecord.write_tfrecords(path, [p0, p1])
    good = path.read_bytes()
    bad = bytearray(good)
    bad[16 + len(p0) + 12 + 3] ^= 0x01  # a byte of the second payload
    path.write_bytes(bytes(bad))
    it = tfrecord.read_tfrecords(path)
    assert next(it) == p0
    with pytest.raises(MetaDatasetError, match=r"record 1: the CRC-32C of the record's data"):
        next(it)
    assert list(tfrecord.read_tfrecords(path, verify_crc=False))[1] != p1
    bad = bytearray(good)
    bad[0] ^= 0x04  # the first record's length
    path.write_bytes(bytes(bad))
    with pytest.raises(MetaDatasetError, match=r"record 0: the CRC of the record length"):
        list(tfrecord.read_tfrecords(path, verify_crc=False))
    path.write_bytes(good[:-3])
    with pytest.raises(MetaDatasetError, match="ends inside a record"):
        list(tfrecord.read_tfrecords(path))


# --------------------------------------------------------------------------- #
# tf.train.Example.
# --------------------------------------------------------------------------- #

def _protobuf_example_class():
    """tf.train.Example built from its .proto definition with the protobuf runtime."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="ur_test_example.proto", package="urtest",
                                            syntax="proto3")
    for name, ftype, packed in (("BytesList", F.TYPE_BYTES, False),
                                ("FloatList", F.TYPE_FLOAT, True),
                                ("Int64List", F.TYPE_INT64, True)):
        f = fd.message_type.add(name=name).field.add(name="value", number=1,
                                                     label=F.LABEL_REPEATED, type=ftype)
        if packed:
            f.options.packed = True
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, typ) in enumerate((("bytes_list", "BytesList"),
                                          ("float_list", "FloatList"),
                                          ("int64_list", "Int64List")), 1):
        feature.field.add(name=name, number=number, label=F.LABEL_OPTIONAL,
                          type=F.TYPE_MESSAGE, type_name=f".urtest.{typ}", oneof_index=0)
    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                    type_name=".urtest.Feature")
    features.field.add(name="feature", number=1, label=F.LABEL_REPEATED, type=F.TYPE_MESSAGE,
                       type_name=".urtest.Features.FeatureEntry")
    example = fd.message_type.add(name="Example")
    example.field.add(name="features", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_MESSAGE,
                      type_name=".urtest.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("urtest.Example"))


def test_example_round_trip_both_directions():
    feats = {"image": [b"\x00\xffjpeg", b""], "label": [7], "big": [-3, 2**40, -(2**63)],
             "f": [0.5, -1.25], "name": ["a", "\u00e9"], "empty": []}
    data = tfrecord.encode_example(feats)
    parsed = tfrecord.parse_example(data)
    assert parsed == {"image": [b"\x00\xffjpeg", b""], "label": [7],
                      "big": [-3, 2**40, -(2**63)], "f": [0.5, -1.25],
                      "name": [b"a", "\u00e9".encode()], "empty": []}
    example_cls = _protobuf_example_class()
    msg = example_cls.FromString(data)  # ours -> protobuf
    fmap = msg.features.feature
    assert list(fmap["image"].bytes_list.value) == [b"\x00\xffjpeg", b""]
    assert list(fmap["big"].int64_list.value) == [-3, 2**40, -(2**63)]
    assert list(fmap["f"].float_list.value) == [0.5, -1.25]
    other = example_cls()  # protobuf -> ours
    other.features.feature["label"].int64_list.value.extend([12, -1])
    other.features.feature["image"].bytes_list.value.append(b"xyz")
    other.features.feature["w"].float_list.value.extend([2.0, 0.25])
    assert tfrecord.parse_example(other.SerializeToString()) == {
        "label": [12, -1], "image": [b"xyz"], "w": [2.0, 0.25]}
    with pytest.raises(MetaDatasetError, match="tf.train.Example"):
        tfrecord.parse_example(b"\x0a\x09\x0a\x07")


# --------------------------------------------------------------------------- #
# dataset_spec.json
# --------------------------------------------------------------------------- #

def _node(wn, children, parents):
    return {"wn_id": wn, "words": f"words of {wn}", "children_ids": sorted(children),
            "parents_ids": sorted(parents)}


def _hand_imagenet(folder):
    """A hand-made ImageNet spec: train r -> {a, b, L2}, a -> {L1, L3, L5}, b -> {L1, L4}
    (L1 has two parents); no valid classes; test t -> {M40, M50}."""
    L = {i: f"n0000000{i}" for i in range(1, 6)}
    r, a, b, t, m40, m50 = "n00000100", "n00000200", "n00000300", "n00000900", \
        "n00000040", "n00000050"
    train = [_node(r, [a, b, L[2]], []), _node(a, [L[1], L[3], L[5]], [r]),
             _node(b, [L[1], L[4]], [r]), _node(L[1], [], [a, b]), _node(L[2], [], [r]),
             _node(L[3], [], [a]), _node(L[4], [], [b]), _node(L[5], [], [a])]
    test = [_node(t, [m40, m50], []), _node(m40, [], [t]), _node(m50, [], [t])]
    leaf_images = {L[1]: 3, L[2]: 4, L[3]: 5, L[4]: 6, L[5]: 7, m40: 2, m50: 8}
    spec = {
        "name": "ilsvrc_2012",
        "split_subgraphs": {"TRAIN": sorted(train, key=lambda n: n["wn_id"]), "VALID": [],
                            "TEST": test},
        "images_per_class": {
            "TRAIN": {**{L[i]: leaf_images[L[i]] for i in L}, r: 25, a: 15, b: 9},
            "VALID": {}, "TEST": {m40: 2, m50: 8, t: 10}},
        "class_names": {"0": L[1], "1": L[2], "2": L[3], "3": L[4], "4": L[5], "5": m40,
                        "6": m50},
        "path": "/somewhere/else", "file_pattern": "{}.tfrecords",
        "__class__": "HierarchicalDatasetSpecification"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    for c in range(7):
        name = spec["class_names"][str(c)]
        tfrecord.write_tfrecords(folder / f"{c}.tfrecords", [
            tfrecord.encode_example({"image": [b"jpeg"], "label": [c]})] * leaf_images[name])
    return spec


def test_hierarchical_spec_by_hand(tmp_path):
    _hand_imagenet(tmp_path / "ilsvrc_2012")
    spec = records.read_dataset_spec(tmp_path / "ilsvrc_2012" / "dataset_spec.json")
    assert spec.kind == "HierarchicalDatasetSpecification"
    assert spec.classes_per_split == (5, 0, 2)
    assert spec.class_names[5] == "n00000040"
    assert spec.images_per_class == {0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 2, 6: 8}
    # a spans L1, L3, L5 = class ids 0, 2, 4; b spans L1, L4 = 0, 3 (L1 is shared).
    assert spec.spanning_leaves["train"] == {"n00000100": (0, 1, 2, 3, 4),
                                             "n00000200": (0, 2, 4), "n00000300": (0, 3)}
    assert spec.spanning_leaves["valid"] == {}
    assert spec.spanning_leaves["test"] == {"n00000900": (5, 6)}
    assert spec.hierarchy == {"train": [[0, 1, 2, 3, 4], [0, 2, 4], [0, 3]], "valid": [],
                              "test": [[5, 6]]}
    assert spec.graph["train"]["n00000001"].parents_ids == ("n00000200", "n00000300")
    cs = records.class_source(tmp_path, "ilsvrc_2012")
    assert cs.splits == (5, 0, 2) and cs.hierarchy == spec.hierarchy
    assert len(list(cs.images(4))) == 7


def test_hierarchical_spec_rejects_bad_graphs(tmp_path):
    spec = _hand_imagenet(tmp_path / "ilsvrc_2012")
    path = tmp_path / "ilsvrc_2012" / "dataset_spec.json"
    broken = json.loads(json.dumps(spec))
    broken["split_subgraphs"]["TRAIN"][0]["children_ids"].append("n09999999")
    path.write_text(json.dumps(broken))
    with pytest.raises(MetaDatasetError, match="not in that graph"):
        records.read_dataset_spec(path)
    cyclic = json.loads(json.dumps(spec))  # r -> a -> r
    for node in cyclic["split_subgraphs"]["TRAIN"]:
        if node["wn_id"] == "n00000200":
            node["children_ids"].append("n00000100")
        if node["wn_id"] == "n00000100":
            node["parents_ids"].append("n00000200")
    path.write_text(json.dumps(cyclic))
    with pytest.raises(MetaDatasetError, match="cycle"):
        records.read_dataset_spec(path)


def _leaves_by_recursion(nodes, wn):
    children = nodes[wn]["children_ids"]
    if not children:
        return {wn}
    return set().union(*(_leaves_by_recursion(nodes, c) for c in children))


def test_fake_specs_of_all_three_kinds(fake):
    records_dir, _ = fake
    raws = {s: json.loads((records_dir_path(records_dir, s) / "dataset_spec.json").read_text())
            for s in FAKE_SOURCES}
    # Key order and class as the official DatasetSpecification.to_dict() + json.dump.
    assert list(raws["traffic_sign"]) == ["name", "classes_per_split", "images_per_class",
                                          "class_names", "path", "file_pattern", "__class__"]
    assert list(raws["omniglot"]) == ["name", "superclasses_per_split",
                                      "classes_per_superclass", "images_per_class",
                                      "superclass_names", "class_names", "path",
                                      "file_pattern", "__class__"]
    assert list(raws["ilsvrc_2012"]) == ["name", "split_subgraphs", "images_per_class",
                                         "class_names", "path", "file_pattern", "__class__"]

    ts = records.read_dataset_spec(records_dir_path(records_dir, "traffic_sign"))
    assert ts.kind == "DatasetSpecification" and ts.classes_per_split == (0, 0, 5)
    assert raws["traffic_sign"]["class_names"]["3"] == 3  # integers, as the official spec
    assert ts.class_names == ("0", "1", "2", "3", "4")

    om = records.read_dataset_spec(records_dir_path(records_dir, "omniglot"))
    assert om.kind == "BiLevelDatasetSpecification" and om.classes_per_split == (11, 5, 10)
    assert om.superclasses == {"train": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9, 10)),
                               "valid": ((11, 12, 13, 14, 15),),
                               "test": ((16, 17, 18, 19, 20), (21, 22, 23, 24, 25))}
    assert len(om.superclass_names) == 5
    assert om.class_names[12].startswith(om.superclass_names[2] + "-character")

    im = records.read_dataset_spec(records_dir_path(records_dir, "ilsvrc_2012"))
    raw = raws["ilsvrc_2012"]
    assert im.kind == "HierarchicalDatasetSpecification" and im.classes_per_split == (10, 6, 6)
    for key, split in zip(("TRAIN", "VALID", "TEST"), SPLITS):
        nodes = {n["wn_id"]: n for n in raw["split_subgraphs"][key]}
        ids = split_class_range("ilsvrc_2012", split, im.classes_per_split)
        leaves = sorted(w for w, n in nodes.items() if not n["children_ids"])
        assert [im.class_names[c] for c in ids] == leaves  # sorted wn_ids -> class ids
        spans = im.spanning_leaves[split]
        assert set(spans) == {w for w, n in nodes.items() if n["children_ids"]}
        for wn, leaf_ids in spans.items():
            by_hand = _leaves_by_recursion(nodes, wn)
            assert {im.class_names[c] for c in leaf_ids} == by_hand
            assert raw["images_per_class"][key][wn] == sum(
                raw["images_per_class"][key][w] for w in by_hand)
        assert max(len(v) for v in spans.values()) >= 5
        assert any(len(n["parents_ids"]) == 2 for n in nodes.values())  # a DAG, not a tree
    assert sorted(len(v) for v in im.spanning_leaves["train"].values()) == [2, 4, 6, 10]
    for c in (0, 11, 21):  # the spec's counts are the records' counts
        assert len(_record_images(records_dir, "ilsvrc_2012", c)) == im.images_per_class[c]


# --------------------------------------------------------------------------- #
# class_source errors.
# --------------------------------------------------------------------------- #

def _small_traffic(tmp_path):
    return write_fake_records(tmp_path / "rec", sources=["traffic_sign"],
                                      classes_per_split=(0, 0, 3), images_per_class=(2, 2))


def test_class_source_reads_root_or_source_folder(tmp_path):
    root = _small_traffic(tmp_path)
    for where in (root, f"{root}/traffic_sign"):
        cs = records.class_source(where, "traffic_sign")
        assert cs.splits == (0, 0, 3) and cs.class_names == ["0", "1", "2"]
        images = list(cs.images(1))
        assert len(images) == 2 and images[0][:2] == b"\xff\xd8"  # JPEG


def test_class_source_errors(tmp_path):
    root = _small_traffic(tmp_path)
    folder = tmp_path / "rec" / "traffic_sign"
    with pytest.raises(MetaDatasetError, match="Unknown Meta-Dataset source"):
        records.class_source(root, "imagenet")
    with pytest.raises(MetaDatasetError, match="does not exist"):
        records.class_source(tmp_path / "nowhere", "traffic_sign")
    with pytest.raises(MetaDatasetError, match=r"No records of .*omniglot(.|\n)*Expected layout"):
        records.class_source(root, "omniglot")

    spec_text = (folder / "dataset_spec.json").read_text()
    spec = json.loads(spec_text)
    spec["class_names"]["3"] = 3
    (folder / "dataset_spec.json").write_text(json.dumps(spec))
    with pytest.raises(MetaDatasetError, match="class count mismatch"):
        records.class_source(root, "traffic_sign")
    (folder / "dataset_spec.json").write_text(spec_text)

    (folder / "2.tfrecords").rename(folder / "keep")
    with pytest.raises(MetaDatasetError, match=r"1 of 3 class files are missing.*2\.tfrecords"):
        records.class_source(root, "traffic_sign")
    (folder / "keep").rename(folder / "2.tfrecords")

    data = bytearray((folder / "0.tfrecords").read_bytes())
    data[40] ^= 0xFF
    (folder / "0.tfrecords").write_bytes(bytes(data))
    cs = records.class_source(root, "traffic_sign")
    with pytest.raises(MetaDatasetError, match="Corrupt TFRecord file .*0.tfrecords"):
        list(cs.images(0))
    tfrecord.write_tfrecords(folder / "1.tfrecords",
                            [tfrecord.encode_example({"image": [b"x"], "label": [2]})])
    with pytest.raises(MetaDatasetError, match="has label 2, but the file holds class 1"):
        list(cs.images(1))

    (folder / "dataset_spec.json").unlink()
    with pytest.raises(MetaDatasetError, match=r"No Meta-Dataset spec(.|\n)*Expected layout"):
        records.class_source(folder, "traffic_sign")


# --------------------------------------------------------------------------- #
# Resizing.
# --------------------------------------------------------------------------- #

def test_resize_bilinear_align_corners_by_hand():
    img = np.array([[0, 100], [200, 50]], dtype=np.uint8)
    out = builder.resize_bilinear(img, 3)
    # Corners stay; edge midpoints average two corners; the centre averages all four.
    np.testing.assert_allclose(out, [[0, 50, 100], [100, 87.5, 75], [200, 125, 50]])
    assert out.dtype == np.float32
    row = np.array([[0, 10, 20, 40]], dtype=np.uint8)  # x = 0, 1.5, 3 -> 0, 15, 40
    np.testing.assert_allclose(builder.resize_bilinear(row, (1, 3)), [[0, 15, 40]])
    stored = builder.preprocess_image(img)
    assert stored.shape == (84, 84, 3) and stored.dtype == np.uint8
    assert stored[0, 0, 0] == 0 and stored[0, -1, 1] == 100 and stored[-1, 0, 2] == 200
    assert stored[-1, -1, 0] == 50


def test_to_rgb_replicates_grayscale():
    grey = (np.arange(12 * 10) % 256).astype(np.uint8).reshape(12, 10)
    buf = io.BytesIO()
    Image.fromarray(grey, "L").save(buf, format="JPEG")
    rgb = builder.to_rgb(buf.getvalue())
    assert rgb.shape == (12, 10, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_array_equal(rgb[..., 1], np.asarray(Image.open(buf)))
    np.testing.assert_array_equal(builder.to_rgb(grey[..., None])[..., 1], grey)
    with pytest.raises(MetaDatasetError, match="Cannot decode"):
        builder.to_rgb(b"not an image")


# --------------------------------------------------------------------------- #
# The prepared builder.
# --------------------------------------------------------------------------- #

def test_split_sizes_labels_and_members(fake):
    records_dir, data_dir = fake
    for source in FAKE_SOURCES:
        spec = records.read_dataset_spec(records_dir_path(records_dir, source))
        for split in SPLITS:
            ids = split_class_range(source, split, spec.classes_per_split)
            assert builder.num_classes(source, split, data_dir) == len(ids)
            if not ids:
                with pytest.raises(MetaDatasetError, match=f"no {split} classes"):
                    builder.data_source(source, split, data_dir)
                continue
            counts = [spec.images_per_class[c] for c in ids]
            src = builder.data_source(source, split, data_dir)
            assert len(src) == sum(counts)
            labels = np.array([int(src[i]["label"]) for i in range(len(src))])
            np.testing.assert_array_equal(labels, np.repeat(np.arange(len(ids)), counts))
            ss = builder.split_spec(source, split, data_dir)
            assert ss.name == source and len(ss.members) == len(ids)
            for c, members in enumerate(ss.members):
                assert members.dtype == np.int64 and len(members) == counts[c]
                assert (labels[members] == c).all()
            np.testing.assert_array_equal(np.concatenate(ss.members), np.arange(len(src)))
            image = src[int(ss.members[-1][-1])]["image"]
            assert image.shape == (84, 84, 3) and image.dtype == np.uint8


def _reference_resize(img, out=84):
    """Align-corners bilinear written from the formula, in float64, pixel by pixel."""
    h, w = img.shape[:2]
    res = np.empty((out, out, img.shape[2]))
    for i in range(out):
        y = i * (h - 1) / (out - 1)
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(out):
            x = j * (w - 1) / (out - 1)
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
            res[i, j] = (1 - fy) * top + fy * bottom
    return res


@pytest.mark.parametrize("source,split,local,k", [("ilsvrc_2012", "valid", 2, 1),
                                                   ("omniglot", "test", 4, 0)])
def test_stored_image_is_the_resized_jpeg(fake, source, split, local, k):
    records_dir, data_dir = fake
    spec = records.read_dataset_spec(records_dir_path(records_dir, source))
    global_id = split_class_range(source, split, spec.classes_per_split)[local]
    jpeg = _record_images(records_dir, source, global_id)[k]
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
    assert decoded.shape[:2] != (84, 84)
    ref = _reference_resize(decoded)
    ss = builder.split_spec(source, split, data_dir)
    stored = builder.data_source(source, split, data_dir)[int(ss.members[local][k])]
    assert int(stored["label"]) == local
    diff = np.abs(stored["image"].astype(np.float64) - ref)
    assert diff.max() <= 0.5 + 1e-3
    assert np.mean(stored["image"] == np.rint(ref)) > 0.99


def test_superclasses_hierarchy_and_metadata(fake):
    records_dir, data_dir = fake
    om = builder.split_spec("omniglot", "valid", data_dir)
    assert [s.tolist() for s in om.superclasses] == [[0, 1, 2, 3, 4]]  # ids 11..15 - 11
    assert om.hierarchy is None
    assert [s.tolist() for s in builder.split_spec("omniglot", "test",
                                                   data_dir).superclasses] == [[0, 1, 2, 3, 4],
                                                                               [5, 6, 7, 8, 9]]
    spec = records.read_dataset_spec(records_dir_path(records_dir, "ilsvrc_2012"))
    for split in SPLITS:
        start = split_class_range("ilsvrc_2012", split, spec.classes_per_split)[0]
        got = [h.tolist() for h in builder.split_spec("ilsvrc_2012", split, data_dir).hierarchy]
        assert got == [[c - start for c in leaves] for leaves in spec.hierarchy[split]]
        assert max(len(h) for h in got) >= 5
    meta = builder.metadata("ilsvrc_2012", data_dir)
    assert meta["origin"] == "records" and meta["official"] is False
    assert meta["classes_per_split"] == [10, 6, 6] and meta["image_size"] == 84
    assert meta["splits"]["test"]["class_ids"] == list(range(16, 22))
    assert meta["splits"]["test"]["class_names"] == list(spec.class_names[16:22])
    assert builder.split_spec("traffic_sign", "test", data_dir).superclasses is None


def test_prepare_is_idempotent_and_warns_about_unofficial_splits(fake, tmp_path, caplog):
    records_dir, data_dir = fake
    info = data_dir / "ur_metadataset" / "omniglot" / "1.0.0" / "dataset_info.json"
    before = info.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ur_jax.suites.metadataset"):
        builder.prepare(["omniglot"], data_dir, records_dir=records_dir)
    assert info.stat().st_mtime_ns == before and not caplog.records
    with caplog.at_level(logging.WARNING, logger="ur_jax.suites.metadataset"):
        builder.prepare(["traffic_sign"], tmp_path / "other",
                        origin={"traffic_sign": "records"}, records_dir=records_dir)
    assert any("official Meta-Dataset split has (0, 0, 43)" in r.getMessage()
               for r in caplog.records)


def test_class_order_survives_tfds_disk_buckets(fake, tmp_path, monkeypatch):
    """Past TFDS's in-memory limit, examples go through on-disk buckets sorted by key."""
    from tensorflow_datasets.core import shuffle

    records_dir, data_dir = fake
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    used = set()
    add = shuffle._Bucket.add

    def spy(self, key, data):
        used.add(str(self._path))
        return add(self, key, data)

    monkeypatch.setattr(shuffle._Bucket, "add", spy)
    builder.prepare(["omniglot"], tmp_path, records_dir=records_dir)
    assert len(used) > 20  # keys spread over many buckets, not all in bucket 0
    for split in SPLITS:
        disk = builder.data_source("omniglot", split, tmp_path)
        mem = builder.data_source("omniglot", split, data_dir)
        assert len(disk) == len(mem)
        for i in range(len(mem)):
            assert int(disk[i]["label"]) == int(mem[i]["label"])
            np.testing.assert_array_equal(disk[i]["image"], mem[i]["image"])
    buckets = list(tmp_path.rglob("bucket_*.tmp"))
    assert not buckets  # consumed and deleted


def test_builder_errors(fake, tmp_path):
    records_dir, data_dir = fake
    with pytest.raises(MetaDatasetError, match="Unknown Meta-Dataset source"):
        builder.prepare(["imagenet"], data_dir, records_dir=records_dir)
    with pytest.raises(TypeError, match=r"pass \['omniglot'\]"):
        builder.prepare("omniglot", data_dir, records_dir=records_dir)
    with pytest.raises(MetaDatasetError, match="not prepared"):
        builder.data_source("dtd", "train", data_dir)
    with pytest.raises(MetaDatasetError, match="Unknown split"):
        builder.data_source("omniglot", "training", data_dir)
    with pytest.raises(MetaDatasetError, match="unknown origin 'web'"):
        builder.prepare(["dtd"], tmp_path, origin="web")
    with pytest.raises(MetaDatasetError, match="needs records_dir"):
        builder.prepare(["dtd"], tmp_path)
    with pytest.raises(MetaDatasetError, match=r"No records of .*'dtd'(.|\n)*Expected layout"):
        builder.prepare(["dtd"], tmp_path, records_dir=records_dir)
