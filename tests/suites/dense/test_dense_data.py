"""Tests for ur_jax.suites.dense: MTAN trees -> TFDS builders, augmentation, grain pipelines.

Fake MTAN trees (16x24, a handful of examples) are written once per module in the real
on-disk format and built once; the resize functions are checked against loop references
written from PyTorch's formulas and against closed-form cases.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ur_jax.suites import dense as D
from ur_jax.suites.dense.fake import write_fake_mtan

H, W = 16, 24
N_TRAIN = {"nyuv2": 5, "cityscapes": 4}
N_TEST = 3
_LABEL_DIR = {"nyuv2": "label", "cityscapes7": "label_7", "cityscapes19": "label_19"}


def _family(name: str) -> str:
    return "nyuv2" if name == "nyuv2" else "cityscapes"


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mtan")
    return {
        # float64 on disk like MTAN's NYU-v2; Cityscapes as float32 to cover both dtypes.
        "nyuv2": write_fake_mtan(root / "nyuv2", "nyuv2", N_TRAIN["nyuv2"], N_TEST,
                                 (H, W), seed=1),
        "cityscapes": write_fake_mtan(root / "cityscapes", "cityscapes",
                                      N_TRAIN["cityscapes"], N_TEST, (H, W), seed=2,
                                      dtype=np.float32),
    }


@pytest.fixture(scope="module")
def data_dir(trees: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tfds")
    for name in D.DATASETS:
        D.prepare_dense(name, trees[_family(name)], out)
    return out


@pytest.fixture(scope="module")
def nyu_train(data_dir: Path):
    return D.dense_source("nyuv2", "train", data_dir)


def _disk(tree: Path, name: str, split_dir: str, i: int) -> dict[str, np.ndarray]:
    """Example i as MTAN stores it, converted to the record dtypes (the expected record)."""
    d = tree / split_dir
    out = {"image": np.load(d / "image" / f"{i}.npy").astype(np.float32),
           "semantic": np.load(d / _LABEL_DIR[name] / f"{i}.npy").astype(np.int32),
           "depth": np.load(d / "depth" / f"{i}.npy").astype(np.float32)}
    if name == "nyuv2":
        out["normal"] = np.load(d / "normal" / f"{i}.npy").astype(np.float32)
    return out


# --------------------------------------------------------------------------- #
# Fake trees and builders.
# --------------------------------------------------------------------------- #

def test_fake_tree_is_in_mtan_format(trees: dict[str, Path]) -> None:
    nyu, city = trees["nyuv2"], trees["cityscapes"]
    for split, n in (("train", N_TRAIN["nyuv2"]), ("val", N_TEST)):
        for sub in ("image", "label", "depth", "normal"):
            assert sorted(p.name for p in (nyu / split / sub).iterdir()) == sorted(
                f"{i}.npy" for i in range(n))
    img = np.load(nyu / "train/image/0.npy")
    label = np.load(nyu / "train/label/0.npy")
    depth = np.load(nyu / "train/depth/0.npy")
    normal = np.load(nyu / "train/normal/0.npy")
    assert (img.dtype, img.shape) == (np.float64, (H, W, 3))
    assert (label.dtype, label.shape) == (np.float64, (H, W))
    assert (depth.dtype, depth.shape) == (np.float64, (H, W, 1))
    assert (normal.dtype, normal.shape) == (np.float64, (H, W, 3))
    assert 0 <= img.min() and img.max() <= 1
    np.testing.assert_allclose(img * 255, np.round(img * 255), atol=1e-9)  # k / 255 values
    assert (label == -1).any() and set(np.unique(label)) <= set(range(-1, 13))
    assert (depth == 0).any() and (depth > 0).any()
    zero = (normal == 0).all(-1)
    assert zero.any()
    np.testing.assert_allclose(np.linalg.norm(normal[~zero], axis=-1), 1.0, rtol=1e-9)
    for i in range(N_TRAIN["cityscapes"]):
        l7 = np.load(city / f"train/label_7/{i}.npy")
        l19 = np.load(city / f"train/label_19/{i}.npy")
        assert l7.dtype == np.float32 and l7.shape == (H, W)
        assert ((l7 == -1) == (l19 == -1)).all() and (l7 == -1).any()
        assert set(np.unique(l7)) <= set(range(-1, 7)) and l19.max() <= 18
        # label_7 is the category of label_19 (road -> flat, car -> vehicle, ...).
        np.testing.assert_array_equal(l7[l19 == 0], 0)
        np.testing.assert_array_equal(l7[l19 == 13], 6)
    assert not (city / "train/normal").exists()


@pytest.mark.parametrize("name", D.DATASETS)
def test_builders_read_back_exactly(name: str, trees: dict[str, Path],
                                    data_dir: Path) -> None:
    tree = trees[_family(name)]
    for split, split_dir in (("train", "train"), ("test", "val")):
        src = D.dense_source(name, split, data_dir)
        n = N_TRAIN[_family(name)] if split == "train" else N_TEST
        assert len(src) == n
        for i in range(n):
            rec, want = src[i], _disk(tree, name, split_dir, i)
            assert set(rec) == {"image", *D.TASKS[name]} == set(want)
            for key in want:
                assert rec[key].dtype == want[key].dtype, key
                np.testing.assert_array_equal(rec[key], want[key], err_msg=key)
            assert (rec["semantic"] == -1).any() and (rec["depth"] == 0).any()
            if name == "nyuv2":
                assert (rec["normal"] == 0).all(-1).any()
    if name != "nyuv2":  # the two configs really read different label folders
        other = "cityscapes7" if name == "cityscapes19" else "cityscapes19"
        a = D.dense_source(name, "train", data_dir)[0]["semantic"]
        b = D.dense_source(other, "train", data_dir)[0]["semantic"]
        assert not np.array_equal(a, b)


def test_builder_metadata_and_reuse(data_dir: Path, tmp_path: Path) -> None:
    b = D.prepare_dense("nyuv2", None, data_dir)  # prepared: manual_dir not needed
    assert b.name == "ur_nyuv2" and b.info.splits["test"].num_examples == N_TEST
    assert b.info.features["image"].shape == (None, None, 3)
    assert "lorenmt/mtan" in D.UrNyuv2.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "label_19/0.npy" in D.UrCityscapes.MANUAL_DOWNLOAD_INSTRUCTIONS
    c = D.prepare_dense("cityscapes19", tmp_path / "not_read", data_dir)
    assert c.name == "ur_cityscapes" and c.builder_config.name == "label19"
    with pytest.raises(ValueError, match="Unknown dense dataset"):
        D.prepare_dense("nyu", None, data_dir)
    with pytest.raises(ValueError, match="Unknown split"):
        D.dense_source("nyuv2", "val", data_dir)


def test_unprepared_without_manual_dir(tmp_path: Path) -> None:
    with pytest.raises(D.DenseDataError, match="not prepared") as e:
        D.dense_source("cityscapes7", "train", tmp_path / "tfds")
    assert "label_7/0.npy" in str(e.value) and "cityscapes2.zip" in str(e.value)
    assert not (tmp_path / "tfds").exists()


def test_tfds_api_missing_manual_dir(tmp_path: Path) -> None:
    """The builder used directly through TFDS also gives the clear error."""
    builder = D.UrNyuv2(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    with pytest.raises(D.DenseDataError, match="does not exist or is empty") as e:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp_path / "nowhere")))
    assert "normal/0.npy" in str(e.value)
    assert not builder.is_prepared()


# --------------------------------------------------------------------------- #
# Layout and value errors.
# --------------------------------------------------------------------------- #

def _save_like(path: Path, arr: np.ndarray) -> None:
    np.save(path, arr)


def _break(case: str, root: Path) -> tuple[Path, str]:
    """Damages a copy of the NYU-v2 tree at ``root``; returns (manual_dir, expected text)."""
    if case == "missing_root":
        return root / "nowhere", "does not exist"
    if case == "empty_root":
        empty = root.parent / "empty"
        empty.mkdir()
        return empty, "is empty"
    if case == "missing_split":
        shutil.rmtree(root / "val")
        return root, "missing folder"
    if case == "missing_subdir":
        shutil.rmtree(root / "val" / "normal")
        return root, "val/normal"
    if case == "gap":
        for sub in ("image", "label", "depth", "normal"):
            (root / "train" / sub / "2.npy").unlink()
        return root, r"gap in the numbering.*missing \[2\]"
    if case == "count_mismatch":
        (root / "train" / "depth" / f"{N_TRAIN['nyuv2'] - 1}.npy").unlink()
        return root, "different numbers of files"
    if case == "shape_mismatch":
        _save_like(root / "train/image/1.npy", np.zeros((H + 2, W, 3)))
        return root, r"image/1.npy has shape \(18, 24, 3\); expected \(16, 24, 3\)"
    if case == "depth_without_channel":
        _save_like(root / "val/depth/0.npy", np.ones((H, W)))
        return root, r"depth/0.npy has shape \(16, 24\); expected \(16, 24, 1\)"
    if case == "bad_name":
        _save_like(root / "train/label/x.npy", np.zeros((H, W)))
        return root, "unexpected file name"
    if case == "nested":  # the zip's parent folder passed instead of the tree itself
        outer = root.parent / "outer"
        outer.mkdir()
        shutil.move(str(root), outer / "nyuv2")
        return outer, "contains train/; pass that folder"
    raise AssertionError(case)


_LAYOUT_CASES = ("missing_root", "empty_root", "missing_split", "missing_subdir", "gap",
                 "count_mismatch", "shape_mismatch", "depth_without_channel", "bad_name",
                 "nested")


@pytest.mark.parametrize("case", _LAYOUT_CASES)
def test_layout_errors_are_clear(case: str, trees: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "nyuv2"
    shutil.copytree(trees["nyuv2"], root)
    manual, expected = _break(case, root)
    with pytest.raises(D.DenseDataError, match=expected) as e:
        D.check_mtan_tree("nyuv2", manual)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    # The expected tree, what was found and where the data comes from.
    assert "Expected layout" in msg and "label/0.npy" in msg and "normal/0.npy" in msg
    assert "nyuv2.zip" in msg and "lorenmt/mtan" in msg
    if case not in ("missing_root",):
        assert f"Found in {manual}" in msg
    if case in ("gap", "shape_mismatch"):  # prepare_dense refuses before writing anything
        with pytest.raises(D.DenseDataError, match=expected):
            D.prepare_dense("nyuv2", manual, tmp_path / "tfds")
        assert not (tmp_path / "tfds").exists()


def test_cityscapes_error_names_its_label_folder(trees: dict[str, Path],
                                                 tmp_path: Path) -> None:
    root = tmp_path / "city"
    shutil.copytree(trees["cityscapes"], root)
    shutil.rmtree(root / "train" / "label_19")
    D.check_mtan_tree("cityscapes7", root)  # label_7 is still there
    with pytest.raises(D.DenseDataError, match="train/label_19") as e:
        D.check_mtan_tree("cityscapes19", root)
    assert "INVERSE depth" in str(e.value) and "cityscapes2.zip" in str(e.value)


@pytest.mark.parametrize("case", ["label_out_of_range", "label_not_integer", "image_0_255",
                                  "negative_depth", "nan_normal"])
def test_bad_values_refused_while_building(case: str, trees: dict[str, Path],
                                           tmp_path: Path) -> None:
    root = tmp_path / "nyuv2"
    shutil.copytree(trees["nyuv2"], root)
    label = np.load(root / "val/label/2.npy")
    if case == "label_out_of_range":
        label[3, 4] = 13
        np.save(root / "val/label/2.npy", label)
        expected = r"labels must be integers in -1\.\.12.*\[13\.0\]"
    elif case == "label_not_integer":
        label[3, 4] = 2.5
        np.save(root / "val/label/2.npy", label)
        expected = r"\[2\.5\]"
    elif case == "image_0_255":
        np.save(root / "train/image/0.npy", np.load(root / "train/image/0.npy") * 255)
        expected = r"image values must lie in \[0, 1\]"
    elif case == "negative_depth":
        np.save(root / "train/depth/3.npy", -np.load(root / "train/depth/3.npy"))
        expected = "depth must be >= 0"
    else:
        normal = np.load(root / "train/normal/1.npy")
        normal[0, 0, 0] = np.nan
        np.save(root / "train/normal/1.npy", normal)
        expected = "NaN or infinite"
    with pytest.raises(D.DenseDataError, match=expected):
        D.prepare_dense("nyuv2", root, tmp_path / "tfds")
    assert not D.UrNyuv2(data_dir=str(tmp_path / "tfds"),
                         file_format="array_record").is_prepared()


def test_label7_data_refused_as_19_class_only_when_out_of_range(trees: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """Swapped label folders are caught when values exceed the class count."""
    root = tmp_path / "city"
    shutil.copytree(trees["cityscapes"], root)
    shutil.rmtree(root / "train" / "label_7")
    shutil.copytree(root / "train" / "label_19", root / "train" / "label_7")
    with pytest.raises(D.DenseDataError, match=r"-1\.\.6 for 'cityscapes7'.*label_7"):
        D.prepare_dense("cityscapes7", root, tmp_path / "tfds")


# --------------------------------------------------------------------------- #
# Resizing: loop references written from PyTorch's formulas, closed forms.
# --------------------------------------------------------------------------- #

def _ref_bilinear(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=True), one output pixel at a time (float64)."""
    x = np.asarray(x, np.float64)
    hin, win = x.shape[:2]
    out = np.zeros((oh, ow, *x.shape[2:]))
    for p in range(oh):
        sy = p * (hin - 1) / (oh - 1) if oh > 1 else 0.0
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, hin - 1)
        wy = sy - y0
        for q in range(ow):
            sx = q * (win - 1) / (ow - 1) if ow > 1 else 0.0
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, win - 1)
            wx = sx - x0
            out[p, q] = ((1 - wy) * ((1 - wx) * x[y0, x0] + wx * x[y0, x1])
                         + wy * ((1 - wx) * x[y1, x0] + wx * x[y1, x1]))
    return out


def _ref_nearest(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """F.interpolate(nearest): src = min(floor(dst * float32(in / out)), in - 1) in float32."""
    hin, win = x.shape[:2]
    sh, sw = np.float32(hin) / np.float32(oh), np.float32(win) / np.float32(ow)
    out = np.empty((oh, ow, *x.shape[2:]), x.dtype)
    for p in range(oh):
        for q in range(ow):
            y = min(int(np.floor(np.float32(p) * sh)), hin - 1)
            z = min(int(np.floor(np.float32(q) * sw)), win - 1)
            out[p, q] = x[y, z]
    return out


_SIZES = [((16, 24), (16, 24)), ((10, 16), (16, 24)), ((13, 19), (16, 24)),
          ((16, 24), (7, 5)), ((1, 5), (3, 8)), ((4, 6), (1, 1)), ((5, 7), (1, 9))]


@pytest.mark.parametrize(("in_hw", "out_hw"), _SIZES)
def test_resize_matches_loop_reference(in_hw: tuple[int, int],
                                       out_hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(in_hw) * 31 + sum(out_hw))
    x = rng.normal(size=(*in_hw, 3)).astype(np.float32)
    got = D.resize_bilinear_align_corners(x, out_hw)
    assert got.dtype == np.float32 and got.shape == (*out_hw, 3)
    np.testing.assert_allclose(got, _ref_bilinear(x, *out_hw), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(D.resize_bilinear_align_corners(x[..., 0], out_hw),
                               _ref_bilinear(x[..., 0], *out_hw), rtol=1e-6, atol=1e-6)
    labels = rng.integers(-1, 13, size=in_hw).astype(np.int32)
    got = D.resize_nearest(labels, out_hw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _ref_nearest(labels, *out_hw))
    depth = x[..., :1]
    np.testing.assert_array_equal(D.resize_nearest(depth, out_hw),
                                  _ref_nearest(depth, *out_hw))


def test_bilinear_closed_forms() -> None:
    # Affine images are reproduced exactly on the stretched grid; corners are kept.
    hin, win, oh, ow = 9, 13, 16, 24
    i, j = np.meshgrid(np.arange(hin), np.arange(win), indexing="ij")
    x = np.stack([0.5 * i - 0.25 * j + 1, 2.0 * j, -i + 3.0], -1)
    got = D.resize_bilinear_align_corners(x, (oh, ow))
    p, q = np.meshgrid(np.arange(oh) * (hin - 1) / (oh - 1),
                       np.arange(ow) * (win - 1) / (ow - 1), indexing="ij")
    want = np.stack([0.5 * p - 0.25 * q + 1, 2.0 * q, -p + 3.0], -1)
    np.testing.assert_allclose(got, want, atol=2e-6)
    for a, b in (((0, 0), (0, 0)), ((-1, -1), (-1, -1)), ((0, -1), (0, -1))):
        np.testing.assert_array_equal(got[a], x[b].astype(np.float32))
    # 1D ramp 0..3 over 4 pixels resized to 7: steps of exactly 0.5.
    ramp = np.arange(4, dtype=np.float32)[None]
    np.testing.assert_array_equal(D.resize_bilinear_align_corners(ramp, (1, 7))[0],
                                  np.arange(7) * 0.5)
    # Same size is the identity, exactly.
    np.testing.assert_array_equal(D.resize_bilinear_align_corners(x, (hin, win)),
                                  x.astype(np.float32))


def test_nearest_known_values() -> None:
    def nn(n_in: int, n_out: int) -> list[int]:
        return D.resize_nearest(np.arange(n_in)[None], (1, n_out))[0].tolist()

    assert nn(3, 5) == [0, 0, 1, 1, 2]
    assert nn(4, 6) == [0, 0, 1, 2, 2, 3]
    assert nn(6, 4) == [0, 1, 3, 4]
    assert nn(5, 5) == [0, 1, 2, 3, 4]
    # PyTorch multiplies in float32: 22 * float32(26 / 44) = 12.999999 -> 12 (like
    # output 21); exact (or float64) arithmetic would give 13 at output 22.
    out = nn(26, 44)
    assert out[22] == 12 and out[21] == 12 and out[23] == 13
    x = np.array([[-1, 0], [5, 7]], np.int32)
    np.testing.assert_array_equal(D.resize_nearest(x, (4, 4)),
                                  np.repeat(np.repeat(x, 2, 0), 2, 1))


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        D.resize_nearest(np.zeros(5), (2, 2))
    with pytest.raises(ValueError, match="Output size must be positive"):
        D.resize_bilinear_align_corners(np.zeros((2, 2)), (0, 3))


# --------------------------------------------------------------------------- #
# Scale-crop, flip, augment.
# --------------------------------------------------------------------------- #

def _example(seed: int = 0, normal: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ex = {"image": rng.random((H, W, 3), dtype=np.float32),
          "semantic": rng.integers(-1, 13, (H, W)).astype(np.int32),
          "depth": rng.uniform(0.5, 9.0, (H, W, 1)).astype(np.float32)}
    ex["depth"][rng.random((H, W)) < 0.2] = 0.0
    if normal:
        n = rng.normal(size=(H, W, 3)).astype(np.float32)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n[rng.random((H, W)) < 0.2] = 0.0
        ex["normal"] = n
    return ex


@pytest.mark.parametrize("depth_kind", D.DEPTH_KINDS)
def test_scale_crop_matches_reference(depth_kind: str) -> None:
    ex = _example(3)
    for seed in range(12):
        got = D.scale_crop(ex, np.random.default_rng(seed), D.DEFAULT_SCALES, depth_kind)
        rng = np.random.default_rng(seed)  # the documented draw order
        s = D.DEFAULT_SCALES[rng.integers(3)]
        h, w = int(H / s), int(W / s)
        i, j = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        crop = {k: v[i:i + h, j:j + w] for k, v in ex.items()}
        np.testing.assert_allclose(got["image"], _ref_bilinear(crop["image"], H, W),
                                   atol=1e-6)
        np.testing.assert_allclose(got["normal"], _ref_bilinear(crop["normal"], H, W),
                                   atol=1e-6)
        np.testing.assert_array_equal(got["semantic"], _ref_nearest(crop["semantic"], H, W))
        depth = _ref_nearest(crop["depth"], H, W).astype(np.float64)
        depth = depth / s if depth_kind == "depth" else depth * s
        np.testing.assert_array_equal(got["depth"], depth.astype(np.float32))
        assert {k: v.dtype for k, v in got.items()} == {
            "image": np.float32, "normal": np.float32, "semantic": np.int32,
            "depth": np.float32}
        assert set(np.unique(got["semantic"])) <= set(np.unique(ex["semantic"]))


def test_scale_one_is_identity() -> None:
    ex = _example(4)
    for seed in range(3):
        got = D.scale_crop(ex, np.random.default_rng(seed), (1.0,), "inverse_depth")
        for key in ex:
            np.testing.assert_array_equal(got[key], ex[key], err_msg=key)


@pytest.mark.parametrize(("depth_kind", "factor"), [("depth", 1 / 1.5),
                                                     ("inverse_depth", 1.5)])
def test_scale_crop_depth_scaling_and_invalid_markers(depth_kind: str, factor: float) -> None:
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    stripes = (i + j) % 2 == 0  # every crop contains invalid pixels
    ex = {"image": np.zeros((H, W, 3), np.float32),
          "semantic": np.where(stripes, -1, (i % 3) + 4).astype(np.int32),
          "depth": np.where(stripes, 0.0, 2.0)[..., None].astype(np.float32)}
    for seed in range(8):
        got = D.scale_crop(ex, np.random.default_rng(seed), (1.5,), depth_kind)
        assert set(np.unique(got["depth"])) == {0.0, np.float32(2.0 * factor)}
        assert set(np.unique(got["semantic"])) <= {-1, 4, 5, 6}
        assert (got["semantic"] == -1).any() and (got["depth"] == 0).any()
        # Where the label is -1 the depth is 0 (both come from the same source pixel).
        np.testing.assert_array_equal(got["semantic"] == -1, got["depth"][..., 0] == 0)


def test_scale_crop_draws_cover_every_scale_and_offset() -> None:
    """Offsets are uniform over [0, H - h] with both ends reachable (random.randint)."""
    ids = (np.arange(H)[:, None] * W + np.arange(W)[None]).astype(np.int32)
    ex = {"image": np.zeros((H, W, 3), np.float32), "semantic": ids}
    seen: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for seed in range(600):
        sem = D.scale_crop(ex, np.random.default_rng(seed))["semantic"]
        i, j = divmod(int(sem[0, 0]), W)  # nearest: output (0, 0) is input (i, j)
        i2, j2 = divmod(int(sem[-1, -1]), W)  # and output (H-1, W-1) is (i+h-1, j+w-1)
        seen.setdefault((i2 - i + 1, j2 - j + 1), set()).add((i, j))
    assert set(seen) == {(int(H / s), int(W / s)) for s in D.DEFAULT_SCALES}
    for (h, w), corners in seen.items():
        rows = {c[0] for c in corners}
        cols = {c[1] for c in corners}
        assert rows == set(range(H - h + 1)), (h, w, rows)
        assert min(cols) == 0 and max(cols) == W - w


def test_hflip() -> None:
    ex = _example(5)
    ex["extra"] = "kept"
    got = D.hflip(ex)
    np.testing.assert_array_equal(got["image"], ex["image"][:, ::-1])
    np.testing.assert_array_equal(got["semantic"], ex["semantic"][:, ::-1])
    np.testing.assert_array_equal(got["depth"], ex["depth"][:, ::-1])
    np.testing.assert_array_equal(got["normal"][..., 0], -ex["normal"][:, ::-1, 0])
    np.testing.assert_array_equal(got["normal"][..., 1:], ex["normal"][:, ::-1, 1:])
    assert got["extra"] == "kept"
    assert (got["normal"] == 0).all(-1).sum() == (ex["normal"] == 0).all(-1).sum()
    twice = D.hflip(got)
    for key in ("image", "semantic", "depth", "normal"):
        np.testing.assert_array_equal(twice[key], ex[key])
    assert not np.shares_memory(got["normal"], ex["normal"])


def test_augment_is_deterministic_and_flips_half_the_time() -> None:
    ex = _example(6)
    flips = 0
    for seed in range(40):
        a = D.augment(ex, np.random.default_rng(seed), "depth")
        b = D.augment(ex, np.random.default_rng(seed), "depth")
        for key in ex:
            np.testing.assert_array_equal(a[key], b[key])
        crop = D.scale_crop(ex, np.random.default_rng(seed), D.DEFAULT_SCALES, "depth")
        same = np.array_equal(a["semantic"], crop["semantic"])
        if not same:
            flips += 1
            np.testing.assert_array_equal(a["normal"], D.hflip(crop)["normal"])
        no_flip = D.augment(ex, np.random.default_rng(seed), "depth", flip=False)
        np.testing.assert_array_equal(no_flip["semantic"], crop["semantic"])
    assert 8 <= flips <= 32


def test_augment_rejects_bad_arguments() -> None:
    ex = _example(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Unknown depth_kind"):
        D.augment(ex, rng, "disparity")
    with pytest.raises(ValueError, match="zoom factors >= 1"):
        D.scale_crop(ex, rng, (0.5, 1.0))
    with pytest.raises(ValueError, match="needs an 'image'"):
        D.scale_crop({"semantic": ex["semantic"]}, rng)


# --------------------------------------------------------------------------- #
# Pipelines.
# --------------------------------------------------------------------------- #

def _equal_batches(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_train_batches_shapes_and_determinism(nyu_train) -> None:
    ds = D.dense_train_batches(nyu_train, batch_size=2, seed=7)
    first = [ds[i] for i in range(4)]
    b = first[0]
    assert {k: (v.dtype, v.shape) for k, v in b.items()} == {
        "image": (np.float32, (2, H, W, 3)), "semantic": (np.int32, (2, H, W)),
        "depth": (np.float32, (2, H, W, 1)), "normal": (np.float32, (2, H, W, 3))}
    again = D.dense_train_batches(nyu_train, batch_size=2, seed=7)
    # Element i of a fresh dataset, read out of order, equals the sequential one.
    assert _equal_batches(again[3], first[3]) and _equal_batches(again[0], first[0])
    it = iter(again.to_iter_dataset())
    seq = [next(it) for _ in range(4)]
    assert all(_equal_batches(x, y) for x, y in zip(seq, first))
    other = D.dense_train_batches(nyu_train, batch_size=2, seed=8)
    assert not all(_equal_batches(other[i], first[i]) for i in range(4))


def test_train_iterator_resumes_exactly(nyu_train) -> None:
    ds = D.dense_train_batches(nyu_train, batch_size=2, seed=1)
    it = iter(ds.to_iter_dataset())
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(2)]
    resumed = iter(D.dense_train_batches(nyu_train, batch_size=2, seed=1).to_iter_dataset())
    resumed.set_state(state)
    got = [next(resumed) for _ in range(2)]
    assert all(_equal_batches(x, y) for x, y in zip(got, want))
    assert _equal_batches(want[0], ds[3])


def test_train_batches_without_augmentation_are_shuffled_epochs(nyu_train) -> None:
    n = len(nyu_train)
    ds = D.dense_train_batches(nyu_train, batch_size=1, seed=0, augment=False)
    records = [nyu_train[i] for i in range(n)]
    orders = []
    for epoch in range(3):
        order = []
        for k in range(epoch * n, (epoch + 1) * n):
            sem = ds[k]["semantic"][0]
            matches = [i for i, r in enumerate(records) if np.array_equal(r["semantic"], sem)]
            assert len(matches) == 1
            rec = records[matches[0]]
            for key in rec:
                np.testing.assert_array_equal(ds[k][key][0], rec[key])
            order.append(matches[0])
        assert sorted(order) == list(range(n))
        orders.append(order)
    # Shuffled, and reshuffled every epoch.
    assert orders[0] != list(range(n)) and len({tuple(o) for o in orders}) > 1


def test_train_batches_cityscapes_and_uint8_sources(data_dir: Path) -> None:
    city = D.dense_source("cityscapes19", "train", data_dir)
    b = D.dense_train_batches(city, 2, seed=0, depth_kind=D.DEPTH_KIND["cityscapes19"])[1]
    assert set(b) == {"image", "semantic", "depth"}
    assert b["semantic"].max() <= 18 and (b["semantic"] == -1).any()
    rng = np.random.default_rng(0)
    src = [{"image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            "semantic": rng.integers(-1, 5, (H, W)).astype(np.int64),
            "depth": rng.random((H, W, 1))} for _ in range(3)]
    b = D.dense_train_batches(src, 3, seed=0, augment=False)[0]
    assert (b["image"].dtype, b["semantic"].dtype, b["depth"].dtype) == (
        np.float32, np.int32, np.float32)
    got = sorted(b["image"].reshape(3, -1).tolist())
    want = sorted((np.stack([r["image"] for r in src]).astype(np.float32) / 255.0)
                  .reshape(3, -1).tolist())
    assert got == want
    with pytest.raises(ValueError, match="Unknown depth_kind"):
        D.dense_train_batches(src, 1, seed=0, depth_kind="metric")
    with pytest.raises(ValueError, match="empty"):
        D.dense_train_batches([], 1, seed=0)
    with pytest.raises(ValueError, match="Batch size must be positive"):
        D.dense_train_batches(src, 0, seed=0)


def test_eval_batches_pad_with_invalid_markers(nyu_train) -> None:
    n = len(nyu_train)  # 5
    batches = list(D.dense_eval_batches(nyu_train, batch_size=2))
    assert len(batches) == 3
    np.testing.assert_array_equal([b["mask"].tolist() for b in batches],
                                  [[1, 1], [1, 1], [1, 0]])
    for k in range(n):
        b, r = batches[k // 2], nyu_train[k]
        for key in r:
            np.testing.assert_array_equal(b[key][k % 2], r[key])
    last = batches[-1]
    assert last["mask"].dtype == np.float32
    assert (last["semantic"][1] == -1).all() and (last["depth"][1] == 0).all()
    assert (last["normal"][1] == 0).all() and (last["image"][1] == 0).all()
    assert {k: v.dtype for k, v in last.items()} == {
        "image": np.float32, "semantic": np.int32, "depth": np.float32,
        "normal": np.float32, "mask": np.float32}
    limited = list(D.dense_eval_batches(nyu_train, batch_size=4, limit=2))
    assert len(limited) == 1 and limited[0]["mask"].tolist() == [1, 1, 0, 0]
    assert limited[0]["image"].shape == (4, H, W, 3)
    with pytest.raises(ValueError, match="empty"):
        next(D.dense_eval_batches(nyu_train, 2, limit=0))
