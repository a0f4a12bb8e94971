"""Tests for ur_jax.suites.decathlon: the Visual Decathlon tree -> TFDS builder, preprocessing,
the challenge's results file and the mapping of TFDS's own visual_domain_decathlon records.

A fake ``decathlon-1.0/`` tree (omniglot in grayscale, aircraft with its square resize,
imagenet12 with its 72 px crop; 5 classes each) is written once per module in the official
on-disk format and built once; expected values are computed independently from the files
(JSON read directly, images decoded and resized with Pillow).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ur_jax.data import pipeline
from ur_jax.suites import decathlon as dec
from ur_jax.suites.decathlon import from_tfds
from ur_jax.suites.decathlon.fake import write_fake_decathlon

DOMAINS = ("omniglot", "aircraft", "imagenet12")
N_CLS, PER_CLASS, N_TEST = 5, (3, 2), 4


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake_decathlon")
    return Path(write_fake_decathlon(root, DOMAINS, per_class=PER_CLASS,
                                     test_per_domain=N_TEST, seed=3))


@pytest.fixture(scope="module")
def data_dir(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tfds")
    dec.prepare(tree.parent, out, DOMAINS)  # the parent holds decathlon-1.0/
    return out


def _ann(tree: Path, domain: str, name: str) -> dict:
    return json.loads((tree / "annotations" / f"{domain}_{name}.json").read_text())


def _records(src) -> list[dict]:
    return [src[i] for i in range(len(src))]


# --------------------------------------------------------------------------- #
# Constants.
# --------------------------------------------------------------------------- #

def test_constants():
    assert dec.DOMAINS == ("imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd",
                           "gtsrb", "omniglot", "svhn", "ucf101", "vgg-flowers")
    assert [dec.NUM_CLASSES[d] for d in dec.DOMAINS] == [1000, 100, 100, 2, 47, 43, 1623, 10,
                                                         101, 102]
    assert dec.SPLIT_SIZES["imagenet12"] == (1232167, 49000, 48238)
    assert dec.SPLIT_SIZES["vgg-flowers"] == (1020, 1020, 6149)
    assert set(dec.SPLIT_SIZES) == set(dec.DOMAINS)
    assert dec.NO_FLIP == ("gtsrb", "omniglot", "svhn")
    assert dec.SQUARE_RESIZE == ("daimlerpedcls", "aircraft")
    assert dec.crop_size("imagenet12") == 72 and dec.image_shape("imagenet12") == (72, 72, 3)
    assert all(dec.crop_size(d) == 64 for d in dec.DOMAINS if d != "imagenet12")
    with pytest.raises(ValueError, match="Unknown Visual Decathlon domain"):
        dec.crop_size("mnist")


# --------------------------------------------------------------------------- #
# The fake tree's on-disk format.
# --------------------------------------------------------------------------- #

def test_fake_tree_format(tree: Path):
    offsets = {"aircraft": 10**7, "imagenet12": 6 * 10**7, "omniglot": 7 * 10**7}
    for d in DOMAINS:
        train = _ann(tree, d, "train")
        assert set(train) == {"info", "images", "annotations", "categories"}
        assert [c["id"] for c in train["categories"]] == [offsets[d] + 1 + c
                                                          for c in range(N_CLS)]
        ann = train["annotations"][0]
        assert {"id", "image_id", "category_id", "segmentation", "area", "bbox"} <= set(ann)
        stripped = _ann(tree, d, "test_stripped")
        assert "annotations" not in stripped and len(stripped["images"]) == N_TEST
        assert not (tree / "annotations" / f"{d}_test.json").exists()
        ids = [im["id"] for s in ("train", "val", "test_stripped")
               for im in _ann(tree, d, s)["images"]]
        assert len(set(ids)) == len(ids) and min(ids) == offsets[d] + 1
        for s in ("train", "val"):
            for im in _ann(tree, d, s)["images"]:
                assert re.fullmatch(rf"data/{d}/{s}/\d{{4}}/\d{{7}}\.jpg", im["file_name"])
        for im in stripped["images"]:
            assert re.fullmatch(rf"data/{d}/test/\d{{7}}\.jpg", im["file_name"])
        sizes = set()
        for im in train["images"]:
            with Image.open(tree / im["file_name"]) as img:
                assert img.format == "JPEG"
                assert img.mode == ("L" if d == "omniglot" else "RGB")
                assert min(img.size) == 72 and img.size == (im["width"], im["height"])
                sizes.add(img.size)
        assert len(sizes) == 3  # 72x72, 72x96 and 96x72


def _mean_colours(tree: Path, domain: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = _ann(tree, domain, split)
    cat = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    x = [dec.decode((tree / im["file_name"]).read_bytes()).mean((0, 1)) for im in data["images"]]
    return np.array(x), np.array([cat[im["id"]] for im in data["images"]])


def test_fake_images_carry_the_class(tree: Path):
    """A nearest class-mean-colour rule trained on train classifies every val image."""
    for d in DOMAINS:
        x, y = _mean_colours(tree, d, "train")
        classes = np.unique(y)
        centroids = np.stack([x[y == c].mean(0) for c in classes])
        xv, yv = _mean_colours(tree, d, "val")
        pred = classes[np.argmin(((xv[:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
        np.testing.assert_array_equal(pred, yv)


# --------------------------------------------------------------------------- #
# The builder.
# --------------------------------------------------------------------------- #

def test_split_sizes_and_labels(tree: Path, data_dir: Path):
    for d in DOMAINS:
        for split, n in (("train", N_CLS * PER_CLASS[0]), ("val", N_CLS * PER_CLASS[1])):
            recs = _records(dec.data_source(d, split, data_dir))
            assert len(recs) == n
            files = {im["id"]: im["file_name"] for im in _ann(tree, d, split)["images"]}
            ids = [r["image_id"] for r in recs]
            assert ids == sorted(files)  # image id order
            for r in recs:
                folder_class = int(files[r["image_id"]].split("/")[-2])  # 1-based
                assert r["label"] == folder_class - 1
                assert isinstance(r["image"], bytes)
                assert r["image"] == (tree / files[r["image_id"]]).read_bytes()
        test = _records(dec.data_source(d, "test", data_dir))
        assert len(test) == N_TEST
        assert [r["label"] for r in test] == [-1] * N_TEST
        assert [r["image_id"] for r in test] == sorted(
            im["id"] for im in _ann(tree, d, "test_stripped")["images"])


def test_test_labels_from_user_file(tmp_path: Path):
    root = Path(write_fake_decathlon(tmp_path / "src", ["dtd"], classes={"dtd": 3},
                                     per_class=(1, 1), test_per_domain=5,
                                     test_labels=True))
    out = tmp_path / "tfds"
    dec.prepare(root, out, ["dtd"])  # root is decathlon-1.0/ itself
    assert dec.metadata("dtd", out)["test_labels"] is True
    labelled = _ann(root, "dtd", "test")
    cat_of = {a["image_id"]: a["category_id"] for a in labelled["annotations"]}
    cats = dec.metadata("dtd", out)["category_ids"]
    recs = _records(dec.data_source("dtd", "test", out))
    assert len(recs) == 5
    assert [r["label"] for r in recs] == [k % 3 for k in range(5)]
    assert all(cats[r["label"]] == cat_of[r["image_id"]] for r in recs)


def test_metadata_round_trips_and_matches_numpy(tree: Path, data_dir: Path):
    for d in DOMAINS:
        train = _ann(tree, d, "train")
        meta = dec.metadata(d, data_dir)
        assert meta["category_ids"] == sorted(c["id"] for c in train["categories"])
        names = {c["id"]: c["name"] for c in train["categories"]}
        assert meta["category_names"] == [names[c] for c in meta["category_ids"]]
        assert meta["test_labels"] is False
        # Independent NumPy reference: every train image, resized as for training.
        pixels = []
        for im in train["images"]:
            with Image.open(tree / im["file_name"]) as img:
                img = img.convert("RGB")
                if d in ("aircraft", "daimlerpedcls"):
                    img = img.resize((72, 72), Image.Resampling.BILINEAR)
                pixels.append(np.asarray(img, np.float64).reshape(-1, 3) / 255.0)
        pixels = np.concatenate(pixels)
        np.testing.assert_allclose(meta["mean"], pixels.mean(0), rtol=0, atol=1e-9)
        np.testing.assert_allclose(meta["std"], pixels.std(0), rtol=0, atol=1e-9)
        if d == "omniglot":  # grayscale: equal channels
            assert meta["mean"][0] == pytest.approx(meta["mean"][2])
        # Re-opened from the prepared folder, the builder restores the same metadata.
        builder = dec.UrDecathlon(config=d, data_dir=str(data_dir), file_format="array_record")
        assert builder.is_prepared()
        assert dict(builder.info.metadata) == meta
        assert builder.info.splits["train"].num_examples == N_CLS * PER_CLASS[0]
        norm = dec.normalization(d, data_dir, stats="estimated")
        assert isinstance(norm, pipeline.Normalization)
        np.testing.assert_allclose(norm.mean, meta["mean"])
        np.testing.assert_allclose(norm.std, meta["std"])


def test_prepare_is_idempotent_and_reads_without_manual_dir(data_dir: Path):
    dec.prepare(None, data_dir, DOMAINS)  # prepared: manual_dir is not needed
    assert len(dec.data_source("aircraft", "validation", data_dir)) == N_CLS * PER_CLASS[1]
    with pytest.raises(ValueError, match="Unknown split"):
        dec.data_source("aircraft", "dev", data_dir)
    with pytest.raises(TypeError, match="sequence of domain names"):
        dec.prepare(None, data_dir, "aircraft")


def test_file_names_without_data_prefix(tmp_path: Path):
    root = Path(write_fake_decathlon(tmp_path / "src", ["svhn"], classes={"svhn": 2},
                                     per_class=(1, 1), test_per_domain=1))
    for p in (root / "annotations").glob("svhn_*.json"):
        data = json.loads(p.read_text())
        for im in data["images"]:
            im["file_name"] = im["file_name"].removeprefix("data/")
        p.write_text(json.dumps(data))
    assert dec.check_tree(root, ["svhn"]) == {"svhn": {"train": 2, "val": 2, "test": 1}}


# --------------------------------------------------------------------------- #
# Errors.
# --------------------------------------------------------------------------- #

def _assert_layout_message(err: pytest.ExceptionInfo) -> None:
    msg = str(err.value)
    assert "Expected layout" in msg
    assert "data/" in msg and "<class:04d>" in msg and "_test_stripped.json" in msg
    assert "https://www.robots.ox.ac.uk/~vgg/decathlon/" in msg
    assert "decathlon-1.0-data.tar.gz" in msg and "decathlon-1.0-devkit" in msg


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    return Path(write_fake_decathlon(tmp_path / "src", ["gtsrb"], classes={"gtsrb": 2},
                                     per_class=(1, 1), test_per_domain=1))


def _not_built(out: Path) -> bool:
    return not any(out.glob("ur_decathlon/gtsrb/1.0.0/*.array_record*"))


def test_error_missing_root(tmp_path: Path):
    with pytest.raises(dec.DecathlonDataError, match="does not exist") as err:
        dec.prepare(tmp_path / "nowhere", tmp_path / "tfds", ["gtsrb"])
    _assert_layout_message(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(dec.DecathlonDataError, match="neither data/") as err:
        dec.prepare(tmp_path / "empty", tmp_path / "tfds", ["gtsrb"])
    _assert_layout_message(err)
    with pytest.raises(dec.DecathlonDataError, match="not prepared"):
        dec.data_source("gtsrb", "train", tmp_path / "tfds")


def test_error_missing_annotation_file(small_tree: Path, tmp_path: Path):
    (small_tree / "annotations" / "gtsrb_val.json").unlink()
    with pytest.raises(dec.DecathlonDataError, match="gtsrb_val.json") as err:
        dec.prepare(small_tree, tmp_path / "tfds", ["gtsrb"])
    _assert_layout_message(err)
    assert "Found in" in str(err.value)
    assert _not_built(tmp_path / "tfds")


def test_error_missing_test_annotations(small_tree: Path, tmp_path: Path):
    (small_tree / "annotations" / "gtsrb_test_stripped.json").unlink()
    with pytest.raises(dec.DecathlonDataError, match="test_stripped.json") as err:
        dec.check_tree(small_tree, ["gtsrb"])
    _assert_layout_message(err)


def test_error_image_listed_but_absent(small_tree: Path, tmp_path: Path):
    name = _ann(small_tree, "gtsrb", "train")["images"][0]["file_name"]
    (small_tree / name).unlink()
    with pytest.raises(dec.DecathlonDataError, match="missing") as err:
        dec.prepare(small_tree, tmp_path / "tfds", ["gtsrb"])
    assert name in str(err.value)
    _assert_layout_message(err)
    assert _not_built(tmp_path / "tfds")


def test_error_missing_domain_folder(small_tree: Path):
    shutil.rmtree(small_tree / "data" / "gtsrb")
    (small_tree / "data" / "gtsrb.tar").write_bytes(b"")
    with pytest.raises(dec.DecathlonDataError, match="tar -xf gtsrb.tar") as err:
        dec.check_tree(small_tree, ["gtsrb"])
    _assert_layout_message(err)


def test_error_categories(small_tree: Path):
    with pytest.raises(dec.DecathlonDataError, match="2 categories; the real 'gtsrb' has 43"):
        dec.check_tree(small_tree, ["gtsrb"], strict=True)
    path = small_tree / "annotations" / "gtsrb_train.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 123
    path.write_text(json.dumps(data))
    with pytest.raises(dec.DecathlonDataError, match="category id 123"):
        dec.check_tree(small_tree, ["gtsrb"])
    data["categories"] = [{"id": 5 + i, "name": str(i)} for i in range(44)]
    path.write_text(json.dumps(data))
    with pytest.raises(dec.DecathlonDataError, match="44 categories"):
        dec.check_tree(small_tree, ["gtsrb"])


# --------------------------------------------------------------------------- #
# Preprocessing.
# --------------------------------------------------------------------------- #

def _ramp(h: int, w: int) -> np.ndarray:
    """Columns strictly brighter left to right (an asymmetric image)."""
    col = (np.arange(w) * 200 // (w - 1)).astype(np.uint8)
    return np.repeat(np.broadcast_to(col, (h, w))[..., None], 3, axis=-1).copy()


def _png(image: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_output_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    record = {"image": _png(image), "label": 3, "image_id": 42}
    for d in dec.DOMAINS:
        s = 72 if d == "imagenet12" else 64
        out = dec.train_transform(d)(record, np.random.default_rng(1))
        assert out["image"].shape == (s, s, 3) and out["image"].dtype == np.uint8
        assert out["label"] == 3 and out["label"].dtype == np.int32
        ev = dec.eval_transform(d)(record)
        assert ev["image"].shape == (s, s, 3) and ev["image_id"] == 42 and ev["label"] == 3


def test_flip_only_where_allowed():
    record = {"image": _ramp(72, 72), "label": 0}
    for d in ("dtd", "gtsrb", "omniglot", "svhn"):
        fn = dec.train_transform(d)
        rng = np.random.default_rng(0)
        flips, offsets = 0, set()
        for _ in range(200):
            out = fn(record, rng)["image"][0, :, 0].astype(int)
            diffs = np.diff(out)
            assert np.all(diffs >= 0) or np.all(diffs <= 0)
            flips += int(diffs.sum() < 0)
            offsets.add(int(min(out[0], out[-1])))
        if d in dec.NO_FLIP:
            assert flips == 0, d
        else:
            assert 70 <= flips <= 130, flips
        assert len(offsets) > 5  # the crop offset is random


def test_train_transform_is_deterministic_given_rng():
    record = {"image": np.random.default_rng(5).integers(0, 256, (72, 90, 3), np.uint8),
              "label": 1}
    fn = dec.train_transform("cifar100")
    a = [fn(record, np.random.default_rng(9))["image"] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    # A crop of the (unresized) image: the offsets stay inside it.
    out = a[0]
    img = record["image"]
    hits = [(i, j) for i in range(9) for j in range(27)
            if np.array_equal(img[i:i + 64, j:j + 64], out)
            or np.array_equal(img[i:i + 64, j:j + 64][:, ::-1], out)]
    assert len(hits) == 1


def test_square_resize_and_centre_crop():
    img = np.random.default_rng(2).integers(0, 256, (72, 144, 3), dtype=np.uint8)
    record = {"image": _png(img), "label": 0}
    square = np.asarray(Image.fromarray(img).resize((72, 72), Image.Resampling.BILINEAR))
    for d in ("daimlerpedcls", "aircraft"):
        assert dec.resize(d, record["image"]).shape == (72, 72, 3)
        out = dec.eval_transform(d)(record)["image"]
        np.testing.assert_array_equal(out, square[4:68, 4:68])
    # Other domains keep the aspect ratio (shorter side already 72: unchanged).
    np.testing.assert_array_equal(dec.resize("dtd", record["image"]), img)
    np.testing.assert_array_equal(dec.eval_transform("dtd")(record)["image"],
                                  img[4:68, 40:104])
    np.testing.assert_array_equal(dec.eval_transform("imagenet12")(record)["image"],
                                  img[:, 36:108])
    # Shorter side 96 -> 72, longer side int(72 * 144 / 96) = 108.
    big = np.random.default_rng(3).integers(0, 256, (96, 144, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(big).resize((108, 72), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(dec.resize("ucf101", big), ref)
    np.testing.assert_array_equal(dec.eval_transform("ucf101")({"image": big, "label": 0})
                                  ["image"], ref[4:68, 22:86])


def test_decode_variants(tree: Path):
    name = _ann(tree, "omniglot", "train")["images"][0]["file_name"]
    raw = (tree / name).read_bytes()
    img = dec.decode(raw)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    np.testing.assert_array_equal(img[..., 0], img[..., 2])  # grey -> RGB
    np.testing.assert_array_equal(dec.decode(np.frombuffer(raw, np.uint8)), img)
    np.testing.assert_array_equal(dec.decode(img[..., 0]), img)
    np.testing.assert_array_equal(dec.decode(img), img)
    with pytest.raises(ValueError, match="Cannot decode"):
        dec.decode(b"not an image")


# --------------------------------------------------------------------------- #
# The results file.
# --------------------------------------------------------------------------- #

def test_export_predictions(tree: Path, data_dir: Path, tmp_path: Path):
    test_ids = {d: [im["id"] for im in _ann(tree, d, "test_stripped")["images"]]
                for d in ("aircraft", "omniglot")}
    preds = {"aircraft": (np.array(test_ids["aircraft"][:2]), np.array([0, 4])),
             "omniglot": (test_ids["omniglot"][:3], [1, 2, 3])}
    path = dec.export_predictions(preds, data_dir, tmp_path / "out" / "results.json")
    expected = (
        [{"image_id": test_ids["aircraft"][0], "category_id": 10000001},
         {"image_id": test_ids["aircraft"][1], "category_id": 10000005}]
        + [{"image_id": test_ids["omniglot"][k], "category_id": 70000001 + k + 1}
           for k in range(3)])
    assert json.loads(Path(path).read_text()) == expected
    # Category ids round-trip: labels predicted right give the annotation's category id.
    val = _ann(tree, "aircraft", "val")
    recs = _records(dec.data_source("aircraft", "val", data_dir))
    path = dec.export_predictions(
        {"aircraft": ([r["image_id"] for r in recs], [r["label"] for r in recs])},
        data_dir, tmp_path / "val.json")
    got = {r["image_id"]: r["category_id"] for r in json.loads(Path(path).read_text())}
    assert got == {a["image_id"]: a["category_id"] for a in val["annotations"]}


def test_export_predictions_errors(data_dir: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    cases = [
        ({"mnist": ([1], [0])}, "unknown domain"),
        ({"aircraft": ([1, 2], [0])}, "2 image ids but 1 labels"),
        ({"aircraft": ([1, 2], [0, 5])}, r"outside 0\.\.4"),
        ({"aircraft": ([1], [-1])}, "outside"),
        ({"aircraft": ([1, 1], [0, 0])}, "repeats image id"),
        ({"aircraft": ([1], [0.5])}, "must be integers"),
        ({}, "non-empty mapping"),
    ]
    for preds, match in cases:
        with pytest.raises(ValueError, match=match):
            dec.export_predictions(preds, data_dir, out)
    assert not out.exists()
    with pytest.raises(dec.DecathlonDataError, match="not prepared"):
        dec.export_predictions({"dtd": ([1], [0])}, data_dir, out)


# --------------------------------------------------------------------------- #
# TFDS's own visual_domain_decathlon (record mapping only: it downloads).
# --------------------------------------------------------------------------- #

def test_tfds_record_mapping(tree: Path, tmp_path: Path):
    ann_dir = tree / "annotations"
    train = _ann(tree, "aircraft", "train")
    # TFDS numbers labels in the file's category order: reverse it to see the remapping.
    reordered = tmp_path / "annotations"
    reordered.mkdir()
    data = dict(train, categories=train["categories"][::-1])
    (reordered / "aircraft_train.json").write_text(json.dumps(data))
    ids, label_map = from_tfds._tfds_maps(reordered, "aircraft", "train")
    first = train["images"][0]
    name = first["file_name"].removeprefix("data/")  # TFDS's 'name'
    assert ids[name] == first["id"]
    assert label_map == {i: N_CLS - 1 - i for i in range(N_CLS)}
    image = dec.decode((tree / first["file_name"]).read_bytes())
    rec = {"name": name.encode(), "image": image, "label": np.int64(N_CLS - 1)}
    out = from_tfds._from_tfds_record(rec, ids, label_map)
    assert out["image_id"] == first["id"] and out["label"] == 0
    np.testing.assert_array_equal(out["image"], image)
    # Without annotations: TFDS's label, image id unknown; test labels stay -1.
    out = from_tfds._from_tfds_record({"name": name, "image": image, "label": 2})
    assert out["label"] == 2 and out["image_id"] == -1
    test_ids, _ = from_tfds._tfds_maps(ann_dir, "aircraft", "test")
    test = _ann(tree, "aircraft", "test_stripped")["images"][0]
    out = from_tfds._from_tfds_record(
        {"name": test["file_name"].removeprefix("data/"), "image": image, "label": -1},
        test_ids, label_map)
    assert out == {"image": out["image"], "label": -1, "image_id": test["id"]}
    assert dec.eval_transform("aircraft")(out)["image"].shape == (64, 64, 3)


def test_tfds_source_not_prepared(tmp_path: Path):
    with pytest.raises(dec.DecathlonDataError, match="not prepared"):
        dec.tfds_source("aircraft", "val", tmp_path, download=False)


def test_tfds_source_with_a_stand_in_builder(tree: Path, tmp_path: Path, monkeypatch):
    """tfds_source's plumbing (split names, devkit lookup) with a stand-in for TFDS's build."""
    val = _ann(tree, "aircraft", "val")
    image = np.zeros((72, 80, 3), np.uint8)
    records = [{"name": im["file_name"].removeprefix("data/"), "image": image, "label": 1}
               for im in val["images"]]
    asked = {}

    class StandIn:
        def is_prepared(self) -> bool:
            return True

        def as_data_source(self, split: str):
            asked["split"] = split
            return records

    def fake_builder(name: str, **kwargs):
        asked["name"] = name
        return StandIn()

    monkeypatch.setattr(tfds, "builder", fake_builder)
    # Where TFDS extracts the devkit: <data_dir>/downloads/extracted/<archive>/decathlon-1.0/.
    devkit = tmp_path / "downloads" / "extracted" / "TAR_GZ.devkit" / "decathlon-1.0"
    shutil.copytree(tree / "annotations", devkit / "annotations")
    src = dec.tfds_source("aircraft", "val", tmp_path)
    assert asked == {"name": "visual_domain_decathlon/aircraft", "split": "validation"}
    assert len(src) == len(records)
    assert [src[i]["image_id"] for i in range(len(src))] == [im["id"] for im in val["images"]]
    assert src[0]["label"] == 1 and src[0]["image"].shape == (72, 80, 3)


# --------------------------------------------------------------------------- #
# Issue 14 (protocol fidelity): published constants, train + val, strict decoding.
# --------------------------------------------------------------------------- #

# Rebuffi et al.'s decathlon_mean_std.pickle, as reference/PAPER.md section 2 lists it
# (mean, std per RGB channel), typed here independently of the module.
PUBLISHED = {
    "imagenet12": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "aircraft": ((0.47983041, 0.51074066, 0.53437998), (0.21070221, 0.20508901, 0.23729657)),
    "cifar100": ((0.50705882, 0.48666667, 0.44078431), (0.26745098, 0.25647059, 0.27607843)),
    "daimlerpedcls": ((0.48203529,) * 3, (0.23612616,) * 3),
    "dtd": ((0.52696497, 0.47025164, 0.42396662), (0.25226877, 0.2409176, 0.2499409)),
    "gtsrb": ((0.33921263, 0.3117836, 0.32047045), (0.27560347, 0.26576119, 0.27089863)),
    "vgg-flowers": ((0.43414682, 0.38309883, 0.29714763), (0.28509808, 0.23842338, 0.2639633)),
    "omniglot": ((0.08099839,) * 3, (0.27046935,) * 3),
    "svhn": ((0.4376821, 0.4437697, 0.47280442), (0.19803012, 0.20101562, 0.19703614)),
    "ucf101": ((0.49953101, 0.49880386, 0.49981996), (0.10898684, 0.10810246, 0.10679939)),
}


def test_normalization_uses_the_published_constants(data_dir: Path):
    assert set(PUBLISHED) == set(dec.DOMAINS)
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)  # (1, 1, 1, 3)
    for d, (mean, std) in PUBLISHED.items():
        norm = dec.normalization(d)  # no data needed: fixed constants
        np.testing.assert_array_equal(norm.mean, mean)
        np.testing.assert_array_equal(norm.std, std)
        want = (np.array([0, 128, 255]) / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(norm(pixels)[0, 0, 0], want, rtol=1e-6, atol=1e-6)
    # e.g. dtd's green channel at 128: (128 / 255 - 0.47025164) / 0.2409176
    assert dec.normalization("dtd")(pixels)[0, 0, 0, 1] == pytest.approx(
        (128 / 255 - 0.47025164) / 0.2409176, rel=1e-6)
    # the prepared builder's estimate stays available, and differs on the fake images
    est = dec.normalization("omniglot", data_dir, stats="estimated")
    assert est.mean == tuple(dec.metadata("omniglot", data_dir)["mean"])
    assert dec.normalization("omniglot", data_dir).mean == PUBLISHED["omniglot"][0]
    with pytest.raises(ValueError, match="stats='estimated'.*data_dir"):
        dec.normalization("dtd", stats="estimated")
    with pytest.raises(ValueError, match="Unknown normalization stats"):
        dec.normalization("dtd", data_dir, stats="imagenet")


def test_train_val_split_is_the_union(tree: Path, data_dir: Path):
    for d in DOMAINS:
        union = dec.data_source(d, dec.TRAIN_VAL, data_dir)
        assert dec.TRAIN_VAL == "train+val"
        # count: every train and every val image once
        assert len(union) == N_CLS * (PER_CLASS[0] + PER_CLASS[1])
        # labels: from the annotation files, read directly
        want = {}
        for split in ("train", "val"):
            ann = _ann(tree, d, split)
            cats = sorted(c["id"] for c in ann["categories"])
            want.update({a["image_id"]: cats.index(a["category_id"]) for a in ann["annotations"]})
        recs = _records(union)
        assert sorted(r["image_id"] for r in recs) == sorted(want)
        assert {r["image_id"]: r["label"] for r in recs} == want
        assert union[-1]["image_id"] == recs[-1]["image_id"]
    with pytest.raises(IndexError):
        union[len(union)]
    with pytest.raises(ValueError, match="Unknown split"):
        dec.data_source("dtd", "train+test", data_dir)


def test_decode_refuses_arrays_that_are_not_uint8(tree: Path):
    wide = np.full((4, 4, 3), 300, np.uint16)  # a cast to uint8 would give 44
    with pytest.raises(ValueError, match="dtype uint16"):
        dec.decode(wide)
    with pytest.raises(ValueError, match="dtype float32"):
        dec.decode(np.full((4, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="dtype int64"):
        dec.decode(np.zeros(16, np.int64))  # not the bytes of a file either
    np.testing.assert_array_equal(dec.decode(np.ones((2, 2), bool)), np.full((2, 2, 3), 255))
    np.testing.assert_array_equal(dec.decode(np.full((2, 2, 1), 7, np.uint8)),
                                  np.full((2, 2, 3), 7))
