"""Meta-Dataset sources from raw downloads (aircraft, fungi, traffic_sign) and from TFDS's own
builders: official class order and split, image reading rules, errors. Fast: tiny fakes only.

Official facts checked here come from google-research/meta-dataset
``meta_dataset/dataset_conversion/splits/*_splits.json`` (the split files the official converter
writes with ``np.random.seed(22)``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image, ImageOps

from ur_jax.suites.metadataset import raw, tfds_sources
from ur_jax.suites.metadataset.common import CLASS_SPLITS, MetaDatasetError
from ur_jax.suites.metadataset.fake import write_fake_raw

# --------------------------------------------------------------------------- #
# Independent references.
# --------------------------------------------------------------------------- #


def _official_split(n_train, n_valid, n_test, seed=22):
    """The converter's code path literally: global ``np.random.seed`` + ``np.random.choice``."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        n_trainval = n_train + n_valid
        n = n_trainval + n_test
        trainval = np.random.choice(n, n_trainval, replace=False)
        test = np.setdiff1d(np.arange(n), trainval)
        train = np.random.choice(trainval, n_train, replace=False)
        valid = np.setdiff1d(trainval, train)
    finally:
        np.random.set_state(state)
    return [list(train), list(valid), list(test)]


def _official_order(counts):
    return [int(i) for part in _official_split(*counts) for i in part]


def _decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _img(seed, h=12, w=10, c=3):
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if c else (h, w)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------- #
# The official random split rule.
# --------------------------------------------------------------------------- #

# meta_dataset/dataset_conversion/splits/aircraft_splits.json (train in drawn order).
AIRCRAFT_TRAIN = [
    "A340-300", "A318", "Falcon 2000", "F-16A/B", "F/A-18", "C-130", "MD-80", "BAE 146-200",
    "777-200", "747-400", "Cessna 172", "An-12", "A330-300", "A321", "Fokker 100", "Fokker 50",
    "DHC-1", "Fokker 70", "A340-200", "DC-6", "747-200", "Il-76", "747-300", "Model B200",
    "Saab 340", "Cessna 560", "Dornier 328", "E-195", "ERJ 135", "747-100", "737-600", "C-47",
    "DR-400", "ATR-72", "A330-200", "727-200", "737-700", "PA-28", "ERJ 145", "737-300",
    "767-300", "737-500", "737-200", "DHC-6", "Falcon 900", "DC-3", "Eurofighter Typhoon",
    "Challenger 600", "Hawk T1", "A380", "777-300", "E-190", "DHC-8-100", "Cessna 525",
    "Metroliner", "EMB-120", "Tu-134", "Embraer Legacy 600", "Gulfstream IV", "Tu-154", "MD-87",
    "A300B4", "A340-600", "A340-500", "MD-11", "707-320", "Cessna 208", "Global Express", "A319",
    "DH-82"]
AIRCRAFT_VALID = [
    "737-900", "757-300", "767-200", "A310", "A320", "BAE 146-300", "CRJ-900", "DC-10", "DC-8",
    "DC-9-30", "DHC-8-300", "Gulfstream V", "SR-20", "Tornado", "Yak-42"]
AIRCRAFT_TEST = [
    "737-400", "737-800", "757-200", "767-400", "ATR-42", "BAE-125", "Beechcraft 1900",
    "Boeing 717", "CRJ-200", "CRJ-700", "E-170", "L-1011", "MD-90", "Saab 2000", "Spitfire"]
# meta_dataset/dataset_conversion/splits/dtd_splits.json.
DTD_TRAIN = [
    "chequered", "braided", "interlaced", "matted", "honeycombed", "marbled", "veined", "frilly",
    "zigzagged", "cobwebbed", "pitted", "waffled", "fibrous", "flecked", "grooved", "potholed",
    "blotchy", "stained", "crystalline", "dotted", "striped", "swirly", "meshed", "bubbly",
    "studded", "pleated", "lacelike", "polka-dotted", "perforated", "freckled", "smeared",
    "cracked", "wrinkled"]
DTD_VALID = ["gauzy", "grid", "lined", "paisley", "porous", "scaly", "spiralled"]
DTD_TEST = ["banded", "bumpy", "crosshatched", "knitted", "sprinkled", "stratified", "woven"]


def test_split_rule_equals_the_converters_global_numpy_code():
    for source, counts in CLASS_SPLITS.items():
        if source in ("omniglot", "ilsvrc_2012"):
            continue  # split by alphabets / the WordNet graph, not at random
        train, valid, test = raw.gen_rand_split_inds(*counts)
        ref = _official_split(*counts)
        assert [list(train), list(valid), list(test)] == ref, source
        order = raw.split_order(counts)
        assert sorted(order) == list(range(sum(counts)))  # a partition of the classes
        assert (len(train), len(valid), len(test)) == counts
        assert list(valid) == sorted(valid) and list(test) == sorted(test)
        assert raw.split_order(counts) == order  # deterministic


def test_split_reproduces_official_aircraft_and_dtd_split_files():
    variants = sorted(AIRCRAFT_TRAIN + AIRCRAFT_VALID + AIRCRAFT_TEST)  # variants.txt sorted
    order = raw.split_order(raw.split_counts("aircraft", len(variants)))
    assert [variants[i] for i in order] == AIRCRAFT_TRAIN + AIRCRAFT_VALID + AIRCRAFT_TEST
    textures = sorted(DTD_TRAIN + DTD_VALID + DTD_TEST)
    order = raw.split_order(raw.split_counts("dtd", len(textures)))
    assert [textures[i] for i in order] == DTD_TRAIN + DTD_VALID + DTD_TEST


def test_split_reproduces_official_class_numbers_of_other_sources():
    # cu_birds_splits.json: '190.Red_cockaded_Woodpecker', '144.Common_Tern', ...
    tr, va, te = raw.gen_rand_split_inds(140, 30, 30)
    assert [i + 1 for i in tr[:8]] == [190, 144, 14, 12, 59, 31, 71, 18]
    assert [i + 1 for i in va[:5]] == [44, 51, 52, 55, 57]
    assert [i + 1 for i in te[:5]] == [8, 9, 15, 20, 28]
    # vgg_flower_splits.json: '090.canna lily', '038.great masterwort', ...
    tr, va, te = raw.gen_rand_split_inds(71, 15, 16)
    assert [i + 1 for i in tr[:6]] == [90, 38, 80, 30, 29, 12]
    assert [i + 1 for i in va] == [10, 16, 17, 23, 26, 47, 53, 56, 57, 62, 82, 83, 86, 97, 102]
    assert [i + 1 for i in te] == [5, 9, 15, 19, 35, 40, 41, 42, 45, 46, 65, 85, 89, 94, 96, 98]
    # fungi_splits.json: '0226.Cortinarius malicorius', '0283.Cystoderma jasonis', ...
    assert list(raw.gen_rand_split_inds(994, 200, 200)[0][:6]) == [226, 283, 256, 334, 919, 267]
    # mscoco_splits.json: valid person, motorcycle, train, ...; test bicycle, car, airplane, ...
    _, va, te = raw.gen_rand_split_inds(0, 40, 40)
    assert list(va[:5]) == [0, 3, 6, 9, 10] and list(te[:5]) == [1, 2, 4, 5, 7]


def test_split_counts_official_scaled_and_explicit():
    for source, counts in CLASS_SPLITS.items():
        assert raw.split_counts(source, sum(counts)) == counts
    assert raw.split_counts("quickdraw", 345) == (241, 52, 52)  # int(.7 n), int(.85 n) rule
    assert raw.split_counts("quickdraw", 10) == (7, 1, 2)
    assert raw.split_counts("aircraft", 6) == (4, 1, 1)
    assert raw.split_counts("mscoco", 4) == (0, 2, 2)
    assert raw.split_counts("traffic_sign", 5) == (0, 0, 5)
    for n in range(3, 30):  # every official split stays non-empty, counts add up
        c = raw.split_counts("vgg_flower", n)
        assert sum(c) == n and min(c) >= 1
    assert raw.split_counts("dtd", 5, (3, 1, 1)) == (3, 1, 1)
    with pytest.raises(MetaDatasetError, match="summing"):
        raw.split_counts("dtd", 5, (3, 1, 2))


# --------------------------------------------------------------------------- #
# Raw downloads.
# --------------------------------------------------------------------------- #

def test_aircraft_fake_tree_classes_split_and_box_crops(tmp_path):
    base = write_fake_raw(tmp_path, "aircraft", num_classes=6, images_per_class=3)
    data = base / "data"
    variants = [v for v in (data / "variants.txt").read_text().splitlines() if v]
    assert variants != sorted(variants)  # the fake's file is unsorted; the rule sorts it
    cs = raw.manual_class_source("aircraft", tmp_path, jpeg=False)  # the parent works too
    assert cs.splits == (4, 1, 1) and not cs.official
    assert list(cs.class_names) == [sorted(variants)[i] for i in _official_order((4, 1, 1))]
    boxes = {ln.split()[0]: [int(v) for v in ln.split()[1:]]
             for ln in (data / "images_box.txt").read_text().splitlines()}
    listed = {}
    for f in ("images_variant_trainval.txt", "images_variant_test.txt"):
        for ln in (data / f).read_text().splitlines():
            name, variant = ln.split(" ", 1)
            listed.setdefault(variant, []).append(name)
    for cid, variant in enumerate(cs.class_names):
        names = sorted(listed[variant])
        images = list(cs.images(cid))
        assert cs.images_per_class[cid] == len(images) == 3
        for name, img in zip(names, images):
            x0, y0, x1, y1 = boxes[name]
            full = np.asarray(Image.open(data / "images" / f"{name}.jpg").convert("RGB"))
            np.testing.assert_array_equal(img, full[y0:y1, x0:x1])
            assert y1 <= full.shape[0] - 20  # the banner is cut away
    jpeg = raw.manual_class_source("aircraft", base)  # official records: JPEG bytes
    first = next(iter(jpeg.images(0)))
    assert isinstance(first, bytes) and Image.open(io.BytesIO(first)).format == "JPEG"
    assert _decode(first).shape == next(iter(cs.images(0))).shape


def test_fungi_fake_tree_names_order_and_passthrough(tmp_path):
    base = write_fake_raw(tmp_path, "fungi", num_classes=6, images_per_class=3, seed=1)
    train = json.loads((base / "train.json").read_text())
    val = json.loads((base / "val.json").read_text())
    cats = sorted(train["categories"], key=lambda c: c["id"])
    labels = [f"{c['id']:04d}.{c['name']}" for c in cats]
    cs = raw.manual_class_source("fungi", base)
    assert list(cs.class_names) == [labels[i] for i in _official_order((4, 1, 1))]
    assert "0003.Clitocybe odora var. odora " in cs.class_names  # trailing space kept
    assert {"0000.Amanita muscaria", "0002.Amanita muscaria"} <= set(cs.class_names)
    cat_of = {a["image_id"]: a["category_id"] for a in train["annotations"] + val["annotations"]}
    for cid, label in enumerate(cs.class_names):
        want = [base / im["file_name"] for im in train["images"] + val["images"]
                if cat_of[im["id"]] == int(label[:4])]  # train.json then val.json, file order
        got = list(cs.images(cid))
        assert got == [p.read_bytes() for p in want]  # RGB JPEGs pass through byte for byte
        assert cs.images_per_class[cid] == 3


def test_traffic_sign_fake_tree_whole_images_shuffled_like_the_converter(tmp_path):
    base = write_fake_raw(tmp_path, "traffic_sign", num_classes=4, images_per_class=7)
    cs = raw.manual_class_source("traffic_sign", base, jpeg=False)
    assert cs.splits == (0, 0, 4)
    assert list(cs.class_names) == ["00.Speed limit (20km/h)", "01.Speed limit (30km/h)",
                                    "02.Speed limit (50km/h)", "03.Speed limit (60km/h)"]
    unshuffled = raw.manual_class_source("traffic_sign", base, jpeg=False,
                                         shuffle_traffic_sign=False)
    for cid in range(4):
        folder = base / "Final_Training" / "Images" / f"{cid:05d}"
        files = sorted(p.name for p in folder.iterdir() if p.suffix == ".ppm")
        shuffled = list(files)
        np.random.RandomState(23).shuffle(shuffled)
        assert shuffled != files
        for order, src in ((shuffled, cs), (files, unshuffled)):
            got = list(src.images(cid))
            assert len(got) == 7  # the GT csv is not an image
            for name, img in zip(order, got):  # whole image: the csv ROI is not cropped
                np.testing.assert_array_equal(img, np.asarray(Image.open(folder / name)))
    data = next(iter(raw.manual_class_source("traffic_sign", base).images(0)))
    assert Image.open(io.BytesIO(data)).format == "JPEG"  # PPM re-encoded as the records hold


def test_real_class_count_gives_the_official_split(tmp_path):
    write_fake_raw(tmp_path, "traffic_sign", num_classes=43, images_per_class=1)
    cs = raw.manual_class_source("traffic_sign", tmp_path)
    assert cs.official and cs.classes_per_split is None and cs.splits == (0, 0, 43)
    assert cs.class_names[42] == "42.End of no passing by vehicles over 3.5 metric tons"
    fake = raw.manual_class_source("traffic_sign", tmp_path, classes_per_split=(3, 0, 40))
    assert fake.splits == (3, 0, 40) and sorted(fake.class_names) == sorted(cs.class_names)


def test_raw_errors_show_expected_tree_found_and_download(tmp_path):
    with pytest.raises(MetaDatasetError, match="does not exist"):
        raw.manual_class_source("aircraft", tmp_path / "nope")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(MetaDatasetError) as e:
        raw.manual_class_source("fungi", tmp_path)
    msg = str(e.value)
    assert "junk.txt" in msg and "train.json" in msg and "fungi_train_val.tgz" in msg
    with pytest.raises(MetaDatasetError, match="raw sources are"):
        raw.manual_class_source("dtd", tmp_path)

    base = write_fake_raw(tmp_path / "a", "aircraft", num_classes=3, images_per_class=2)
    with pytest.raises(MetaDatasetError, match="Hint: pass its parent"):
        raw.manual_class_source("aircraft", base / "data")
    victim = min((base / "data" / "images").iterdir())
    victim.unlink()
    with pytest.raises(MetaDatasetError, match=f"missing: .*{victim.name}") as e:
        raw.manual_class_source("aircraft", base)
    assert "fgvc-aircraft-2013b.tar.gz" in str(e.value)

    base = write_fake_raw(tmp_path / "f", "fungi", num_classes=3)
    val = json.loads((base / "val.json").read_text())
    val["categories"] = val["categories"][:2]
    (base / "val.json").write_text(json.dumps(val))
    with pytest.raises(MetaDatasetError, match="different categories"):
        raw.manual_class_source("fungi", base)

    base = write_fake_raw(tmp_path / "t", "traffic_sign", num_classes=3)
    (base / "Final_Training" / "Images" / "00001").rename(
        base / "Final_Training" / "Images" / "00007")
    with pytest.raises(MetaDatasetError, match="without gaps"):
        raw.manual_class_source("traffic_sign", base)
    with pytest.raises(MetaDatasetError, match="GTSRB/ folder"):
        raw.manual_class_source("traffic_sign", base / "Final_Training")


def test_process_image_rules():
    arr = _img(0, 9, 11)
    data = _jpeg(arr)
    assert raw.process_image(data) == data  # RGB JPEG: untouched
    grey = _jpeg(arr[..., 0])
    out = raw.process_image(grey)
    assert out != grey and _decode(out).shape == (9, 11, 3)  # made RGB, re-encoded
    np.testing.assert_array_equal(raw.process_image(_png(arr), bbox=(2, 1, 7, 5), jpeg=False),
                                  arr[1:5, 2:7])
    np.testing.assert_array_equal(raw.process_image(arr, invert=True, jpeg=False), 255 - arr)
    small = raw.process_image(arr[..., :1], resize=84, jpeg=False)
    ref = np.asarray(Image.fromarray(arr[..., 0]).convert("RGB").resize((84, 84), Image.LANCZOS))
    np.testing.assert_array_equal(small, ref)
    with pytest.raises(MetaDatasetError, match="Cannot decode"):
        raw.process_image(b"not an image")
    with pytest.raises(MetaDatasetError, match="uint8"):
        raw.process_image(arr.astype(np.float32))


# --------------------------------------------------------------------------- #
# TFDS mapping functions on fake records.
# --------------------------------------------------------------------------- #

def test_omniglot_alphabets_split_and_inversion():
    background = ["Tagalog", "Latin", "Alphabet_of_the_Magi", "Bengali"]
    evaluation = ["Kannada", "Atlantean"]
    alphabets = sorted(background + evaluation)  # TFDS's 'alphabet' ClassLabel is sorted
    label_names, records = [], {"train": [], "test": []}
    for split, group in (("train", background), ("test", evaluation)):
        for alpha in group:
            for char in (2, 0, 1):  # records not in character order
                lab = len(label_names)
                label_names.append(f"{alpha}_{char}")
                for k in range(2):
                    records[split].append({"image": _img(lab * 10 + k, 8, 8), "label": lab,
                                           "alphabet": alphabets.index(alpha),
                                           "alphabet_char_id": char})
    cs = tfds_sources.class_source_from_records("omniglot", records, label_names, jpeg=False,
                                                alphabet_names=alphabets)
    order = ["Bengali", "Latin", "Tagalog", "Alphabet_of_the_Magi", "Atlantean", "Kannada"]
    assert list(cs.class_names) == [f"{a}-character{c:02d}" for a in order for c in (1, 2, 3)]
    assert cs.splits == (6, 6, 6)
    assert cs.superclasses == {"train": [[0, 1, 2], [3, 4, 5]], "valid": [[6, 7, 8], [9, 10, 11]],
                               "test": [[12, 13, 14], [15, 16, 17]]}
    lab = label_names.index("Tagalog_0")  # class 6 = Tagalog-character01
    want = [255 - r["image"] for r in records["train"] if r["label"] == lab]
    got = list(cs.images(6))
    assert len(got) == 2 and all(np.array_equal(g, w) for g, w in zip(got, want))
    # without the alphabet features the label names '<alphabet>_<char>' suffice
    bare = {s: [{"image": r["image"], "label": r["label"]} for r in rs]
            for s, rs in records.items()}
    cs2 = tfds_sources.class_source_from_records("omniglot", bare, label_names)
    assert list(cs2.class_names) == list(cs.class_names)
    with pytest.raises(MetaDatasetError, match="fixed by the alphabets"):
        tfds_sources.class_source_from_records("omniglot", bare, label_names,
                                               classes_per_split=(10, 2, 6))


def test_cu_birds_names_from_folders_sorted_files_and_split():
    folders = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet"]
    records = {"train": [], "test": []}
    files = {}
    for lab, folder in enumerate(folders):
        names = [f"{folder[4:]}_{n:04d}_{lab}.jpg" for n in (30, 2, 17)]
        files[lab] = sorted(names)
        for k, name in enumerate(names):  # TFDS's own split and record order are arbitrary
            split = "train" if k != 1 else "test"
            records[split].append({"image": _jpeg(_img(lab * 7 + k)), "label": lab,
                                   "label_name": folder[4:].lower(),
                                   "image/filename": f"CUB_200_2011/images/{folder}/{name}"})
    cs = tfds_sources.class_source_from_records("cu_birds", records, [str(i) for i in range(6)])
    order = _official_order((4, 1, 1))
    assert list(cs.class_names) == [folders[i] for i in order]
    by_name = {r["image/filename"].rsplit("/", 1)[1]: r["image"]
               for rs in records.values() for r in rs}
    for cid, lab in enumerate(order):
        assert list(cs.images(cid)) == [by_name[n] for n in files[lab]]  # bytes untouched


def test_dtd_and_vgg_flower_use_all_splits_sorted_by_file():
    textures = ["zigzagged", "banded", "waffled", "bumpy", "grid"]
    records = {"train": [], "validation": [], "test": []}
    for lab, tex in enumerate(textures):
        for k, split in enumerate(("test", "train", "validation")):
            records[split].append({"image": _jpeg(_img(lab * 3 + k)), "label": lab,
                                   "file_name": f"{tex}/{tex}_{9 - k:04d}.jpg"})
    cs = tfds_sources.class_source_from_records("dtd", records, textures)
    assert cs.splits == raw.split_counts("dtd", 5) == (3, 1, 1)
    assert list(cs.class_names) == [sorted(textures)[i] for i in _official_order((3, 1, 1))]
    got = list(cs.images(cs.class_names.index("banded")))
    lab = textures.index("banded")
    want = sorted((r["file_name"], r["image"]) for rs in records.values() for r in rs
                  if r["label"] == lab)
    assert got == [w[1] for w in want]

    names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
             "english marigold", "tiger lily", "moon orchid"]
    records = {s: [] for s in ("train", "validation", "test")}
    for i in range(1, 22):
        records[("train", "validation", "test")[i % 3]].append(
            {"image": _jpeg(_img(i)), "label": i % 7, "file_name": f"image_{i:05d}.jpg"})
    cs = tfds_sources.class_source_from_records("vgg_flower", records, names)
    assert cs.splits == raw.split_counts("vgg_flower", 7)
    assert list(cs.class_names) == [f"{i + 1:03d}.{names[i]}"
                                    for i in _official_order(cs.splits)]
    cid = cs.class_names.index("002.hard-leaved pocket orchid")
    flat = {r["file_name"]: r["image"] for rs in records.values() for r in rs}
    assert list(cs.images(cid)) == [flat[f"image_{i:05d}.jpg"] for i in (1, 8, 15)]


def test_quickdraw_real_labels_reproduce_the_official_split():
    labels_file = Path(tfds.__file__).parent / "datasets" / "quickdraw_bitmap" / "labels.txt"
    if not labels_file.is_file():
        pytest.skip("this TFDS version ships no quickdraw_bitmap/labels.txt")
    names = labels_file.read_text().splitlines()
    records = {"train": [{"image": np.zeros((28, 28, 1), np.uint8), "label": i}
                         for i in range(len(names))]}
    cs = tfds_sources.class_source_from_records("quickdraw", records, names)
    assert cs.official and cs.splits == (241, 52, 52)
    # quickdraw_splits.json: train hedgehog, swan, ...; valid ant, ...; test angel, ...
    assert list(cs.class_names[:5]) == ["hedgehog", "swan", "police car", "castle", "horse"]
    assert list(cs.class_names[238:241]) == ["snail", "flamingo", "spoon"]
    assert list(cs.class_names[241:244]) == ["ant", "anvil", "backpack"]
    assert list(cs.class_names[-3:]) == ["wheel", "wine bottle", "yoga"]
    img = _decode(next(iter(cs.images(0))))
    assert img.shape == (28, 28, 3)  # grey made RGB, as the converter does


def test_coco_crop_rule_against_numpy_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        width, height = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        x, y = rng.uniform(-5, width), rng.uniform(-5, height)
        w, h = rng.uniform(0, width), rng.uniform(0, height)
        xs, ys, ws, hs = x - 0.1 * w, y - 0.1 * h, 1.2 * w, 1.2 * h
        ref = (max(int(np.round(xs - 0.5)), 0), max(int(np.round(ys - 0.5)), 0),
               min(int(np.round(xs + ws - 0.5)) + 1, width),
               min(int(np.round(ys + hs - 0.5)) + 1, height))
        ok = ref[2] > ref[0] and ref[3] > ref[1]
        assert tfds_sources.coco_crop_box((x, y, w, h), width, height) == (ref if ok else None)
    # .5 ties round to even, as Python's round in the converter: x' - 0.5 = 8.5 -> 8 and
    # x' + w' - 0.5 = 20.5 -> 20 (so xmax = 21)
    assert tfds_sources.coco_crop_box((10.0, 10.0, 10.0, 10.0), 100, 100) == (8, 8, 21, 21)
    assert tfds_sources.coco_crop_box((120.0, 5.0, 3.0, 3.0), 100, 100) is None
    with pytest.raises(MetaDatasetError, match=">= 1.0"):
        tfds_sources.coco_crop_box((1, 1, 1, 1), 9, 9, box_scale_ratio=0.5)


def test_mscoco_crops_from_tfds_boxes_classes_and_order():
    cats = ["person", "bicycle", "car", "motorcycle"]
    height, width = 50, 64
    json_boxes = [(10.0, 10.0, 10.0, 10.0), (3.25, 7.5, 20.5, 11.75), (0.0, 0.0, 64.0, 50.0),
                  (31.07, 22.45, 5.0, 9.13), (40.0, 30.0, 15.5, 12.0), (5.0, 15.0, 10.0, 20.0)]

    def norm(b):  # TFDS stores float32 (ymin, xmin, ymax, xmax) / image size
        x, y, w, h = b
        return np.array([y / height, x / width, (y + h) / height, (x + w) / width], np.float32)

    images = [_img(s, height, width) for s in range(2)]
    records = {"train": [
        {"image": _jpeg(images[0]), "image/id": 7,
         "objects": {"bbox": np.stack([norm(b) for b in json_boxes[:3]]),
                     "label": np.array([2, 0, 2]), "id": np.array([30, 11, 12]),
                     "is_crowd": np.array([False, False, True])}},
        {"image": _jpeg(images[1]), "image/id": 9,
         "objects": {"bbox": np.stack([norm(b) for b in json_boxes[3:]]),
                     "label": np.array([2, 3, 1]), "id": np.array([5, 40, 41])}},
        {"image": _jpeg(images[0]), "objects": {"bbox": np.zeros((0, 4), np.float32),
                                                "label": np.zeros((0,), np.int64)}},
    ]}
    cs = tfds_sources.class_source_from_records("mscoco", records, cats, jpeg=False)
    assert cs.splits == (0, 2, 2)
    assert list(cs.class_names) == [cats[i] for i in _official_order((0, 2, 2))]
    car = cs.class_names.index("car")
    assert cs.images_per_class[car] == 3  # crowd annotations count, as in the converter
    decoded = [_decode(records["train"][k]["image"]) for k in range(2)]
    # car objects ordered by annotation id: 5 (image 1), 12 (image 0), 30 (image 0)
    want = [(1, json_boxes[3]), (0, json_boxes[2]), (0, json_boxes[0])]
    for got, (k, b) in zip(cs.images(car), want):
        x0, y0, x1, y1 = tfds_sources.coco_crop_box(b, width, height)
        np.testing.assert_array_equal(got, decoded[k][y0:y1, x0:x1])
    assert tfds_sources.coco_crop_box(json_boxes[0], width, height) == (8, 8, 21, 21)
    jp = tfds_sources.class_source_from_records("mscoco", records, cats)
    assert Image.open(io.BytesIO(next(iter(jp.images(car))))).format == "JPEG"


def test_mnist_and_cifar_are_test_only_sorted_and_resized_to_84():
    records = {"test": [{"image": _img(i, 28, 28, 1), "label": i % 3} for i in range(7)]}
    cs = tfds_sources.class_source_from_records("mnist", records, ["0", "1", "2"], jpeg=False)
    assert list(cs.class_names) == ["class_0", "class_1", "class_2"] and cs.splits == (0, 0, 3)
    got = list(cs.images(1))
    ref = [np.asarray(Image.fromarray(records["test"][i]["image"][..., 0]).convert("RGB")
                      .resize((84, 84), Image.LANCZOS)) for i in (1, 4)]
    assert len(got) == 2 and all(np.array_equal(g, r) for g, r in zip(got, ref))
    names = ["truck", "airplane", "cat"]
    records = {"test": [{"image": _img(i, 32, 32), "label": i % 3} for i in range(6)]}
    cs = tfds_sources.class_source_from_records("cifar10", records, names)
    assert list(cs.class_names) == ["airplane", "cat", "truck"]
    assert _decode(next(iter(cs.images(2)))).shape == (84, 84, 3)
    assert cs.images_per_class == {0: 2, 1: 2, 2: 2}


def _write_ilsvrc_spec(path):
    def node(w, ch):
        return {"wn_id": w, "words": w, "children_ids": ch, "parents_ids": []}

    spec = {
        "name": "ilsvrc_2012",
        "split_subgraphs": {
            "TRAIN": [node("n100", ["n001", "n200"]), node("n200", ["n002", "n003"]),
                      node("n001", []), node("n002", []), node("n003", [])],
            "VALID": [node("n300", ["n004", "n005"]), node("n004", []), node("n005", [])],
            "TEST": [node("n400", ["n006"]), node("n006", [])]},
        "images_per_class": {"TRAIN": {"n001": 3, "n002": 2, "n003": 3, "n100": 8},
                             "VALID": {"n004": 3, "n005": 3}, "TEST": {"n006": 3}},
        "class_names": {str(i): f"n00{i + 1}" for i in range(6)},
        "path": "/x", "file_pattern": "{}.tfrecords",
        "__class__": "HierarchicalDatasetSpecification"}
    path.write_text(json.dumps(spec))
    return path


def test_ilsvrc_spec_hierarchy_duplicates_and_file_order(tmp_path, caplog):
    spec_file = _write_ilsvrc_spec(tmp_path / "dataset_spec.json")
    spec = tfds_sources.load_ilsvrc_2012_spec(tmp_path)
    assert spec.class_names == ("n001", "n002", "n003", "n004", "n005", "n006")
    assert spec.classes_per_split == (3, 2, 1)
    assert spec.hierarchy == {"train": [[0, 1, 2], [1, 2]], "valid": [[3, 4]], "test": [[5]]}
    assert spec.images_per_class == {0: 3, 1: 2, 2: 3, 3: 3, 4: 3, 5: 3}
    dup = tmp_path / "ImageNet_CUBirds_duplicates.txt"
    dup.write_text("# comment\n## File name in ImageNet   # File name in CUBirds\n"
                   "n002/n002_7.JPEG  # Bird_0001.jpg\n")
    assert tfds_sources.read_duplicates([dup]) == {"n002_7.JPEG"}
    labels = ["n006", "n005", "n004", "n003", "n002", "n001", "n999"]  # n999: not in the spec
    records = {"train": []}
    for lab, wnid in enumerate(labels):
        for k in (7, 12, 1):
            records["train"].append({"image": _jpeg(_img(lab * 20 + k)), "label": lab,
                                     "file_name": f"{wnid}_{k}.JPEG"})
    cs = tfds_sources.class_source_from_records(
        "ilsvrc_2012", records, labels, ilsvrc_spec=spec,
        skip_files=tfds_sources.read_duplicates([dup]))
    assert list(cs.class_names) == list(spec.class_names) and cs.hierarchy == spec.hierarchy
    assert cs.splits == (3, 2, 1) and cs.images_per_class == spec.images_per_class
    assert "another image count" not in caplog.text  # the duplicate was skipped
    flat = {r["file_name"]: r["image"] for r in records["train"]}
    assert list(cs.images(1)) == [flat["n002_1.JPEG"], flat["n002_12.JPEG"]]  # sorted names
    assert list(cs.images(0)) == [flat[f"n001_{k}.JPEG"] for k in (1, 12, 7)]
    with pytest.raises(MetaDatasetError, match="dataset_spec.json"):
        tfds_sources.class_source_from_records("ilsvrc_2012", records, labels)
    bad = json.loads(spec_file.read_text())
    bad["class_names"]["0"], bad["class_names"]["5"] = "n006", "n001"
    spec_file.write_text(json.dumps(bad))
    with pytest.raises(MetaDatasetError, match="(?s)TRAIN leaves.*dataset_spec.json"):
        tfds_sources.load_ilsvrc_2012_spec(spec_file)


def test_record_errors():
    with pytest.raises(MetaDatasetError, match="missing \\['test'\\]"):
        tfds_sources.class_source_from_records("cu_birds", {"train": []}, ["a"])
    with pytest.raises(MetaDatasetError, match="outside the 2 label names"):
        tfds_sources.class_source_from_records(
            "quickdraw", {"train": [{"image": _img(0), "label": 5}]}, ["a", "b"])
    with pytest.raises(MetaDatasetError, match="have no image"):
        tfds_sources.class_source_from_records(
            "quickdraw", {"train": [{"image": _img(0), "label": 0}]}, ["a", "b"])
    with pytest.raises(MetaDatasetError, match="has no 'file_name'"):
        tfds_sources.class_source_from_records(
            "dtd", {s: [{"image": _img(0), "label": 0}] for s in ("train", "validation", "test")},
            ["a"])
    with pytest.raises(MetaDatasetError, match="manual_class_source"):
        tfds_sources.class_source_from_records("fungi", {}, [])


# --------------------------------------------------------------------------- #
# The thin TFDS wrapper, with a stand-in for tfds.builder.
# --------------------------------------------------------------------------- #

class _Names:
    def __init__(self, names):
        self.names = names


class _FakeBuilder:
    def __init__(self, records, names, prepared=True, fail=False):
        self.records, self.prepared, self.fail, self.calls = records, prepared, fail, []
        self.info = type("Info", (), {"features": {"label": _Names(names)}})()

    def is_prepared(self):
        return self.prepared

    def as_data_source(self, split, decoders=None):
        self.calls.append((split, decoders))
        if self.fail:
            raise NotImplementedError("Random access data source for file format tfrecord")
        return self.records[split]


def test_tfds_class_source_reads_the_right_splits_without_decoding(tmp_path, monkeypatch):
    textures = ["grid", "banded", "woven"]
    records = {s: [{"image": _jpeg(_img(k * 3 + lab)), "label": lab,
                    "file_name": f"{textures[lab]}/{textures[lab]}_{k}.jpg"}
                   for lab in range(3)] for k, s in enumerate(("train", "validation", "test"))}
    made = []

    def builder(name, data_dir=None, **kwargs):
        made.append((name, data_dir, kwargs))
        return fake

    fake = _FakeBuilder(records, textures)
    monkeypatch.setattr(tfds_sources.tfds, "builder", builder)
    cs = tfds_sources.tfds_class_source("dtd", tmp_path)
    assert made[0][:2] == ("dtd", str(tmp_path))
    assert [c[0] for c in fake.calls] == ["train", "validation", "test"]
    assert all(isinstance(c[1]["image"], tfds.decode.SkipDecoding) for c in fake.calls)
    ref = tfds_sources.class_source_from_records("dtd", records, textures)
    assert list(cs.class_names) == list(ref.class_names) and cs.images_per_class[0] == 3
    assert list(cs.images(0)) == list(ref.images(0))

    fake = _FakeBuilder(records, textures, prepared=False)
    with pytest.raises(MetaDatasetError, match="not prepared.*tfds build dtd"):
        tfds_sources.tfds_class_source("dtd", tmp_path)
    fake = _FakeBuilder(records, textures, fail=True)
    with pytest.raises(MetaDatasetError, match="array_record"):
        tfds_sources.tfds_class_source("dtd", tmp_path)
    with pytest.raises(MetaDatasetError, match="manual_class_source"):
        tfds_sources.tfds_class_source("traffic_sign", tmp_path)
    with pytest.raises(MetaDatasetError, match="WordNet class split .* dataset_spec.json"):
        tfds_sources.tfds_class_source("ilsvrc_2012", tmp_path)


def test_omniglot_inversion_matches_imageops_on_encoded_images():
    img = _img(3, 10, 10)
    data = _png(img)
    out = raw.process_image(data, invert=True, jpeg=False)
    np.testing.assert_array_equal(out, np.asarray(ImageOps.invert(Image.fromarray(img))))


def test_tfds_class_source_ilsvrc_finds_spec_and_duplicates_in_data_dir(tmp_path, monkeypatch):
    _write_ilsvrc_spec(tmp_path / "ilsvrc_2012_dataset_spec.json")
    (tmp_path / "ImageNet_CUBirds_duplicates.txt").write_text("n002/n002_7.JPEG  # b.jpg\n")
    labels = [f"n00{i}" for i in range(1, 7)]
    records = {"train": [{"image": _jpeg(_img(lab * 5 + k)), "label": lab,
                          "file_name": f"{labels[lab]}_{k}.JPEG"}
                         for lab in range(6) for k in (7, 1, 4)]}
    fake = _FakeBuilder(records, labels)
    monkeypatch.setattr(tfds_sources.tfds, "builder", lambda name, **kw: fake)
    cs = tfds_sources.tfds_class_source("ilsvrc_2012", tmp_path)
    assert list(cs.class_names) == labels and cs.splits == (3, 2, 1)
    assert cs.hierarchy == {"train": [[0, 1, 2], [1, 2]], "valid": [[3, 4]], "test": [[5]]}
    assert cs.images_per_class == {0: 3, 1: 2, 2: 3, 3: 3, 4: 3, 5: 3}  # n002_7 skipped
